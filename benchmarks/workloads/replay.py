"""Hindsight replay vs re-running the run, for a statement after training, per epoch and in the inner loop;
and replay scale-out (1 vs 2 workers over 4 runs). FlorDB 4.0.1 replays the same statements in its repo.

Statements are RNG-neutral (as in tests/replay_story.py), so a from-scratch run of the patched code is the
fair "re-run" baseline. Every replay starts from a fresh copy of the recorded store, and its backfilled
row counts are checked.
"""

from __future__ import annotations

import json
import shutil

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    BenchError,
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
from workloads.scripts import LEVELS

SECTION = "Replay"
TARGETS = {"after": ">= 20x faster", "epoch": "~ setup + a restore per epoch", "inner": "-"}
FDB_ITERS = {"after": [], "epoch": [], "inner": ["epoch=all", "step=all"]}  # FlorDB: backfill every step too
LRS = [0.001, 0.002, 0.0005, 0.003]
LONG_EPOCHS = 2500  # ~4 minutes of training on this machine, where the short runs are mostly imports
SCALE_EPOCHS = 200  # ~15 s of training per run
CHILD = """
import json, sys
from flor_lib.replay.engine import replay
import flor_lib as flor
names, where, workers = json.loads(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
replay(names, where=where, workers=workers, progress=False)
got = flor.sql("SELECT name, count(*) AS n FROM logs WHERE source = 'replay' GROUP BY 1")
print(json.dumps(dict(zip(got["name"], map(int, got["n"])))))
"""


def available(ctx: Ctx) -> str:
    """'' when flor's replay engine can be imported, else why not."""
    probe = run_child([PYTHON, "-c", "from flor_lib.replay.engine import replay"], cwd=ctx.work,
                      env=base_env(PYTHONPATH=str(ROOT)), check=False)
    return "" if probe.rc == 0 else "flor_lib.replay.engine: " + (probe.err.strip().splitlines() or ["?"])[-1][:120]


class Bench:
    """A scratch repo with recorded runs of a script, then the patched script committed."""

    def __init__(self, ctx: Ctx, script: scripts.Script, runs: int, levels: tuple[str, ...] | None = None,
                 tag: str = "") -> None:
        self.ctx, self.script, self.tag = ctx, script, tag
        self.repo = scratch_repo(ctx.work / f"replay-flor{tag}", {"train.py": script.source})
        self.recorded = ctx.work / f"store-replay-recorded{tag}"
        shutil.rmtree(self.recorded, ignore_errors=True)
        env = base_env(FLOR_STORE=str(self.recorded), PYTHONPATH=str(ROOT), FLOR_FLUSH_SECONDS="0.5")
        ctx.say(f"replay: recording {runs} run(s) of {script.describe()}")
        self.recording = []
        for i, lr in enumerate(LRS[:runs]):
            c = run_child([PYTHON, "train.py", "--flor", f"rp-{i}", "--lr", str(lr),
                           *fdb.flor_cli_args(script.args)], cwd=self.repo, env=env, timeout=1800)
            self.recording.append(c.wall)
        (self.repo / "train.py").write_text(script.patched(levels))
        commit_all(self.repo, "hindsight statements")

    def replay(self, names: list[str], where: str, workers: int, expect: dict) -> dict:
        """Wall and CPU seconds of one replay command (segments included) from a fresh copy of the recorded store."""
        store = self.ctx.work / f"store-replay{self.tag}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(self.recorded, store)
        c = run_child([PYTHON, "-c", CHILD, json.dumps(names), where, str(workers)], cwd=self.repo,
                      env=base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT)), timeout=900)
        got = json.loads(c.out.strip().splitlines()[-1])
        if got != expect:
            raise BenchError(f"replay {names} where {where!r}: backfilled {got}, expected {expect}")
        return {"s": c.wall, "cpu": c.cpu}

    def rerun(self, rep: int) -> dict:
        """Recording the patched script from scratch: what a replay saves."""
        store = self.ctx.work / f"store-rerun{self.tag}"
        shutil.rmtree(store, ignore_errors=True)
        c = run_child([PYTHON, "train.py", "--flor", f"rerun-{rep}", *fdb.flor_cli_args(self.script.args)],
                      cwd=self.repo, env=base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT)), timeout=1800)
        return {"s": c.wall, "cpu": c.cpu}


