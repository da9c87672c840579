"""Turning run record streams into the project's Parquet dataset, and merging small files.

Every step is crash-safe without a manifest: a stream X.arrows becomes X.parquet (same stem,
written atomically) and is deleted afterwards; a merged file names the files it replaces in
its footer. Readers skip anything superseded, so a crash between two steps never doubles or
loses a record. On a remote store the same holds for the uploaded copies under live/.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flor_lib import arrow_build as ab
from flor_lib.buffer import read_stream
from flor_lib.schema import RECORD_SCHEMA
from flor_lib.store import Store, cache_root, remote_failure

MERGE_AT = 16  # merge a project's run files once this many have accumulated
RUNS_INDEX_AT = 4  # rewrite a project's runs index (remote stores) once this many documents are new
_SOURCES_KEY = b"flor_sources"
_sources_memo: dict[str, list[str]] = {}


def _pc():
    """pyarrow.compute, imported when needed: a plain run's exit never is (65 ms of import)."""
    import pyarrow.compute as pc

    return pc


def stream_files(store: Store, projid: str | None = None, runid: str | None = None) -> list[Path]:
    """Record streams in the local spool (running, crashed or not yet finalized runs)."""
    root = store.spool
    if projid and runid:
        pattern = f"{projid}/{runid}/*.arrows"
    elif projid:
        pattern = f"{projid}/*/*.arrows"
    else:
        pattern = "*/*/*.arrows"
    return sorted(root.glob(pattern))


def record_files(store: Store, projid: str | None = None) -> dict[str, dict]:
    """Every Parquet file under records/ (one project's when projid is given) with its info: one listing."""
    parts = ["records", f"projid={projid}"] if projid else ["records"]
    return {p: i for p, i in store.listing(*parts).items() if p.endswith(".parquet")}


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _key(path: str) -> str:
    """projid/name of a Parquet file of the dataset."""
    parent, name = path.rsplit("/", 2)[-2:]
    return f"{parent.split('=', 1)[-1]}/{name}"


def split_visible(store: Store, files: dict[str, dict]) -> tuple[list[str], set[str]]:
    """The visible files (merged ones plus run files no merge replaced), and projid/name of every file done."""
    replaced = replaced_keys(store, files)
    visible = sorted(f for f in files if _key(f) not in replaced)
    return visible, {_key(f) for f in files} | replaced


def replaced_keys(store: Store, files: dict[str, dict]) -> set[str]:
    """projid/name of every file some merged file replaced (its footer lists it)."""
    replaced: set[str] = set()
    for f, info in files.items():
        if _name(f).startswith("merged-"):
            projid = _key(f).split("/", 1)[0]
            replaced |= {f"{projid}/{n}" for n in _sources(store, f, info)}
    return replaced


def _sources(store: Store, path: str, info: dict) -> list[str]:
    """Names a merged file replaced (its footer), read once per host and version on a remote store."""
    if store.is_local:
        meta = pq.read_metadata(path, filesystem=store.fs).metadata or {}
        return json.loads(meta.get(_SOURCES_KEY, b"[]"))
    version = store.version(info)
    memo = store.objects / ".sources" / f"{version}.json"
    if version not in _sources_memo:
        try:
            _sources_memo[version] = json.loads(memo.read_text())
        except (FileNotFoundError, ValueError):
            local = store.cached_path(path, version)
            meta = pq.read_metadata(str(local)) if local.exists() else _remote_footer(store, path, info["size"])
            _sources_memo[version] = json.loads((meta.metadata or {}).get(_SOURCES_KEY, b"[]"))
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps(_sources_memo[version]))
    return _sources_memo[version]


def _remote_footer(store: Store, path: str, size: int) -> pq.FileMetaData:
    """A Parquet footer in one ranged GET (two when it is over 64 KiB)."""
    tail = store.fs.cat_file(path, start=max(0, size - (64 << 10)))
    need = int.from_bytes(tail[-8:-4], "little") + 8
    if need > len(tail):
        tail = store.fs.cat_file(path, start=max(0, size - need))
    return pq.read_metadata(pa.BufferReader(b"PAR1" + tail))  # only the footer is read: offsets don't matter


