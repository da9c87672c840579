"""Turning run record streams into the project's Parquet dataset, and merging small files.

Every step is crash-safe without a manifest: a stream X.arrows becomes X.parquet (same stem,
written atomically) and is deleted afterwards; a merged file names the files it replaces in
its footer. Readers skip anything superseded, so a crash between two steps never doubles or
loses a record.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flor_lib.buffer import read_stream
from flor_lib.schema import RECORD_SCHEMA
from flor_lib.store import Store

MERGE_AT = 16  # merge a project's run files once this many have accumulated
_SOURCES_KEY = b"flor_sources"


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


def parquet_files(store: Store, projid: str) -> list[str]:
    """Visible Parquet files of a project: merged files plus run files no merge has replaced."""
    try:
        files = sorted(store.fs.glob(store.records_dir(projid) + "/*.parquet"))
    except FileNotFoundError:
        return []
    replaced = _replaced_by_merges(store, files)
    return [f for f in files if f.rsplit("/", 1)[-1] not in replaced]


def _replaced_by_merges(store: Store, files: list[str]) -> set[str]:
    replaced: set[str] = set()
    for f in files:
        if f.rsplit("/", 1)[-1].startswith("merged-"):
            meta = pq.read_metadata(f, filesystem=store.fs).metadata or {}
            replaced.update(json.loads(meta.get(_SOURCES_KEY, b"[]")))
    return replaced


def _parquet_name(stream: Path) -> str:
    return f"{stream.parent.name}--{stream.stem}.parquet"


def visible_streams(store: Store, projid: str | None = None) -> list[Path]:
    """Streams whose records are not yet in a Parquet file."""
    out = []
    done_cache: dict[str, set[str]] = {}
    for s in stream_files(store, projid):
        p = s.parent.parent.name
        if p not in done_cache:
            files = _all_parquet(store, p)
            done_cache[p] = {f.rsplit("/", 1)[-1] for f in files} | _replaced_by_merges(store, files)
        if _parquet_name(s) not in done_cache[p]:
            out.append(s)
    return out


def _all_parquet(store: Store, projid: str) -> list[str]:
    try:
        return sorted(store.fs.glob(store.records_dir(projid) + "/*.parquet"))
    except FileNotFoundError:
        return []


def finalize_stream(store: Store, stream: Path, keep_below_seq: int | None = None) -> int:
    """Write one stream as a Parquet file of the project (dropping seq >= keep_below_seq), then delete it."""
    table = read_stream(stream)
    if keep_below_seq is not None:
        table = table.filter(pc.less(table["seq"], keep_below_seq))
    projid = stream.parent.parent.name
    if table.num_rows:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        store.write_bytes(f"{store.records_dir(projid)}/{_parquet_name(stream)}", sink.getvalue().to_pybytes())
    stream.unlink(missing_ok=True)
    _rmdir_empty(stream.parent)
    return table.num_rows


def finalize_run(store: Store, projid: str, runid: str, truncate: dict[int, int] | None = None) -> int:
    """Finalize every stream of a run; truncate maps attempt -> first seq a later attempt redid."""
    n = 0
    for stream in stream_files(store, projid, runid):
        bound = None
        if truncate and stream.stem.startswith("a"):
            attempt = int(stream.stem[1:].split("-")[0])
            bound = truncate.get(attempt)
        n += finalize_stream(store, stream, bound)
    return n


def merge_project(store: Store, projid: str, at_least: int = MERGE_AT) -> int:
    """Merge a project's run files into one sorted file once there are at_least of them."""
    from filelock import FileLock

    lock_dir = store.spool if store.is_local else Path.home() / ".cache" / "flor"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f".merge-{projid}.lock")):
        files = parquet_files(store, projid)
        if len(files) < at_least:
            return 0
        tables = [pq.read_table(f, filesystem=store.fs, schema=RECORD_SCHEMA) for f in files]
        table = pa.concat_tables(tables).sort_by(
            [("runid", "ascending"), ("tstamp", "ascending"), ("source", "ascending"), ("seq", "ascending")]
        )
        names = [f.rsplit("/", 1)[-1] for f in files]
        nested = _replaced_by_merges(store, files)
        meta = {_SOURCES_KEY: json.dumps(sorted(set(names) | nested)).encode()}
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=100_000)
        target = f"{store.records_dir(projid)}/merged-{uuid.uuid4().hex}.parquet"
        store.write_bytes(target, sink.getvalue().to_pybytes())
        for f in files:
            store.fs.rm_file(f)
        return len(files)


def _rmdir_empty(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
