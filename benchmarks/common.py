"""Shared pieces of the benchmark suite: child processes with CPU accounting, samples, scratch repos."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
WORKLOADS = BENCH / "workloads"
STUB = WORKLOADS / "stub"  # holds a pass-through `flor_lib` package for the plain-script baseline
TUTORIAL = ROOT / "examples" / "tutorial" / "train.py"
PYTHON = sys.executable  # the project's venv (the one running this driver)

GIT_ID = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@flor.invalid",
          "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@flor.invalid"}


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why (one or a few lines)."""


@dataclass
class Child:
    """One finished child process: wall and CPU seconds (user+sys of it and its reaped descendants)."""

    wall: float
    cpu: float
    rc: int
    out: str
    err: str


def run_child(cmd: Sequence[str], cwd: Path | str | None = None, env: dict | None = None,
              timeout: float = 600, stdin: str | None = None, check: bool = True, mem_gb: float | None = None) -> Child:
    """Run a command to completion; CPU time comes from RUSAGE_CHILDREN deltas (children run one at a time).

    mem_gb caps the child's address space, so a runaway allocation fails in it (MemoryError) instead of
    pushing a shared machine into the OOM killer.
    """
    def cap() -> None:
        limit = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=cap if mem_gb else None)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}") from exc
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    child = Child(wall, cpu, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise BenchError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    return child


@dataclass
class Sample:
    """Repeated measurements of one quantity; printed as median (min-max)."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def __bool__(self) -> bool:
        return bool(self.values)


def ratios(a: Sample, b: Sample) -> Sample:
    """Pairwise a[i]/b[i] of interleaved samples (pair i ran back to back)."""
    return Sample([x / y for x, y in zip(a.values, b.values, strict=False) if y])


def interleave(variants: dict[str, Callable[[int], dict[str, float]]], reps: int) -> dict[str, dict[str, Sample]]:
    """Run A B C A B C ... reps times; each call returns named measurements, gathered per variant."""
    out: dict[str, dict[str, Sample]] = {name: {} for name in variants}
    for rep in range(reps):
        for name, fn in variants.items():
            for key, value in fn(rep).items():
                out[name].setdefault(key, Sample()).add(value)
    return out


def base_env(**extra: str) -> dict:
    """The environment for measured children: one BLAS/torch thread each, no user store, fixed git identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOR_", "PREFECT_"))}
    env.pop("PYTHONPATH", None)
    env.update(GIT_ID)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "FLOR_FLUSH_SECONDS": "2"})
    env.update(extra)
    return env


def git(repo: Path, *args: str) -> str:
    """Run git in repo with the bench identity."""
    proc = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ID}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"git {' '.join(args)} in {repo}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def scratch_repo(path: Path, files: dict[str, str], ignore: Sequence[str] = ()) -> Path:
    """A fresh git repository at path holding files (name -> text), committed on branch main."""
    if path.exists():
        remove_tree(path)
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    (path / ".gitignore").write_text("\n".join(["__pycache__/", "*.pth", *ignore]) + "\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "bench workload")
    return path


def commit_all(repo: Path, message: str) -> None:
    """Commit every change in a scratch repo."""
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def remove_tree(path: Path) -> None:
    """Remove a scratch tree (worktrees registered by replays included)."""
    shutil.rmtree(path, ignore_errors=True)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                          if x.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "?"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    torch_version = subprocess.run([PYTHON, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                                   capture_output=True, text=True).stdout.strip()
    return {"cores": str(os.cpu_count()), "cpu": model, "memory": mem, "os": platform.platform(terse=True),
            "python": platform.python_version(), "torch": torch_version or "?", "load average (start)": load}


def fmt(v: float | None, unit: str = "") -> str:
    """A number with 3 significant digits and a unit."""
    if v is None:
        return "-"
    a = abs(v)
    if float(v).is_integer() and a < 1e6:
        s = str(int(v))
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    elif a >= 0.01:
        s = f"{v:.3f}"
    else:
        s = f"{v:.2g}"
    return f"{s} {unit}".strip()


def fmt_sample(s: Sample | None, unit: str = "", scale: float = 1.0) -> str:
    """median (min-max) of a sample, or '-' when empty."""
    if not s:
        return "-"
    if len(s.values) == 1:
        return fmt(s.median * scale, unit)
    return f"{fmt(s.median * scale, unit)} ({fmt(s.lo * scale)}-{fmt(s.hi * scale)})"


def fmt_pct(s: Sample | None) -> str:
    """A ratio sample as a signed percentage change: +1.2% (-0.5..+3.0)."""
    if not s:
        return "-"
    med = f"{(s.median - 1) * 100:+.1f}%"
    if len(s.values) == 1:
        return med
    return f"{med} ({(s.lo - 1) * 100:+.1f}..{(s.hi - 1) * 100:+.1f})"


def fmt_ratio(s: Sample | None, suffix: str = "x") -> str:
    """A ratio sample as 3.2x (2.9-3.5)."""
    if not s:
        return "-"
    if len(s.values) == 1:
        return f"{fmt(s.median)}{suffix}"
    return f"{fmt(s.median)}{suffix} ({fmt(s.lo)}-{fmt(s.hi)})"
