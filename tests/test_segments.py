"""Training runs that survive lost workers: checkpoint-to-checkpoint segments with Prefect retries."""

from __future__ import annotations

import json

from flows_fixtures import flor, readback, show

from tests.replay_story import edit, git

FAST = ["--epochs", "3", "--hidden", "24", "--batch_size", "128"]
# a test hook in the script itself: the process dies with SIGKILL once, in the middle of epoch 1
DIE_ONCE = (
    "        optimizer.step()\n",
    "        optimizer.step()\n"
    "        if epoch == 1 and i == 4 and not os.path.exists('died-once'):\n"
    "            open('died-once', 'w').close()\n"
    "            os.kill(os.getpid(), 9)\n",
)
ALWAYS_FAILS = (
    "        optimizer.step()\n",
    "        optimizer.step()\n"
    "        if epoch == 1 and i == 4:\n"
    "            raise ValueError('bad batch 4')\n",
)


def _losses(store, runid):
    from flor_lib.query import dataframe
    from flor_lib.store import Store

    df = dataframe("loss", store=Store(str(store)), where=f"runid = '{runid}'")
    return list(zip(df["epoch"], df["step"], df["loss"], strict=True))


def test_a_segment_killed_once_is_retried_and_the_run_equals_an_uninterrupted_one(repo, store, monkeypatch):
    monkeypatch.setenv("FLOR_EPSILON", "1000")
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "died-once\n")
    edit(repo, ("import torch\n", "import os\n\nimport torch\n"), DIE_ONCE)
    (repo / "died-once").touch()
    proc = flor("run", "train.py", "--name", "whole", "--", *FAST, cwd=repo)
    assert proc.returncode == 0, show(proc)
    (repo / "died-once").unlink()
    proc = flor("run", "train.py", "--name", "segmented", "--segments", "1", "--retries", "2", "--json", "--",
                *FAST, cwd=repo)
    assert proc.returncode == 0, show(proc)
    assert json.loads(proc.stdout)["status"] == "completed"
    assert _losses(store, "segmented") == _losses(store, "whole")
    from flor_lib.store import Store

    meta = Store(str(store)).find_run("segmented")
    segs = [a["segment"] for a in meta["attempts"]]
    assert segs == ["0", "1", "1", "2"]  # segment 1 died once and was retried from epoch 0's checkpoint
    assert all(a.get("host") and a.get("start") for a in meta["attempts"])
    run = readback(["segmented"])["segmented"]
    assert run["state"] == "COMPLETED"


def test_a_deterministic_failure_stops_after_the_retries_with_the_original_error(repo, store):
    edit(repo, ALWAYS_FAILS)
    proc = flor("run", "train.py", "--name", "broken", "--segments", "1", "--retries", "1", "--", *FAST, cwd=repo)
    assert proc.returncode != 0
    assert "bad batch 4" in proc.stderr and proc.stderr.count("flor: error:") == 1, show(proc)


def test_a_run_without_checkpoints_cannot_be_segmented(repo, store):
    (repo / "plain.py").write_text("import flor_lib as flor\nfor e in flor.loop('epoch', range(2)):\n"
                                   "    flor.log('e', e)\n")
    git(repo, "add", "plain.py")
    git(repo, "commit", "-qm", "plain")
    proc = flor("run", "plain.py", "--segments", "1", cwd=repo)
    assert proc.returncode != 0 and "flor.checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    from flor_lib.store import Store

    assert Store(str(store)).runs() == []


def test_sweep_members_run_in_segments_and_survive_a_killed_segment(repo, store, monkeypatch):
    monkeypatch.setenv("FLOR_EPSILON", "1000")
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "died-once\n")
    edit(repo, ("import torch\n", "import os\n\nimport torch\n"), DIE_ONCE)
    proc = flor("sweep", "train.py", "--config", '{"hidden": 16}', "--config", '{"hidden": 24}', "-j", "1",
                "--segments", "1", "--retries", "1", "--name", "segs", "--json", "--", "--epochs", "2",
                "--batch_size", "128", cwd=repo)
    assert proc.returncode == 0, show(proc)
    assert [r["status"] for r in json.loads(proc.stdout)] == ["completed", "completed"]
    from flor_lib.store import Store

    metas = {m["runid"]: m for m in Store(str(store)).runs()}
    # the first member's segment 1 died once (the script's hook) and was retried from its checkpoint
    assert [a["segment"] for a in metas["segs-01"]["attempts"]] == ["0", "1", "1"]
    assert [a["segment"] for a in metas["segs-02"]["attempts"]] == ["0", "1"]
    assert all(m["sweep"] == "segs" and m["status"] == "completed" for m in metas.values())
    assert {e for e, _, _ in _losses(store, "segs-01")} == {0, 1}
