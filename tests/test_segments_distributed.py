"""A segmented run through a real Prefect server and two workers survives losing the worker of a segment.

Needs a Prefect server: FLOR_TEST_PREFECT_API_URL (.ci/test.sh starts one), else the session fixture
starts `prefect server start` on a free port. The store is S3 (moto) when FLOR_TEST_S3_ENDPOINT is set,
as in CI, with a cache directory of its own per worker (as on two machines); else a local directory
both workers share.
The training script holds (sleeps) in the middle of segment 1 once, after writing the name of the
worker running it to a file; the test then SIGKILLs that worker's whole process tree (worker, flow-run
process, training process: a lost machine). The coordinator must see the segment as lost, re-submit
it, the other worker must resume it from the checkpoint of epoch 0, and the run must end with the
losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from flows_fixtures import (
    FLOR,
    flor,
    flows_env,
    flows_server,  # noqa: F401  (session fixture)
    show,
)

from tests.replay_story import edit

FAST = ["--epochs", "2", "--hidden", "24", "--batch_size", "128"]
# the test hook: segment 1 announces its worker and holds mid-epoch, once (the file then exists)
HOLD = (
    "        optimizer.step()\n",
    "        optimizer.step()\n"
    "        hold = os.environ.get('FLOR_TEST_HOLD')\n"
    "        if hold and epoch == 1 and i == 4 and not os.path.exists(hold):\n"
    "            with open(hold + '.tmp', 'w') as f:\n"
    "                f.write(os.environ.get('FLOR_WORKER_NAME', ''))\n"
    "            os.rename(hold + '.tmp', hold)\n"
    "            time.sleep(600)\n",
)


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (whatever session they started)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    for _ in range(2):  # a second sweep catches anything forked while the first one ran
        for pid in _tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(10)


def _wait_for(predicate, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} not seen after {timeout} s:\n" + "\n".join(p.read_text()[-2500:] for p in logs))


def _flow_runs(api: str, names: list[str]) -> dict[str, dict]:
    """Flow runs by name, straight from the REST API (no prefect import: seconds on a busy machine)."""
    body = json.dumps({"flow_runs": {"name": {"any_": names}}, "limit": 50}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return {run["name"]: run for run in json.load(r)}


@pytest.fixture
def shared_store(store, request) -> str:
    """A store every worker sees: S3 when the session has a moto server, else this test's directory."""
    if os.environ.get("FLOR_TEST_S3_ENDPOINT", "").strip():
        return request.getfixturevalue("s3_store")
    return str(store)


def _losses(store, runid):
    from flor_lib.query import dataframe
    from flor_lib.store import Store

    df = dataframe("loss", store=Store(str(store)), where=f"runid = '{runid}'")
    return list(zip(df["epoch"], df["step"], df["loss"], strict=True))


def test_a_segment_whose_worker_dies_resumes_on_another_worker(flows_server, repo, shared_store,  # noqa: F811
                                                               tmp_path, monkeypatch):
    store = shared_store
    monkeypatch.setenv("FLOR_EPSILON", "1000")  # a checkpoint at every epoch
    edit(repo, ("import torch\n", "import os\nimport time\n\nimport torch\n"), HOLD)
    pool = f"flor-seg-{uuid.uuid4().hex[:6]}"  # its own pool: other tests' workers never take these runs
    run = f"{pool}-run"  # flow-run names unique on a server that outlives the test
    hold = tmp_path / "held"
    env = flows_env(PREFECT_API_URL=flows_server, PREFECT_WORKER_QUERY_SECONDS="1",
                    PREFECT_WORKER_PREFETCH_SECONDS="2", PREFECT_WORKER_HEARTBEAT_SECONDS="2",
                    CUDA_VISIBLE_DEVICES="0,1", FLOR_SEGMENT_LOST_SECONDS="35",
                    FLOR_SEGMENT_POLL_SECONDS="1")
    workers: dict[str, tuple[subprocess.Popen, Path]] = {}
    coord = None
    try:
        for gpu in (0, 1):
            name, log = f"{pool}-w{gpu}", tmp_path / f"worker{gpu}.log"
            with open(log, "w") as out:
                workers[name] = (subprocess.Popen(
                    [*FLOR, "worker", "--gpu", str(gpu), "--pool", pool, "--name", name],
                    cwd=tmp_path, env={**env, "FLOR_TEST_HOLD": str(hold), "FLOR_CACHE_DIR": str(tmp_path / name)},
                    stdout=out, stderr=subprocess.STDOUT,                    start_new_session=True), log)
        logs = [log for _, log in workers.values()]
        for name, (_, log) in workers.items():
            _wait_for(lambda log=log: "started" in log.read_text(), f"worker {name} start", 240, logs)

        t0 = time.monotonic()
        out_path, err_path = tmp_path / "coord.out", tmp_path / "coord.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            coord = subprocess.Popen([*FLOR, "run", "train.py", "--name", run, "--segments", "1",
                                      "--retries", "2", "--pool", pool, "--json", "--", *FAST],
                                     cwd=repo, env=env, stdout=out, stderr=err, start_new_session=True)
        _wait_for(hold.exists, "segment 1 holding", 180, [err_path, *logs])
        victim = hold.read_text()
        assert victim in workers, victim
        _kill_tree(workers[victim][0])
        killed_at = datetime.now(UTC)
        t_kill = time.monotonic() - t0
        # the uninterrupted run (run here, no pool) uses the time the coordinator spends noticing the loss
        proc = flor("run", "train.py", "--name", "whole", "--", *FAST, cwd=repo, env=env)
        assert proc.returncode == 0, show(proc)
        coord.wait(240)
        t_done = time.monotonic() - t0
        assert coord.returncode == 0, err_path.read_text()[-5000:] + "".join(p.read_text()[-3000:] for p in logs)
        summary = json.loads(out_path.read_text())
        assert summary["status"] == "completed" and summary["runid"] == run

        # no gaps, no duplicates: the records are those of the uninterrupted run
        assert _losses(store, run) == _losses(store, "whole")

        from flor_lib.store import Store

        meta = Store(str(store)).find_run(run)
        (other,) = set(workers) - {victim}
        attempts = meta["attempts"]
        assert [a["segment"] for a in attempts] == ["0", "1", "1"], attempts
        assert [a["worker"] for a in attempts[1:]] == [victim, other], attempts
        assert attempts[1].get("lost") and not attempts[1].get("end"), attempts[1]
        assert attempts[2]["resumed_from"] == 0, attempts[2]  # from the checkpoint of epoch 0
        assert {a["device"] for a in attempts} <= {"0", "1"}, attempts
        tries = {s["segment"]: [(t["state"], t["worker"]) for t in s["tries"]] for s in meta["segments"]}
        assert tries[1] == [("LOST", victim), ("COMPLETED", other)], tries

        # in Prefect: the lost segment run is Crashed, its re-submission Completed on the other worker
        runs = _flow_runs(flows_server, [run, f"{run}-s0", f"{run}-s1", f"{run}-s1-r1"])
        assert runs[run]["state_type"] == "COMPLETED"
        assert runs[f"{run}-s1"]["state_type"] == "CRASHED" and "lost" in runs[f"{run}-s1"]["state"]["message"]
        assert runs[f"{run}-s1-r1"]["state_type"] == "COMPLETED"
        assert runs[f"{run}-s1-r1"]["labels"]["prefect.worker.name"] == other
        assert all(runs[f"{run}-{s}"]["parent_task_run_id"] for s in ("s0", "s1", "s1-r1"))  # in the run's graph
        resumed_at = datetime.fromisoformat(attempts[2]["start"])
        print(f"\nkill at {t_kill:.1f} s, run done at {t_done:.1f} s; resumed segment started "
              f"{(resumed_at - killed_at).total_seconds():.1f} s after the kill")
    finally:
        if coord is not None and coord.poll() is None:
            _kill_tree(coord)
        for proc, _ in workers.values():
            if proc.poll() is None:
                _kill_tree(proc)


