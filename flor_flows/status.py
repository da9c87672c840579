"""Sweep progress from run metadata, like FlorDB's `select done, count(*) from jobs` (no Prefect import)."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

from flor_lib.run_lifecycle import pid_alive
from flor_lib.store import Store

STATES = ("running", "completed", "failed", "interrupted")




def effective_status(meta: dict) -> str:
    """The run's status, with 'running' runs whose process died on this host shown as 'interrupted'."""
    status = meta.get("status") or "unknown"
    if status == "running":
        last = (meta.get("attempts") or [{}])[-1]
        if last.get("host") == socket.gethostname() and not pid_alive(last.get("pid")):
            return "interrupted"
    return status


def sweeps(store: Store | None = None) -> list[dict[str, Any]]:
    """One row per sweep: its id, member counts by status and in total, and when it started."""
    store = store or Store()
    groups: dict[str, list[dict]] = {}
    for meta in store.runs():
        if meta.get("sweep"):
            groups.setdefault(meta["sweep"], []).append(meta)
    rows = []
    for sweep_id, metas in groups.items():
        counts = Counter(effective_status(m) for m in metas)
        row: dict[str, Any] = {"sweep": sweep_id, "started": min(m.get("tstamp") or "" for m in metas)}
        row.update({s: counts.get(s, 0) for s in STATES})
        row.update({s: n for s, n in counts.items() if s not in STATES})
        row["total"] = len(metas)
        rows.append(row)
    return sorted(rows, key=lambda r: r["started"])


def members(sweep_id: str, store: Store | None = None) -> list[dict[str, Any]]:
    """The runs of one sweep: runid, status, device, args (oldest first)."""
    store = store or Store()
    out = []
    for meta in store.runs():
        if meta.get("sweep") != sweep_id:
            continue
        out.append({"runid": meta.get("runid"), "status": effective_status(meta),
                    "device": meta.get("cuda_visible_devices"), "host": meta.get("host"),
                    "tstamp": meta.get("tstamp"), "args": meta.get("args") or {}})
    return out


def counts(sweep_id: str | None = None, store: Store | None = None) -> dict[str, int]:
    """Members by status: of one sweep, or of every sweep together."""
    store = store or Store()
    metas = [m for m in store.runs() if m.get("sweep") and (sweep_id is None or m.get("sweep") == sweep_id)]
    return dict(Counter(effective_status(m) for m in metas))
