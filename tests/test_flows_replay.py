"""`flor replay` as a Prefect flow on the embedded server: plan, one task per segment, backfilled records."""

from __future__ import annotations

import io
import json

import pandas as pd
from flows_fixtures import add_accuracy, flor, png_of, readback, show


def test_replay_flow_backfills_past_runs(repo, store, run_script, git):
    for name, hidden in (("old1", 8), ("old2", 16)):
        run_script(repo, "--flor", name, "--epochs", "1", "--hidden", str(hidden), check=True)
    add_accuracy(repo, git)

    dry = flor("replay", "accuracy", "--dry-run", cwd=repo)
    assert dry.returncode == 0 and "old1" in dry.stdout and "old2" in dry.stdout, show(dry)

    proc = flor("replay", "accuracy", "--workers", "2", "--json", cwd=repo)
    assert proc.returncode == 0, show(proc)
    rows = {r["runid"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"old1", "old2"} and all(r["status"] == "backfilled" for r in rows.values()), rows
    assert all(r["executed_iters"] == 0 for r in rows.values())  # a statement after the loops: restore only

    frame = flor("dataframe", "accuracy", "--csv", cwd=repo)
    assert frame.returncode == 0, show(frame)
    df = pd.read_csv(io.StringIO(frame.stdout))
    assert set(df["runid"]) == {"old1", "old2"} and df["accuracy"].between(0, 100).all()

    runs = readback(["replay-accuracy"])
    run = runs["replay-accuracy"]
    assert run["flow"] == "flor-replay" and run["state"] == "COMPLETED", run
    tasks = {t["name"]: t["state"] for t in run["tasks"]}
    assert any(n.startswith("plan_replay") for n in tasks)
    assert sorted(n for n in tasks if n.startswith("segment-")) == ["segment-old1-0", "segment-old2-0"]
    assert all(s == "COMPLETED" for s in tasks.values())
    summaries = [a for a in run["artifacts"] if a["key"].startswith("flor-replay-") and a["type"] == "table"]
    assert summaries and {r["runid"] for r in summaries[0]["data"]} == {"old1", "old2"}
    assert [a for a in run["artifacts"] if a["type"] == "progress"][0]["data"] == 100.0
    summary = summaries[0]["data"]  # per run: what was re-executed and restored
    assert all(r["status"] == "backfilled" and r["restored_iters"] >= 1 and r["executed_iters"] == 0 for r in summary)
    plots = [a for a in run["artifacts"] if a["type"] == "markdown" and a["key"].endswith("-plot")]
    assert len(plots) == 1 and "backfilled accuracy" in plots[0]["data"], [a["key"] for a in run["artifacts"]]
    png_of(plots[0]["data"])
    # ground truth: a fresh run of the new code logs the accuracy that the replay backfilled for old2
    run_script(repo, "--flor", "fresh", "--epochs", "1", "--hidden", "16", check=True)
    both = pd.read_csv(io.StringIO(flor("dataframe", "accuracy", "--csv", cwd=repo).stdout)).set_index("runid")
    assert both.loc["old2", "accuracy"] == both.loc["fresh", "accuracy"]

    again = flor("replay", "accuracy", "--where", "runid LIKE 'old%'", cwd=repo)  # both have it now
    assert again.returncode == 0, show(again)
