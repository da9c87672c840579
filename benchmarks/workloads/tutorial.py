"""The tutorial example recorded by flor, run plain (stub flor_lib) and recorded by FlorDB 4.0.1.

Figures: record overhead (CPU and wall, interleaved triples), and the tutorial's checkpoints
(count, bytes, share of the run, time the training thread was blocked) from the runs' metadata.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    STUB,
    WORKLOADS,
    BenchError,
    Sample,
    base_env,
    fmt_pct,
    fmt_sample,
    interleave,
    ratios,
    run_child,
    scratch_repo,
)
from suite import Ctx, Row

from flor_lib import config
from workloads import runmeta, scripts

SECTION = "Record overhead"


def check_stub(ctx: Ctx) -> None:
    """The plain baseline really imports the pass-through stub, not flor."""
    probe = run_child([PYTHON, "-c", "import flor_lib; print(flor_lib.__file__)"], cwd=ctx.work,
                      env=base_env(PYTHONPATH=str(STUB)))
    if not probe.out.strip().startswith(str(STUB)):
        raise BenchError(f"the stub flor_lib is shadowed: {probe.out.strip()}")


def repos(ctx: Ctx, tag: str, src: str) -> dict[str, Path]:
    """Scratch repos holding the script as train.py (FlorDB's adapted to its spellings)."""
    out = {"flor": scratch_repo(ctx.work / f"{tag}-flor", {"train.py": src}),
           "plain": scratch_repo(ctx.work / f"{tag}-plain", {"train.py": src})}
    if ctx.flordb:
        out["flordb"] = scratch_repo(ctx.work / f"{tag}-flordb", {"train.py": fdb.adapt_script(src)},
                                     ignore=[".flor/obj_store/"])
    return out


def run(ctx: Ctx) -> list[Row]:
    check_stub(ctx)
    rows = []
    for script in scripts.for_overhead(ctx):
        rows += measure(ctx, script)
    if ctx.quick:
        return rows
    return paired(ctx) + whole_script_rows(ctx) + rows


PAIRED_EPOCHS = 150  # x 2 copies x ~85 ms: one process's median ratio is good to about ±1% here
OUTSIDE_LOOP = ("start", "code_snapshot", "exit")  # flor's accounted work before and after the training loop


def paired(ctx: Ctx) -> list[Row]:
    """The tutorial's model trained twice in lockstep in one process, one copy recorded (paired_train.py)."""
    repo = scratch_repo(ctx.work / "paired", {"paired_train.py": (WORKLOADS / "paired_train.py").read_text()},
                        ignore=["store/", "*.json"])
    out = repo / "result.json"
    env = base_env(FLOR_STORE=str(repo / "store"), PYTHONPATH=str(ROOT))

    def one(extra_env: dict, *args: str) -> dict:
        out.unlink(missing_ok=True)
        run_child([PYTHON, "paired_train.py", str(PAIRED_EPOCHS), str(out), *args], cwd=repo,
                  env={**env, **extra_env})
        got = json.loads(out.read_text())
        if not got["same_weights"]:
            raise BenchError("paired copies diverged: the recorded copy did not train like the plain one")
        # recording's cost on training: A's extra training-thread CPU (median per-epoch ratio) plus flor's
        # background threads
        return {"pct": 100 * (got["median_ratio"] - 1 + got["background_s"] / got["b_s"]), "b_s": got["b_s"],
                "pct_main": 100 * (got["median_ratio_main"] - 1 + got["background_s"] / got["b_main_s"]),
                "checkpoints": got["checkpoints"]}

    variants = {"default": lambda rep: one({}), "eps0": lambda rep: one({"FLOR_EPSILON": "0"}),
                "control": lambda rep: one({}, "aa")}
    reps = max(ctx.reps, 3)
    ctx.say(f"record overhead, paired in one process: {reps} x {'/'.join(variants)} ({PAIRED_EPOCHS} epochs)")
    res = interleave(variants, reps)
    ctx.data["paired_pct"] = res["default"]["pct"]
    label = f"tutorial model, paired in one process (epochs={PAIRED_EPOCHS})"
    ck = res["default"]["checkpoints"]
    return [
        Row(SECTION, f"{label}: recording's cost on the training loop, % of the plain copy's CPU "
            f"(the process's CPU: torch's threads + flor's background threads; {ck.median:.0f} checkpoints)",
            flor=fmt_sample(res["default"]["pct"], "%"), base=fmt_sample(res["default"]["b_s"], "s") + " plain copy",
            target="flor < +2% (logging must not slow training)"),
        Row(SECTION, f"{label}: same, on the training thread alone (≈ wall-time slowdown) + flor's threads",
            flor=fmt_sample(res["default"]["pct_main"], "%")),
        Row(SECTION, f"{label}: same, FLOR_EPSILON=0 (logging and loops only, first and last checkpoint)",
            flor=fmt_sample(res["eps0"]["pct"], "%"), base=fmt_sample(res["eps0"]["b_s"], "s") + " plain copy"),
        Row(SECTION, f"{label}: control, both copies plain (the method's noise floor)",
            flor=fmt_sample(res["control"]["pct"], "%"), base=fmt_sample(res["control"]["b_s"], "s") + " plain copy"),
    ]


LOOP_START, LOOP_END = "# Train the model\n", "# Test the model\n"


def timed(src: str) -> str:
    """The script printing the wall and CPU seconds (all threads) of its training loops."""
    if LOOP_START not in src or LOOP_END not in src:
        return src
    return (src.replace(LOOP_START, "import time as _bt\n_bt0 = (_bt.perf_counter(), _bt.process_time())\n"
                        + LOOP_START, 1)
            .replace(LOOP_END, 'print("BENCH_LOOP", _bt.perf_counter() - _bt0[0], _bt.process_time() - _bt0[1], '
                     "flush=True)\n" + LOOP_END, 1))


def loop_times(out: str) -> dict:
    """The training loops' seconds printed by a timed script (empty when it printed none)."""
    for line in out.splitlines():
        if line.startswith("BENCH_LOOP "):
            wall, cpu = map(float, line.split()[1:3])
            return {"loop_wall": wall, "loop_cpu": cpu}
    return {}


def measure(ctx: Ctx, script: scripts.Script) -> list[Row]:
    """Interleaved plain / flor / FlorDB runs of one script."""
    args = script.args
    tag = script.path.stem
    where = repos(ctx, tag, timed(script.source))
    store = ctx.work / f"store-{tag}"
    flor_env = base_env(FLOR_STORE=str(store), PYTHONPATH=str(ROOT))
    plain_env = base_env(PYTHONPATH=str(STUB))

    def plain(rep: int) -> dict:
        c = run_child([PYTHON, "train.py", *fdb.flor_cli_args(args)], cwd=where["plain"], env=plain_env)
        return {"cpu": c.cpu, "wall": c.wall, **loop_times(c.out)}

    def flor(rep: int) -> dict:
        c = run_child([PYTHON, "train.py", "--flor", f"ovh-{rep}", *fdb.flor_cli_args(args)], cwd=where["flor"],
                      env=flor_env)
        return {"cpu": c.cpu, "wall": c.wall, **loop_times(c.out)}

    def flordb(rep: int) -> dict:
        c = run_child([str(ctx.flordb_python), "train.py", *fdb.cli_args(args)], cwd=where["flordb"],
                      env=fdb.env(base_env()))
        return {"cpu": c.cpu, "wall": c.wall, **loop_times(c.out)}

    def flor_min_ckpt(rep: int) -> dict:  # first and last checkpoint only: recording without the eps budget
        c = run_child([PYTHON, "train.py", "--flor", f"eps0-{rep}", *fdb.flor_cli_args(args)], cwd=where["flor"],
                      env={**flor_env, "FLOR_EPSILON": "0"})
        return {"cpu": c.cpu, "wall": c.wall}

    variants = {"plain": plain, "flor": flor}
    if script.checkpoints:
        variants["flor_eps0"] = flor_min_ckpt
    if ctx.flordb:
        variants["flordb"] = flordb
    reps = ctx.reps if script.checkpoints or ctx.quick else max(ctx.reps, 5)
    ctx.say(f"record overhead: {script.describe()}, {reps} x {'/'.join(variants)} interleaved")
    res = interleave(variants, reps)
    label = script.describe()
    rows = []
    for key, what in (("loop_cpu", "training loops CPU s (in script, all threads)"),
                      ("loop_wall", "training loops wall s (in script)")):
        if key in res["flor"] and key in res["plain"]:
            p, f = res["plain"][key], res["flor"][key]
            d = res.get("flordb", {}).get(key)
            rows.append(Row(SECTION, f"{label}: {what}", flor=fmt_sample(f, "s"), base=fmt_sample(p, "s"),
                            flordb=fmt_sample(d, "s") if d else ctx.na(), flor_vs=fmt_pct(ratios(f, p)),
                            flordb_vs=fmt_pct(ratios(d, p)) if d else "-",
                            target="flor < +2% (logging must not slow training)" if key == "loop_cpu" else ""))
    for key, what in (("cpu", "CPU s per run (user+sys)"), ("wall", "wall s per run")):
        p, f = res["plain"][key], res["flor"][key]
        d = res.get("flordb", {}).get(key)
        rows.append(Row(SECTION, f"{label}: {what}", flor=fmt_sample(f, "s"), base=fmt_sample(p, "s"),
                        flordb=fmt_sample(d, "s") if d else ctx.na(), flor_vs=fmt_pct(ratios(f, p)),
                        flordb_vs=fmt_pct(ratios(d, p)) if d else "-",
                        target=script.target if key == "cpu" else ""))
        diff = Sample([x - y for x, y in zip(f.values, p.values, strict=False)])
        ddiff = Sample([x - y for x, y in zip(d.values, p.values, strict=False)]) if d else None
        rows.append(Row(SECTION, f"{label}: added {what.split(' per')[0]} per run (flor - plain)",
                        flor=fmt_sample(diff, "s"), flordb=fmt_sample(ddiff, "s") if d else ctx.na()))
        if "flor_eps0" in res:
            e = res["flor_eps0"][key]
            rows.append(Row(SECTION, f"{label}: {what}, flor with FLOR_EPSILON=0 (first and last checkpoint only)",
                            flor=fmt_sample(e, "s"), base=fmt_sample(p, "s"), flor_vs=fmt_pct(ratios(e, p)),
                            target="record cost without the checkpoint budget" if key == "cpu" else ""))
    ctx.data.setdefault("overhead", {})[tag] = {k: {m: s.values for m, s in v.items()} for k, v in res.items()}
    metas = runmeta.load(store, "ovh-")
    rows += accounted_rows(ctx, metas, res["plain"]["cpu"], label, script.target)
    if script.checkpoints:
        ctx.data["tutorial_parts"] = {"label": label, "plain": res["plain"], "target": script.target,
                                      "metas": metas}
        rows += checkpoint_rows(ctx, metas, label)
    return rows


def whole_script_rows(ctx: Ctx) -> list[Row]:
    """The issue's measure (flor's CPU against the plain script's, whole process) from two precise parts.

    Side by side, two processes a minute apart differ by ±5-10% here, which cannot settle 2%. So: what
    flor does outside the training loop (start, code snapshot, commit) is accounted in each run's
    metadata, where it runs; what recording costs the loop itself (checkpoints, logging, flor's threads,
    and any indirect cost such as caches a checkpoint evicts) is the paired measure, applied to the
    plain run's own loop CPU.
    """
    parts, pct = ctx.data.get("tutorial_parts"), ctx.data.get("paired_pct")
    if not parts or not pct or "loop_cpu" not in parts["plain"]:
        return []
    costs = [m["attempts"][-1]["cost"] for m in parts["metas"] if (m.get("attempts") or [{}])[-1].get("cost")]
    outside = Sample([sum(c.get(k, 0.0) for k in OUTSIDE_LOOP) for c in costs])
    loop_cpu, cpu = parts["plain"]["loop_cpu"].median, parts["plain"]["cpu"].median
    share = Sample([100 * (outside.median + p / 100 * loop_cpu) / cpu for p in pct.values])
    return [Row(SECTION, f"{parts['label']}: recording's cost on the whole script, % of the plain run's CPU "
                f"= (flor's accounted CPU outside the loop {outside.median:.3f} s + the paired loop overhead x "
                f"the plain loop's {loop_cpu:.2f} s) / {cpu:.2f} s", flor=fmt_sample(share, "%"),
                target=parts["target"])]


def accounted_rows(ctx: Ctx, metas: list[dict], plain_cpu: Sample, label: str, target: str) -> list[Row]:
    """flor's own CPU per run as each run accounted it (metadata `cost`), against the plain run's CPU.

    Unlike the side-by-side rows, this does not depend on how two processes happened to be scheduled:
    each part is thread CPU time where it runs. Per-call costs (flor.log, flor.loop iterations) are
    estimated from the flor.log micro-benchmark of the same invocation (`--only log overhead`).
    """
    costs = [m["attempts"][-1]["cost"] for m in metas if (m.get("attempts") or [{}])[-1].get("cost")]
    if not costs or not plain_cpu:
        return [Row(SECTION, f"{label}: flor's own CPU (run metadata)", flor="n/a: no cost in metadata")]
    per_call_us = ctx.data.get("log_us")
    calls = [c.get("iterations", 0) + c.get("records", 0) for c in costs]
    est = [n * per_call_us / 1e6 if per_call_us is not None else 0.0 for n in calls]
    total = Sample([c["total_s"] + e for c, e in zip(costs, est, strict=True)])
    share = Sample([1 + t / plain_cpu.median for t in total.values])
    parts = sorted({k for c in costs for k, v in c.items() if k not in ("total_s", "iterations", "records")})
    median = {k: Sample([c.get(k, 0.0) for c in costs]).median for k in parts}
    calls_note = (f"calls {statistics.median(calls):.0f} x {per_call_us:.2f} µs = {statistics.median(est):.3f}"
                  if per_call_us is not None else "calls not estimated (run `--only log overhead`)")
    return [
        Row(SECTION, f"{label}: flor's own CPU s per run, accounted where it runs (metadata `cost`)",
            flor=fmt_sample(total, "s"), base=fmt_sample(plain_cpu, "s") + " plain run",
            flor_vs=fmt_pct(share), target=target),
        Row(SECTION, f"{label}: ... by part, median s", flor=", ".join(f"{k} {v:.3f}" for k, v in median.items())
            + f"; {calls_note}"),
    ]


def checkpoint_rows(ctx: Ctx, metas: list[dict], label: str, eps: float | None = None) -> list[Row]:
    """Checkpoint figures of a set of recorded runs, from their metadata."""
    eps = config.epsilon() if eps is None else eps
    if not metas:
        return [Row("Checkpoints", f"{label}: no run metadata found", flor="error", failed=True)]
    stats = [runmeta.checkpoint_stats(m) for m in metas]
    col = {k: Sample([s[k] for s in stats]) for k in stats[0]}
    na = ctx.na("4.x takes no checkpoints") if ctx.flordb else ctx.na()
    sec = "Checkpoints"
    return [
        Row(sec, f"{label}: checkpoints per run / outer iterations",
            flor=f"{fmt_sample(col['count'])} / {fmt_sample(col['outer'])}", flordb=na),
        Row(sec, f"{label}: MB per checkpoint", flor=fmt_sample(col["mb"]), flordb=na),
        Row(sec, f"{label}: save cost (copy+serialize+write), % of run", flor=fmt_sample(col["cost_pct"], "%"),
            flordb=na, target=f"budget eps = {eps * 100:.1f}% of training's wall or CPU time"),
        Row(sec, f"{label}: training thread blocked (copy), s per run",
            flor=f"{fmt_sample(col['blocked_s'], 's')} = {fmt_sample(col['blocked_pct'], '%')}", flordb=na,
            target="only the copy"),
        Row(sec, f"{label}: background save s per checkpoint", flor=fmt_sample(col["save_each_s"], "s"),
            flordb=na),
    ]