def run(ctx: Ctx) -> list[Row]:
    why = available(ctx)
    if why:
        ctx.notes.append(f"replay rows pending: {why}")
        return [Row(SECTION, LEVELS[k], flor=PENDING) for k in LEVELS]
    script = scripts.for_replay(ctx)
    per_run = script.per_run()
    if ctx.quick:  # smoke: all three statements in one replay of one run
        b = Bench(ctx, script, 1)
        names = [script.statements[lv][0] for lv in LEVELS]
        res = interleave({"rerun": b.rerun, "all": lambda rep: b.replay(
            names, "runid = 'rp-0'", 2, {script.statements[lv][0]: per_run[lv] for lv in LEVELS})}, 1)
        return [Row(SECTION, f"{script.label}: all three statements in one replay of one run, wall s",
                    flor=fmt_sample(res["all"]["s"], "s"), base=fmt_sample(res["rerun"]["s"], "s") + " re-run",
                    flordb=ctx.na(), flor_vs=fmt_ratio(ratios(res["rerun"]["s"], res["all"]["s"])) + " speed-up")]
    b = Bench(ctx, script, 1)
    variants = {"rerun": b.rerun}
    for level in LEVELS:
        name = script.statements[level][0]
        variants[level] = (lambda nm, n: lambda rep: b.replay([nm], "runid = 'rp-0'", 2, {nm: n}))(
            name, per_run[level])
    if ctx.flordb:  # interleaved with flor's, so both see the same machine load
        variants.update({f"fdb:{k}": v for k, v in flordb_variants(ctx, script).items()})
    reps = min(ctx.reps, 2)
    ctx.say(f"replay: {reps} x {'/'.join(variants)} of one run")
    res = interleave(variants, reps)
    failed = ctx.data.get("flordb_replay_failed", {})
    rows = []
    for key, unit in (("s", "wall s"), ("cpu", "CPU s (all processes)")):
        base = res["rerun"][key]
        fbase = res.get("fdb:rerun", {}).get(key)
        for level in LEVELS:
            f, d = res[level][key], res.get(f"fdb:{level}", {}).get(key)
            fdb_cell = fmt_sample(d, "s") if d else ctx.na()
            if level in failed:
                fdb_cell = "failed: " + failed[level][-80:]
            rows.append(Row(SECTION, f"{script.label}, {LEVELS[level]}: replay one run, {unit}",
                            flor=fmt_sample(f, "s"), base=fmt_sample(base, "s") + " re-run", flordb=fdb_cell,
                            flor_vs=fmt_ratio(ratios(base, f)) + " speed-up",
                            flordb_vs=(fmt_ratio(ratios(fbase, d)) + " speed-up") if d and fbase else "-",
                            target=TARGETS[level] if key == "s" else ""))
        if fbase:
            rows.append(Row(SECTION, f"FlorDB's re-run (recording the patched script from scratch), {unit}",
                            flordb=fmt_sample(fbase, "s")))
    ctx.data["replay"] = {"rerun": res["rerun"]["s"].values, **{lv: res[lv]["s"].values for lv in LEVELS},
                          "flordb": {k.split(":", 1)[1]: v["s"].values for k, v in res.items()
                                     if k.startswith("fdb:") and "s" in v}}
    rows += scale_out(ctx, reps)
    return rows + long_run(ctx)


