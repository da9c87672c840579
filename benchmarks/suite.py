"""What every benchmark gets (Ctx) and gives back (Row)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PENDING = "pending"


@dataclass
class Row:
    """One line of the results table; every cell is already formatted text."""

    section: str
    measure: str
    flor: str = "-"
    base: str = "-"
    flordb: str = "-"
    flor_vs: str = "-"
    flordb_vs: str = "-"
    target: str = ""
    failed: bool = False  # a flor measurement that errored (the suite exits non-zero)


@dataclass
class Ctx:
    """Settings and shared state of one suite invocation."""

    quick: bool
    reps: int
    work: Path  # scratch space for repos and stores (benchmarks/.work/run)
    out: Path  # where RESULTS.md and plots go
    flordb_python: Path | None = None
    flordb_reason: str = "not set up"
    data: dict = field(default_factory=dict)  # raw numbers for plots
    notes: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def flordb(self) -> bool:
        return self.flordb_python is not None

    def na(self, what: str = "") -> str:
        """The FlorDB cell when FlorDB could not be measured."""
        return f"n/a ({what or self.flordb_reason})"

    def say(self, text: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)
