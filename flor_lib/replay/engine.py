"""Executing a replay plan: throwaway worktrees, one child process per segment, and the backfill."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

from flor_lib.errors import FlorError
from flor_lib.replay import zygote
from flor_lib.replay.plan import ReplayPlan, local_roots, plan_replay, worktrees_root
from flor_lib.replay.segment import Segment
from flor_lib.store import Store

try:
    import fcntl
except ImportError:  # no flock (Windows): stale worktrees are then left for finish_replay alone
    fcntl = None

__all__ = ["plan_replay", "run_segment", "finish_replay", "replay", "Segment", "ReplayPlan"]
_swept: set[str] = set()  # replays that swept stale worktrees already (once per process is enough)
_swept_lock = threading.Lock()


def _pending_dir(store: Store, replay_id: str) -> Path:
    # outside the spool that queries read: a killed replay leaves nothing visible
    return store.spool.parent / "replays-pending" / replay_id


def _worktree_path(seg: Segment) -> Path:
    key = f"{seg.meta['repo']}\0{seg.vid}\0{seg.patched_source}".encode()
    return worktrees_root() / seg.replay_id / hashlib.sha1(key).hexdigest()[:16]


def _lock(replay_id: str, mode: int) -> int | None:
    """An fd holding flock(mode) on <replay_id>.alive next to its worktrees; None when non-blocking and held."""
    path = worktrees_root() / f"{replay_id}.alive"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # a sweep deleted the file while we waited: lock the one there now


@contextmanager
def _alive(replay_id: str) -> Iterator[None]:
    """Mark a replay as running (a shared lock, so its segments and driver can all hold it) while inside."""
    fd = _lock(replay_id, fcntl.LOCK_SH) if fcntl else None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def sweep_stale_worktrees(keep: str, repos: set[Path]) -> list[str]:
    """Remove the worktrees of replays nobody runs any more (killed ones) and prune git's records of them.

    keep: the calling replay; repos: repositories to prune even when no stale worktree names them
    (a sweep killed half-way). A replay holding its lock is never touched. Returns the ids removed.
    """
    root = worktrees_root()
    if fcntl is None or not root.is_dir():
        return []
    ids = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in root.glob("*.alive")}
    gitdirs: set[Path] = set()
    removed = []
    for rid in sorted(ids - {keep}):
        fd = _lock(rid, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:  # alive: its driver or one of its segments holds it
            continue
        try:
            gitdirs |= {g for tree in (root / rid).glob("*/") if (g := _common_gitdir(tree))}
            shutil.rmtree(root / rid, ignore_errors=True)
            (root / f"{rid}.alive").unlink(missing_ok=True)  # holders re-check the inode: see _lock
            removed.append(rid)
        finally:
            os.close(fd)
    for args in [["--git-dir", str(g)] for g in gitdirs] + [["-C", str(r)] for r in repos]:
        subprocess.run(["git", *args, "worktree", "prune"], capture_output=True)
    return removed


def _common_gitdir(tree: Path) -> Path | None:
    """The repository's .git of a worktree, from its .git file (gitdir: <repo>/.git/worktrees/<name>)."""
    try:
        text = (tree / ".git").read_text().strip()
    except OSError:
        return None
    return Path(text.split(":", 1)[1].strip()).parent.parent if text.startswith("gitdir:") else None


def _sweep_once(seg: Segment) -> None:
    with _swept_lock:
        if seg.replay_id in _swept:
            return
        _swept.add(seg.replay_id)
    sweep_stale_worktrees(seg.replay_id, {Path(seg.meta["repo"])})


