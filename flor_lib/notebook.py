"""The notebook face of flor's flows, in FlorDB's spellings: flor.cross_prod, flor.batch, flor.replay.

These import flor_flows (and so Prefect) inside their bodies only, so `import flor_lib` stays cheap for
training scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cross_prod(**lists: Iterable[Any]) -> Any:
    """Every combination of the value lists, as a DataFrame with one config per row (FlorDB's cross_prod)."""
    import pandas as pd

    from flor_flows.configs import cross_prod as combos

    return pd.DataFrame(combos(**lists), columns=list(lists))


def batch(configs: Any, script: str = "train.py", *, args: Sequence[str] = (), pool: str | None = None,
          concurrency: int = 1, name: str | None = None, timeout_s: float | None = None) -> Any:
    """Run a sweep flow over configs (rows of cross_prod, or dicts); return one row per member.

    Locally at most `concurrency` members run at once; with pool="flor-gpu" every member goes to the
    workers of that pool (start them with `python -m flor_lib serve 0` or `flor worker --gpu 0`). A
    failed member does not stop the others: its row says why, and a warning names it.
    """
    import warnings

    import pandas as pd

    from flor_flows import runtime
    from flor_flows.configs import normalize
    from flor_flows.results import flat_row

    runtime.prepare_env()
    from flor_flows.sweep import sweep, sweep_rows

    state = runtime.call_flow(sweep, script=script, configs=normalize(configs), args=list(args), name=name,
                              pool=pool, concurrency=concurrency, timeout_s=timeout_s)
    rows = sweep_rows(state)
    if not state.is_completed():
        warnings.warn(state.message or "some members failed", stacklevel=2)
    return pd.DataFrame([{"member": r.get("name"), **flat_row(r)} for r in rows])


def replay(names: str | Sequence[str], where: str | None = None, *, workers: int = 2, pool: str | None = None,
           force: bool = False, script: str | None = None, dry_run: bool = False) -> Any:
    """Backfill logged names into the runs matching where, as a replay flow; return a summary per run."""
    names = [names] if isinstance(names, str) else list(names)
    from flor_lib.replay.engine import plan_replay

    plan = plan_replay(names, where=where, force=force, workers=workers, script=script)
    if dry_run or not plan.segments:
        print(plan.describe())
        return plan
    import warnings

    import pandas as pd

    from flor_flows import runtime

    runtime.prepare_env()
    from flor_flows.replay import hand_over, replay_flow, replay_rows

    state = runtime.call_flow(replay_flow, names=names, where=where, workers=workers, pool=pool, force=force,
                              script=script, replay_id=hand_over(plan))
    rows = replay_rows(state)
    if not state.is_completed():
        warnings.warn(state.message or "some segments failed", stacklevel=2)
    return pd.DataFrame(rows)
