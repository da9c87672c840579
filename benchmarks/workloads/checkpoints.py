"""Checkpoint cost on a heavier model (~110 MB of weights + Adam state): flor vs the same script plain."""

from __future__ import annotations

import json

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    STUB,
    WORKLOADS,
    Sample,
    base_env,
    fmt,
    fmt_pct,
    fmt_sample,
    interleave,
    ratios,
    run_child,
    scratch_repo,
)
from suite import Ctx, Row

from workloads import runmeta
from workloads.tutorial import checkpoint_rows


def settings(ctx: Ctx) -> dict:
    return {"width": 64, "epochs": 2, "steps": 2} if ctx.quick else {"width": 3000, "epochs": 6, "steps": 3,
                                                                       "batch": 32}


def run(ctx: Ctx) -> list[Row]:
    args = settings(ctx)
    src = (WORKLOADS / "heavy_train.py").read_text()
    flor_repo = scratch_repo(ctx.work / "heavy-flor", {"train.py": src})
    plain_repo = scratch_repo(ctx.work / "heavy-plain", {"train.py": src})
    store = ctx.work / "store-heavy"
    flor_env = base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT))

    def one(repo, env, extra=()) -> dict:
        c = run_child([PYTHON, "train.py", *extra, *fdb.flor_cli_args(args)], cwd=repo, env=env)
        got = json.loads(c.out.strip().splitlines()[-1])
        ctx.data["heavy_state_mb"] = got["state_mb"]
        return {"cpu": c.cpu, "wall": c.wall, "train": got["train_s"]}

    variants = {"plain": lambda rep: one(plain_repo, base_env(PYTHONPATH=str(STUB))),
                "flor": lambda rep: one(flor_repo, flor_env, ["--flor", f"heavy-{rep}"])}
    if ctx.quick:  # smoke: one torch process is enough
        variants.pop("plain")
    reps = ctx.reps if ctx.quick else min(ctx.reps, 2)
    ctx.say(f"checkpoints: heavy model {args}, {reps} x {'/'.join(variants)}")
    res = interleave(variants, reps)
    f = res["flor"]
    p = res.get("plain", {k: Sample() for k in f})
    label = f"heavy model ({fmt(ctx.data.get('heavy_state_mb', 0))} MB state, {args['epochs']} epochs)"
    na = ctx.na("4.x takes no checkpoints") if ctx.flordb else ctx.na()
    rows = checkpoint_rows(ctx, runmeta.load(store, "heavy-"), label)
    rows += [
        Row("Checkpoints", f"{label}: training loop s (in script)", flor=fmt_sample(f["train"], "s"),
            base=fmt_sample(p["train"], "s"), flordb=na, flor_vs=fmt_pct(ratios(f["train"], p["train"])),
            target="blocked only for the copy"),
        Row("Checkpoints", f"{label}: CPU s per run", flor=fmt_sample(f["cpu"], "s"), base=fmt_sample(p["cpu"], "s"),
            flordb=na, flor_vs=fmt_pct(ratios(f["cpu"], p["cpu"]))),
        Row("Checkpoints", f"{label}: wall s per run (incl. waiting for the last write)",
            flor=fmt_sample(f["wall"], "s"), base=fmt_sample(p["wall"], "s"), flordb=na,
            flor_vs=fmt_pct(ratios(f["wall"], p["wall"]))),
    ]
    return rows