def worktree(repo: Path, path: Path, vid: str, relpath: str, source: str) -> Path:
    """A detached worktree of vid at path with the patched script written in (shared by a replay's segments)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / relpath).exists():
            if path.exists():
                shutil.rmtree(path)
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(path), vid],
                           check=True, capture_output=True)
            (path / relpath).write_text(source)
    return path


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove a worktree and git's record of it."""
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def run_segment(seg: Segment, on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> dict:
    """Re-execute one segment in a child process of the old version; return its result."""
    with _alive(seg.replay_id):  # a sweep by another replay leaves this one's worktrees alone meanwhile
        _sweep_once(seg)
        return _run_segment(seg, on_output, timeout)


def _run_segment(seg: Segment, on_output: Callable[[str], None] | None, timeout: float | None) -> dict:
    store = Store(seg.store_root or None)
    meta = seg.meta
    tree = worktree(Path(meta["repo"]), _worktree_path(seg), seg.vid, meta["filename"], seg.patched_source)
    pending = _pending_dir(store, seg.replay_id)
    spec = pending / f"{seg.key}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(seg.dumps())
    stream = pending / seg.projid / seg.runid / f"r-{seg.replay_id}-{seg.key}.arrows"
    stream.unlink(missing_ok=True)  # a retried segment starts over
    env = {**os.environ, "FLOR_REPLAY": str(spec), "FLOR_REPLAY_STREAM": str(stream), "FLOR_STORE": store.root,
           "PYTHONUNBUFFERED": "1"}
    cwd = tree / (meta.get("cwd") or str(Path(meta["filename"]).parent))
    cmd = [sys.executable, str(tree / meta["filename"]), *meta.get("argv", [])]
    t0 = time.perf_counter()
    modules_file = spec.with_suffix(".modules.json")
    proc, zyg = _start(seg, cmd, cwd, env, modules_file)
    tail: list[str] = []
    ok = False
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if on_output:
                on_output(line.rstrip())
        code = proc.wait(timeout=timeout)
        ok = True
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # cancelling a replay kills the whole process group
        except ProcessLookupError:  # already gone (a forked child is reaped by its server)
            pass
        try:
            proc.wait(timeout=30)
        except Exception:
            if zyg:
                zyg.broken = True
        raise
    finally:
        proc.stdout.close()
        if zyg:  # only a segment that ran to its end teaches its server its late imports
            zygote.POOL.release(zyg, modules_file if ok and modules_file.exists() else None)
    result_path = spec.with_suffix(".result.json")
    if code != 0 or not result_path.exists():
        shown = "\n".join(tail[-8:])
        raise FlorError(f"replay of {seg.runid} (segment {seg.key}) exited with {code}:\n{shown}")
    result = json.loads(result_path.read_text())
    result.update(seconds=round(time.perf_counter() - t0, 3), stream=str(stream), segment=seg.key)
    return result


def _start(seg: Segment, cmd: list[str], cwd: Path, env: dict, modules_file: Path):
    """The segment's process: forked from a zygote that already imported its libraries, else a new one."""
    zyg = zygote.POOL.acquire(seg.replay_id, zygote.imports_of(seg.patched_source), local_roots(seg.meta["repo"]),
                              dict(os.environ))
    if zyg is not None:
        try:
            return zyg.spawn(cmd[1:], str(cwd), env, str(modules_file)), zyg
        except zygote.ZygoteGone:
            zygote.POOL.release(zyg)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return proc, None


def finish_replay(plan: ReplayPlan, results: list[dict], store: Store | None = None):
    """Land the records of every run whose segments all succeeded; summarize per run."""
    import pandas as pd

    store = store or Store(plan.segments[0].store_root if plan.segments else None)
    by_run: dict[str, list[Segment]] = {}
    for seg in plan.segments:
        by_run.setdefault(seg.runid, []).append(seg)
    got = {r["segment"]: r for r in results if r}
    rows = []
    with _landing_lock(store):
        from flor_lib.query import Connection
        from flor_lib.replay.plan import backfilled

        landed = set() if plan.force else backfilled(Connection(store))
        for runid, segs in by_run.items():
            rows.append(_land(store, runid, segs, [got.get(s.key) for s in segs], landed))
    for d in plan.skipped:
        rows.append({"runid": d["runid"], "vid": (d.get("vid") or "")[:8], "status": "skipped", "reason": d["reason"]})
    summary = pd.DataFrame(rows)
    store.write_json(store.path("replays", f"{plan.replay_id}.json"),
                     {"replay_id": plan.replay_id, "names": plan.names, "levels": plan.levels, "notes": plan.notes,
                      "runs": summary.to_dict(orient="records"),
                      "mismatches": [m for r in results if r for m in r.get("mismatches", [])][:50]})
    zygote.POOL.close(plan.replay_id)
    shutil.rmtree(_pending_dir(store, plan.replay_id), ignore_errors=True)
    for seg in {_worktree_path(s): s for s in plan.segments}.values():
        if _worktree_path(seg).exists():
            remove_worktree(Path(seg.meta["repo"]), _worktree_path(seg))
    shutil.rmtree(worktrees_root() / plan.replay_id, ignore_errors=True)
    if fcntl is not None and (fd := _lock(plan.replay_id, fcntl.LOCK_EX | fcntl.LOCK_NB)) is not None:
        (worktrees_root() / f"{plan.replay_id}.alive").unlink(missing_ok=True)
        os.close(fd)
    return summary


def _landing_lock(store: Store):
    from filelock import FileLock

    store.spool.mkdir(parents=True, exist_ok=True)
    return FileLock(str(store.spool / ".replay-landing.lock"))


def _land(store: Store, runid: str, segs: list[Segment], res: list[dict | None], landed: set) -> dict:
    """Finalize one run's replay streams when all its segments succeeded and no other replay beat it."""
    from flor_lib import compact

    ok = all(r is not None for r in res)
    raced = [n for n in segs[0].names if (runid, n) in landed]
    mismatches = [m for r in res if r for m in r.get("mismatches", [])]
    if ok and not raced:
        for r in res:
            stream = Path(r["stream"])
            if stream.exists():
                compact.finalize_stream(store, stream)
    restored = sorted({i for r in res if r for i in r.get("restored", [])})
    executed = sorted({i for r in res if r for i in r.get("executed", [])})
    status = "failed" if not ok else ("skipped" if raced else "backfilled")
    row = {"runid": runid, "vid": segs[0].vid[:8], "status": status, "names": ", ".join(segs[0].names),
           "segments": len(segs), "restored_iters": len(restored), "executed_iters": len(executed),
           "checked": sum(r.get("checked", 0) for r in res if r), "mismatches": len(mismatches),
           "seconds": round(sum(r.get("seconds", 0) for r in res if r), 2)}
    if raced:
        row["reason"] = f"another replay backfilled {', '.join(raced)} meanwhile"
    return row


def replay(names: list[str] | str, where: str | None = None, workers: int | None = None, force: bool = False,
           dry_run: bool = False, progress: bool = True):
    """Backfill names into past runs, locally with a pool of child processes (no Prefect)."""
    names = [names] if isinstance(names, str) else list(names)
    workers = workers or os.cpu_count() or 1
    plan = plan_replay(names, where=where, force=force, workers=workers, prewarm=not dry_run)
    if dry_run:
        print(plan.describe())
        return plan
    results: list[dict] = []
    errors: list[str] = []
    from rich.progress import Progress

    try:
        with _alive(plan.replay_id), Progress(disable=not progress or not sys.stderr.isatty(),
                                              transient=True) as bar:
            task = bar.add_task(f"replay {', '.join(names)}", total=len(plan.segments))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(run_segment, seg): seg for seg in plan.segments}
                for fut in as_completed(futures):
                    try:
                        results.append(fut.result())
                    except Exception as exc:  # one segment's failure never stops the others
                        errors.append(str(exc) if isinstance(exc, FlorError) else f"{type(exc).__name__}: {exc}")
                    bar.advance(task)
    finally:
        zygote.POOL.close(plan.replay_id)  # also when interrupted: no server outlives its replay
    summary = finish_replay(plan, results)
    for note in plan.notes:
        print(f"flor: {note}", file=sys.stderr)
    for e in errors:
        print(f"flor: replay segment failed: {e}", file=sys.stderr)
    return summary
