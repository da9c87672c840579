"""`flor sync`: upload and finalize what runs left behind on this host.

Three things can be left here: the offline outbox (metadata, checkpoints, Parquet written while a
remote store was unreachable), record streams in the spool whose process died or never finalized
them (offline runs, crashes, deferred aggregation), and uploaded stream copies whose records are
final. Every step is idempotent: a stream becomes the Parquet file of the same stem, an outbox file
the object of the same path, so running sync twice (or after a crash) neither loses nor doubles.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from flor_lib import compact
from flor_lib.buffer import stream_in_use
from flor_lib.store import Store


def _truncation(meta: dict | None) -> dict[int, int]:
    from flor_lib.run import truncation

    return truncation(meta) if meta else {}


def sync(store: Store | None = None) -> dict:
    """Upload the offline outbox, finalize streams no live process writes, compact what changed; a report."""
    store = store or Store()
    report: dict = {"store": store.root, "landed": [], "records": 0, "finalized": 0, "still_running": [],
                    "interrupted": [], "uploaded": 0, "live_uploaded": 0, "dropped": 0, "merged": 0,
                    "conflicts": []}
    store.require_reachable()
    touched: set[str] = set()
    conflicts: set[tuple[str, str]] = set()
    if store.remote:
        _upload_outbox(store, report, conflicts, touched)
    merged_away: dict[str, set[str]] = {}
    for stream in compact.stream_files(store):
        projid, runid = stream.parent.parent.name, stream.parent.name
        if (projid, runid) in conflicts:
            continue
        if stream_in_use(stream):  # its process still runs: refresh the copy other hosts see
            report["still_running"].append(runid)
            if store.remote:
                store.upload_live(stream, stream.read_bytes())
                report["live_uploaded"] += 1
            continue
        if projid not in merged_away:
            merged_away[projid] = compact.replaced_keys(store, compact.record_files(store, projid))
        if f"{projid}/{compact._parquet_name(stream)}" in merged_away[projid]:
            compact.drop_live_copies(store, [compact.live_copy_path(store, stream)])
            stream.unlink(missing_ok=True)  # a merge holds these records already
            report["dropped"] += 1
            continue
        attempt = compact._attempt(stream.name)
        meta = store.run_meta(projid, runid)
        if _died(meta, attempt):  # its process is gone without closing the run
            meta["status"] = "interrupted"
            store.write_json(store.run_meta_path(projid, runid), meta)
            report["interrupted"].append(runid)
        bound = _truncation(meta).get(attempt) if attempt else None
        report["records"] += compact.finalize_stream(store, stream, bound)
        report["finalized"] += 1
        report["landed"].append(runid)
        touched.add(projid)
    if store.remote:
        _drop_final_copies(store)
    for projid in sorted(touched):
        report["merged"] += compact.merge_project(store, projid)
        store.refresh_runs_index(projid, at_least=1)
    if store.offline:  # it failed half-way: what it could not upload waits in the outbox again
        raise store.unreachable(store.offline_reason or "it failed during sync")
    return report


def _died(meta: dict | None, attempt: int | None) -> bool:
    """Whether meta says running although the process of its latest attempt (this stream's) is gone."""
    if not meta or meta.get("status") != "running" or not attempt or not meta.get("attempts"):
        return False
    last = meta["attempts"][-1]
    if last.get("attempt") != attempt:
        return False
    if last.get("host") == socket.gethostname() and last.get("pid"):
        try:
            os.kill(int(last["pid"]), 0)
            return False  # alive (it has not written a record yet, or closed its stream and is committing)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return True


def _upload_outbox(store: Store, report: dict, conflicts: set[tuple[str, str]], touched: set[str]) -> None:
    root = store.outbox
    if not root.exists():
        return
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".tmp-" not in p.name)
    for p in [p for p in files if p.suffix == ".claim" or p.name.startswith(".probe")]:
        p.unlink()  # host-local bookkeeping of an offline run (run-id claims, write probes)
        files.remove(p)
    metas = [p for p in files if p.relative_to(root).parts[0] == "runs"]
    for m in metas:  # an offline run whose id another host took meanwhile: leave it here, report it
        projid, runid = m.relative_to(root).parts[1], m.stem
        remote = store.read_json(store.path(*m.relative_to(root).parts))
        if remote and remote.get("tstamp") != json.loads(m.read_text()).get("tstamp"):
            conflicts.add((projid, runid))
            report["conflicts"].append(f"{projid}/{runid}: the store has another run of that name; "
                                       f"its offline files stay in {root}")
    for p in [p for p in files if p not in metas] + metas:  # metadata last: it names the checkpoints
        parts = p.relative_to(root).parts
        if _owner(parts) in conflicts:
            continue
        store.fs.put_file(str(p), store.path(*parts))
        p.unlink()
        report["uploaded"] += 1
        if parts[0] in ("runs", "records"):
            touched.add(parts[1].split("=", 1)[-1])
    _prune_empty(root)


def _owner(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(projid, runid) an outbox file belongs to, if any."""
    if parts[0] == "runs" and len(parts) == 3:
        return parts[1], parts[2].rsplit(".", 1)[0]
    if parts[0] == "checkpoints" and len(parts) >= 3:
        return parts[1], parts[2]
    if parts[0] == "records" and len(parts) == 3 and "--" in parts[2]:
        return parts[1].split("=", 1)[-1], parts[2].split("--", 1)[0]
    return None


def _drop_final_copies(store: Store) -> None:
    """Delete uploaded stream copies whose records are in Parquet already (a finalize that was cut short)."""
    copies = compact.live_copies(store)
    if not copies:
        return
    done = compact.split_visible(store, compact.record_files(store))[1]
    here = {str(s.relative_to(store.spool)) for s in compact.stream_files(store)}
    stale = []
    for path in copies:
        projid, runid, name = store.rel(path).split("/")[1:4]
        if f"{projid}/{runid}--{name.rsplit('.', 1)[0]}.parquet" in done and f"{projid}/{runid}/{name}" not in here:
            stale.append(path)
    compact.drop_live_copies(store, stale)


def _prune_empty(root: Path) -> None:
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
