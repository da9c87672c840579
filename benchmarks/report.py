"""The results table (stdout and RESULTS.md) and the plots."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

from suite import Ctx, Row

HEADER = ["Measure", "flor", "baseline", "FlorDB 4.0.1", "flor vs baseline", "FlorDB vs baseline", "target"]
ABOUT = {
    "Record overhead": "baseline = the same script with flor_lib replaced by a pass-through stub (plain script). "
                       "CPU = user+sys of the process and its children; interleaved plain/flor/FlorDB runs.",
    "Per-call and fixed costs": "in-process timings in fresh interpreters; FlorDB column vs flor.",
    "Checkpoints": "from each run's metadata (checkpoints: bytes, copy_s on the training thread, save_s on the "
                   "writer thread); % of the run's wall time. Baseline = plain script.",
    "Queries": "synthetic compacted stores; median of calls after imports, per interleaved child process.",
    "Replay": "wall time of the whole replay command (process start, imports, worktree, restore) vs recording "
              "the patched script from scratch; each replay starts from a fresh copy of the recorded store.",
    "Prefect flow": "`flor run train.py` (embedded Prefect server started by the command) vs the direct run.",
}


def table(rows: list[Row]) -> str:
    """Markdown tables, one per section, in the order sections first appear."""
    out: list[str] = []
    sections = list(dict.fromkeys(r.section for r in rows))
    for sec in sections:
        out += ["", f"### {sec}", ""]
        if sec in ABOUT:
            out += [ABOUT[sec], ""]
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        for r in rows:
            if r.section == sec:
                cells = [r.measure, r.flor, r.base, r.flordb, r.flor_vs, r.flordb_vs, r.target]
                out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out).lstrip() + "\n"


def results_md(ctx: Ctx, rows: list[Row], info: dict, command: str, seconds: float, plots: list[Path]) -> str:
    lines = ["# flor benchmarks", "",
             f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s with:", "",
             f"    {command}", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".", "",
             "Cells are the median (min-max) of interleaved repetitions (A B A B ...); ratios are per pair. "
             "Every measured process runs with OMP_NUM_THREADS=1. The machine is shared: wall times are noisy, "
             "CPU times less so.", ""]
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p.stem}]({p.name})" for p in plots), ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines.append(table(rows))
    if ctx.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in ctx.notes]
    return "\n".join(lines) + "\n"


def plots(ctx: Ctx) -> list[Path]:
    """PNG plots of replay vs re-training and query latency vs runs (those whose data exists)."""
    import matplotlib

    matplotlib.use("Agg")
    made = []
    if "replay" in ctx.data:
        made.append(_replay_plot(ctx, ctx.out / "replay.png"))
    if "queries" in ctx.data:
        made.append(_query_plot(ctx, ctx.out / "queries.png"))
    return made


def _med(values) -> float:
    return statistics.median(values) if values else float("nan")


def _replay_plot(ctx: Ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    d = ctx.data["replay"]
    fdb = d.get("flordb", {})
    levels = ["after", "epoch", "inner"]
    names = ["after training", "per epoch", "inner loop"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1.2]})
    width = 0.2
    xs = range(len(levels))
    series = [("flor: re-run", [_med(d["rerun"])] * 3, "#999999"),
              ("flor: replay", [_med(d[lv]) for lv in levels], "#1f77b4")]
    if fdb:
        series += [("FlorDB 4.0.1: re-run", [_med(fdb.get("rerun", []))] * 3, "#dddddd"),
                   ("FlorDB 4.0.1: replay", [_med(fdb.get(lv, [])) for lv in levels], "#ff7f0e")]
    for i, (label, ys, color) in enumerate(series):
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], ys, width, label=label, color=color)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("wall s (one run)")
    ax.set_title("Replay of a new log statement vs re-running the run")
    ax.legend(fontsize=8)
    if "workers" in d:
        w = d["workers"]
        ax2.bar(["1 worker", "2 workers"], [_med(w["1"]), _med(w["2"])], color=["#9ecae1", "#1f77b4"])
        ax2.set_title("inner-loop statement, 4 runs")
        ax2.set_ylabel("wall s")
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _query_plot(ctx: Ctx, path: Path) -> Path:
    import matplotlib.pyplot as plt

    q = ctx.data["queries"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"flor:dataframe": ("flor.dataframe", "#1f77b4", "-"), "flor:sql": ("flor.sql", "#1f77b4", "--"),
              "flordb:dataframe": ("FlorDB dataframe", "#ff7f0e", "-"),
              "flordb:sql": ("FlorDB query", "#ff7f0e", "--")}
    for key, (label, color, ls) in styles.items():
        if key not in q:
            continue
        ns = sorted(q[key])
        meds = [_med(q[key][n]) for n in ns]
        lo = [m - min(q[key][n]) for m, n in zip(meds, ns, strict=True)]
        hi = [max(q[key][n]) - m for m, n in zip(meds, ns, strict=True)]
        ax.errorbar(ns, meds, yerr=[lo, hi], label=label, color=color, linestyle=ls, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("runs in the store (~1,000 records each)")
    ax.set_ylabel("latency, s")
    ax.set_title("Query latency vs number of runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
