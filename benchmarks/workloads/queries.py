"""Query latency over synthetic stores of N runs x ~1,000 records (N = 10, 100, 1000), flor vs FlorDB.

Each run logs `loss` at every (epoch, step) of 10 x 99, `val_acc` per epoch, and 4 args. flor's store
is written in its layout (run metadata JSON + one Parquet file per run, then compacted with
flor_lib.compact.merge_project, as `flor` does after runs); FlorDB's is its sqlite `logs` table with
the same records, ctx JSON and the timing rows a FlorDB run adds.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flordb_adapter as fdb
import numpy as np
from common import (
    PYTHON,
    ROOT,
    WORK,
    WORKLOADS,
    BenchError,
    Sample,
    base_env,
    fmt_ratio,
    fmt_sample,
    run_child,
)
from common import scratch_repo as make_repo
from suite import Ctx, Row

PROJID = "bench_main"
ARGS = {"hidden": 500, "epochs": 10, "batch_size": 32, "lr": 0.001}
GEN_VERSION = "1"
MEM_GB = 8  # per query process; the machine has 24 GiB shared with others
TIMEOUT_S = 600


def shape(ctx: Ctx) -> tuple[list[int], int, int]:
    """(run counts, epochs, steps per epoch)."""
    return ([10], 2, 9) if ctx.quick else ([10, 100, 1000], 10, 99)


def _done(path: Path, key: str) -> bool:
    marker = path / ".bench-complete"
    return marker.exists() and marker.read_text() == key


def flor_store(path: Path, runs: int, epochs: int, steps: int) -> Path:
    """A compacted flor store of `runs` runs (cached under benchmarks/.work between invocations)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flor_lib import compact
    from flor_lib.schema import RECORD_SCHEMA
    from flor_lib.store import Store

    key = f"{GEN_VERSION} {runs} {epochs} {steps}"
    if _done(path, key):
        return path
    if path.exists():
        import shutil

        shutil.rmtree(path)
    rec_dir = path / "records" / f"projid={PROJID}"
    meta_dir = path / "runs" / PROJID
    rec_dir.mkdir(parents=True)
    meta_dir.mkdir(parents=True)
    loops, iters, names, kinds, vtypes = [], [], [], [], []
    for k in ARGS:
        loops.append([]), iters.append([]), names.append(k), kinds.append("arg")
        vtypes.append("float" if isinstance(ARGS[k], float) else "int")
    for e in range(epochs):
        for s in range(steps):
            loops.append(["epoch", "step"]), iters.append([e, s]), names.append("loss"), kinds.append("log")
            vtypes.append("float")
        loops.append(["epoch"]), iters.append([e]), names.append("val_acc"), kinds.append("log")
        vtypes.append("float")
    n = len(names)
    arg_vals = [float(v) for v in ARGS.values()]
    arg_text = [None if isinstance(v, float) else str(v) for v in ARGS.values()]
    fixed = {"loops": pa.array(loops, pa.list_(pa.string())), "iters": pa.array(iters, pa.list_(pa.int64())),
             "kind": pa.array(kinds), "name": pa.array(names), "value_type": pa.array(vtypes),
             "value_text": pa.array(arg_text + [None] * (n - len(ARGS)), pa.string()),
             "seq": pa.array(np.arange(n)), "attempt": pa.array(np.ones(n, np.int32)),
             "filename": pa.array(["train.py"] * n), "source": pa.array(["record"] * n),
             "replay_id": pa.array([None] * n, pa.string())}
    rng = np.random.default_rng(0)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(runs):
        runid, tstamp, vid = f"run-{i:05d}", t0 + timedelta(minutes=i), f"{i % 7:040x}"
        values = np.concatenate([arg_vals, rng.random(n - len(ARGS))])
        cols = dict(fixed, projid=pa.array([PROJID] * n), runid=pa.array([runid] * n),
                    tstamp=pa.array([tstamp] * n, pa.timestamp("us", tz="UTC")), vid=pa.array([vid] * n),
                    value=pa.array(values, pa.float64()))
        table = pa.table({f.name: cols[f.name] for f in RECORD_SCHEMA}, schema=RECORD_SCHEMA)
        pq.write_table(table, rec_dir / f"{runid}--a1.parquet", compression="zstd")
        end = tstamp + timedelta(seconds=30)
        meta = {"projid": PROJID, "runid": runid, "tstamp": tstamp.isoformat(), "vid": vid, "filename": "train.py",
                "repo": "/nonexistent/bench", "branch": "main", "argv": [], "args": dict(ARGS), "host": "bench",
                "python": "3.11", "torch": "2.13.0", "cuda_visible_devices": None, "sweep": None,
                "status": "completed", "end": end.isoformat(), "checkpoints": [], "attempts": [
                    {"attempt": 1, "start_seq": 0, "pid": 1, "host": "bench", "start": tstamp.isoformat(),
                     "end": end.isoformat(), "resumed_from": None}],
                "outer_iters": epochs, "records": n, "skipped_checkpoints": 0}
        (meta_dir / f"{runid}.json").write_text(json.dumps(meta, indent=1))
    compact.merge_project(Store(str(path)), PROJID, at_least=1)
    (path / ".bench-complete").write_text(key)
    return path


