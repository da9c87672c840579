"""Hindsight replay vs re-running the run, for a statement after training, per epoch and in the inner loop;
and replay scale-out (1 vs 2 workers over 4 runs). FlorDB 4.0.1 replays the same statements in its repo.

Statements are RNG-neutral (as in tests/replay_story.py), so a from-scratch run of the patched code is the
fair "re-run" baseline. Every replay starts from a fresh copy of the recorded store.
"""

from __future__ import annotations

import json
import shutil

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    BenchError,
    Sample,
    base_env,
    commit_all,
    fmt_ratio,
    fmt_sample,
    interleave,
    ratios,
    run_child,
    scratch_repo,
)
from suite import PENDING, Ctx, Row

from workloads import scripts
from workloads.scripts import LEVELS as LABELS

SECTION = "Replay"
FDB_ITERS = {"after": [], "epoch": [], "inner": ["epoch=all", "step=all"]}  # FlorDB: backfill every step too
CHILD = """
import json, sys, time
from flor_lib.replay.engine import replay
import flor_lib as flor
names, where, workers = json.loads(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
replay(names, where=where, workers=workers, progress=False)
got = flor.sql("SELECT name, count(*) AS n FROM logs WHERE source = 'replay' GROUP BY 1")
print(json.dumps(dict(zip(got["name"], map(int, got["n"])))))
"""


def available() -> str:
    """'' when flor's replay engine can be imported, else why not."""
    probe = run_child([PYTHON, "-c", "from flor_lib.replay.engine import replay"], env=base_env(PYTHONPATH=str(ROOT)),
                      check=False)
    return "" if probe.rc == 0 else "flor_lib.replay.engine: " + (probe.err.strip().splitlines() or ["?"])[-1][:120]


def run(ctx: Ctx) -> list[Row]:
    why = available()
    if why:
        ctx.notes.append(f"replay rows pending: {why}")
        return [Row(SECTION, LABELS[k], flor=PENDING, target="") for k in LABELS]
    script = scripts.for_replay(ctx)
    args = script.args
    lrs = [0.001, 0.002, 0.0005, 0.003]
    repo = scratch_repo(ctx.work / "replay-flor", {"train.py": script.source})
    store0 = ctx.work / "store-replay-recorded"
    shutil.rmtree(store0, ignore_errors=True)
    env0 = base_env(FLOR_STORE=str(store0), PYTHONPATH=str(ROOT), FLOR_FLUSH_SECONDS="0.5")
    ctx.say(f"replay: recording 4 runs of {script.describe()}")
    record_s = Sample()
    for i, lr in enumerate(lrs):
        record_s.add(run_child([PYTHON, "train.py", "--flor", f"rp-{i}", "--lr", str(lr), *fdb.flor_cli_args(args)],
                               cwd=repo, env=env0).wall)
    (repo / "train.py").write_text(script.patched())
    commit_all(repo, "hindsight statements")

    def replay(names: list[str], where: str, workers: int, expect: dict) -> float:
        store = ctx.work / "store-replay"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(store0, store)
        c = run_child([PYTHON, "-c", CHILD, json.dumps(names), where, str(workers)], cwd=repo,
                      env=base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT)), timeout=900)
        got = json.loads(c.out.strip().splitlines()[-1])
        if got != expect:
            raise BenchError(f"replay {names} where {where!r}: backfilled {got}, expected {expect}")
        return c.wall

    per_run = script.per_run()

    def rerun(rep: int) -> dict:
        store = ctx.work / "store-rerun"
        shutil.rmtree(store, ignore_errors=True)
        c = run_child([PYTHON, "train.py", "--flor", f"rerun-{rep}", *fdb.flor_cli_args(args)], cwd=repo,
                      env=base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT)))
        return {"s": c.wall}

    variants = {"rerun": rerun}
    for level, (name, _, _) in script.statements.items():
        variants[level] = (lambda lv, nm: lambda rep: {"s": replay([nm], "runid = 'rp-0'", 2, {nm: per_run[lv]})})(
            level, name)
    reps = ctx.reps if ctx.quick else min(ctx.reps, 2)
    ctx.say(f"replay: {reps} x re-run/after/epoch/inner of one run")
    res = interleave(variants, reps)
    fdb_res = flordb_replays(ctx, script, reps) if ctx.flordb else {}
    rows = []
    base = res["rerun"]["s"]
    for level in LABELS:
        f = res[level]["s"]
        d = fdb_res.get(level)
        rows.append(Row(SECTION, f"{script.label}, {LABELS[level]}: replay one run, wall s", flor=fmt_sample(f, "s"),
                        base=fmt_sample(base, "s") + " re-run", flordb=fmt_sample(d, "s") if d else ctx.na(),
                        flor_vs=fmt_ratio(ratios(base, f)) + " faster",
                        flordb_vs=(fmt_ratio(ratios(fdb_res["rerun"], d)) + " faster") if d else "-",
                        target={"after": ">= 20x faster", "epoch": "~ setup + a restore per epoch",
                                "inner": "-"}[level]))
    ctx.data["replay"] = {"rerun": base.values, **{lv: res[lv]["s"].values for lv in LABELS},
                          "flordb": {k: v.values for k, v in fdb_res.items()}}
    rows += scale_out(ctx, script, replay, per_run, reps)
    return rows


