"""Fanning flow runs out to a work pool: find (or create) the deployment, submit, wait, cancel on exit."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from flor_lib.errors import FlorError

FLOR_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding flor_flows/
ENTRYPOINTS = {
    "flor-run": "flor_flows/training.py:training_run",
    "flor-sweep": "flor_flows/sweep.py:sweep",
    "flor-replay": "flor_flows/replay.py:replay_flow",
    "flor-replay-segment": "flor_flows/replay.py:replay_segment",
    "flor-run-segment": "flor_flows/segment_deploy.py:training_segment",
}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def ensure_pool(pool: str, kind: str = "process") -> bool:
    """Create the work pool when it does not exist; return whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            pass
        try:
            template = {}
            if kind == "process":
                from prefect.workers.process import ProcessWorker

                template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template))
            return True
        except ObjectAlreadyExists:
            return False


def ensure_deployment(flow_name: str, pool: str) -> str:
    """The deployment `flow_name/pool`: an existing one, or one created on the pool (shared-disk pull step)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = f"{flow_name}/{pool}"
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(name)
            if dep.work_pool_name and dep.work_pool_name != pool:
                raise FlorError(f"deployment {name} runs on pool {dep.work_pool_name}, not {pool}: "
                                f"redeploy it (prefect --no-prompt deploy --all) or pick that pool")
            return name
        except ObjectNotFound:
            pass
        ensure_pool(pool)
        flow_id = client.create_flow_from_name(flow_name)
        client.create_deployment(
            flow_id=flow_id, name=pool, work_pool_name=pool, entrypoint=ENTRYPOINTS[flow_name],
            path=str(FLOR_ROOT), enforce_parameter_schema=False, tags=["flor"],
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(FLOR_ROOT)}}])
    return name


def online_workers(pool: str) -> int:
    """How many workers of the pool are online now (0 when the pool or its workers are missing)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return sum(1 for w in client.read_workers_for_work_pool(pool)
                       if str(getattr(w.status, "value", w.status)).upper() == "ONLINE")
    except Exception:
        return 0


def submit(deployment: str, parameters: dict[str, Any], *, name: str, env: dict[str, str] | None = None,
           tags: list[str] | None = None) -> UUID:
    """Schedule one run of a deployment now (linked to the calling flow run); return its id."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, flow_run_name=name, timeout=0, tags=tags or ["flor"],
                         job_variables={"env": env} if env else None)
    return run.id


def wait_all(ids: list[UUID], on_final: Callable[[UUID, Any], None], poll_s: float = 1.0,
             timeout_s: float | None = None) -> dict[UUID, Any]:
    """Poll until every flow run is final, calling on_final(id, state) once each; return the states."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states: dict[UUID, Any] = {}
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with get_client(sync_client=True) as client:
        while len(states) < len(ids):
            todo = [i for i in ids if i not in states]
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=todo)),
                                         limit=len(todo))
            for run in runs:
                if run.state is not None and run.state.type.value in FINAL and run.id not in states:
                    states[run.id] = run.state
                    on_final(run.id, run.state)
            if len(states) < len(ids):
                if deadline and time.monotonic() > deadline:
                    raise FlorError(f"{len(ids) - len(states)} flow runs still not finished after {timeout_s} s")
                time.sleep(poll_s)
    return states


def cancel(ids: list[UUID]) -> None:
    """Ask the workers to cancel flow runs that are not final yet (best effort)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    try:
        with get_client(sync_client=True) as client:
            for i in ids:
                run = client.read_flow_run(i)
                if run.state is None or run.state.type.value not in FINAL:
                    client.set_flow_run_state(i, Cancelling(), force=True)
    except Exception:
        pass