def flordb_store(path: Path, runs: int, epochs: int, steps: int) -> Path:
    """A FlorDB project (git repo + .flor/<projid>.db) holding the same records."""
    key = f"{GEN_VERSION} {runs} {epochs} {steps}"
    if _done(path, key):
        return path
    make_repo(path, {"train.py": "# synthetic\n"}, ignore=[".flor/", ".bench-complete"])
    db = path / ".flor" / f"{path.name}.db"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE logs (projid TEXT, tstamp TEXT, filename TEXT, ctx TEXT, value_name TEXT, value TEXT,"
                " value_type INTEGER, source TEXT NOT NULL DEFAULT 'forward')")
    rng = np.random.default_rng(0)
    t0 = datetime(2025, 1, 1)
    proj = path.name

    def seg(name, i):
        return {"name": name, "iteration": i, "value": str(i)}

    for i in range(runs):
        ts = (t0 + timedelta(minutes=i)).isoformat(timespec="microseconds")
        rows = [(proj, ts, "train.py", None, k, str(v), 1) for k, v in ARGS.items()]
        rows.append((proj, ts, "train.py", None, "time::setup", str(rng.random()), 3))
        vals = iter(rng.random(epochs * (steps + 1)))
        for e in range(epochs):
            for s in range(steps):
                rows.append((proj, ts, "train.py", json.dumps([seg("epoch", e), seg("step", s)]), "loss",
                             str(next(vals)), 1))
            ectx = json.dumps([seg("epoch", e)])
            rows.append((proj, ts, "train.py", ectx, "val_acc", str(next(vals)), 1))
            rows += [(proj, ts, "train.py", ectx, t, "0.01", 3)
                     for t in ("time::iter", "time::iter::std", "time::iter::n", "time::loop")]
        rows += [(proj, ts, "train.py", None, t, "0.1", 3)
                 for t in ("time::iter", "time::iter::std", "time::iter::n", "time::loop", "time::script",
                           "time::teardown")]
        con.executemany("INSERT INTO logs (projid, tstamp, filename, ctx, value_name, value, value_type) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    (path / ".bench-complete").write_text(key)
    return path


def run(ctx: Ctx) -> list[Row]:
    sizes, epochs, steps = shape(ctx)
    calls = 1 if ctx.quick else 2
    reps = ctx.reps if ctx.quick else min(ctx.reps, 2)
    cache = ctx.work / "stores" if ctx.quick else WORK / "query-stores"  # big stores survive between invocations
    ctx.say(f"queries: generating stores of {sizes} runs x {epochs * (steps + 1)} records (cached)")
    stores = {n: flor_store(cache / f"flor-{n}", n, epochs, steps) for n in sizes}
    fdb_repos = {n: flordb_store(cache / f"fdb{n}", n, epochs, steps) for n in sizes} if ctx.flordb else {}
    child = WORKLOADS / "query_child.py"
    out = ctx.work / "query.json"
    res: dict[str, dict[int, Sample]] = {}
    errors: dict[str, tuple[int, str]] = {}  # "system:call" -> (first size it failed at, why)
    for rep in range(reps):
        for n in sizes:
            if n >= 1000 and rep > 0:  # FlorDB's dataframe takes minutes there: one pair only
                continue
            systems = [("flor", PYTHON, stores[n], base_env(FLOR_STORE=str(stores[n]), PYTHONPATH=str(ROOT)))]
            if ctx.flordb:
                systems.append(("flordb", ctx.flordb_python, fdb_repos[n], fdb.env(base_env())))
            for system, python, cwd, env in systems:
                if all(n >= errors.get(f"{system}:{w}", (n + 1,))[0] for w in ("sql", "dataframe")):
                    continue
                out.unlink(missing_ok=True)
                try:
                    run_child([str(python), str(child), system, str(1 if n >= 1000 else calls), str(out)], cwd=cwd,
                              env=env, timeout=TIMEOUT_S, mem_gb=MEM_GB)
                    got = json.loads(out.read_text())
                except BenchError as exc:
                    why = str(exc).strip().splitlines()[-1].strip()[-160:]
                    got = {"errors": {"sql": why, "dataframe": why}, "rows": {}}
                for what, why in got["errors"].items():
                    errors.setdefault(f"{system}:{what}", (n, f"{why} (at {n} runs; {MEM_GB} GB cap)"))
                    ctx.say(f"queries: {system} {what} failed at {n} runs: {why}")
                expect = {"dataframe": n * epochs * steps, "sql": n}
                for what in ("dataframe", "sql"):
                    if what in got["rows"] and got["rows"][what] != expect[what]:
                        raise BenchError(f"{system} {what} over {n} runs returned {got['rows'][what]} rows, "
                                         f"expected {expect[what]}")
                    for t in got.get(what, []):
                        res.setdefault(f"{system}:{what}", {}).setdefault(n, Sample()).add(t)
    ctx.data["queries"] = {k: {n: s.values for n, s in v.items()} for k, v in res.items()}
    rows = []
    for what, label, fdb_label in (("dataframe", 'flor.dataframe("loss")', "flor.dataframe"),
                                   ("sql", "flor.sql(max(value) by run)", "flor.query")):
        for n in sizes:
            f = res.get(f"flor:{what}", {}).get(n)
            d = res.get(f"flordb:{what}", {}).get(n)
            flor_err = errors.get(f"flor:{what}", (0, "?"))[1]
            fdb_err = errors.get(f"flordb:{what}")
            flor_cell = fmt_sample(f, "s") if f else f"error: {flor_err}"
            fdb_cell = (fmt_sample(d, "s") + f" ({fdb_label})") if d else \
                (f"error: {fdb_err[1]}" if fdb_err else ctx.na())
            rows.append(Row("Queries", f"{label}, {n} runs x {epochs * (steps + 1)} records, s", flor=flor_cell,
                            flordb=fdb_cell, flordb_vs=(fmt_ratio(_ratio(d, f)) + " of flor") if d and f else "-",
                            failed=not f))
    for key, (_n, why) in errors.items():
        ctx.notes.append(f"{key.replace(':', ' ')} failed: {why}")
    return rows


def _ratio(a: Sample, b: Sample) -> Sample:
    return Sample([a.median / b.median])
