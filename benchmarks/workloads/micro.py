"""Per-call and fixed costs: flor.log microseconds per call, and the time `import flor_lib` takes."""

from __future__ import annotations

import json

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    STUB,
    WORKLOADS,
    BenchError,
    base_env,
    fmt_ratio,
    fmt_sample,
    interleave,
    ratios,
    run_child,
    scratch_repo,
)
from suite import Ctx, Row

HEAVY = ("prefect", "pandas", "duckdb", "torch", "IPython")


def log_calls(ctx: Ctx) -> list[Row]:
    """flor.log in a tight nested flor.loop, flor vs the stub (loop alone) vs FlorDB."""
    n_flor = 20_000 if ctx.quick else 200_000
    n_fdb = 5_000  # ~150 µs per call: about a second
    repo = scratch_repo(ctx.work / "micro", {"micro_log.py": (WORKLOADS / "micro_log.py").read_text()},
                        ignore=["store/", "*.json", ".flor/obj_store/"])
    out = repo / "result.json"

    def one(python, module: str, n: int, env: dict) -> dict:
        out.unlink(missing_ok=True)
        run_child([str(python), "micro_log.py", module, str(n), str(out)], cwd=repo, env=env)
        return json.loads(out.read_text())

    flor_env = base_env(FLOR_STORE=str(repo / "store"), PYTHONPATH=str(ROOT))
    variants = {
        "stub": lambda rep: {"us": one(PYTHON, "flor_lib", n_flor, base_env(PYTHONPATH=str(STUB)))["per_log_us"]},
        "flor": lambda rep: {"us": one(PYTHON, "flor_lib", n_flor, flor_env)["per_log_us"]},
    }
    if ctx.flordb:
        variants["flordb"] = lambda rep: {"us": one(ctx.flordb_python, "flordb", n_fdb,
                                                   fdb.env(base_env()))["per_log_us"]}
    ctx.say(f"flor.log: {n_flor} calls (FlorDB {n_fdb}), {ctx.reps} x {'/'.join(variants)}")
    res = interleave(variants, ctx.reps)
    f, s = res["flor"]["us"], res["stub"]["us"]
    d = res.get("flordb", {}).get("us")
    return [Row("Per-call and fixed costs", "flor.log µs per call (in nested flor.loop; base = stub loop)",
                flor=fmt_sample(f, "µs"), base=fmt_sample(s, "µs"), flordb=fmt_sample(d, "µs") if d else ctx.na(),
                flor_vs="-", flordb_vs=(fmt_ratio(ratios(d, f)) + " of flor") if d else "-",
                target="flor < 5 µs")]


def imports(ctx: Ctx) -> list[Row]:
    """Wall time of the import statement itself, in a fresh interpreter each time."""
    repo = scratch_repo(ctx.work / "imports", {"README": "import timing\n"}, ignore=[".flor/obj_store/"])
    code = ("import time, sys, json; t = time.perf_counter(); import {m}; dt = time.perf_counter() - t; "
            "print(json.dumps({{'s': dt, 'heavy': [h for h in " + repr(HEAVY) + " if h in sys.modules]}}))")

    def one(python, module: str, env: dict) -> dict:
        c = run_child([str(python), "-c", code.format(m=module)], cwd=repo, env=env)
        got = json.loads(c.out.strip().splitlines()[-1])
        loaded.setdefault(module, set()).update(got["heavy"])
        return {"s": got["s"]}

    loaded: dict[str, set] = {}
    variants = {"flor": lambda rep: one(PYTHON, "flor_lib", base_env(PYTHONPATH=str(ROOT)))}
    if ctx.flordb:
        variants["flordb"] = lambda rep: one(ctx.flordb_python, "flordb", fdb.env(base_env()))
    reps = max(ctx.reps, 1) if ctx.quick else max(ctx.reps, 5)
    ctx.say(f"imports: {reps} x {'/'.join(variants)}")
    res = interleave(variants, reps)
    f = res["flor"]["s"]
    d = res.get("flordb", {}).get("s")
    heavy = sorted(loaded.get("flor_lib", set()))
    rows = [Row("Per-call and fixed costs", "import time, s (fresh interpreter)", flor=fmt_sample(f, "s"),
                flordb=fmt_sample(d, "s") if d else ctx.na(),
                flordb_vs=(fmt_ratio(ratios(d, f)) + " of flor") if d else "-", target="flor < 0.3 s"),
            Row("Per-call and fixed costs", "heavy modules loaded by the import (prefect/pandas/duckdb/torch/IPython)",
                flor=", ".join(heavy) or "none", flordb=", ".join(sorted(loaded.get("flordb", set())))
                if d else ctx.na(), target="flor: none")]
    if heavy:
        rows[-1].failed = True
        raise_later = f"import flor_lib loads {', '.join(heavy)}"
        ctx.notes.append(f"BUG: {raise_later} (ARCHITECTURE.md: never on the training path)")
    if not ctx.quick:
        ref = interleave({"ref": lambda rep: {"s": run_child(
            [PYTHON, "-c", "import torch, sklearn.datasets"], env=base_env()).wall}}, 2)["ref"]["s"]
        rows.append(Row("Per-call and fixed costs", "reference: python -c 'import torch, sklearn.datasets', wall s",
                        base=fmt_sample(ref, "s"), target="the floor of every training process here"))
        ctx.data["import_floor_s"] = ref.values
    if not f:
        raise BenchError("no import timing")
    return rows
