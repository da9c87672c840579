"""The `flor` commands that orchestrate: run, sweep, replay, worker, resume, sync.

Prefect is imported inside the commands that start flows, so the query commands stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from flor_flows import configs as cfgs
from flor_flows.cli_query import duration, fmt, pairs, print_json, print_table
from flor_lib.errors import FlorError

SCRIPT_ARGS = typer.Argument(None, help="The script's own flags, after `--` (e.g. -- --hidden 75).",
                             show_default=False)


def _check_script(script: str) -> str:
    path = Path(script).expanduser()
    if not path.is_file():
        raise FlorError(f"no such script: {script}")
    return str(path.resolve())


def _flow_failure(state: Any) -> FlorError:
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, FlorError):
        return exc
    err = FlorError(f"{state.name}: {state.message or exc}")
    err.exit_code = 1
    return err


def _check_segments(segments: str | None) -> None:
    if segments is not None and segments != "auto" and not segments.isdigit():
        raise FlorError(f"--segments {segments!r}: expected a number of outer iterations or 'auto'")


def run(script: str = typer.Argument(..., help="The training script (a Python file in a git repository)."),
        script_args: list[str] = SCRIPT_ARGS,
        name: str | None = typer.Option(None, "--name", "-n", help="Run name (default: run-<time>-<hex>)."),
        timeout: float | None = typer.Option(None, "--timeout", help="Kill the run after this many seconds."),
        cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default: the script's)."),
        segments: str | None = typer.Option(None, "--segments", help="Split into segments of N outer iterations "
                                            "(or 'auto': every FLOR_SEGMENT_MINUTES) that resume on retry."),
        retries: int = typer.Option(0, "--retries", help="Retries per segment (each resumes from the last "
                                    "checkpoint)."),
        pool: str | None = typer.Option(None, "--pool", help="With --segments: run each segment on any worker "
                                        "of this work pool (a lost worker's segment resumes on another)."),
        json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON.")) -> None:
    """Record one training run as a Prefect flow (snapshot_code -> execute -> aggregate_logs).

    Example: `flor run train.py --name myFirstRun -- --hidden 75 --epochs 1`

    Example: `flor run train.py --segments 2 --retries 3 -- --epochs 10` survives a killed worker process.
    """
    script = _check_script(script)
    _check_segments(segments)
    if pool and not segments:
        raise FlorError("--pool needs --segments (flor sweep --pool runs whole runs on a pool)")
    from flor_flows import runtime

    runtime.prepare_env()
    if pool and not runtime.api_url():
        raise FlorError(f"--pool {pool} needs a Prefect server its workers reach: set PREFECT_API_URL")
    from flor_flows.segments import check_segmentable
    from flor_flows.training import new_name, training_run

    check_segmentable(script, segments)
    state = runtime.call_flow(training_run, script=script, args=list(script_args or []), name=name or new_name(),
                              timeout_s=timeout, cwd=cwd, segments=segments, retries=retries, pool=pool)
    if not state.is_completed():
        raise _flow_failure(state)
    item = state.result()
    if json_out:
        print_json(item)
        return
    print(f"flor: recorded {item['runid']} ({item['status']}, code {str(item['vid'] or '-')[:8]}, "
          f"{duration(item['duration_s'])}) {pairs(item['metrics'])}")


def _rows_table(title: str, rows: list[dict]) -> None:
    from flor_flows.results import flat_row

    flat = [{"member": r.get("name"), **flat_row(r)} for r in rows]
    if all(f["member"] == f.get("runid") for f in flat):
        for f in flat:
            f.pop("member")
    cols = [c for c in dict.fromkeys(k for r in flat for k in r) if any(r.get(c) not in (None, "") for r in flat)]
    print_table(title, cols, [[fmt(r.get(c)) for c in cols] for r in flat])


def sweep(script: str = typer.Argument(..., help="The training script."),
          script_args: list[str] = SCRIPT_ARGS,
          grid: list[str] = typer.Option(None, "--grid", "-g", help="NAME=V1,V2,...; the sweep is the cross product."),
          config: list[str] = typer.Option(None, "--config", "-c",
                                           help="An explicit config as JSON ('{\"hidden\": 100}') or @FILE."),
          pool: str | None = typer.Option(None, "--pool", "-p", help="Fan members out to this work pool."),
          concurrency: int = typer.Option(1, "--concurrency", "-j", help="Members at once (local runs)."),
          name: str | None = typer.Option(None, "--name", "-n", help="Sweep id (default: sweep-<time>-<hex>)."),
          timeout: float | None = typer.Option(None, "--timeout", help="Kill a member after this many seconds."),
          segments: str | None = typer.Option(None, "--segments", help="Run each member in segments of N outer "
                                              "iterations (or 'auto') that resume on retry."),
          retries: int = typer.Option(0, "--retries", help="With --segments: retries per segment."),
          json_out: bool = typer.Option(False, "--json", help="Print the members as JSON.")) -> None:
    """Run a sweep as a Prefect flow: one recorded training run per config, locally or on a pool.

    Examples: `flor sweep train.py --grid hidden=100,200 --grid lr=1e-4,1e-3 -j 2 -- --epochs 1` |
    `flor sweep train.py --grid hidden=100,200,300 --pool flor-gpu` (workers: `flor worker --gpu N`)
    """
    script = _check_script(script)
    configs = (cfgs.cross_prod(**cfgs.parse_grid(grid)) if grid else []) + cfgs.parse_configs(config or [])
    if not configs:
        raise FlorError("give the configs: --grid NAME=V1,V2 (repeatable) and/or --config JSON")
    if concurrency < 1:
        raise FlorError("--concurrency must be at least 1")
    _check_segments(segments)
    from flor_flows import runtime

    runtime.prepare_env()
    if segments:
        from flor_flows.segments import check_segmentable

        check_segmentable(script, segments)
    from flor_flows.sweep import sweep as sweep_flow
    from flor_flows.sweep import sweep_rows

    state = runtime.call_flow(sweep_flow, script=script, configs=configs, args=list(script_args or []), name=name,
                              pool=pool, concurrency=concurrency, timeout_s=timeout, segments=segments,
                              retries=retries)
    rows = sweep_rows(state)
    if json_out:
        print_json(rows)
    else:
        _rows_table(f"sweep of {Path(script).name}: {len(rows)} members", rows)
    if not state.is_completed():
        err = FlorError(state.message or "the sweep failed")
        err.exit_code = 1
        raise err


def replay(names: list[str] = typer.Argument(..., help="The logged names to backfill."),
           where: str | None = typer.Option(None, "--where", "-w", help="SQL condition selecting the runs."),
           workers: int = typer.Option(2, "--workers", "-j", help="Segments at once (and how finely to split)."),
           pool: str | None = typer.Option(None, "--pool", "-p", help="Fan segments out to this work pool."),
           force: bool = typer.Option(False, "--force", help="Replay runs that already have these names."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Only print the plan."),
           script: str | None = typer.Option(None, "--script", help="The new code (default: the repo's script)."),
           json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Hindsight logging: backfill new flor.log statements into past runs, as a Prefect flow.

    Examples: `flor replay accuracy --where "lr = 0.001"` | `flor replay grad_norm --dry-run` |
    `flor replay device accuracy --pool flor-gpu`
    """
    from flor_lib.replay.engine import plan_replay

    plan = plan_replay(list(names), where=where, force=force, workers=workers, script=script)  # user errors first
    if dry_run:
        print(plan.describe())
        return
    if not plan.segments:
        print(plan.describe(), file=sys.stderr)
        print("flor: nothing to replay", file=sys.stderr)
        return
    from flor_flows import runtime

    runtime.prepare_env()
    from flor_flows.replay import hand_over, replay_flow, replay_rows

    state = runtime.call_flow(replay_flow, names=list(names), where=where, workers=workers, pool=pool, force=force,
                              script=script, replay_id=hand_over(plan))
    rows = replay_rows(state)
    if json_out:
        print_json(rows)
    elif rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        print_table(f"replay of {', '.join(names)}", cols, [[fmt(r.get(c)) for c in cols] for r in rows])
    else:
        print("flor: nothing to replay (no run matched)", file=sys.stderr)
    if not state.is_completed():
        err = FlorError(state.message or "the replay failed")
        err.exit_code = 1
        raise err


