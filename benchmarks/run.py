#!/usr/bin/env python
"""flor's benchmark suite: flor against the plain script and FlorDB 4.0.1, side by side.

    .venv/bin/python benchmarks/run.py               # everything (a few minutes), writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick       # smoke mode: tiny workloads, 1 repetition, no FlorDB
    .venv/bin/python benchmarks/run.py --only overhead queries

Not a test: nothing here asserts timings. The exit status is 1 only when a flor measurement could
not be taken (a crash, wrong results), so that the smoke mode catches a suite that rotted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # flor_lib, for generating stores

import flordb_adapter  # noqa: E402
import report  # noqa: E402
from common import BENCH, WORK, BenchError, machine, remove_tree  # noqa: E402
from suite import Ctx, Row  # noqa: E402
from workloads import checkpoints, flows, micro, queries, replay, tutorial  # noqa: E402

BENCHMARKS = {  # name -> (function, section it fills)
    "log": (micro.log_calls, "Per-call and fixed costs"),  # first: overhead uses its per-call figure
    "overhead": (tutorial.run, tutorial.SECTION),
    "import": (micro.imports, "Per-call and fixed costs"),
    "checkpoint": (checkpoints.run, "Checkpoints"),
    "query": (queries.run, "Queries"),
    "replay": (replay.run, replay.SECTION),
    "replay-long": (replay.long_run, replay.SECTION),  # only the long run (also part of "replay")
    "flow": (flows.run, flows.SECTION),
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny workloads, 1 repetition, no FlorDB")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only these: {', '.join(BENCHMARKS)}")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3; heavy workloads use at most 2)")
    p.add_argument("--out", type=Path, help="where RESULTS.md and the plots go (default benchmarks/; "
                                            "--quick: a temporary folder unless given)")
    p.add_argument("--work", type=Path, help="scratch folder (default benchmarks/.work/run; --quick: a temporary one)")
    p.add_argument("--no-flordb", action="store_true", help="leave FlorDB out (its column says n/a)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    temp = tempfile.mkdtemp(prefix="flor-bench-") if args.quick else None
    out = args.out or (Path(temp) if temp else BENCH)
    work = args.work or (Path(temp) / "work" if temp else WORK / "run")
    out.mkdir(parents=True, exist_ok=True)
    remove_tree(work)
    work.mkdir(parents=True)
    ctx = Ctx(quick=args.quick, reps=1 if args.quick else (args.reps or 3), work=work, out=out)
    if args.reps and args.quick:
        ctx.reps = args.reps
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if args.quick or args.no_flordb:
        ctx.flordb_reason = "not in --quick" if args.quick else "--no-flordb"
    else:
        ctx.flordb_python, ctx.flordb_reason = flordb_adapter.ensure(log=ctx.say)
        if not ctx.flordb:
            ctx.notes.append(f"FlorDB {flordb_adapter.VERSION} could not be set up: {ctx.flordb_reason}")
            ctx.say(f"FlorDB n/a: {ctx.flordb_reason}")
    rows: list[Row] = []
    for name in args.only or [n for n in BENCHMARKS if n != "replay-long"]:
        fn, section = BENCHMARKS[name]
        try:
            rows += fn(ctx)
        except (BenchError, OSError, ValueError, KeyError) as exc:
            msg = " ".join(str(exc).split())[:400]
            ctx.say(f"{name}: FAILED: {msg}")
            if not isinstance(exc, BenchError):
                traceback.print_exc()
            rows.append(Row(section, f"{name}: could not be measured", flor="error", target=msg[:160], failed=True))
            ctx.notes.append(f"{name} failed: {msg}")
    seconds = time.perf_counter() - started
    plots = report.plots(ctx)
    command = " ".join(["python", "benchmarks/run.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    text = report.results_md(ctx, rows, info, command, seconds, plots)
    (out / "RESULTS.md").write_text(text)
    print(report.table(rows))
    for note in ctx.notes:
        print(f"note: {note}")
    print(f"wrote {out / 'RESULTS.md'}" + "".join(f", {p}" for p in plots) + f" in {seconds:.0f} s")
    if temp and args.work is None:
        remove_tree(work)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
