"""The `flor-sweep` flow: one training run per config, locally (thread-pool tasks) or on a work pool.

Locally each member is a task that launches the script as a child process (a task costs milliseconds,
a subflow seconds); at most `concurrency` run at once. With `pool`, each member is a `flor-run` flow
run of the deployment `flor-run/<pool>` (created on first use), so one worker per GPU takes one member
at a time. A progress artifact follows the members; a results table (args + final metrics per member)
ends the sweep. A failed member does not stop the others: the sweep runs every member, publishes the
table, and then ends Failed with "k of n members failed: ..." (its result data still holds every row).
"""

from __future__ import annotations

from pathlib import Path
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

from flor_flows import configs as cfgs
from flor_flows import fanout, plot, process, results, runtime, training
from flor_lib.run import truncation
from flor_lib.store import Store


@task(name="sweep_member", task_run_name="member-{name}", cache_policy=NO_CACHE)
def sweep_member(script: str, config: dict[str, Any], args: list[str], *, name: str, projid: str, sweep: str,
                 cwd: str | None = None, timeout_s: float | None = None, store: str | None = None,
                 segments: str | int | None = None, retries: int = 0) -> dict[str, Any]:
    """One member: run the script with the config's flags (in segments, if asked), then aggregate its records."""
    return training.run_and_aggregate(script, [*args, *cfgs.to_argv(config)], name=name, projid=projid,
                                      sweep=sweep, cwd=cwd, timeout_s=timeout_s, store=store, segments=segments,
                                      retries=retries)


def member_names(sweep_id: str, n: int) -> list[str]:
    """Run names of a sweep's members: SWEEP-01, SWEEP-02, ..."""
    width = max(2, len(str(n)))
    return [f"{sweep_id}-{i:0{width}d}" for i in range(1, n + 1)]


def _failed_row(name: str, config: dict[str, Any], error: str) -> dict[str, Any]:
    return {"runid": None, "name": name, "status": "failed", "args": dict(config), "metrics": {}, "error": error}


def _run_local(script: str, members: list[tuple[str, dict]], args: list[str], *, projid: str, sweep_id: str,
               concurrency: int, cwd: str | None, timeout_s: float | None, store: str | None,
               progress, segments: str | int | None = None, retries: int = 0) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    pending = list(members)
    inflight: dict[Any, tuple[str, dict]] = {}
    while pending or inflight:
        while pending and len(inflight) < max(1, concurrency):
            name, config = pending.pop(0)
            fut = sweep_member.submit(script, config, args, name=name, projid=projid, sweep=sweep_id, cwd=cwd,
                                      timeout_s=timeout_s, store=store, segments=segments, retries=retries)
            inflight[fut] = (name, config)
        fut = next(as_completed(list(inflight)))
        fut.wait()  # sets the final state from the thread; .state alone may read a stale RUNNING from the API
        name, config = inflight.pop(fut)
        state = fut.state
        if state.is_completed():
            rows[name] = fut.result()
        else:
            exc = state.result(raise_on_failure=False)
            rows[name] = exc.outcome if isinstance(exc, training.ScriptFailed) else \
                _failed_row(name, config, str(exc) or (state.message or "failed"))
        rows[name].setdefault("args", {}).update({k: v for k, v in config.items() if k not in rows[name]["args"]})
        progress(len(rows))
    return rows


def _remote_row(store: Store, projid: str, sweep_id: str, name: str, config: dict, state: Any) -> dict:
    n, meta = 1, None
    while True:  # the member recorded under name, or name-2, ... when the name was taken
        runid = name if n == 1 else f"{name}-{n}"
        candidate = store.run_meta(projid, runid)
        if candidate is None:
            break
        if candidate.get("sweep") == sweep_id:
            meta = candidate
            break
        n += 1
    if meta is None:
        return _failed_row(name, config, state.message or f"flow run ended {state.type.value}")
    metrics = results.final_metrics(results.run_records(store, projid, meta["runid"]), truncation(meta))
    row = results.summary(meta, metrics)
    row["name"] = name
    if state.type.value != "COMPLETED":
        row["status"] = "failed" if row["status"] in ("completed", "running") else row["status"]
        row["error"] = state.message or state.type.value.lower()
    return row


