"""A sweep and a replay fanned out through the deployments to two pinned workers ("GPU 0", "GPU 1").

Needs a Prefect server: FLOR_TEST_PREFECT_API_URL (.ci/run starts one), else the session fixture starts
`prefect server start` on a free port. The test creates the pool (through `flor worker`), deploys
prefect.yaml with `prefect --no-prompt deploy --all`, runs a 4-member sweep with --pool, checks every
member ran on exactly one device, no device ran two at once, every record landed, replays two of the
runs through `flor-replay-segment/flor-gpu`, then stops the workers with one SIGTERM each.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from flows_fixtures import (
    FLOR,
    PREFECT,
    ROOT,
    SHORT,
    add_accuracy,
    artifact,
    flor,
    flows_env,
    flows_server,  # noqa: F401  (session fixture)
    readback,
    show,
    stop_group,
)

from flor_lib import compact
from flor_lib.query import dataframe
from flor_lib.store import Store

POOL = "flor-gpu"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"worker never printed {text!r}:\n{path.read_text()[-3000:]}")


def test_sweep_and_replay_fan_out_to_one_worker_per_gpu(flows_server, repo, store, tmp_path, git):  # noqa: F811
    env = flows_env(PREFECT_API_URL=flows_server, PREFECT_WORKER_QUERY_SECONDS="1",
                    PREFECT_WORKER_PREFETCH_SECONDS="2", CUDA_VISIBLE_DEVICES="0,1")
    workers: list[tuple[subprocess.Popen, Path]] = []
    try:
        for gpu in (0, 1):
            log = tmp_path / f"worker{gpu}.log"
            with open(log, "w") as out:
                workers.append((subprocess.Popen([*FLOR, "worker", "--gpu", str(gpu), "--pool", POOL, "--grace", "2"],
                                                 cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True), log))
        for proc, log in workers:
            _wait_for_text(log, "started", proc, timeout=240)
        assert "CUDA_VISIBLE_DEVICES=0," in workers[0][1].read_text()
        assert "CUDA_VISIBLE_DEVICES=1," in workers[1][1].read_text()

        deploy = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert deploy.returncode == 0, show(deploy)
        assert "flor-run/flor-gpu" in deploy.stdout, show(deploy)

        # with no `prefect deploy`, --pool creates the deployment itself (same entrypoint, shared-disk pull)
        auto = f"flor-auto-{uuid.uuid4().hex[:6]}"
        code = ("import json; from flor_flows.fanout import ensure_deployment\n"
                "from prefect.client.orchestration import get_client\n"
                f"name = ensure_deployment('flor-run', '{auto}')\n"
                "with get_client(sync_client=True) as c:\n"
                "    d = c.read_deployment_by_name(name)\n"
                "    print(json.dumps([name, d.entrypoint, d.work_pool_name, d.pull_steps]))\n")
        made = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, show(made)
        name, entry, pool, pull = json.loads(made.stdout.strip().splitlines()[-1])
        assert (name, entry, pool) == (f"flor-run/{auto}", "flor_flows/training.py:training_run", auto)
        assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

        sweep = f"dist-{uuid.uuid4().hex[:6]}"
        proc = flor("sweep", "train.py", "--grid", "hidden=8,16,24,32", "--pool", POOL, "--name", sweep, "--json",
                    "--", *SHORT, cwd=repo, env=env, timeout=900)
        assert proc.returncode == 0, show(proc) + "".join(log.read_text()[-3000:] for _, log in workers)
        rows = json.loads(proc.stdout)
        names = [f"{sweep}-0{i}" for i in range(1, 5)]
        assert [r["name"] for r in rows] == names and all(r["status"] == "completed" for r in rows), rows

        # every member ran, on exactly one device, and no device ran two members at once
        metas = {m["runid"]: m for m in Store(str(store)).runs()}
        assert sorted(metas) == names
        by_device: dict[str, list[tuple[datetime, datetime]]] = {}
        for m in metas.values():
            assert m["status"] == "completed" and m["sweep"] == sweep
            assert m["cuda_visible_devices"] in ("0", "1"), m["cuda_visible_devices"]
            a = m["attempts"][0]
            by_device.setdefault(m["cuda_visible_devices"], []).append(
                (datetime.fromisoformat(a["start"]), datetime.fromisoformat(a["end"])))
        for spans in by_device.values():
            spans.sort()
            assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False)), spans
        assert [r["device"] for r in rows] == [metas[n]["cuda_visible_devices"] for n in names]

        # all records landed in the dataset, none left in the spool
        assert compact.visible_streams(Store(str(store))) == []
        df = dataframe("loss")
        assert set(df["runid"]) == set(names) and (df.groupby("runid").size() >= 4).all()

        # in Prefect: the sweep and its four member flow runs (children of the sweep), with their artifacts
        runs = readback([sweep, *names], env=env)
        assert runs[sweep]["state"] == "COMPLETED" and runs[sweep]["flow"] == "flor-sweep"
        assert len(artifact(runs[sweep], f"flor-sweep-{sweep}-results")["data"]) == 4
        for n in names:
            member = runs[n]
            assert member["flow"] == "flor-run" and member["state"] == "COMPLETED", member
            assert member["parent_task_run_id"], "member not linked to the sweep"
            assert artifact(member, f"flor-run-{n}")["type"] == "table"
            assert any("Accuracy of the network" in line for line in member["logs"])

        # a replay through the deployments: each segment is a flor-replay-segment run on a worker
        add_accuracy(repo, git)
        proc = flor("replay", "accuracy", "--where", f"sweep = '{sweep}' AND hidden <= 16", "--pool", POOL,
                    "--json", cwd=repo, env=env, timeout=900)
        assert proc.returncode == 0, show(proc) + "".join(log.read_text()[-3000:] for _, log in workers)
        replayed = {r["runid"]: r["status"] for r in json.loads(proc.stdout)}
        assert replayed == {names[0]: "backfilled", names[1]: "backfilled"}
        acc = dataframe("accuracy")
        assert set(acc["runid"]) == set(names[:2]) and acc["accuracy"].notna().all()
        segments = readback([f"replay-{n}-0" for n in names[:2]], env=env)
        assert {r["flow"] for r in segments.values()} == {"flor-replay-segment"}
        assert all(r["state"] == "COMPLETED" and r["parent_task_run_id"] for r in segments.values())
    finally:
        # one SIGTERM each must stop a worker (flor turns it into the two signals Prefect needs)
        survivors = []
        for proc, log in workers:
            kids = _children(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    survivors.append(log.name)
            survivors += [f"{log.name}: prefect worker {k}" for k in kids if Path(f"/proc/{k}").exists()
                          and "worker" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]
            stop_group(proc, signal.SIGKILL, grace=5)
    assert not survivors, survivors
