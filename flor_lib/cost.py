"""What flor itself costs a run, in CPU seconds per part, saved in the run's metadata as `cost`.

Each part is measured where it runs (thread CPU time, plus the CPU of git child processes), so the
figure does not depend on how noisy the machine is: start (flor's imports and run set-up), snapshot
(checkpoints taken on the training thread), checkpoint_writer, record_flush, code_snapshot (git),
exit (flush, metadata, compaction). Per-call costs of flor.log and flor.loop are not timed (that
would cost more than they do); `iterations` and `records` count them.
"""

from __future__ import annotations

import resource
import threading
import time
from collections import defaultdict
from contextlib import contextmanager


def children_cpu() -> float:
    """CPU seconds of this process's finished children (git)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Cost:
    """CPU seconds per part, added to from any thread."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, part: str, seconds: float) -> None:
        """Add seconds to a part."""
        with self._lock:
            self.parts[part] += seconds

    @contextmanager
    def measure(self, part: str, children: bool = False):
        """Add the CPU time of this thread (and of children that end meanwhile) while the block runs."""
        cpu, kids = time.thread_time(), children_cpu() if children else 0.0
        try:
            yield
        finally:
            self.add(part, time.thread_time() - cpu + (children_cpu() - kids if children else 0.0))

    def summary(self, **counts: int) -> dict:
        """The parts in seconds (rounded), their total, and the given counts."""
        with self._lock:
            parts = {k: round(v, 6) for k, v in self.parts.items()}
        return {**parts, "total_s": round(sum(parts.values()), 6), **counts}
