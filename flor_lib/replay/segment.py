"""A replay segment: one process re-executing part of one old run, as a JSON-able value."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Segment:
    """Which outer iterations of which run a replay process executes, and what it records.

    The process yields outer iterations [start, stop); iterations below `record_from` only
    rebuild state (nothing is recorded); `restore` lists the iterations whose nested loop is
    replaced by a checkpoint restore; `final` segments run the code after the loops.
    """

    replay_id: str
    key: str
    projid: str
    runid: str
    vid: str
    names: list[str]
    start: int
    stop: int
    record_from: int
    restore: list[int]
    final: bool
    first: bool
    nested: bool  # the script has a nested flor.loop (checkpoints sit at its end)
    patched_source: str
    meta: dict = field(default_factory=dict)
    store_root: str = ""
    estimate_s: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-serializable copy (for Prefect task parameters and the child process)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Segment:
        """Rebuild a Segment from to_dict's output."""
        return cls(**data)

    def dumps(self) -> str:
        """JSON text of the segment."""
        return json.dumps(self.to_dict(), default=str)

    def describe(self) -> str:
        """One line for plans and logs."""
        skip = len([i for i in self.restore if self.start <= i < self.stop])
        return (f"{self.runid} [{self.vid[:8]}] iterations {self.start}..{self.stop - 1}: "
                f"{skip} restored, {self.stop - self.start - skip} re-executed"
                + (", then the code after the loops" if self.final else "")
                + f" (~{self.estimate_s:.1f}s)")
