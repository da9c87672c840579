"""Queries over recorded runs (issue 2): the wide dataframe, SQL views, FlorDB spellings, SQL sandbox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as ds
import pytest

import flor_lib as flor
from flor_lib.errors import FlorError
from flor_lib.schema import RECORD_SCHEMA

SCRIPT = """
import json
import flor_lib as flor
hidden = flor.arg("hidden", 100)
lr = flor.arg("lr", 0.1)
tag = flor.arg("tag", "base")
flor.log("device", "cpu")
for e in flor.loop("epoch", range(2)):
    for s in flor.loop("step", range(3)):
        loss = flor.log("loss", hidden / 100 + lr * (10 - e * 3 - s))
        print("REC " + json.dumps(["loss", e, s, loss]))
    acc = flor.log("acc", 0.5 + e * hidden / 1000)
    print("REC " + json.dumps(["acc", e, None, acc]))
    flor.log("phase", "warmup" if e == 0 else "main")
print("REC " + json.dumps(["accuracy", None, None, flor.log("accuracy", 90 + hidden / 100)]))
"""

RUNS = [("first", []), ("second", ["--hidden", "75"]), ("third", ["--lr=0.01", "--tag", "x y"])]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store holding three runs of SCRIPT (made once per module) and what each run printed."""
    root = tmp_path_factory.mktemp("query")
    repo, store = root / "proj", root / "store"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "T"], ["config", "user.email", "t@t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "train.py").write_text(SCRIPT)
    subprocess.run(["git", "add", "train.py"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "i"], cwd=repo, check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_")}
    env["FLOR_STORE"] = str(store)
    printed = {}
    for name, args in RUNS:
        proc = subprocess.run([sys.executable, "train.py", "--flor", name, *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        printed[name] = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("REC ")]
    return store, printed


@pytest.fixture
def q(recorded, monkeypatch):
    store, printed = recorded
    monkeypatch.setenv("FLOR_STORE", str(store))
    return printed


def test_dataframe_wide_view(q):
    df = flor.dataframe("loss", "acc")
    assert list(df.columns[:8]) == ["projid", "runid", "tstamp", "vid", "epoch", "step", "loss", "acc"]
    assert {"hidden", "lr", "tag"} <= set(df.columns)
    # one row per (run, loop position) that logged a requested name, runs in start order
    assert list(dict.fromkeys(df["runid"])) == ["first", "second", "third"]
    assert len(df) == 3 * (2 * 3 + 2)
    for name, recs in q.items():
        mine = df[df.runid == name]
        loss = {(e, s): v for n, e, s, v in recs if n == "loss"}
        assert {(int(r.epoch), int(r.step)): r.loss for r in mine.itertuples() if pd.notna(r.step)} == loss
        acc = {e: v for n, e, s, v in recs if n == "acc"}
        assert {int(r.epoch): r.acc for r in mine.itertuples() if pd.isna(r.step)} == acc
    assert df["loss"].dtype == "float64" and df["epoch"].dtype == "Int64"
    args = df.groupby("runid")[["hidden", "lr", "tag"]].first().to_dict("index")
    assert args == {"first": {"hidden": 100, "lr": 0.1, "tag": "base"},
                    "second": {"hidden": 75, "lr": 0.1, "tag": "base"},
                    "third": {"hidden": 100, "lr": 0.01, "tag": "x y"}}
    assert df["tstamp"].dt.tz is not None and df["vid"].nunique() == 1


def test_run_level_values_repeat_on_every_row(q):
    df = flor.dataframe("loss", "accuracy", "device")
    for name, recs in q.items():
        mine = df[df.runid == name]
        accuracy = next(v for n, e, s, v in recs if n == "accuracy")
        assert len(mine) == 6 and (mine["accuracy"] == accuracy).all() and (mine["device"] == "cpu").all()
    only_run_level = flor.dataframe("accuracy")
    assert len(only_run_level) == 3 and list(only_run_level["accuracy"]) == [91.0, 90.75, 91.0]


def test_dataframe_where_filters_runs(q):
    df = flor.dataframe("loss", where="hidden = 75")
    assert set(df["runid"]) == {"second"} and len(df) == 6
    df = flor.dataframe("loss", where="lr < 0.05 AND tag = 'x y'")
    assert set(df["runid"]) == {"third"}
    df = flor.dataframe("loss", where="accuracy > 90.9")  # a value logged outside loops
    assert set(df["runid"]) == {"first", "third"}
    assert flor.dataframe("loss", where="hidden = 12345").empty
    with pytest.raises(FlorError, match="no_such_column"):
        flor.dataframe("loss", where="no_such_column = 1")


def test_dataframe_without_names_lists_runs(q):
    runs = flor.dataframe()
    assert list(runs["runid"]) == ["first", "second", "third"]
    assert set(runs["status"]) == {"completed"}
    assert {"projid", "tstamp", "vid", "hidden", "lr", "tag"} <= set(runs.columns)


def test_strings_and_numbers_keep_their_types(q):
    df = flor.dataframe("phase")
    assert list(df[df.runid == "first"]["phase"]) == ["warmup", "main"]
    logs = flor.sql("SELECT name, value, value_text, value_type FROM logs WHERE name IN ('phase', 'loss')")
    assert logs["value"].dtype == "float64"
    phase = logs[logs.name == "phase"]
    assert phase["value"].isna().all() and set(phase["value_type"]) == {"str"}


def test_sql_numeric_max_over_a_metric(q):
    out = flor.sql("SELECT runid, max(value) AS best FROM logs WHERE name = 'loss' GROUP BY 1 ORDER BY 1")
    assert out["best"].dtype == "float64"
    expected = {name: max(v for n, e, s, v in recs if n == "loss") for name, recs in q.items()}
    assert dict(zip(out["runid"], out["best"], strict=True)) == expected
    # numeric, not lexicographic: 10.5 > 9.5 even though "10.5" < "9.5"
    assert flor.sql("SELECT max(value) AS m FROM logs WHERE name = 'accuracy'")["m"].iloc[0] == 91.0


def test_sql_views_logs_and_runs(q):
    cols = list(flor.sql("SELECT * FROM logs LIMIT 1").columns)
    for c in ["projid", "runid", "tstamp", "vid", "filename", "epoch", "step", "name", "value", "value_type",
              "source"]:
        assert c in cols
    n = flor.sql("SELECT count(*) AS n FROM logs WHERE name = 'loss' AND epoch = 1 AND step = 2")["n"].iloc[0]
    assert n == 3
    runs = flor.sql("SELECT runid, status, hidden, lr, tag FROM runs ORDER BY tstamp")
    assert runs.to_dict("records") == [
        {"runid": "first", "status": "completed", "hidden": 100, "lr": 0.1, "tag": "base"},
        {"runid": "second", "status": "completed", "hidden": 75, "lr": 0.1, "tag": "base"},
        {"runid": "third", "status": "completed", "hidden": 100, "lr": 0.01, "tag": "x y"}]
    assert set(flor.sql("SELECT DISTINCT source FROM logs")["source"]) == {"record"}


def test_dataset_is_the_arrow_dataset_of_every_record(q):
    dset = flor.dataset()
    assert isinstance(dset, ds.Dataset)
    table = dset.to_table()
    assert table.schema.equals(RECORD_SCHEMA, check_metadata=False)
    logs = table.filter(ds.field("kind") == "log")
    assert logs.num_rows == 3 * (1 + 2 * 3 + 2 + 2 + 1)
    assert table.filter(ds.field("kind") == "arg").num_rows == 3 * 3


def test_florDB_spellings(q):
    long = flor.log_records()
    assert {"runid", "name", "value"} <= set(long.columns) and len(long) == 3 * 12
    wide = flor.full_pivot(long)
    assert set(long["name"]) <= set(wide.columns)
    expected = flor.dataframe(*sorted(set(long["name"])))
    pd.testing.assert_frame_equal(wide.reset_index(drop=True), expected.reset_index(drop=True))
    assert list(flor.DATA_PREP) == ["projid", "runid", "tstamp", "vid"]
    subset = wide[[*flor.DATA_PREP, "accuracy"]].drop_duplicates()
    assert len(subset) == 3
    assert flor.MTK is flor


@pytest.mark.parametrize("query", [
    "COPY (SELECT * FROM logs) TO '{out}'",
    "  copy logs TO '{out}' (FORMAT csv)",
    "SELECT 1; COPY (SELECT 1) TO '{out}'",
    "/* hi */ COPY (SELECT 1) TO '{out}'",
    "WITH x AS (SELECT 1) SELECT * FROM x; COPY (SELECT 1) TO '{out}'",
    "EXPORT DATABASE '{dir}'",
    "ATTACH '{out}' AS other",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SELECT 1; SET enable_external_access = true; COPY (SELECT 1) TO '{out}'",
])
def test_sql_cannot_write_files(q, query, tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(FlorError):
        flor.sql(query.format(out=out, dir=tmp_path / "exported"))
    assert not out.exists() and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{store}/records/*/*.parquet')",
    "SELECT 1; SELECT * FROM read_csv('/etc/passwd')",
])
def test_sql_cannot_read_files(q, recorded, query):
    store, _ = recorded
    with pytest.raises(FlorError):
        out = flor.sql(query.format(store=store))
        # a query that slipped through must at least not have returned the file
        assert "root" not in out.to_string()


@pytest.mark.parametrize("where", [
    "1=1; COPY (SELECT 1) TO '{out}'",
    "hidden IN (SELECT 1 FROM read_csv('/etc/passwd'))",
    "1=1; SET enable_external_access = true",
])
def test_dataframe_where_cannot_touch_files(q, where, tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(FlorError):
        flor.dataframe("loss", where=where.format(out=out))
    assert not out.exists()


def test_sql_errors_are_one_line_flor_errors(q):
    with pytest.raises(FlorError, match="SQL error"):
        flor.sql("SELECT no_such_column FROM logs")
    with pytest.raises(FlorError, match="read-only"):
        flor.sql("DELETE FROM logs")


def test_queries_on_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOR_STORE", str(tmp_path / "empty"))
    assert flor.dataframe("loss").empty
    assert flor.dataframe().empty
    assert flor.sql("SELECT count(*) AS n FROM logs")["n"].iloc[0] == 0
    assert flor.log_records().empty


def test_merging_run_files_does_not_change_query_results(recorded, tmp_path, monkeypatch):
    """Compaction of the per-run Parquet files into one merged file neither doubles nor loses records."""
    store, _ = recorded
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    monkeypatch.setenv("FLOR_STORE", str(copy))
    before = flor.dataframe("loss", "acc")
    from flor_lib import compact
    from flor_lib.store import Store

    assert compact.merge_project(Store(str(copy)), "proj_main", at_least=1) == 3
    pd.testing.assert_frame_equal(flor.dataframe("loss", "acc"), before)


def test_logged_names_that_collide_with_key_columns(repo, write_script, run_script):
    write_script(repo, "clash.py", """
        import flor_lib as flor
        for e in flor.loop("epoch", range(2)):
            flor.log("loss", float(e))
            flor.log("runid", "mine")
        flor.log("vid", 1)
    """)
    run_script(repo, "--flor", "clash", script="clash.py", check=True)
    assert len(flor.dataframe("loss")) == 2
    for names in [("runid",), ("loss", "runid"), ("vid",)]:
        try:
            df = flor.dataframe(*names)
        except FlorError:
            continue  # a clear refusal is fine
        assert list(df.columns).count(names[-1]) == 1 and set(df["runid"]) == {"clash"}
