"""The `flor-run` flow: snapshot_code -> execute -> aggregate_logs, one recorded training run.

The script runs as a child process (own session, output streamed into the task's logs); records stay in
the spool (FLOR_DEFER_AGGREGATE=1) until aggregate_logs finalizes and merges them and publishes a table
artifact of the run's args and final metrics. A script that exits non-zero still gets its records
aggregated; then the flow fails with the script's last output line.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flor_flows import process, results, runtime
from flor_lib import compact, versions
from flor_lib.errors import FlorError
from flor_lib.run import truncation
from flor_lib.store import Store


class ScriptFailed(FlorError):
    """The training script exited non-zero; .outcome holds its run summary."""

    exit_code = 1

    def __init__(self, message: str, outcome: dict[str, Any]) -> None:
        super().__init__(message)
        self.outcome = outcome

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.outcome))


def new_name(prefix: str = "run") -> str:
    """A fresh run name in the library's style: prefix-YYYYmmdd-HHMMSS-xxxx."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def name_in_args(args: list[str]) -> str | None:
    """The run name a script's own `--flor NAME` flag sets, if any."""
    for i, word in enumerate(args):
        if word == "--flor" and i + 1 < len(args):
            return args[i + 1]
        if word.startswith("--flor="):
            return word.split("=", 1)[1]
    return None


def resolve_runid(store: Store, projid: str, name: str, pid: int) -> str | None:
    """The runid the process pid recorded under name (the library appends -2, -3 on a clash)."""
    host = socket.gethostname()
    for n in range(1, 10_000):
        runid = name if n == 1 else f"{name}-{n}"
        path = store.run_meta_path(projid, runid)
        meta = store.run_meta(projid, runid)
        if meta is None:
            if store.is_local and Path(path).with_suffix(".claim").exists():
                continue  # claimed by a run that has not written (or never wrote) its metadata
            return None
        last = (meta.get("attempts") or [{}])[-1]
        if last.get("pid") == pid and last.get("host", host) == host:
            return runid
    return None


def locate_project(script: str) -> versions.Project:
    """The project of a script, or a FlorError when the file is missing."""
    path = Path(script).expanduser().resolve()
    if not path.is_file():
        raise FlorError(f"no such script: {script}")
    return versions.locate(path)


@task(name="snapshot_code", cache_policy=NO_CACHE)
def snapshot_code(script: str) -> dict[str, Any]:
    """Snapshot the script's working tree on the shadow branch; return projid, vid, repo root, relpath."""
    project = locate_project(script)
    log = runtime.run_logger()
    for w in project.warnings:
        log.warning(w)
    vid = None
    if project.root is not None:
        vid, skipped = versions.snapshot(project.root, f"flor: snapshot for {project.relpath}")
        if skipped:
            log.warning("left out of the snapshot (too large): %s", ", ".join(skipped[:5]))
    return {"projid": project.projid, "vid": vid, "root": str(project.root) if project.root else None,
            "relpath": project.relpath, "branch": project.branch}


