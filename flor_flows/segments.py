"""A training run as checkpoint-to-checkpoint segments: each a Prefect task whose retries resume.

Segment k runs the script until the outer loop has done (k+1)*N iterations (or, with `auto`, until
FLOR_SEGMENT_MINUTES of training), checkpoints and exits; the next segment, or a retry of a segment
whose process died, re-launches it with FLOR_RESUME so it continues from the last durable checkpoint
and appends to the same run. The run's metadata lists every attempt with its host, device and times.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flor_flows.training import ScriptFailed, failure_message, run_script
from flor_lib.errors import FlorError
from flor_lib.store import Store


def registers_checkpoints(script: str) -> bool:
    """Whether the script calls flor.checkpoints(...) (or MTK.checkpoints) anywhere."""
    try:
        tree = ast.parse(Path(script).read_text())
    except (OSError, SyntaxError) as exc:
        raise FlorError(f"cannot read {script}: {exc}") from exc
    return any(isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "checkpoints"
               for n in ast.walk(tree))


def check_segmentable(script: str, segments: str | int | None) -> None:
    """Refuse, before starting, to segment a run that registers no checkpoints."""
    if segments in (None, 0, "0", "") or registers_checkpoints(script):
        return
    raise FlorError(f"{Path(script).name} registers no state with flor.checkpoints(...): it cannot be split into "
                    "segments (add flor.checkpoints(model, optimizer) or drop --segments)")


def segment_env(segments: str | int, index: int) -> dict[str, str]:
    """Environment that makes the script stop at the end of segment index."""
    env = {"FLOR_SEGMENT_INDEX": str(index)}
    if str(segments) == "auto":
        env["FLOR_SEGMENT_SECONDS"] = str(float(os.environ.get("FLOR_SEGMENT_MINUTES", "30")) * 60)
    else:
        env["FLOR_SEGMENT_STOP"] = str((index + 1) * int(segments))
    return env


def _segment(script: str, args: list[str], name: str, projid: str, index: int, segments: str | int,
             store: str | None, cwd: str | None, timeout_s: float | None, sweep: str | None,
             state: dict[str, Any]) -> dict[str, Any]:
    st = Store(store)
    runid = state.get("runid")
    resume = runid if runid and st.run_meta(projid, runid) else None
    outcome = run_script(script, args, name=name, projid=projid, sweep=sweep, cwd=cwd, timeout_s=timeout_s,
                         store=store, resume=resume, extra_env=segment_env(segments, index))
    state["runid"] = outcome["runid"] or runid
    if outcome["returncode"] != 0:
        raise ScriptFailed(failure_message(script, outcome), outcome)
    meta = st.run_meta(projid, state["runid"]) or {}
    outcome["status"] = meta.get("status")
    return outcome


def segment_task(retries: int, retry_delay_s: float):
    """The segment task with the run's retry policy (a retry resumes from the last checkpoint)."""
    return task(_segment, name="segment", task_run_name="segment-{index}", retries=retries,
                retry_delay_seconds=retry_delay_s, cache_policy=NO_CACHE)


def run_segments(script: str, args: list[str], *, name: str, projid: str, segments: str | int, retries: int,
                 retry_delay_s: float = 1.0, store: str | None = None, cwd: str | None = None,
                 timeout_s: float | None = None, sweep: str | None = None, max_segments: int = 10_000
                 ) -> dict[str, Any]:
    """Run segment tasks one after another until the run completes; return the last outcome."""
    seg = segment_task(retries, retry_delay_s)
    state: dict[str, Any] = {}
    total = 0.0
    for index in range(max_segments):
        outcome = seg(script, args, name, projid, index, segments, store, cwd, timeout_s, sweep, state)
        total += outcome["seconds"]
        if outcome.get("status") != "suspended":
            outcome.update(seconds=total, segments=index + 1)
            return outcome
    raise FlorError(f"run {state.get('runid')} did not finish within {max_segments} segments")