def parquet_files(store: Store, projid: str) -> list[str]:
    """Visible Parquet files of a project: merged files plus run files no merge has replaced."""
    return split_visible(store, record_files(store, projid))[0]


def _parquet_name(stream: Path) -> str:
    return f"{stream.parent.name}--{stream.stem}.parquet"


def visible_streams(store: Store, projid: str | None = None, done: set[str] | None = None) -> list[Path]:
    """Streams in the local spool whose records are not yet in a Parquet file (done: from split_visible)."""
    streams = stream_files(store, projid)
    if streams and done is None:
        done = split_visible(store, record_files(store, projid))[1]
    return [s for s in streams if f"{s.parent.parent.name}/{_parquet_name(s)}" not in done]


def live_copies(store: Store, projid: str | None = None, runid: str | None = None) -> dict[str, dict]:
    """Uploaded copies of record streams on a remote store (live/P/RUNID/*.arrows) with their info."""
    if not store.remote or store.offline:
        return {}
    parts = ["live", *([projid] if projid else []), *([runid] if runid else [])]
    return {p: i for p, i in store.listing(*parts).items() if p.endswith(".arrows")}


def live_copy_path(store: Store, stream: Path) -> str:
    """Where the uploaded copy of a stream (spool/P/RUNID/X.arrows) lives."""
    return store.path("live", stream.parent.parent.name, stream.parent.name, stream.name)


def drop_live_copies(store: Store, paths: list[str]) -> None:
    """Delete uploaded stream copies (one bulk request); a failure leaves them for readers to skip."""
    if paths and store.remote and not store.offline:
        try:
            store.fs.rm(paths)
        except Exception as exc:
            if not remote_failure(exc):
                raise


def finalize_stream(store: Store, stream: Path, keep_below_seq: int | None = None, live: bool | None = None) -> int:
    """Write one stream as a Parquet file of the project (dropping seq >= keep_below_seq), then delete it.

    live: whether an uploaded copy exists to delete (default: a remote store and a run's own stream).
    """
    table = read_stream(stream)
    if keep_below_seq is not None:
        table = table.filter(_pc().less(table["seq"], ab.int64_scalar(keep_below_seq)))
    projid = stream.parent.parent.name
    if table.num_rows and table["vid"].null_count:  # flushed before the code snapshot was taken
        vid = (store.run_meta(projid, stream.parent.name) or {}).get("vid")
        if vid:
            filled = _pc().coalesce(table["vid"], ab.repeated_string(vid, table.num_rows))
            table = table.set_column(table.schema.get_field_index("vid"), "vid", filled)
    if table.num_rows:
        store.write_bytes(f"{store.records_dir(projid)}/{_parquet_name(stream)}", _parquet_bytes(table))
    if live if live is not None else stream.name.startswith("a"):
        drop_live_copies(store, [live_copy_path(store, stream)])
    stream.unlink(missing_ok=True)
    _rmdir_empty(stream.parent)
    return table.num_rows


def _parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", **kwargs)
    return sink.getvalue().to_pybytes()


def finalize_run(store: Store, projid: str, runid: str, truncate: dict[int, int] | None = None) -> int:
    """Finalize every stream of a run; truncate maps attempt -> first seq a later attempt redid.

    On a remote store this includes streams other hosts left under live/ (a run resumed elsewhere),
    and attempts finalized earlier are truncated in place, so a resume never doubles records.
    """
    truncate = truncate or {}
    streams = stream_files(store, projid, runid)
    copies = {_name(p): p for p in live_copies(store, projid, runid)}
    for name, path in copies.items():
        local = store.spool / projid / runid / name
        if not local.exists():  # left by another host: bring it here to finalize it
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(store.get(path))
            streams.append(local)
    n, seen = 0, set()
    for stream in streams:
        attempt = _attempt(stream.name)
        seen.add(attempt)
        n += finalize_stream(store, stream, truncate.get(attempt) if attempt else None, live=stream.name in copies)
    for attempt, bound in truncate.items():
        if attempt not in seen:
            truncate_finalized(store, projid, runid, attempt, bound)
    return n


def _attempt(name: str) -> int | None:
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("a") and stem[1:].split("-")[0].isdigit():
        return int(stem[1:].split("-")[0])
    return None


