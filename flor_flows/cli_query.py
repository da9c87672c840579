"""The read-only `flor` commands: ls, show, dataframe, sql, status. They never import Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import typer

from flor_flows import results, status
from flor_lib.store import Store


def fmt(value: Any) -> str:
    """A value as a short cell: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def pairs(d: dict[str, Any], limit: int = 6) -> str:
    """k=v pairs of a dict, the first limit of them."""
    items = [f"{k}={fmt(v)}" for k, v in d.items()]
    return " ".join(items[:limit]) + (f" +{len(items) - limit}" if len(items) > limit else "")


def duration(seconds: float | None) -> str:
    """Seconds as 4.2s, 3m05s or 1h02m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def print_json(obj: Any) -> None:
    """JSON to stdout (for scripts)."""
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")


def print_table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


_STYLE = {"completed": "green", "failed": "red", "running": "yellow", "interrupted": "magenta"}


def _status_cell(s: str) -> str:
    return f"[{_STYLE.get(s, 'white')}]{s}[/]"


def ls(json_out: bool = typer.Option(False, "--json", help="Print JSON (one object per run) instead of a table."),
       sweep: str | None = typer.Option(None, "--sweep", help="Only the members of this sweep."),
       last: int = typer.Option(0, "--last", "-n", help="Only the N most recent runs.")) -> None:
    """List recorded runs: runid, code version, status, duration, args and final metrics.

    Examples: `flor ls` | `flor ls --sweep sweep-20261129-0101-ab12` | `flor ls --json | jq '.[].metrics'`
    """
    store = Store()
    metas = [m for m in store.runs() if not sweep or m.get("sweep") == sweep]
    if last:
        metas = metas[-last:]
    metrics = results.all_final_metrics(store) if metas else {}
    items = []
    for m in metas:
        item = results.summary(m, metrics.get((m.get("projid"), m.get("runid")), {}))
        item["status"] = status.effective_status(m)
        items.append(item)
    if json_out:
        print_json(items)
        return
    if not items:
        print(f"no runs in {store.root} yet: record one with `python train.py --flor NAME`", file=sys.stderr)
        return
    print_table(f"{len(items)} runs in {store.root}", ["runid", "vid", "status", "duration", "args", "final metrics"],
                [[i["runid"], str(i["vid"] or "-")[:8], _status_cell(i["status"]), duration(i["duration_s"]),
                  pairs(i["args"]), pairs(i["metrics"])] for i in items])


def show(runid: str = typer.Argument(..., help="The run to show (see `flor ls`)."),
         json_out: bool = typer.Option(False, "--json", help="Print JSON."),
         diff: bool = typer.Option(False, "--diff", help="Also show the code diff against the previous version.")
         ) -> None:
    """Show one run: identity, args, final metrics, checkpoints and attempts.

    Examples: `flor show myFirstRun` | `flor show myFirstRun --diff` | `flor show myFirstRun --json`
    """
    store = Store()
    meta = store.find_run(runid)
    from flor_lib.run import truncation

    metrics = results.final_metrics(results.run_records(store, meta["projid"], meta["runid"]), truncation(meta))
    item = {**results.summary(meta, metrics), "status": status.effective_status(meta),
            "checkpoints": meta.get("checkpoints") or [], "attempts": meta.get("attempts") or [],
            "argv": meta.get("argv"), "filename": meta.get("filename"), "repo": meta.get("repo"),
            "host": meta.get("host")}
    if json_out:
        print_json(item)
        return
    from rich.console import Console

    con = Console()
    con.print(f"[bold]{meta['runid']}[/]  {_status_cell(item['status'])}  project {meta.get('projid')}  "
              f"code {str(meta.get('vid') or '-')[:12]}  {duration(item['duration_s'])}")
    con.print(f"script {meta.get('repo') or '?'}/{meta.get('filename')} {' '.join(meta.get('argv') or [])}"
              f"  on {meta.get('host')}" + (f"  CUDA_VISIBLE_DEVICES={item['device']}" if item["device"] else "")
              + (f"  sweep {meta['sweep']}" if meta.get("sweep") else ""))
    cost = own_cost(item["attempts"], item["duration_s"])
    if cost:
        con.print(cost)
    print_table("args", ["name", "value"], [[k, fmt(v)] for k, v in item["args"].items()])
    print_table("final metrics", ["name", "value"], [[k, fmt(v)] for k, v in metrics.items()])
    if item["checkpoints"]:
        print_table("checkpoints", ["iter", "bytes", "save s", "attempt"],
                    [[str(c.get("iter")), str(c.get("bytes")), fmt(c.get("save_s")), str(c.get("attempt"))]
                     for c in item["checkpoints"]])
    if len(item["attempts"]) > 1:
        print_table("attempts", ["attempt", "start", "end", "resumed from"],
                    [[str(a.get("attempt")), str(a.get("start")), str(a.get("end")), fmt(a.get("resumed_from"))]
                     for a in item["attempts"]])
    if diff:
        con.print(code_diff(store, meta) or "(no earlier version of this script)")


def own_cost(attempts: list[dict], duration_s: float | None) -> str:
    """One line: the CPU flor itself took over a run's attempts, by part (empty when none was saved)."""
    costs = [a["cost"] for a in attempts if a.get("cost")]
    if not costs:
        return ""
    total = sum(c.get("total_s", 0.0) for c in costs)
    parts = {k: sum(c.get(k, 0.0) for c in costs) for k in
             ("start", "snapshot", "checkpoint_writer", "record_flush", "code_snapshot", "exit")}
    share = f" = {100 * total / duration_s:.1f}% of its {duration(duration_s)}" if duration_s else ""
    return (f"flor's own CPU {total:.2f} s{share}: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in parts.items() if v))


def code_diff(store: Store, meta: dict) -> str:
    """The diff of the run's script against the version of the latest earlier run with other code."""
    earlier = [m for m in store.runs(meta["projid"]) if m.get("tstamp", "") < meta.get("tstamp", "")
               and m.get("vid") and m.get("vid") != meta.get("vid") and m.get("filename") == meta.get("filename")]
    if not earlier or not meta.get("repo") or not meta.get("vid"):
        return ""
    prev = earlier[-1]
    out = subprocess.run(["git", "-C", meta["repo"], "diff", prev["vid"], meta["vid"], "--", meta["filename"]],
                         capture_output=True, text=True)
    return f"diff against {prev['runid']} ({prev['vid'][:8]}):\n{out.stdout or '(same script)'}"


def _print_frame(df: Any, csv: bool, json_out: bool = False) -> None:
    if csv:
        df.to_csv(sys.stdout, index=False)
    elif json_out:
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")


def dataframe(names: list[str] = typer.Argument(None, help="Logged names (columns) to show."),
              where: str | None = typer.Option(None, "--where", "-w", help="SQL condition on run-level columns."),
              csv: bool = typer.Option(False, "--csv", help="Print CSV."),
              json_out: bool = typer.Option(False, "--json", help="Print JSON records.")) -> None:
    """The wide view: one row per run and loop position, one column per name, args as columns.

    Examples: `flor dataframe loss` | `flor dataframe loss accuracy --where "lr = 0.001" --csv > runs.csv`
    """
    from flor_lib.query import dataframe as frame

    _print_frame(frame(*(names or []), where=where), csv, json_out)


def sql(query: str = typer.Argument(..., help="DuckDB SQL over the views `logs` and `runs`."),
        csv: bool = typer.Option(False, "--csv", help="Print CSV."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON records.")) -> None:
    """Run read-only SQL over the views `logs` (one row per record) and `runs` (one row per run).

    Examples: `flor sql "SELECT runid, max(value) FROM logs WHERE name = 'loss' GROUP BY 1"` |
    `flor sql "SELECT * FROM runs" --csv`
    """
    from flor_lib.query import sql as run_sql

    _print_frame(run_sql(query), csv, json_out)


def status_cmd(sweep: str | None = typer.Argument(None, help="A sweep id: list its members."),
               json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Sweep progress: members by state (running, completed, failed, interrupted) per sweep.

    Examples: `flor status` | `flor status sweep-20261129-010203-ab12` | `flor status --json`
    """
    store = Store()
    if sweep:
        rows = status.members(sweep, store)
        if not rows:
            from flor_lib.errors import FlorError

            raise FlorError(f"no runs of sweep {sweep!r} in {store.root}: `flor status` lists the sweeps")
        if json_out:
            print_json({"sweep": sweep, "counts": status.counts(sweep, store), "members": rows})
            return
        counts = status.counts(sweep, store)
        print_table(f"sweep {sweep}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
                    ["runid", "status", "device", "host", "args"],
                    [[r["runid"], _status_cell(r["status"]), r["device"] or "-", r["host"] or "-", pairs(r["args"])]
                     for r in rows])
        return
    rows = status.sweeps(store)
    if json_out:
        print_json(rows)
        return
    if not rows:
        print("no sweeps yet: start one with `flor sweep train.py --grid hidden=100,200`", file=sys.stderr)
        return
    print_table(None, ["sweep", "started", *status.STATES, "total"],
                [[r["sweep"], str(r["started"])[:19], *[str(r.get(s, 0)) for s in status.STATES], str(r["total"])]
                 for r in rows])
