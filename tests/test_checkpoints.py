"""Checkpoints: adaptive policy, exact restore, atomic writes and resume of a killed run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flor_lib.config import epsilon
from tests.replay_story import FAST, make_repo, record

KILL_AFTER_EPOCH = (
    "        optimizer.step()\n",
    "        optimizer.step()\n"
    "        if os.environ.get('DIE_AT') == f'{epoch}/{i}':\n"
    "            time.sleep(1.0)  # let the background writer land the previous checkpoint\n"
    "            os.kill(os.getpid(), 9)\n",
)


def _losses(store: Path, runid: str) -> list[tuple]:
    from flor_lib import query
    from flor_lib.store import Store

    df = query.dataframe("loss", store=Store(str(store)), where=f"runid = '{runid}'")
    return [(int(e), int(s), v) for e, s, v in zip(df["epoch"], df["step"], df["loss"], strict=True)]


def test_resume_after_sigkill_gives_the_records_of_an_uninterrupted_run(tmp_path):
    from tests.replay_story import edit

    repo = make_repo(tmp_path)
    edit(repo, ("import torch\n", "import os\nimport time\n\nimport torch\n"), KILL_AFTER_EPOCH)
    store = tmp_path / "store"
    every = {"FLOR_EPSILON": "1000"}
    record(repo, store, "whole", *FAST, env=every)
    died = record(repo, store, "killed", *FAST, env={**every, "DIE_AT": "2/3"}, check=False)
    assert died.returncode == -9
    meta = json.loads((store / "runs").glob("*/killed.json").__next__().read_text())
    assert meta["status"] == "running" and meta["checkpoints"]
    assert _losses(store, "killed")  # records flushed before the kill are visible
    env = {**os.environ, "FLOR_STORE": str(store), "FLOR_RESUME": "killed", "FLOR_EPSILON": "1000"}
    proc = subprocess.run([sys.executable, "train.py", *FAST], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((store / "runs").glob("*/killed.json").__next__().read_text())
    assert meta["status"] == "completed" and len(meta["attempts"]) == 2
    assert meta["attempts"][1]["resumed_from"] is not None
    assert _losses(store, "killed") == _losses(store, "whole")
    # small states: one pack per attempt, not a file per checkpoint
    assert sorted(p.name for p in (store / "checkpoints" / meta["projid"] / "killed").iterdir()) == [
        "a1.pack", "a2.pack"]
    assert {c["path"] for c in meta["checkpoints"] if c["attempt"] == 2} == {"a2.pack"}


def test_restoring_a_checkpoint_reproduces_later_losses_bit_for_bit(tmp_path, monkeypatch):
    from flor_lib.replay.engine import replay

    repo = make_repo(tmp_path)
    store = tmp_path / "store"
    record(repo, store, "run", "--epochs", "4", "--hidden", "24", "--batch_size", "128",
           env={"FLOR_EPSILON": "1000"})
    (repo / "train.py").write_text((repo / "train.py").read_text().replace(
        "        optimizer.step()\n", "        optimizer.step()\n        flor.log('lr_now', optimizer.param_groups[0]['lr'])\n"))
    monkeypatch.setenv("FLOR_STORE", str(store))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FLOR_REPLAY_MIN_SEGMENT_S", "0")  # split even this tiny run
    # four segments: the last three start from checkpoints and re-execute steps whose loss was recorded
    summary = replay(["lr_now"], workers=4, progress=False)
    assert summary["segments"][0] == 4
    assert summary["checked"][0] == 4 and summary["mismatches"][0] == 0  # every recorded loss re-computed


SLOW_SAVE = """
import time
import flor_lib as flor

class Slow:
    def __init__(self):
        self.w = [0.0]
    def state_dict(self):
        time.sleep(0.15)
        return {"w": list(self.w)}
    def load_state_dict(self, d):
        self.w = list(d["w"])

state = Slow()
flor.checkpoints(state)
for epoch in flor.loop("epoch", range(30)):
    time.sleep(0.05)
    state.w[0] += 1.0
    flor.log("w", state.w[0])