def worker(gpu: int | None = typer.Option(None, "--gpu", help="The GPU this worker owns (index, through any "
                                                              "CUDA_VISIBLE_DEVICES mask)."),
           cpu: bool = typer.Option(False, "--cpu", help="A worker with no GPU."),
           pool: str | None = typer.Option(None, "--pool", "-p", help="Work pool (default flor-gpu, or flor-cpu)."),
           name: str | None = typer.Option(None, "--name", help="Worker name (default flor-<host>-gpu<N>)."),
           limit: int = typer.Option(1, "--limit", help="Flow runs at once."),
           grace: float = typer.Option(5.0, "--grace", help="Seconds between stop signals.")) -> None:
    """Start a Prefect process worker bound to one GPU, one run at a time (creates the pool if missing).

    Examples: `flor worker --gpu 0` | `CUDA_VISIBLE_DEVICES=2,3 flor worker --gpu 1` (uses GPU 3) |
    `flor worker --cpu --pool flor-cpu`
    """
    if (gpu is None) == (not cpu):
        raise FlorError("say which device: --gpu N or --cpu")
    from flor_flows.worker import run_worker

    raise typer.Exit(run_worker(gpu=gpu, pool=pool, name=name, limit=limit, grace=grace))


def resume(runid: str = typer.Argument(..., help="The killed or failed run to continue."),
           script_args: list[str] = typer.Argument(None, help="After --: values of secret args (recorded masked).",
                                                   show_default=False)) -> None:
    """Continue a killed or failed run from its last checkpoint, with its recorded args and code version.

    Examples: `flor resume myFirstRun` | `flor resume run2 -- --api_token $TOKEN` (secrets are not stored)
    """
    from flor_flows.recover import resume as do_resume

    code = do_resume(runid, extra=list(script_args or []))
    if code != 0:
        err = FlorError(f"the resumed run {runid} exited with {code}")
        err.exit_code = 1
        raise err


def sync(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Land records left in the local spool (runs that were killed, or deferred aggregation).

    Example: `flor sync`
    """
    from flor_flows.recover import sync as do_sync

    out = do_sync()
    if json_out:
        print_json(out)
    elif "landed" in out:
        print(f"flor: landed {out['records']} records of {len(out['landed'])} runs"
              + (f"; {len(out['still_running'])} still running" if out.get("still_running") else ""))
    else:
        print(f"flor: {out}")
