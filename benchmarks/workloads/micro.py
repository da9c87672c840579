"""Per-call and fixed costs: flor.log microseconds per call, and the time `import flor_lib` takes."""

from __future__ import annotations

import json

import flordb_adapter as fdb
from common import (
    PYTHON,
    ROOT,
    STUB,
    WORKLOADS,
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
    keys = ("thread_cpu_us", "process_cpu_us", "per_log_us")

    def pick(got: dict) -> dict:
        return {k: got[k] for k in keys}

    variants = {
        "stub": lambda rep: pick(one(PYTHON, "flor_lib", n_flor, base_env(PYTHONPATH=str(STUB)))),
        "flor": lambda rep: pick(one(PYTHON, "flor_lib", n_flor, flor_env)),
    }
    if ctx.flordb:
        variants["flordb"] = lambda rep: pick(one(ctx.flordb_python, "flordb", n_fdb, fdb.env(base_env())))
    reps = max(ctx.reps, 1) if ctx.quick else max(ctx.reps, 3)
    ctx.say(f"flor.log: {n_flor} calls (FlorDB {n_fdb}), {reps} x {'/'.join(variants)}")
    res = interleave(variants, reps)
    ctx.data["log_us"] = max(0.0, res["flor"]["thread_cpu_us"].median - res["stub"]["thread_cpu_us"].median)
    rows = []
    for key, what in (("thread_cpu_us", "CPU µs per call, training thread"),
                      ("process_cpu_us", "CPU µs per call, whole process (background flush included)"),
                      ("per_log_us", "wall µs per call")):
        f, s = res["flor"][key], res["stub"][key]
        d = res.get("flordb", {}).get(key)
        rows.append(Row("Per-call and fixed costs", f"flor.log in a nested flor.loop: {what}",
                        flor=fmt_sample(f, "µs"), base=fmt_sample(s, "µs") + " stub loop",
                        flordb=fmt_sample(d, "µs") if d else ctx.na(),
                        flordb_vs=(fmt_ratio(ratios(d, f)) + " of flor") if d else "-",
                        target="flor < 5 µs" if key == "thread_cpu_us" else ""))
    return rows


def imports(ctx: Ctx) -> list[Row]:
    """Wall time of the import statement itself, in a fresh interpreter each time."""
    repo = scratch_repo(ctx.work / "imports", {"README": "import timing\n"}, ignore=[".flor/obj_store/"])
    code = ("import time, sys, json; t, c = time.perf_counter(), time.process_time(); import {m}; "
            "dt, dc = time.perf_counter() - t, time.process_time() - c; "
            "print(json.dumps({{'s': dt, 'cpu': dc, 'heavy': [h for h in " + repr(HEAVY) + " if h in sys.modules]}}))")

    def one(python, module: str, env: dict) -> dict:
        c = run_child([str(python), "-c", code.format(m=module)], cwd=repo, env=env)
        got = json.loads(c.out.strip().splitlines()[-1])
        loaded.setdefault(module, set()).update(got["heavy"])
        return {"s": got["s"], "cpu": got["cpu"]}

    loaded: dict[str, set] = {}
    variants = {"flor": lambda rep: one(PYTHON, "flor_lib", base_env(PYTHONPATH=str(ROOT)))}
    if ctx.flordb:
        variants["flordb"] = lambda rep: one(ctx.flordb_python, "flordb", fdb.env(base_env()))
    reps = max(ctx.reps, 1) if ctx.quick else max(ctx.reps, 5)
    ctx.say(f"imports: {reps} x {'/'.join(variants)}")
    res = interleave(variants, reps)
    rows = []
    for key, what in (("s", "wall"), ("cpu", "CPU")):
        f = res["flor"][key]
        d = res.get("flordb", {}).get(key)
        rows.append(Row("Per-call and fixed costs", f"import flor_lib / import flordb, {what} s (fresh interpreter)",
                        flor=fmt_sample(f, "s"), flordb=fmt_sample(d, "s") if d else ctx.na(),
                        flordb_vs=(fmt_ratio(ratios(d, f)) + " of flor") if d else "-",
                        target="flor < 0.3 s" if key == "s" else ""))
    d = res.get("flordb", {}).get("s")
    heavy = sorted(loaded.get("flor_lib", set()))
    rows += [Row("Per-call and fixed costs", "heavy modules loaded by the import (prefect/pandas/duckdb/torch/IPython)",
                flor=", ".join(heavy) or "none", flordb=", ".join(sorted(loaded.get("flordb", set())))
                if d else ctx.na(), target="flor: none")]
    if heavy:
        rows[-1].failed = True
        raise_later = f"import flor_lib loads {', '.join(heavy)}"
        ctx.notes.append(f"BUG: {raise_later} (ARCHITECTURE.md: never on the training path)")
    if not ctx.quick:
        def floor(rep: int) -> dict:
            c = run_child([PYTHON, "-c", "import torch, sklearn.datasets"], cwd=repo, env=base_env())
            return {"s": c.wall, "cpu": c.cpu}

        ref = interleave({"ref": floor}, 2)["ref"]
        rows.append(Row("Per-call and fixed costs", "reference: python -c 'import torch, sklearn.datasets': wall s, "
                        "CPU s", base=f"{fmt_sample(ref['s'], 's')}, {fmt_sample(ref['cpu'], 's')} CPU",
                        target="the floor of every tutorial process"))
    return rows