class _Server:
    """What LostRuns reads from Prefect: workers of the pool and flow-run heartbeat events."""

    def __init__(self) -> None:
        self.workers: dict[str, tuple[str, int]] = {}  # name -> (status, last heartbeat tick)
        self.beats: dict[str, int] = {}  # flow run id -> its last heartbeat event

    def read_workers_for_work_pool(self, pool):
        return [SimpleNamespace(name=n, status=SimpleNamespace(value=st), last_heartbeat_time=t,
                                heartbeat_interval_seconds=2) for n, (st, t) in self.workers.items()]

    def read_events(self, flt, limit):
        run_id = flt.resource.id[0].removeprefix("prefect.flow-run.")
        beat = self.beats.get(run_id)
        return SimpleNamespace(events=[] if beat is None else [SimpleNamespace(id=beat)])


def _run(state: str, worker: str | None):
    return SimpleNamespace(id=uuid.uuid4(), labels={"prefect.worker.name": worker} if worker else {},
                           state=SimpleNamespace(type=SimpleNamespace(value=state)))


def _watch(server, run, seconds: int, worker_beats: bool, run_beats: bool):
    """Let `seconds` pass, one poll a second; return the first verdict that the run is lost, or None."""
    from flor_flows.segment_deploy import LostRuns

    lost = LostRuns("pool", lost_after_s=35)
    now = [0.0]
    lost.clock = lambda: now[0]
    for tick in range(seconds):
        now[0] = float(tick)
        if worker_beats and run.labels:
            server.workers[run.labels["prefect.worker.name"]] = ("ONLINE", tick // 2)
        if run_beats:
            server.beats[str(run.id)] = tick // 30
        why = lost.lost(server, run)
        if why:
            return tick, why
    return None


def test_a_run_is_lost_only_when_its_worker_and_its_own_heartbeats_are_both_silent():
    server = _Server()
    # a worker restarted on its own: its flow run goes on beating and must not get a twin
    server.workers["w0"] = ("OFFLINE", 0)
    assert _watch(server, _run("RUNNING", "w0"), 300, worker_beats=False, run_beats=True) is None
    # the flow run is silent but its worker lives (it would see its process die and report Crashed)
    assert _watch(server, _run("RUNNING", "w1"), 300, worker_beats=True, run_beats=False) is None
    # a lost machine: worker OFFLINE, run silent -> lost once the run has been silent for lost_after_s
    tick, why = _watch(server, _run("RUNNING", "w0"), 300, worker_beats=False, run_beats=False)
    assert tick == 35 and "worker w0 lost" in why
    # a worker that vanished from the pool, or stopped beating while still shown ONLINE
    assert _watch(server, _run("PENDING", "gone"), 300, worker_beats=False, run_beats=False)[0] == 35
    server.workers["w2"] = ("ONLINE", 7)
    assert _watch(server, _run("RUNNING", "w2"), 300, worker_beats=False, run_beats=False)[0] == 35
    # not yet picked up by a worker: any worker may still take it
    assert _watch(server, _run("SCHEDULED", None), 300, worker_beats=False, run_beats=False) is None
