"""`flor run` (the training_run Prefect flow, embedded server) against recording the same run directly."""

from __future__ import annotations

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    TUTORIAL,
    WORK,
    base_env,
    fmt_pct,
    fmt_sample,
    interleave,
    ratios,
    run_child,
    scratch_repo,
)
from suite import PENDING, Ctx, Row

CLI = "import sys; from flor_flows.cli import main; sys.exit(main(sys.argv[1:]))"
SECTION = "Prefect flow"


def available(env: dict) -> str:
    """'' when `flor run --help` works, else why not."""
    probe = run_child([PYTHON, "-c", CLI, "run", "--help"], env=env, check=False, timeout=120)
    if probe.rc == 0 and "--name" in probe.out:
        return ""
    return "`flor run` " + ((probe.err or probe.out).strip().splitlines() or ["unavailable"])[-1][:120]


def run(ctx: Ctx) -> list[Row]:
    args = {"epochs": 1, "hidden": 32} if ctx.quick else {"epochs": 30}
    store = ctx.work / "store-flows"
    # Prefect's embedded default, kept between invocations (its first start migrates a database)
    env = base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT), PREFECT_HOME=str(WORK / "prefect-home"))
    why = available(env)
    if why:
        ctx.notes.append(f"`flor run` row pending: {why}")
        return [Row(SECTION, "flor run vs python train.py --flor, wall s", flor=PENDING)]
    if ctx.quick:  # a flow starts Prefect's embedded server: about a minute on 2 busy cores
        return [Row(SECTION, "flor run vs python train.py --flor", flor="not measured in --quick",
                    target="`flor run --help` works")]
    repo = scratch_repo(ctx.work / "flows", {"train.py": TUTORIAL.read_text()})
    script_args = fdb.flor_cli_args(args)

    def direct(rep: int) -> dict:
        c = run_child([PYTHON, "train.py", "--flor", f"direct-{rep}", *script_args], cwd=repo, env=env)
        return {"wall": c.wall, "cpu": c.cpu}

    def flow(rep: int) -> dict:
        c = run_child([PYTHON, "-c", CLI, "run", "train.py", "--name", f"flow-{rep}", "--", *script_args], cwd=repo,
                      env=env, timeout=600)
        return {"wall": c.wall, "cpu": c.cpu}

    ctx.say("flor run: one warm-up flow (embedded Prefect server start-up)")
    warm = flow(-1)
    reps = ctx.reps if ctx.quick else min(ctx.reps, 2)
    ctx.say(f"flor run: {reps} x direct/flow, tutorial {args}")
    res = interleave({"direct": direct, "flow": flow}, reps)
    d, f = res["direct"], res["flow"]
    na = ctx.na("no Prefect flows") if ctx.flordb else ctx.na()
    label = ", ".join(f"{k}={v}" for k, v in args.items())
    return [
        Row(SECTION, f"flor run vs python train.py --flor ({label}), wall s", flor=fmt_sample(f["wall"], "s"),
            base=fmt_sample(d["wall"], "s") + " direct", flordb=na, flor_vs=fmt_pct(ratios(f["wall"], d["wall"])),
            target=f"first flow (server start) {warm['wall']:.1f} s"),
        Row(SECTION, "flor run vs python train.py --flor, CPU s", flor=fmt_sample(f["cpu"], "s"),
            base=fmt_sample(d["cpu"], "s") + " direct", flordb=na, flor_vs=fmt_pct(ratios(f["cpu"], d["cpu"]))),
    ]
