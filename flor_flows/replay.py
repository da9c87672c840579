"""The `flor-replay` flow: select + plan -> one task per segment (or a pool run each) -> aggregate.

The engine (flor_lib.replay.engine) carries new flor.log statements into each old version, plans the
least work, and runs a segment as a child process in a worktree of that version. Here each segment is
a Prefect task (milliseconds of overhead) in a thread pool of `workers`, or, with `pool`, a run of the
deployment `flor-replay-segment/<pool>` whose result lands in the store at
replays/<replay_id>/segments/<key>.json for this flow to collect. The flow ends Failed when any segment
failed, after landing every run whose segments all succeeded.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flor_flows import fanout, plot, process, results, runtime
from flor_lib.replay import engine
from flor_lib.replay.segment import Segment
from flor_lib.store import Store

_PLANNED: dict[str, engine.ReplayPlan] = {}  # plans made by the caller in this process, by replay_id


def hand_over(p: engine.ReplayPlan) -> str:
    """Give a plan made before the flow (so user errors surface before Prefect starts) to replay_flow."""
    _PLANNED[p.replay_id] = p
    return p.replay_id


def result_path(store: Store, replay_id: str, key: str) -> str:
    """Where a pool-run segment leaves its result for the replay flow."""
    return store.path("replays", replay_id, "segments", f"{key}.json")


@task(name="plan_replay", cache_policy=NO_CACHE)
def plan(names: list[str], where: str | None = None, force: bool = False, workers: int = 2,
         script: str | None = None, store: str | None = None, replay_id: str | None = None) -> engine.ReplayPlan:
    """Select the runs, transplant the new statements into their versions, and split them into segments."""
    p = _PLANNED.pop(replay_id, None) if replay_id else None
    if p is None:
        p = engine.plan_replay(names, where=where, force=force, workers=workers, store=Store(store), script=script)
    runtime.run_logger().info("%s", p.describe())
    return p


@task(name="replay_segment", task_run_name="segment-{key}", cache_policy=NO_CACHE)
def segment_task(segment: dict[str, Any], key: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Re-execute one segment of an old run in a child process (output into this task's logs)."""
    return engine.run_segment(Segment.from_dict(segment), on_output=runtime.line_logger(), timeout=timeout_s)


def _segment_run_name() -> str:
    from prefect.runtime import flow_run

    return f"replay-{flow_run.parameters.get('key')}"


@flow(name="flor-replay-segment", flow_run_name=_segment_run_name, on_cancellation=[lambda *a: process.kill_all()],
      on_crashed=[lambda *a: process.kill_all()])
def replay_segment(segment: dict[str, Any], key: str, timeout_s: float | None = None) -> dict[str, Any]:
    """One segment as its own flow run (fanned out to a pool); its result is written to the store."""
    result = segment_task(segment, key, timeout_s)
    st = Store(segment.get("store_root") or None)
    st.write_json(result_path(st, segment["replay_id"], key), result)
    return result


def _replay_run_name() -> str:
    from prefect.runtime import flow_run

    return "replay-" + "-".join(flow_run.parameters.get("names") or [])


def _local(segments: list[Segment], workers: int, timeout_s: float | None, progress) -> tuple[list, list]:
    results, errors = [], []
    pending, inflight = list(segments), {}
    while pending or inflight:
        while pending and len(inflight) < max(1, workers):
            seg = pending.pop(0)
            inflight[segment_task.submit(seg.to_dict(), seg.key, timeout_s)] = seg
        fut = next(as_completed(list(inflight)))
        fut.wait()  # sets the final state from the thread; .state alone may read a stale RUNNING from the API
        seg = inflight.pop(fut)
        if fut.state.is_completed():
            results.append(fut.result())
        else:
            errors.append(f"{seg.key}: {fut.state.result(raise_on_failure=False)}")
        progress(len(results) + len(errors))
    return results, errors


