"""Segments of one run spread over a work pool: each a `flor-run-segment` flow run on any worker.

The coordinator (the `flor-run` flow, where the user launched it) submits segment k as a run of the
`flor-run-segment/<pool>` deployment and polls it. Whichever worker picks it up resumes the run from
the last durable checkpoint in the shared store (S3 or a shared disk). A segment run that ends in any
state but Completed is re-submitted (up to `retries` times), and so is a *lost* one: a run still
Pending/Running whose worker stopped heartbeating (missing, OFFLINE, or no new heartbeat for three of
its intervals) and whose own flow-run heartbeats (`prefect.flow-run.heartbeat`, every 30 s, enabled for
segment runs only) stopped for `lost_after_s`. Both must be silent: a worker restarted alone leaves its
flow run going, and that run must not get a twin. A lost run is marked Crashed, which is what Prefect's
zombie-flow automation would do, only sooner and without needing that automation on the server.
"""

from __future__ import annotations

import os
import time
from typing import Any
from uuid import UUID

from prefect import flow

from flor_flows import fanout, process, runtime
from flor_flows.segments import segment_env
from flor_flows.training import ScriptFailed, environment_store, failure_message, run_script
from flor_lib.errors import FlorError
from flor_lib.store import Store

SEGMENT_FLOW = "flor-run-segment"
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval (flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
SEGMENT_RUN_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
LIVE = {"PENDING", "RUNNING"}


def _worker_name() -> str | None:
    """The worker running this flow run: flor worker's env, else the label Prefect's worker gives it."""
    if os.environ.get("FLOR_WORKER_NAME"):
        return os.environ["FLOR_WORKER_NAME"]
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    labels = getattr(getattr(ctx, "flow_run", None), "labels", None) or {}
    return labels.get("prefect.worker.name")


def _own_pool() -> str | None:
    """The work pool of the worker running this process's flow run, if a worker runs it."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return (getattr(getattr(ctx, "flow_run", None), "labels", None) or {}).get("prefect.work-pool.name")


def _label(**labels: Any) -> None:
    """Publish facts about this segment run as flow-run labels (the coordinator reads them back)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(flow_run.id), {f"flor.{k}": str(v) for k, v in labels.items()})
    except Exception as exc:  # the coordinator then falls back on the store (runid, status) and the state
        runtime.run_logger().warning("could not label the flow run: %s", exc)


@flow(name=SEGMENT_FLOW, on_cancellation=[lambda *a: process.kill_all()],
      on_crashed=[lambda *a: process.kill_all()])
def training_segment(script: str, args: list[str], name: str, projid: str, index: int, segments: str | int,
                     store: str | None = None, cwd: str | None = None, timeout_s: float | None = None,
                     sweep: str | None = None) -> dict[str, Any]:
    """Run one segment of a run on this worker, resuming it from its last checkpoint when it exists."""
    st = Store(store)
    resume = name if st.run_meta(projid, name) else None
    env = segment_env(segments, index)
    worker = _worker_name()
    if worker:
        env["FLOR_WORKER_NAME"] = worker
    outcome = run_script(script, args, name=name, projid=projid, sweep=sweep, cwd=cwd, timeout_s=timeout_s,
                         store=store, resume=resume, extra_env=env)
    meta = st.run_meta(projid, outcome["runid"]) if outcome["runid"] else None
    outcome.update(status=(meta or {}).get("status"), worker=worker)
    last = next((ln.strip() for ln in reversed(outcome["tail"]) if ln.strip()), "")
    _label(runid=outcome["runid"], status=outcome["status"], returncode=outcome["returncode"], last=last[:200])
    if outcome["returncode"] != 0:
        raise ScriptFailed(failure_message(script, outcome), outcome)
    return outcome