def _run_remote(script: str, members: list[tuple[str, dict]], args: list[str], *, pool: str, projid: str,
                sweep_id: str, cwd: str | None, timeout_s: float | None, store: str, progress,
                segments: str | int | None = None, retries: int = 0) -> dict[str, dict]:
    deployment = fanout.ensure_deployment("flor-run", pool)
    if not fanout.online_workers(pool):
        runtime.run_logger().warning("no worker is online on pool %s: members wait until one starts "
                                     "(flor worker --gpu 0 --pool %s)", pool, pool)
    ids: dict[UUID, tuple[str, dict]] = {}
    try:
        for name, config in members:
            params = {"script": script, "args": [*args, *cfgs.to_argv(config)], "name": name, "sweep": sweep_id,
                      "cwd": cwd, "timeout_s": timeout_s, "store": store}
            if segments:  # the member's worker runs its segments, retrying each from the last checkpoint
                params.update(segments=segments, retries=retries)
            ids[fanout.submit(deployment, params, name=name, env={"FLOR_STORE": store},
                              tags=["flor", f"sweep-{sweep_id}"])] = (name, config)
        st = Store(store)
        rows: dict[str, dict] = {}

        def done(run_id: UUID, state: Any) -> None:
            name, config = ids[run_id]
            rows[name] = _remote_row(st, projid, sweep_id, name, config, state)
            progress(len(rows))

        fanout.wait_all(list(ids), done)
        return rows
    except BaseException:
        fanout.cancel(list(ids))
        raise


def numeric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Names whose final value is a number (not a bool) in some member, in first-logged order."""
    names: dict[str, None] = {}
    for row in rows:
        for k, v in (row.get("metrics") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                names.setdefault(k)
    return list(names)


def _attach_plot(rows: list[dict[str, Any]], sweep_id: str, script: str, projid: str, store: Store) -> None:
    keys = [(r.get("projid") or projid, r["runid"]) for r in rows if r.get("runid")]
    plot.flow_artifact(numeric_names(rows), keys, key=runtime.artifact_key("flor-sweep", sweep_id, "plot"),
                       title=f"sweep {sweep_id} of {script}", store=store)


def _sweep_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return params.get("name") or f"sweep-{Path(params.get('script') or 'train').stem}"


@flow(name="flor-sweep", flow_run_name=_sweep_run_name, task_runner=ThreadPoolTaskRunner(max_workers=64),
      on_cancellation=[lambda *a: process.kill_all()], on_crashed=[lambda *a: process.kill_all()])
def sweep(script: str, configs: list[dict[str, Any]], args: list[str] | None = None, name: str | None = None,
          pool: str | None = None, concurrency: int = 1, cwd: str | None = None, timeout_s: float | None = None,
          store: str | None = None, segments: str | int | None = None, retries: int = 0) -> list[dict[str, Any]]:
    """Run the script once per config (flor sweep); publish progress and a results table.

    With segments, each member runs as checkpoint-to-checkpoint segments with `retries` per segment.
    """
    script = str(Path(script).expanduser().resolve())
    configs = cfgs.normalize(configs)
    sweep_id = name or training.new_name("sweep")
    store = store or training.environment_store()
    snap = training.snapshot_code(script)
    members = list(zip(member_names(sweep_id, len(configs)), configs, strict=True))
    log = runtime.run_logger()
    log.info("sweep %s: %d members of %s%s", sweep_id, len(members), Path(script).name,
             f" on pool {pool}" if pool else f", {concurrency} at a time")
    progress_id = create_progress_artifact(
        0.0, key=runtime.artifact_key("flor-sweep", sweep_id, "progress"),
        description=f"sweep {sweep_id}: members finished")

    def progress(done: int) -> None:
        update_progress_artifact(progress_id, 100.0 * done / len(members))

    try:
        common = {"projid": snap["projid"], "sweep_id": sweep_id, "cwd": cwd, "timeout_s": timeout_s,
                  "store": store, "progress": progress, "segments": segments, "retries": retries}
        if pool:
            rows = _run_remote(script, members, list(args or []), pool=pool, **common)
        else:
            rows = _run_local(script, members, list(args or []), concurrency=concurrency, **common)
    except BaseException:
        process.kill_all()
        raise
    ordered = [dict(rows[n], name=n) for n, _ in members]
    table = [{"member": r["name"], **results.flat_row(r)} for r in ordered]
    create_table_artifact(table, key=runtime.artifact_key("flor-sweep", sweep_id, "results"),
                          description=f"sweep {sweep_id} of {Path(script).name}: args and final metrics")
    _attach_plot(ordered, sweep_id, Path(script).name, snap["projid"], Store(store))
    failed = [r for r in ordered if r.get("status") != "completed"]
    if failed:
        lines = "\n".join(f"- `{r['name']}`: {r.get('error') or r.get('status')}" for r in failed)
        create_markdown_artifact(f"## {len(failed)} of {len(ordered)} members failed\n\n{lines}\n",
                                 key=runtime.artifact_key("flor-sweep", sweep_id, "failures"))
        return Failed(message=f"{len(failed)} of {len(ordered)} members failed: "
                      + "; ".join(f"{r['name']}: {r.get('error') or r.get('status')}" for r in failed)[:800],
                      data=ordered)
    return ordered


def sweep_rows(state: Any) -> list[dict[str, Any]]:
    """The member rows of a finished sweep flow run (also when it ended Failed because of a member)."""
    return results.flow_rows(state, "sweep")
