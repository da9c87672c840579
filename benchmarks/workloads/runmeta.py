"""Reading flor's run metadata (FLOR_STORE/runs/<projid>/<runid>.json) for checkpoint figures."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path


def load(store: Path, prefix: str) -> list[dict]:
    """Metadata of every run in a local store whose runid starts with prefix."""
    out = []
    for path in sorted((store / "runs").glob(f"*/{prefix}*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def duration_s(meta: dict) -> float:
    """Seconds from the run's start (its first flor call) to its end."""
    start = (meta.get("attempts") or [{}])[0].get("start") or meta.get("tstamp")
    end = meta.get("end")
    if not (start and end):
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def checkpoint_stats(meta: dict) -> dict[str, float]:
    """Count, size and cost of a run's checkpoints, absolute and as a share of the run."""
    cks = meta.get("checkpoints") or []
    dur = duration_s(meta) or float("nan")
    copy = sum(c.get("copy_s", 0.0) for c in cks)
    save = sum(c.get("save_s", 0.0) for c in cks)
    n = len(cks)
    return {
        "count": n,
        "outer": meta.get("outer_iters") or 0,
        "mb": (sum(c.get("bytes", 0) for c in cks) / n / 1e6) if n else 0.0,
        "cost_pct": 100 * (copy + save) / dur,
        "blocked_s": copy,
        "blocked_pct": 100 * copy / dur,
        "save_each_s": save / n if n else 0.0,
        "skipped": meta.get("skipped_checkpoints") or 0,
        "duration_s": dur,
    }