class LostRuns:
    """Decides whether a live segment run is lost, timing silences on this process's own clock."""

    def __init__(self, pool: str, lost_after_s: float) -> None:
        self.pool, self.lost_after_s = pool, lost_after_s
        self.clock = time.monotonic
        self._since: dict[tuple[str, str], tuple[Any, float]] = {}

    def _unchanged_for(self, key: tuple[str, str], value: Any) -> float:
        # server and worker clocks may be skewed: only changes seen from here count
        now = self.clock()
        seen = self._since.get(key)
        if seen is None or seen[0] != value:
            self._since[key] = (value, now)
            return 0.0
        return now - seen[1]

    def worker_gone(self, client: Any, worker: str) -> bool:
        """Whether the worker is missing, OFFLINE, or silent for three of its heartbeat intervals."""
        found = {w.name: w for w in client.read_workers_for_work_pool(self.pool)}.get(worker)
        if found is None or str(getattr(found.status, "value", found.status)).upper() == "OFFLINE":
            return True
        interval = found.heartbeat_interval_seconds or HEARTBEAT_S
        return self._unchanged_for(("worker", worker), found.last_heartbeat_time) > 3 * interval

    def run_silent_for(self, client: Any, run_id: UUID) -> float:
        """Seconds since a new heartbeat of the flow run was seen (counted from the first look)."""
        from datetime import UTC, datetime, timedelta

        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventResourceFilter,
        )

        now = datetime.now(UTC)
        page = client.read_events(EventFilter(
            occurred=EventOccurredFilter(since=now - timedelta(days=1), until=now + timedelta(days=1)),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=1)
        latest = page.events[0].id if page.events else None
        return self._unchanged_for(("run", str(run_id)), latest)

    def lost(self, client: Any, run: Any) -> str | None:
        """Why a Pending/Running segment run is lost, or None while it may still be alive."""
        worker = (run.labels or {}).get("prefect.worker.name")
        if run.state is None or run.state.type.value not in LIVE or not worker:
            return None  # not picked up yet: any worker may still take it
        silent = self.run_silent_for(client, run.id)
        if not self.worker_gone(client, worker) or silent < self.lost_after_s:
            return None
        return f"worker {worker} lost (no heartbeat from it, none from the flow run for {silent:.0f} s)"


def _crash(client: Any, run_id: UUID, why: str) -> None:
    from prefect.states import Crashed

    try:
        client.set_flow_run_state(run_id, Crashed(message=f"flor: {why}"), force=True)
    except Exception:
        pass


def watch(run_id: UUID, lost: LostRuns, poll_s: float | None = None) -> tuple[str, Any, str]:
    """Poll a segment run until it is final or lost; return (state type or LOST, the run, a message)."""
    from prefect.client.orchestration import get_client

    poll_s = poll_s or float(os.environ.get("FLOR_SEGMENT_POLL_SECONDS", "5"))  # segments last minutes

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            kind = run.state.type.value if run.state else "SCHEDULED"
            if kind in fanout.FINAL:
                return kind, run, (run.state.message or kind.lower())
            why = lost.lost(client, run)
            if why:
                _crash(client, run_id, why)
                return "LOST", run, why
            time.sleep(poll_s)


def free_runid(st: Store, projid: str, name: str) -> str:
    """The runid a new run named name gets (the library appends -2, -3 on a clash)."""
    for n in range(1, 10_000):
        runid = name if n == 1 else f"{name}-{n}"
        claim = os.path.splitext(st.run_meta_path(projid, runid))[0] + ".claim"  # see Run._claim
        if st.run_meta(projid, runid) is None and not (st.is_local and os.path.exists(claim)):
            return runid
    raise FlorError(f"no free run name for {name}")


def _try(deployment: str, params: dict[str, Any], run_name: str, lost: LostRuns) -> dict[str, Any]:
    """Submit one segment run and follow it to its end (or its loss); return what became of it."""
    t0 = time.monotonic()
    env = {"FLOR_STORE": params["store"], **SEGMENT_RUN_ENV}
    run_id = fanout.submit(deployment, params, name=run_name, env=env, tags=["flor", "flor-segment"])
    runtime.run_logger().info("segment %s: flow run %s submitted", params["index"], run_name)
    try:
        kind, run, message = watch(run_id, lost)
    except BaseException:  # the coordinator stops (Ctrl-C, cancelled): so does its segment
        fanout.cancel([run_id])
        raise
    labels = run.labels or {}
    return {"segment": params["index"], "flow_run": str(run_id), "name": run_name, "state": kind,
            "worker": labels.get("prefect.worker.name"), "seconds": round(time.monotonic() - t0, 1),
            "message": None if kind == "COMPLETED" else message[:300], "labels": labels}


def run_segments_on_pool(script: str, args: list[str], *, name: str, projid: str, segments: str | int,
                         retries: int, pool: str, retry_delay_s: float = 1.0, store: str | None = None,
                         cwd: str | None = None, timeout_s: float | None = None, sweep: str | None = None,
                         lost_after_s: float | None = None, max_segments: int = 10_000) -> dict[str, Any]:
    """Run the segments as flow runs on the pool, re-submitting lost or failed ones; return the last outcome."""
    store = store or environment_store()  # the workers must all see this very store
    st = Store(store)
    log = runtime.run_logger()
    deployment = fanout.ensure_deployment(SEGMENT_FLOW, pool)
    if not fanout.online_workers(pool):
        log.warning("no worker is online on pool %s: segments wait until one starts", pool)
    if _own_pool() == pool:
        log.warning("this coordinator holds a worker slot of pool %s for the whole run: with one worker there, "
                    "its segments never start (run the coordinator where you type, or on another pool)", pool)
    lost = LostRuns(pool, lost_after_s or float(os.environ.get("FLOR_SEGMENT_LOST_SECONDS", 3 * HEARTBEAT_S)))
    runid = free_runid(st, projid, name)
    tries: list[dict[str, Any]] = []
    try:
        for index in range(max_segments):
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(retry_delay_s)
                params = {"script": script, "args": args, "name": runid, "projid": projid, "index": index,
                          "segments": segments, "store": store, "cwd": cwd, "timeout_s": timeout_s, "sweep": sweep}
                done = _try(deployment, params, f"{runid}-s{index}" + (f"-r{attempt}" if attempt else ""), lost)
                labels = done.pop("labels")
                runid = labels.get("flor.runid") or runid
                tries.append(done)
                if done["state"] == "COMPLETED":
                    break
                if done["state"] == "CANCELLED":
                    raise FlorError(f"segment {index} of {runid} was cancelled ({done['name']})")
                log.warning("segment %s of %s: %s%s", index, runid, done["message"],
                            "; re-submitting" if attempt < retries else "")
            total = sum(t["seconds"] for t in tries)
            if done["state"] != "COMPLETED":  # the retries are spent: the script's own last word, once
                code = int(labels.get("flor.returncode") or -9) or 1
                outcome = {"runid": runid if st.run_meta(projid, runid) else None, "projid": projid, "name": name,
                           "returncode": code, "seconds": total, "timed_out": False,
                           "tail": [labels.get("flor.last") or done["message"]]}
                raise ScriptFailed(failure_message(script, outcome), outcome)
            status = (st.run_meta(projid, runid) or {}).get("status")  # the store, not a label, is the truth
            if status != "suspended":
                return {"runid": runid, "projid": projid, "name": name, "returncode": 0, "seconds": total,
                        "timed_out": False, "tail": [], "status": status, "segments": index + 1}
        raise FlorError(f"run {runid} did not finish within {max_segments} segments")
    finally:
        record_tries(st, projid, runid, tries)


def record_tries(st: Store, projid: str, runid: str, tries: list[dict[str, Any]]) -> None:
    """List every segment try (flow run, worker, state) in the run's metadata, once no process writes it."""
    meta = st.run_meta(projid, runid)
    if meta is None or not tries:
        return
    meta["segments"] = [{"segment": i, "tries": [t for t in tries if t["segment"] == i]}
                        for i in sorted({t["segment"] for t in tries})]
    gone = {(str(t["segment"]), t["worker"]) for t in tries if t["state"] in ("LOST", "CRASHED")}
    for a in meta.get("attempts", [])[:-1]:
        if not a.get("end") and (a.get("segment"), a.get("worker")) in gone:
            a["lost"] = True  # killed with its worker: it never wrote its end
    st.write_json(st.run_meta_path(projid, runid), meta)