def run_script(script: str, args: list[str] | None = None, *, name: str, projid: str, sweep: str | None = None,
               cwd: str | None = None, timeout_s: float | None = None, store: str | None = None,
               resume: str | None = None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Launch the script as a recorded run (records left in the spool); return its runid and exit status."""
    args = [str(a) for a in (args or [])]
    name = name_in_args(args) or name
    script_path = Path(script).expanduser().resolve()
    env = {"FLOR_RUN_NAME": name, "FLOR_DEFER_AGGREGATE": "1", **(extra_env or {})}
    if sweep:
        env["FLOR_SWEEP"] = sweep
    if store:
        env["FLOR_STORE"] = store
    if resume:
        env["FLOR_RESUME"] = resume
    out = process.launch(process.python_command(script_path, args), cwd=cwd or script_path.parent, env=env,
                         on_line=runtime.line_logger(), timeout=timeout_s)
    runid = resume or resolve_runid(Store(store), projid, name, out.pid)
    return {"runid": runid, "projid": projid, "name": name, "returncode": out.returncode, "seconds": out.seconds,
            "pid": out.pid, "timed_out": out.timed_out, "tail": list(out.tail[-8:])}


def failure_message(script: str, outcome: dict[str, Any]) -> str:
    """One line saying why a script run failed (its last output line)."""
    lines = [ln.strip() for ln in outcome.get("tail", []) if ln.strip()]
    why = f"timed out after {outcome['seconds']:.0f} s" if outcome.get("timed_out") else \
        f"exited with {outcome['returncode']}"
    last = f": {lines[-1][:300]}" if lines else ""
    return f"{Path(script).name} ({outcome.get('runid') or 'no run recorded'}) {why}{last}"


@task(name="execute", task_run_name="execute-{name}", cache_policy=NO_CACHE)
def execute(script: str, args: list[str] | None = None, *, name: str, projid: str, sweep: str | None = None,
            cwd: str | None = None, timeout_s: float | None = None, store: str | None = None,
            resume: str | None = None) -> dict[str, Any]:
    """Run the training script in its own process group, streaming its output into this task's logs."""
    outcome = run_script(script, args, name=name, projid=projid, sweep=sweep, cwd=cwd, timeout_s=timeout_s,
                         store=store, resume=resume)
    if outcome["returncode"] != 0:
        raise ScriptFailed(failure_message(script, outcome), outcome)
    return outcome


def aggregate(projid: str, runid: str | None, returncode: int = 0, store: str | None = None,
              artifact: bool = True) -> dict[str, Any]:
    """Finalize and merge a run's spooled records; return its summary (and publish it as a table artifact)."""
    st = Store(store)
    meta = st.run_meta(projid, runid) if runid else None
    if meta is None:
        return {"runid": runid, "projid": projid, "status": "failed", "args": {}, "metrics": {},
                "returncode": returncode}
    if returncode != 0 and meta.get("status") in ("running", "completed"):
        # the process knows best: a script that exited non-zero did not complete
        meta["status"] = "interrupted" if returncode < 0 else "failed"
        meta["exit_code"] = returncode
        st.write_json(st.run_meta_path(projid, runid), meta)
    cut = truncation(meta)
    metrics = results.final_metrics(results.run_records(st, projid, runid), cut)
    compact.finalize_run(st, projid, runid, truncate=cut)
    compact.merge_project(st, projid)
    out = results.summary(meta, metrics)
    out["returncode"] = returncode
    if artifact:
        create_table_artifact(
            results.table_rows(meta, metrics), key=runtime.artifact_key("flor-run", runid),
            description=f"**{runid}** ({meta.get('status')}), code `{str(meta.get('vid') or '-')[:8]}`, "
                        f"{out['duration_s'] or 0:.1f} s: args and final metrics")
    return out


@task(name="aggregate_logs", task_run_name="aggregate-{runid}", cache_policy=NO_CACHE)
def aggregate_logs(projid: str, runid: str | None, returncode: int = 0, store: str | None = None) -> dict[str, Any]:
    """Finalize + merge the run's records; publish a table artifact of its args and final metrics."""
    return aggregate(projid, runid, returncode, store)


def run_and_aggregate(script: str, args: list[str] | None, *, name: str, projid: str, sweep: str | None = None,
                      cwd: str | None = None, timeout_s: float | None = None, store: str | None = None,
                      artifact: bool = True, segments: str | int | None = None, retries: int = 0,
                      retry_delay_s: float = 1.0) -> dict[str, Any]:
    """Execute and aggregate in one call (a sweep member task); raise ScriptFailed after aggregating.

    With segments, the run is a chain of segment tasks whose retries resume it from its last checkpoint.
    """
    if segments:
        from flor_flows.segments import run_segments

        try:
            outcome = run_segments(script, list(args or []), name=name, projid=projid, segments=segments,
                                   retries=retries, retry_delay_s=retry_delay_s, store=store, cwd=cwd,
                                   timeout_s=timeout_s, sweep=sweep)
        except ScriptFailed as exc:  # after the retries: the script's own error, once
            outcome = exc.outcome
    else:
        outcome = run_script(script, args, name=name, projid=projid, sweep=sweep, cwd=cwd, timeout_s=timeout_s,
                             store=store)
    summary = aggregate(projid, outcome["runid"], outcome["returncode"], store, artifact=artifact)
    summary.update(seconds=outcome["seconds"], name=name)
    if outcome["returncode"] != 0:
        summary["error"] = failure_message(script, outcome)
        raise ScriptFailed(summary["error"], summary)
    return summary


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return params.get("name") or Path(params.get("script") or "run").stem


@flow(name="flor-run", flow_run_name=_flow_run_name, on_cancellation=[lambda *a: process.kill_all()],
      on_crashed=[lambda *a: process.kill_all()])
def training_run(script: str, args: list[str] | None = None, name: str | None = None, sweep: str | None = None,
                 cwd: str | None = None, timeout_s: float | None = None, store: str | None = None,
                 resume: str | None = None, segments: str | int | None = None, retries: int = 0,
                 retry_delay_s: float = 1.0, pool: str | None = None) -> dict[str, Any]:
    """Record one training run: snapshot the code, run the script, aggregate its records (flor run).

    With segments (N outer iterations, or "auto"), execute is a chain of segment tasks whose retries
    resume the run from its last checkpoint; with a pool too, each segment is a `flor-run-segment` flow
    run on whichever worker of the pool takes it, re-submitted when it fails or its worker is lost.
    """
    script = str(Path(script).expanduser().resolve())
    name = name or new_name()
    if segments:
        from flor_flows.segments import check_segmentable

        check_segmentable(script, segments)
    snap = snapshot_code(script)
    if segments:
        from flor_flows.segments import run_segments

        if pool:  # each segment a flow run on whichever worker of the pool is free
            from functools import partial

            from flor_flows.segment_deploy import run_segments_on_pool

            run_segments = partial(run_segments_on_pool, pool=pool)
        try:
            outcome = run_segments(script, args or [], name=name, projid=snap["projid"], segments=segments,
                                   retries=retries, retry_delay_s=retry_delay_s, store=store, cwd=cwd,
                                   timeout_s=timeout_s, sweep=sweep)
        except ScriptFailed as exc:  # after the retries: the script's own error, once
            outcome = exc.outcome
    else:
        state = execute(script, args or [], name=name, projid=snap["projid"], sweep=sweep, cwd=cwd,
                        timeout_s=timeout_s, store=store, resume=resume, return_state=True)
        if state.is_completed():
            outcome = state.result()
        else:
            exc = state.result(raise_on_failure=False)
            if not isinstance(exc, ScriptFailed):
                raise exc if isinstance(exc, BaseException) else FlorError(state.message or "execute failed")
            outcome = exc.outcome
    summary = aggregate_logs(snap["projid"], outcome["runid"], outcome["returncode"], store)
    summary.update(seconds=outcome["seconds"], name=name)
    if outcome["returncode"] != 0:
        raise ScriptFailed(failure_message(script, outcome), summary)
    return summary


def environment_store() -> str:
    """The store root this process would use, as an absolute path or URL (to pass to remote runs)."""
    root = Store().root
    return root if "://" in root else os.path.abspath(os.path.expanduser(root))
