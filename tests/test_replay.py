"""Hindsight replay: new log statements carried into old versions, backfilled from checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.replay_story import ACC, DEVICE, FAST, GRAD, VAL, edit, git, make_repo, record, snapshot_state

NAMES = ["device", "val_acc", "grad_norm", "accuracy"]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Three runs over two code versions, then the newest code gains four hindsight statements."""
    root = tmp_path_factory.mktemp("history")
    repo = make_repo(root)
    store = root / "store"
    every = {"FLOR_EPSILON": "1000"}  # saving is cheap here: checkpoint every epoch, deterministically
    record(repo, store, "first", *FAST, env=every)
    record(repo, store, "second", *FAST, "--lr", "0.01", env=every)
    edit(repo, ('print(f"Epoch [', '# progress every ten steps\n            print(f"Ep ['),
         ("        loss = criterion(outputs, labels)\n", "        batch_loss = criterion(outputs, labels)\n"
          "        loss = batch_loss\n"), message="v2: reshaped step")
    record(repo, store, "third", *FAST, "--hidden", "16", env=every)
    edit(repo, DEVICE, GRAD, VAL, ACC, message="hindsight statements")
    return repo, store


@pytest.fixture
def story(history, tmp_path, monkeypatch):
    """A private copy of the recorded store, so each test replays from the same past."""
    repo, store = history
    mine = tmp_path / "store"
    shutil.copytree(store, mine)
    monkeypatch.setenv("FLOR_STORE", str(mine))
    monkeypatch.setenv("HOME", str(tmp_path))  # worktree cache under the test's tmp dir
    return repo, mine


def ground_truth(repo: Path, run: dict, tmp: Path, names: list[str]) -> dict:
    """Run the patched old version from scratch with the run's args into a separate store."""
    from flor_lib import query, versions
    from flor_lib.replay.transplant import find_log_statements, transplant
    from flor_lib.store import Store

    new = (repo / "train.py").read_text()
    old = versions.show_file(repo, run["vid"], "train.py")
    patched = transplant(old, find_log_statements(new, names)).source
    work = tmp / f"gt-{run['runid']}"
    work.mkdir()
    shutil.copy(repo / ".gitignore", work)
    (work / "train.py").write_text(patched)
    git(work, "init", "-q")
    git(work, "add", ".")
    git(work, "commit", "-qm", "gt")
    argv = [str(a) for k, v in run["args"].items() for a in (f"--{k}", v)]
    record(work, tmp / f"gt-store-{run['runid']}", "truth", *argv)
    df = query.dataframe(*names, store=Store(str(tmp / f"gt-store-{run['runid']}")))
    return df


def _values(df, names):
    cols = [c for c in ("epoch", "step") if c in df]
    out = {}
    for _, row in df.iterrows():
        key = tuple(None if str(row[c]) == "<NA>" else int(row[c]) for c in cols)
        for n in names:
            v = row.get(n)
            if v is not None and str(v) not in ("nan", "<NA>", "None"):
                out[(key, n)] = v
    return out


def test_replay_backfills_every_level_exactly_as_a_from_scratch_run(story, tmp_path):
    import flor_lib as flor
    from flor_lib.replay.engine import replay
    from flor_lib.store import Store

    repo, store = story
    before = snapshot_state(repo)
    for names in (["accuracy", "device"], ["val_acc"], ["grad_norm"]):
        summary = replay(names, workers=2, progress=False)
        assert set(summary["status"]) == {"backfilled"}, summary.to_string()
        assert (summary["mismatches"] == 0).all(), summary.to_string()
    assert snapshot_state(repo) == before  # files, index, HEAD and branch untouched
    assert "worktree" not in git(repo, "worktree", "list").split("\n", 1)[-1]
    runs = Store().runs()
    assert {r["runid"] for r in runs} == {"first", "second", "third"}
    assert len({r["vid"] for r in runs}) == 2
    for run in runs:
        got = flor.dataframe(*NAMES, where=f"runid = '{run['runid']}'")
        truth = ground_truth(repo, run, tmp_path, NAMES)
        want = _values(truth, NAMES)
        have = _values(got, NAMES)
        assert want and len([k for k in want if k[1] == "grad_norm"]) > 30
        assert have == want, run["runid"]


def test_replay_skips_loops_it_does_not_need(story):
    from flor_lib.replay.engine import replay

    summary = replay(["accuracy"], workers=2, progress=False)
    assert (summary["executed_iters"] == 0).all() and (summary["restored_iters"] == 1).all()
    summary = replay(["val_acc"], workers=2, progress=False)
    assert (summary["executed_iters"] == 0).all() and (summary["restored_iters"] == 3).all()


def test_where_selects_runs_and_a_second_replay_adds_no_rows(story):
    import flor_lib as flor
    from flor_lib.replay.engine import replay

    summary = replay(["accuracy"], where="lr = 0.01", progress=False)
    assert list(summary["runid"]) == ["second"]
    count = flor.sql("SELECT count(*) AS n FROM logs WHERE name = 'accuracy'")["n"][0]
    assert count == 1
    again = replay(["accuracy"], where="lr = 0.01", progress=False)
    assert list(again["status"]) == ["skipped"]
    assert flor.sql("SELECT count(*) AS n FROM logs WHERE name = 'accuracy'")["n"][0] == count


def test_bad_where_and_unknown_name_are_one_line_errors(story):
    from flor_lib.errors import FlorError
    from flor_lib.replay.engine import plan_replay

    with pytest.raises(FlorError, match="no_such_column"):
        plan_replay(["accuracy"], where="no_such_column = 3")
    with pytest.raises(FlorError, match="syntax"):
        plan_replay(["accuracy"], where="lr = = 1")
    with pytest.raises(FlorError, match="no flor.log\\('nothing'"):
        plan_replay(["nothing"])


def test_missing_checkpoint_falls_back_to_an_earlier_one(story):
    from flor_lib.replay.engine import plan_replay, replay
    from flor_lib.store import Store

    repo, store = story
    meta = Store().find_run("first")
    listed = {c["iter"]: c for c in meta["checkpoints"]}
    assert sorted(listed) == [0, 1, 2] and {c["path"] for c in listed.values()} == {"a1.pack"}
    # the run's pack cut short inside iteration 2's checkpoint (a partial copy of the store)
    with open(Path(store) / "checkpoints" / meta["projid"] / "first" / "a1.pack", "r+b") as pack:
        pack.truncate(listed[2]["offset"] + listed[2]["bytes"] // 2)
    plan = plan_replay(["val_acc"], where="runid = 'first'")
    assert any("iteration 2 missing" in n for n in plan.notes)
    summary = replay(["val_acc"], where="runid = 'first'", progress=False)
    assert summary["status"][0] == "backfilled" and summary["executed_iters"][0] == 1


def test_a_version_without_the_anchor_is_reported_and_the_rest_replay(story):
    from flor_lib.replay.engine import replay

    repo, store = story
    # the newest code logs grad_norm inside a loop named "batch", which no old version has
    text = (repo / "train.py").read_text()
    (repo / "train.py").write_text(text.replace('flor.loop("step"', 'flor.loop("batch"'))
    try:
        summary = replay(["grad_norm", "accuracy"], progress=False)
    finally:
        (repo / "train.py").write_text(text)
    assert set(summary["status"]) == {"skipped"}
    assert summary["reason"].str.contains("batch").all()