"""


def test_policy_keeps_checkpoint_cost_under_epsilon_and_saves_the_last_iteration(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "slow.py").write_text(SLOW_SAVE)
    store = tmp_path / "store"
    env = {**os.environ, "FLOR_STORE": str(store)}
    proc = subprocess.run([sys.executable, "slow.py", "--flor", "slow"], cwd=repo, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(next((store / "runs").glob("*/slow.json")).read_text())
    iters = [c["iter"] for c in meta["checkpoints"]]
    assert 29 in iters and 0 in iters
    assert len(iters) < 30
    cost = sum(c["copy_s"] + c["save_s"] for c in meta["checkpoints"])
    train = 30 * 0.05
    first_and_last = 2 * max(c["copy_s"] + c["save_s"] for c in meta["checkpoints"])
    assert cost <= train * epsilon() + first_and_last


def test_default_budget_is_below_flordbs():
    assert 0 < epsilon() < 1 / 15  # FlorDB's 1/15 alone would spend 6.7% of training


def test_policy_does_not_let_a_slow_first_checkpoint_skip_the_next_ones():
    from flor_lib.checkpoint import Policy

    p = Policy(eps=0.1)
    p.record_cost(1.0)  # the first pays for warm-up
    p.record_cost(0.1)  # ...the next ones cost a tenth
    p.started = time.perf_counter() - 12.5  # 1.1 s spent + 0.1 s next <= 0.1 * 12.5 s of training
    assert p.should_save(3, last=False)  # (a mean of 0.55 s per checkpoint would have said no)


def test_policy_counts_training_time_on_every_core():
    from flor_lib.checkpoint import Policy

    p = Policy(eps=0.01)
    p.record_cost(0.1)  # the first checkpoint cost 0.1 s
    p.started, p.started_cpu = time.perf_counter() - 10, time.process_time()  # 10 s wall, no CPU yet
    assert not p.should_save(5, last=False)  # 2*0.1 > 0.01*10
    p.started_cpu = time.process_time() - 40  # ...but 4 threads did 40 CPU-seconds of training
    assert p.should_save(5, last=False)


def test_policy_rule_is_the_papers():
    from flor_lib.checkpoint import Policy

    p = Policy(eps=0.1)
    assert p.should_save(1, last=False)  # the first is always taken, to measure it
    p.record_cost(1.0)
    p.started = time.perf_counter() - 10  # 10 s of training: a 2nd costs 2*1 > 0.1*10
    assert not p.should_save(5, last=False)
    assert p.should_save(5, last=True)
    p.started = time.perf_counter() - 30
    assert p.should_save(6, last=False)


BIG_STATE = """
import flor_lib as flor
import torch
model = torch.nn.Linear(2048, 4096)
flor.checkpoints(model)
for epoch in flor.loop("epoch", range(1000)):
    model.weight.data += 1.0
    flor.log("e", epoch)