def truncate_finalized(store: Store, projid: str, runid: str, attempt: int, bound: int) -> int:
    """Drop records of an already finalized attempt with seq >= bound (a later attempt redid them)."""
    pc = _pc()

    dropped = 0
    with _merge_lock(store, projid):
        files = record_files(store, projid)
        for f in split_visible(store, files)[0]:
            if _name(f) != f"{runid}--a{attempt}.parquet" and not _name(f).startswith("merged-"):
                continue
            table = _read(store, f, files[f])
            same_run = pc.and_(pc.equal(table["runid"], ab.strings([runid])[0]),
                               pc.equal(table["attempt"], ab.numbers(pa.int32(), [attempt])[0]))
            redone = pc.and_(pc.equal(table["source"], ab.strings(["record"])[0]),
                             pc.greater_equal(table["seq"], ab.int64_scalar(bound)))
            drop = pc.and_(same_run, redone)
            count = pc.sum(drop.cast(pa.int64())).as_py() or 0
            if not count:
                continue
            kept = table.filter(pc.invert(pc.coalesce(drop, ab.bools_false(len(drop)))))
            if _name(f).startswith("merged-"):  # a new merged file replacing the old one (and its sources)
                sources = sorted(set(_sources(store, f, files[f])) | {_name(f)})
                kept = kept.replace_schema_metadata({_SOURCES_KEY: json.dumps(sources).encode()})
                target = f"{store.records_dir(projid)}/merged-{uuid.uuid4().hex}.parquet"
                store.write_bytes(target, _parquet_bytes(kept, row_group_size=100_000))
                store.fs.rm_file(f)
            else:
                store.write_bytes(f, _parquet_bytes(kept))
            dropped += count
    return dropped


def _read(store: Store, path: str, info: dict) -> pa.Table:
    if store.is_local:
        return pq.read_table(path, schema=RECORD_SCHEMA)
    local = store.cache_many({path: info})[0]
    return pq.read_table(str(local), schema=RECORD_SCHEMA)


def _merge_lock(store: Store, projid: str):
    from filelock import FileLock

    lock_dir = store.spool if store.is_local else cache_root()
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f".merge-{projid}.lock"))


def merge_project(store: Store, projid: str, at_least: int = MERGE_AT) -> int:
    """Merge a project's run files into one sorted file once there are at_least of them."""
    merged = 0
    if len(record_files(store, projid)) >= at_least:  # else nothing to merge: no lock (nor its import) needed
        merged = _merge_locked(store, projid, at_least)
    if store.remote and not store.offline:
        store.refresh_runs_index(projid, 1 if merged or at_least < MERGE_AT else RUNS_INDEX_AT)
    return merged


def _merge_locked(store: Store, projid: str, at_least: int) -> int:
    merged = 0
    with _merge_lock(store, projid):
        files = record_files(store, projid)
        replaced = replaced_keys(store, files)
        visible = sorted(f for f in files if _key(f) not in replaced)
        if len(visible) >= at_least:
            if store.is_local:
                tables = [pq.read_table(f, schema=RECORD_SCHEMA) for f in visible]
            else:
                blobs = store.get_many(visible)
                tables = [pq.read_table(pa.BufferReader(blobs[f]), schema=RECORD_SCHEMA) for f in visible]
            table = pa.concat_tables(tables).sort_by(
                [("runid", "ascending"), ("tstamp", "ascending"), ("source", "ascending"), ("seq", "ascending")])
            names = {_name(f) for f in visible} | {k.split("/", 1)[1] for k in replaced}
            table = table.replace_schema_metadata({_SOURCES_KEY: json.dumps(sorted(names)).encode()})
            target = f"{store.records_dir(projid)}/merged-{uuid.uuid4().hex}.parquet"
            store.write_bytes(target, _parquet_bytes(table, row_group_size=100_000))
            store.fs.rm(sorted(files))  # the inputs and any superseded file a crash left behind
            merged = len(visible)
    return merged


def compact(store: Store | None = None, projid: str | None = None) -> dict[str, int]:
    """Merge every project's files into one and refresh its runs index; {projid: files merged}."""
    store = store or Store()
    projects = [projid] if projid else sorted({_key(f).split("/", 1)[0] for f in record_files(store)})
    return {p: merge_project(store, p, at_least=2) for p in projects}


def _rmdir_empty(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