def _remote(segments: list[Segment], pool: str, timeout_s: float | None, store: Store, progress) -> tuple[list, list]:
    deployment = fanout.ensure_deployment("flor-replay-segment", pool)
    if not fanout.online_workers(pool):
        runtime.run_logger().warning("no worker is online on pool %s: segments wait until one starts", pool)
    ids: dict[UUID, Segment] = {}
    results, errors = [], []

    def done(run_id: UUID, state: Any) -> None:
        seg = ids[run_id]
        if state.type.value == "COMPLETED":
            data = store.read_json(result_path(store, seg.replay_id, seg.key))
            if data is not None:
                results.append(data)
            else:
                errors.append(f"{seg.key}: finished but left no result in the store")
        else:
            errors.append(f"{seg.key}: {state.message or state.type.value.lower()}")
        progress(len(results) + len(errors))

    try:
        for seg in segments:
            ids[fanout.submit(deployment, {"segment": json.loads(seg.dumps()), "key": seg.key,
                                           "timeout_s": timeout_s},
                              name=f"replay-{seg.key}", env={"FLOR_STORE": store.root},
                              tags=["flor", f"replay-{seg.replay_id}"])] = seg
        fanout.wait_all(list(ids), done)
    except BaseException:
        fanout.cancel(list(ids))
        raise
    return results, errors


@flow(name="flor-replay", flow_run_name=_replay_run_name, task_runner=ThreadPoolTaskRunner(max_workers=64),
      on_cancellation=[lambda *a: process.kill_all()], on_crashed=[lambda *a: process.kill_all()])
def replay_flow(names: list[str], where: str | None = None, workers: int = 2, pool: str | None = None,
                force: bool = False, script: str | None = None, timeout_s: float | None = None,
                store: str | None = None, replay_id: str | None = None) -> list[dict[str, Any]]:
    """Backfill logged names into past runs (flor replay); publish progress and a per-run summary.

    replay_id names a plan the caller made in this process (hand_over); otherwise the flow plans.
    """
    from flor_flows.training import environment_store

    st = Store(store or environment_store())
    p = plan(list(names), where, force, workers, script, st.root, replay_id)
    if not p.segments:
        rows = engine.finish_replay(p, [], store=st).to_dict(orient="records") if p.skipped else []
        create_markdown_artifact(f"Nothing to replay.\n\n```\n{p.describe()}\n```",
                                 key=runtime.artifact_key("flor-replay", p.replay_id, "summary"))
        return rows
    progress_id = create_progress_artifact(0.0, key=runtime.artifact_key("flor-replay", p.replay_id, "progress"),
                                           description=f"replay {p.replay_id}: segments finished")

    def progress(done: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / len(p.segments))

    try:
        if pool:
            results, errors = _remote(p.segments, pool, timeout_s, st, progress)
        else:
            results, errors = _local(p.segments, workers, timeout_s, progress)
    except BaseException:
        process.kill_all()
        raise
    summary = engine.finish_replay(p, results, store=st)
    rows = json.loads(summary.to_json(orient="records"))
    create_table_artifact(rows, key=runtime.artifact_key("flor-replay", p.replay_id, "summary"),
                          description=f"replay {p.replay_id} of {', '.join(p.names)}: per run, what was "
                                      "restored, re-executed and checked")
    landed = {r["runid"] for r in rows if r.get("status") == "backfilled"}
    plot.flow_artifact(p.names, list(dict.fromkeys((s.projid, s.runid) for s in p.segments if s.runid in landed)),
                       key=runtime.artifact_key("flor-replay", p.replay_id, "plot"), store=st,
                       title=f"replay {p.replay_id}: backfilled {', '.join(p.names)}")
    if errors:
        create_markdown_artifact("## Failed segments\n\n" + "\n".join(f"- {e[:500]}" for e in errors),
                                 key=runtime.artifact_key("flor-replay", p.replay_id, "failures"))
        return Failed(message=f"{len(errors)} of {len(p.segments)} segments failed: " + "; ".join(errors)[:800],
                      data=rows)
    return rows


def replay_rows(state: Any) -> list[dict[str, Any]]:
    """The per-run summary of a finished replay flow run (also when it ended Failed)."""
    return results.flow_rows(state, "replay")