"""


def test_sigkill_during_checkpoint_writes_leaves_no_partial_checkpoint(tmp_path):
    from flor_lib.checkpoint import load

    repo = make_repo(tmp_path)
    (repo / "big.py").write_text(BIG_STATE)
    store = tmp_path / "store"
    env = {**os.environ, "FLOR_STORE": str(store), "FLOR_EPSILON": "1000"}
    rng = random.Random(7)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "big.py", "--flor", f"big{trial}"], cwd=repo, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not list((store / "checkpoints").rglob(f"big{trial}/*.pt")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.random())  # then at a seeded random moment, most likely mid-write of a 32 MB state
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    files = list((store / "checkpoints").rglob("*.pt"))
    assert files
    for f in files:
        assert load(f.read_bytes())["objects"]  # every visible checkpoint is whole


def test_registering_an_unsupported_object_fails_at_registration(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "bad.py").write_text("import flor_lib as flor\nflor.checkpoints(42)\nprint('after')\n")
    proc = subprocess.run([sys.executable, "bad.py"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "FLOR_STORE": str(tmp_path / "s")})
    assert proc.returncode != 0 and "after" not in proc.stdout
    assert "flor.checkpoints cannot restore a int" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("obj", ["{'a': 1}", "[1, 2]", "__import__('numpy').zeros(3)"])
def test_plain_objects_round_trip_in_place(obj):
    import numpy as np

    from flor_lib import checkpoint as ckpt

    value = eval(obj)
    saved = ckpt.load(ckpt.serialize(ckpt.capture([value], {"x": 1.5})))
    original = value.copy()
    if isinstance(value, dict):
        value["a"] = 2
    elif isinstance(value, list):
        value.append(3)
    else:
        value += 1
    assert ckpt.apply(saved, [value]) == {"x": 1.5}
    assert np.array_equal(value, original) if not isinstance(value, dict | list) else value == original


FAIL_ONCE = (
    "        optimizer.step()\n",
    "        optimizer.step()\n"
    "        if epoch == 1 and i == 5 and not os.path.exists('failed-once'):\n"
    "            open('failed-once', 'w').close()\n"
    "            raise RuntimeError('flaky GPU')\n",
)


def test_a_run_in_segments_and_a_failed_then_resumed_run_equal_a_whole_run(tmp_path):
    from tests.replay_story import edit

    repo = make_repo(tmp_path)
    (repo / ".gitignore").write_text("*.pth\nfailed-once\n")
    edit(repo, ("import torch\n", "import os\n\nimport torch\n"), FAIL_ONCE)
    store = tmp_path / "store"
    base = {**os.environ, "FLOR_STORE": str(store), "FLOR_EPSILON": "1000"}
    (repo / "failed-once").touch()
    record(repo, store, "whole", *FAST)
    (repo / "failed-once").unlink()
    failed = record(repo, store, "flaky", *FAST, check=False)
    assert failed.returncode != 0 and "flaky GPU" in failed.stderr
    proc = subprocess.run([sys.executable, "train.py", *FAST], cwd=repo, capture_output=True, text=True,
                          env={**base, "FLOR_RESUME": "flaky"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _losses(store, "flaky") == _losses(store, "whole")
    for stop in ("1", "2", ""):  # three segments: iterations 0, 1, then 2 to the end
        env = {**base, "FLOR_SEGMENT_STOP": stop} if stop else dict(base)
        args = ["--flor", "seg"] if stop == "1" else []
        if stop != "1":
            env["FLOR_RESUME"] = "seg"
        proc = subprocess.run([sys.executable, "train.py", *args, *FAST], cwd=repo, capture_output=True, text=True,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(next((store / "runs").glob("*/seg.json")).read_text())
    assert meta["status"] == "completed" and len(meta["attempts"]) == 3
    assert _losses(store, "seg") == _losses(store, "whole")


def test_checkpoints_written_without_fsync_are_made_durable_when_listed(tmp_path, monkeypatch):
    from flor_lib.store import Store

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    store = Store(str(tmp_path / "store"))
    path = f"{store.checkpoint_dir('p', 'r')}/i000001.pt"
    store.write_bytes(path, b"state", durable=False)
    assert synced == []  # the write itself does not wait for the disk
    store.make_durable([path, f"{store.checkpoint_dir('p', 'r')}/gone.pt"])  # a missing file is skipped
    assert synced == [path, str(Path(path).parent)]  # the file, then its directory (the rename)
    assert Path(path).read_bytes() == b"state"
    assert not list(Path(path).parent.glob("*.tmp-*"))


DISK_FULL_FOR_CHECKPOINTS = """
import resource, time
import flor_lib as flor
import torch
model = torch.nn.Linear(256, 256)  # 257 KB of state: more than the files may hold from epoch 3 on
flor.checkpoints(model)
for epoch in flor.loop("epoch", range(8)):
    if epoch == 3:
        flor._run._vid_ready.wait(60)  # (the code snapshot is not what this test fills the disk for)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
    model.weight.data += 1.0
    flor.log("e", epoch)
    time.sleep(0.05)  # an epoch's worth of time: the checkpoint writer keeps up
print("END", flush=True)
"""


def test_a_checkpoint_the_disk_cannot_hold_is_skipped_and_training_goes_on(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "full.py").write_text(DISK_FULL_FOR_CHECKPOINTS)
    store = tmp_path / "store"
    env = {**os.environ, "FLOR_STORE": str(store), "FLOR_EPSILON": "1000"}
    proc = subprocess.run([sys.executable, "full.py", "--flor", "full"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "END" in proc.stdout, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "checkpoint" in ln]
    assert len(warned) == 1 and "checkpoint not written" in warned[0], proc.stderr  # said once, in one line
    meta = json.loads(next((store / "runs").glob("*/full.json")).read_text())
    assert meta["status"] == "completed"
    assert [c["iter"] for c in meta["checkpoints"]] == [0, 1, 2]  # the ones written before the disk filled
    assert not list((store / "checkpoints").rglob("*.tmp-*"))  # no half-written file left behind
