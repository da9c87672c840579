"""`flor worker`: a Prefect process worker pinned to one GPU (or none), one flow run at a time.

Prefect has no GPU scheduling for process pools; the convention is one worker per GPU, started with
CUDA_VISIBLE_DEVICES naming that GPU. The worker inherits it and passes it to every flow run it starts,
and so to the training processes. A Prefect worker needs two signals to stop (the first one only asks
it to wind down, and it keeps polling), so flor forwards one Ctrl-C/TERM as SIGINT, then SIGINT again
and finally SIGKILL to its process group after grace periods.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from flor_lib.errors import FlorError

DEFAULT_GPU_POOL = "flor-gpu"
DEFAULT_CPU_POOL = "flor-cpu"


def map_gpu(gpu: int, mask: str | None) -> str:
    """GPU index gpu as seen through an existing CUDA_VISIBLE_DEVICES mask ("2,3" and 1 -> "3")."""
    if gpu < 0:
        raise FlorError(f"--gpu {gpu}: GPU indices start at 0")
    if mask is None or mask.strip() == "":
        if mask is not None:
            raise FlorError("CUDA_VISIBLE_DEVICES is empty (no GPU visible): unset it or use --cpu")
        return str(gpu)
    visible = [d.strip() for d in mask.split(",") if d.strip()]
    if gpu >= len(visible):
        raise FlorError(f"--gpu {gpu}: CUDA_VISIBLE_DEVICES={mask} makes only {len(visible)} GPU(s) visible "
                        f"(indices 0..{len(visible) - 1})")
    return visible[gpu]


def worker_env(gpu: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: CUDA_VISIBLE_DEVICES pinned to the GPU, hidden for a CPU worker."""
    env = dict(os.environ if base is None else base)
    if gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = map_gpu(gpu, env.get("CUDA_VISIBLE_DEVICES"))
    env["FLOR_WORKER_GPU"] = "" if gpu is None else str(gpu)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def prefect_executable() -> list[str]:
    """How to call the prefect CLI of this environment."""
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def worker_command(pool: str, name: str, limit: int = 1) -> list[str]:
    """The `prefect worker start` command line for one pinned worker."""
    return [*prefect_executable(), "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit),
            "--name", name]


def default_name(gpu: int | None, env: dict[str, str]) -> str:
    """A worker name unique per host and device."""
    host = socket.gethostname().split(".")[0]
    if gpu is None:
        return f"flor-{host}-cpu-{os.getpid()}"
    return f"flor-{host}-gpu{env['CUDA_VISIBLE_DEVICES'].replace(',', '_')}"


class Stopper:
    """Turns one stop request into SIGINT, a second SIGINT after grace seconds, then SIGKILL of the group."""

    def __init__(self, proc: subprocess.Popen, grace: float) -> None:
        self.proc, self.grace = proc, grace
        self.requests = 0
        self._thread: threading.Thread | None = None

    def request(self, *_: object) -> None:
        """Handle a stop request (signal handler): escalate on a repeated request."""
        self.requests += 1
        if self.requests == 1:
            self._send(signal.SIGINT)
            self._thread = threading.Thread(target=self._escalate, daemon=True)
            self._thread.start()
        else:
            self._kill()

    def _escalate(self) -> None:
        try:
            self.proc.wait(timeout=self.grace)
            return
        except subprocess.TimeoutExpired:
            self._send(signal.SIGINT)
        try:
            self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self._kill()

    def _send(self, sig: int) -> None:
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_worker(gpu: int | None = None, pool: str | None = None, name: str | None = None, limit: int = 1,
               grace: float = 5.0, create_pool: bool = True) -> int:
    """Start a pinned Prefect process worker in the foreground; return its exit code."""
    pool = pool or (DEFAULT_GPU_POOL if gpu is not None else DEFAULT_CPU_POOL)
    env = worker_env(gpu)
    name = name or default_name(gpu, env)
    env["FLOR_WORKER_NAME"] = name  # recorded per attempt by the training processes this worker starts
    if create_pool:
        from flor_flows import fanout, runtime

        runtime.prepare_env()
        if fanout.ensure_pool(pool):
            print(f"flor: created work pool {pool} (type process)", file=sys.stderr)
    device = "no GPU" if gpu is None else f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
    print(f"flor: worker {name} on pool {pool}, {device}, {limit} run(s) at a time", file=sys.stderr)
    proc = subprocess.Popen(worker_command(pool, name, limit), env=env, start_new_session=True)
    stopper = Stopper(proc, grace)
    previous = {s: signal.signal(s, stopper.request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait()
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            stopper._kill()
