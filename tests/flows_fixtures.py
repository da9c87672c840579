"""Helpers and fixtures for the flow and CLI tests: the flor command, Prefect read-back, a Prefect server.

Imported by tests/test_flows*.py and tests/test_cli*.py (`from flows_fixtures import ...`); the shared
fixtures (store, repo, ...) come from tests/conftest.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOR = [sys.executable, "-m", "flor_flows.cli"]
PREFECT = [str(Path(sys.executable).with_name("prefect"))] if Path(sys.executable).with_name("prefect").exists() \
    else [sys.executable, "-m", "prefect"]
SHORT = ["--epochs", "1"]
PNG = b"\x89PNG\r\n\x1a\n"
ACC = ('    print(f"Accuracy of', '    flor.log("accuracy", 100 * correct / total)\n    print(f"Accuracy of')


def add_accuracy(repo: Path, git) -> None:
    """The hindsight statement: log the test accuracy after training (outside every loop), committed."""
    path = repo / "train.py"
    path.write_text(path.read_text().replace(*ACC, 1))
    git(repo, "commit", "-qam", "log accuracy")


def flows_env(**extra: str | None) -> dict[str, str]:
    """The environment for flor subprocesses: embedded Prefect (no API URL), INFO logs sent to the API."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def flor(*args: str, cwd: Path | str, env: dict[str, str] | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the flor CLI as a subprocess and return the CompletedProcess (text output)."""
    return subprocess.run([*FLOR, *map(str, args)], cwd=cwd, env=env or flows_env(), capture_output=True,
                          text=True, timeout=timeout)


def show(proc: subprocess.CompletedProcess) -> str:
    """The tail of a process's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


_READBACK = r"""
import asyncio, json, sys
def parse(data):
    try:
        return json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return data
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
    FlowRunFilterId, FlowRunFilterName, LogFilter, LogFilterFlowRunId)

async def main():
    names = json.loads(sys.argv[1])
    out = []
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))
        for run in runs:
            flow = await client.read_flow(run.flow_id)
            ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            tasks = await client.read_task_runs(flow_run_filter=ids)
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                          limit=200)
            out.append({"id": str(run.id), "name": run.name, "flow": flow.name, "state": run.state_type.value,
                        "message": run.state.message if run.state else None,
                        "parent_task_run_id": str(run.parent_task_run_id) if run.parent_task_run_id else None,
                        "tasks": [{"name": t.name, "state": t.state_type.value if t.state_type else None}
                                  for t in tasks],
                        "artifacts": [{"key": a.key, "type": a.type,
                                       "data": parse(a.data)}
                                      for a in arts],
                        "logs": [entry.message for entry in logs]})
    print("READBACK " + json.dumps(out, default=str))

asyncio.run(main())
"""


def readback(names: list[str], env: dict[str, str] | None = None) -> dict[str, dict]:
    """Flow runs with these names, read through the Prefect client: state, tasks, artifacts, logs."""
    proc = subprocess.run([sys.executable, "-c", _READBACK, json.dumps(names)], env=env or flows_env(),
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("READBACK ")), None)
    assert line, show(proc)
    return {r["name"]: r for r in json.loads(line[len("READBACK "):])}


def artifact(run: dict, key: str) -> dict:
    """The artifact with this key among a read-back run's artifacts (the latest version)."""
    found = [a for a in run["artifacts"] if a["key"] == key]
    assert found, f"no artifact {key} in {[a['key'] for a in run['artifacts']]}"
    return found[0]


def png_of(markdown: str) -> bytes:
    """The PNG a markdown artifact embeds as a base64 data: URI (asserts it is one)."""
    found = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)
    assert found, markdown[:300]
    png = base64.b64decode(found.group(1), validate=True)
    assert png[:8] == PNG and len(png) > 1000, png[:16]
    return png


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float = 300) -> None:
    """Wait until a Prefect server answers /health (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"prefect server at {url} not healthy after {timeout} s:\n{log.read_text()[-3000:] if log else ''}")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20) -> None:
    """Signal a process group (a session leader we started), then SIGKILL it after grace seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture(scope="session")
def flows_server(tmp_path_factory) -> str:
    """A Prefect server API URL: FLOR_TEST_PREFECT_API_URL when set, else one started (and stopped) here."""
    given = os.environ.get("FLOR_TEST_PREFECT_API_URL", "").strip()
    if given:
        wait_healthy(given.rstrip("/"), None, None, timeout=120)
        yield given.rstrip("/")
        return
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    log = home / "server.log"
    env = flows_env(PREFECT_HOME=str(home))
    with open(log, "w") as out:
        proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop_group(proc, signal.SIGTERM, grace=20)
