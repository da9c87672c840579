"""`flor run` and `flor sweep` on Prefect's embedded server (no PREFECT_API_URL), read back via the client.

Every flor command is a real subprocess that starts Prefect's temporary server on the session's private
PREFECT_HOME (conftest); the runs' records land in the test's store.
"""

from __future__ import annotations

import json

from flows_fixtures import SHORT, artifact, flor, png_of, readback, show

from flor_lib import compact
from flor_lib.query import dataframe
from flor_lib.store import Store


def _landed(store_path) -> None:
    st = Store(str(store_path))
    assert compact.visible_streams(st) == [], "records left in the spool"


def test_flor_run_records_one_run_as_a_flow(repo, store):
    proc = flor("run", "train.py", "--name", "flowrun", "--json", "--", *SHORT, "--hidden", "16", cwd=repo)
    assert proc.returncode == 0, show(proc)
    summary = json.loads(proc.stdout)
    assert summary["runid"] == "flowrun" and summary["status"] == "completed"
    assert summary["args"]["hidden"] == 16 and "loss" in summary["metrics"]

    runs = Store(str(store)).runs()
    assert [r["runid"] for r in runs] == ["flowrun"]
    meta = runs[0]
    assert meta["status"] == "completed" and meta["vid"] == summary["vid"]
    _landed(store)
    df = dataframe("loss")
    assert set(df["runid"]) == {"flowrun"} and len(df) >= 4
    assert df["loss"].iloc[-1] == summary["metrics"]["loss"]

    run = readback(["flowrun"])["flowrun"]
    assert run["flow"] == "flor-run" and run["state"] == "COMPLETED", run
    assert {t["name"].rsplit("-", 1)[0] if t["name"].startswith("snapshot") else t["name"]: t["state"]
            for t in run["tasks"]} == {"snapshot_code": "COMPLETED", "execute-flowrun": "COMPLETED",
                                       "aggregate-flowrun": "COMPLETED"}
    table = artifact(run, "flor-run-flowrun")
    assert table["type"] == "table"
    cells = {(r["kind"], r["name"]): r["value"] for r in table["data"]}
    assert cells[("arg", "hidden")] == 16 and cells[("metric", "loss")] == summary["metrics"]["loss"]
    # the script's own output was streamed line by line into the task's logs
    assert any("Accuracy of the network" in line for line in run["logs"]), run["logs"][-20:]


def test_flor_sweep_2x2_records_four_runs(repo, store):
    proc = flor("sweep", "train.py", "--grid", "hidden=8,16", "--grid", "lr=0.001,0.01", "--concurrency", "2",
                "--name", "grid", "--json", "--", *SHORT, cwd=repo)
    assert proc.returncode == 0, show(proc)
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["grid-01", "grid-02", "grid-03", "grid-04"]
    assert [(r["args"]["hidden"], r["args"]["lr"]) for r in rows] == [(8, 0.001), (8, 0.01), (16, 0.001), (16, 0.01)]
    assert all(r["status"] == "completed" and "loss" in r["metrics"] for r in rows)

    metas = {m["runid"]: m for m in Store(str(store)).runs()}
    assert set(metas) == {"grid-01", "grid-02", "grid-03", "grid-04"}
    assert all(m["sweep"] == "grid" and m["status"] == "completed" for m in metas.values())
    _landed(store)
    df = dataframe("loss")
    assert set(df["runid"]) == set(metas)

    run = readback(["grid"])["grid"]
    assert run["flow"] == "flor-sweep" and run["state"] == "COMPLETED", run
    members = [t for t in run["tasks"] if t["name"].startswith("member-")]
    assert sorted(t["name"] for t in members) == ["member-grid-01", "member-grid-02", "member-grid-03",
                                                  "member-grid-04"]
    assert all(t["state"] == "COMPLETED" for t in members)
    assert artifact(run, "flor-sweep-grid-progress")["data"] == 100.0
    results = artifact(run, "flor-sweep-grid-results")["data"]
    assert sorted(r["runid"] for r in results) == sorted(metas)
    assert all("loss" in r and r["status"] == "completed" for r in results)
    plot = artifact(run, "flor-sweep-grid-plot")  # loss per member, embedded as a PNG
    assert plot["type"] == "markdown" and "sweep grid" in plot["data"]
    png_of(plot["data"])
    for runid in metas:  # each member's own table of args and final metrics
        assert artifact(run, f"flor-run-{runid}")["type"] == "table"

    status = flor("status", "grid", "--json", cwd=repo)
    assert status.returncode == 0, show(status)
    assert json.loads(status.stdout)["counts"] == {"completed": 4}


def test_failed_member_is_reported_and_others_land(repo, store):
    proc = flor("sweep", "train.py", "--config", '{"hidden": 8}', "--config", '{"hidden": "abc"}',
                "--config", '{"hidden": 16}', "-j", "2", "--name", "bad", "--", *SHORT, cwd=repo)
    assert proc.returncode == 1, show(proc)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("flor: error:")]
    assert len(err) == 1 and "1 of 3 members failed" in err[0] and "bad-02" in err[0], show(proc)
    assert "--hidden 'abc'" in err[0]
    assert "Traceback" not in proc.stderr.split("flor: error:")[-1]
    assert "bad-01" in proc.stdout and "bad-03" in proc.stdout  # the results table still prints

    metas = {m["runid"]: m for m in Store(str(store)).runs()}
    assert metas["bad-01"]["status"] == "completed" and metas["bad-03"]["status"] == "completed"
    assert metas.get("bad-02", {}).get("status", "failed") == "failed"
    _landed(store)
    df = dataframe("loss")
    assert set(df["runid"]) == {"bad-01", "bad-03"}
    assert (df.groupby("runid").size() >= 4).all()

    run = readback(["bad"])["bad"]
    assert run["state"] == "FAILED" and "1 of 3 members failed" in run["message"], run
    states = {t["name"]: t["state"] for t in run["tasks"] if t["name"].startswith("member-")}
    assert states == {"member-bad-01": "COMPLETED", "member-bad-02": "FAILED", "member-bad-03": "COMPLETED"}
    results = {r["member"]: r for r in artifact(run, "flor-sweep-bad-results")["data"]}
    assert results["bad-02"]["status"] == "failed" and results["bad-01"]["status"] == "completed"
    assert "bad-02" in artifact(run, "flor-sweep-bad-failures")["data"]
    png_of(artifact(run, "flor-sweep-bad-plot")["data"])  # the members that logged are still plotted