def scale_out(ctx: Ctx, script: scripts.Script, replay, per_run: dict, reps: int) -> list[Row]:
    name = script.statements["inner"][0]
    expect = {name: 4 * per_run["inner"]}
    ctx.say(f"replay: {reps} x workers 1/2 over 4 runs ({name})")

    def with_workers(w: int):
        return lambda rep: {"s": replay([name], "", w, expect)}

    res = interleave({1: with_workers(1), 2: with_workers(2)}, reps)
    one, two = res[1]["s"], res[2]["s"]
    ctx.data["replay"]["workers"] = {"1": one.values, "2": two.values}
    return [Row(SECTION, f"{script.label}, inner-loop statement over 4 runs: 2 vs 1 workers, wall s", flor=fmt_sample(two, "s"),
                base=fmt_sample(one, "s") + " (1 worker)", flordb=ctx.na("no parallel replay") if ctx.flordb else ctx.na(),
                flor_vs=fmt_ratio(ratios(one, two)) + " speed-up", target=">= 1.6x on 2 cores")]


def flordb_replays(ctx: Ctx, script: scripts.Script, reps: int) -> dict[str, Sample]:
    """FlorDB 4.0.1: record one run, then replay each statement (it always re-executes the whole run)."""
    args = script.args
    src = fdb.adapt_script(script.source)
    repo = scratch_repo(ctx.work / "replay-flordb", {"train.py": src}, ignore=[".flor/obj_store/"])
    env = fdb.env(base_env())
    ctx.say("replay: FlorDB records one run, then replays each statement")
    run_child([str(ctx.flordb_python), "train.py", *fdb.cli_args(args)], cwd=repo, env=env)
    (repo / "train.py").write_text(fdb.adapt_script(script.patched()))

    def rerun(rep: int) -> dict:
        return {"s": run_child([str(ctx.flordb_python), "train.py", *fdb.cli_args(args)],
                               cwd=ctx.work / "replay-flordb-rerun", env=env).wall}

    scratch_repo(ctx.work / "replay-flordb-rerun", {"train.py": (repo / "train.py").read_text()},
                 ignore=[".flor/obj_store/"])
    variants = {"rerun": rerun}
    for level, (name, _, _) in script.statements.items():
        variants[level] = (lambda nm, it: lambda rep: {"s": fdb.replay(repo, [nm], base_env(), it).wall})(
            name, FDB_ITERS[level])
    res = interleave(variants, reps)
    return {k: v["s"] for k, v in res.items()}
