"""Training scripts as child processes: own session, output streamed line by line, whole group killed.

The pattern of prefect-shell (GH #20979): each child starts a new session, so a cancelled or timed-out
run takes its whole process tree (DataLoader workers included) down with SIGTERM, a grace period, then
SIGKILL. No Prefect import here: the flows pass a logger callable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 5.0
_live: dict[int, subprocess.Popen] = {}
_lock = threading.Lock()


@dataclass
class Outcome:
    """How a child process ended."""

    returncode: int
    seconds: float
    pid: int
    timed_out: bool = False
    tail: tuple[str, ...] = ()


def python_command(script: str | Path, args: Sequence[str] = ()) -> list[str]:
    """The argv that runs a Python script with this interpreter."""
    return [sys.executable, str(script), *[str(a) for a in args]]


def launch(argv: Sequence[str], *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
           on_line: Callable[[str], None] | None = None, timeout: float | None = None,
           grace: float = GRACE_S) -> Outcome:
    """Run argv in a new session, feeding each output line to on_line; kill its group on timeout or error."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "FLOR_PARENT_PID": str(os.getpid())}
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                            start_new_session=True)
    with _lock:
        _live[proc.pid] = proc
    expired = threading.Event()
    timer = None
    if timeout:
        def expire() -> None:
            expired.set()
            terminate_group(proc, grace)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            del tail[:-20]
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a logging hiccup must not kill the training run
                    pass
        code = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:  # interrupted (cancel, Ctrl-C, crash of the caller)
            terminate_group(proc, grace)
        else:
            _reap_leftovers(proc.pid)
        with _lock:
            _live.pop(proc.pid, None)
    return Outcome(returncode=code, seconds=round(time.perf_counter() - t0, 3), pid=proc.pid,
                   timed_out=expired.is_set(), tail=tuple(tail))


def terminate_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the child's process group, wait up to grace seconds, then SIGKILL it."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def kill_all(grace: float = GRACE_S) -> int:
    """Terminate every child still running in this process (flow cancelled or crashed); return how many."""
    with _lock:
        procs = list(_live.values())
    threads = [threading.Thread(target=terminate_group, args=(p, grace), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace * 2 + 1)
    return len(procs)


def live_count() -> int:
    """How many children are running."""
    with _lock:
        return len(_live)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_leftovers(pgid: int) -> None:
    # the script exited but left children in its session (e.g. DataLoader workers): end them
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return
    _signal_group(pgid, signal.SIGTERM)