def long_run(ctx: Ctx) -> list[Row]:
    """The same statements on a run whose training, not its imports, dominates (as in real use)."""
    script = scripts.tutorial(LONG_EPOCHS)
    b = Bench(ctx, script, 1, levels=("after", "epoch"), tag="-long")
    per_run = script.per_run()
    variants = {"rerun": b.rerun}
    for level in ("after", "epoch"):
        name = script.statements[level][0]
        variants[level] = (lambda nm, n: lambda rep: b.replay([nm], "runid = 'rp-0'", 2, {nm: n}))(
            name, per_run[level])
    ctx.say(f"replay: 1 x {'/'.join(variants)} of one long run ({script.describe()})")
    res = interleave(variants, 1)
    base = res["rerun"]["s"]
    rows = []
    for level in ("after", "epoch"):
        rows.append(Row(SECTION, f"tutorial, long run (epochs={LONG_EPOCHS}), {LEVELS[level]}: replay one run, wall s",
                        flor=fmt_sample(res[level]["s"], "s"), base=fmt_sample(base, "s") + " re-run",
                        flordb=ctx.na("not measured at this length") if ctx.flordb else ctx.na(),
                        flor_vs=fmt_ratio(ratios(base, res[level]["s"])) + " speed-up", target=TARGETS[level]))
    return rows


def scale_out(ctx: Ctx, reps: int) -> list[Row]:
    """Four runs long enough that re-executing them, not the one-time imports, is most of the work."""
    b = Bench(ctx, scripts.tutorial(SCALE_EPOCHS), len(LRS), levels=("inner",), tag="-scale")
    name = b.script.statements["inner"][0]
    expect = {name: len(LRS) * b.script.per_run()["inner"]}

    def with_workers(w: int):
        return lambda rep: b.replay([name], "", w, expect)

    ctx.say(f"replay: {reps} x workers 1/2 over {len(LRS)} runs ({name})")
    res = interleave({1: with_workers(1), 2: with_workers(2)}, reps)
    one, two = res[1]["s"], res[2]["s"]
    ctx.data["replay"]["workers"] = {"1": one.values, "2": two.values}
    return [Row(SECTION, f"{b.script.label} (epochs={SCALE_EPOCHS}), inner-loop statement over {len(LRS)} runs: "
                "2 vs 1 workers, wall s",
                flor=fmt_sample(two, "s"), base=fmt_sample(one, "s") + " (1 worker)",
                flordb=ctx.na("no parallel replay") if ctx.flordb else ctx.na(),
                flor_vs=fmt_ratio(ratios(one, two)) + " speed-up", target=">= 1.6x on 2 cores")]


def flordb_variants(ctx: Ctx, script: scripts.Script) -> dict:
    """FlorDB 4.0.1: record one run, then a re-run and a replay of each statement (it re-executes the run)."""
    repo = scratch_repo(ctx.work / "replay-flordb", {"train.py": fdb.adapt_script(script.source)},
                        ignore=[".flor/obj_store/"])
    env = fdb.env(base_env())
    ctx.say("replay: FlorDB records one run")
    run_child([str(ctx.flordb_python), "train.py", *fdb.cli_args(script.args)], cwd=repo, env=env)
    patched = fdb.adapt_script(script.patched())
    (repo / "train.py").write_text(patched)
    rerun_repo = scratch_repo(ctx.work / "replay-flordb-rerun", {"train.py": patched}, ignore=[".flor/obj_store/"])

    def rerun(rep: int) -> dict:
        c = run_child([str(ctx.flordb_python), "train.py", *fdb.cli_args(script.args)], cwd=rerun_repo, env=env)
        return {"s": c.wall, "cpu": c.cpu}

    failed: dict[str, str] = ctx.data.setdefault("flordb_replay_failed", {})

    def replay(level: str):
        name = script.statements[level][0]

        def go(rep: int) -> dict:
            if level in failed:
                return {}
            try:
                c = fdb.replay(repo, [name], base_env(), FDB_ITERS[level])
                return {"s": c.wall, "cpu": c.cpu}
            except BenchError as exc:  # FlorDB's own limits are results, not suite failures
                failed[level] = " ".join(str(exc).split())[-140:]
                ctx.notes.append(f"FlorDB replay of {name} ({LEVELS[level]}): {failed[level]}")
                return {}
        return go

    return {"rerun": rerun, **{level: replay(level) for level in LEVELS}}
