"""flor on S3, against a real S3 server (moto) on loopback, reached through a TCP proxy this module controls.

The proxy lets a test take the store away mid-run (and bring it back with its data) and counts
the HTTP requests that cross it: requests per run and per query are asserted, not guessed.
Server: FLOR_TEST_S3_ENDPOINT (set by .ci/run), else a moto_server started from .ci/s3venv or
/tmp/s3venv (`python3 -m venv /tmp/s3venv && /tmp/s3venv/bin/pip install "moto[s3]==5.2.5" flask flask-cors`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import init_repo

ROOT = Path(__file__).resolve().parent.parent
SLOW = """
import time
import torch
import flor_lib as flor

torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
flor.checkpoints(model, opt)
x = torch.ones(8, 4)
pause = flor.arg("sleep", 0.05)
for epoch in flor.loop("epoch", range(flor.arg("epochs", 6))):
    for step in flor.loop("step", range(5)):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        flor.log("loss", loss.item())
        time.sleep(pause)
    print("epoch", epoch, flush=True)
flor.log("final", 1.0)
"""
TINY = """
import flor_lib as flor

for epoch in flor.loop("epoch", range(3)):
    flor.log("x", epoch * flor.arg("k", 1))
flor.log("done", 1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float = 20) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    """An S3 server: FLOR_TEST_S3_ENDPOINT, else moto_server from a venv of its own (skip if none)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    url = os.environ.get("FLOR_TEST_S3_ENDPOINT", "").strip().rstrip("/")
    if url:
        yield url
        return
    exe = next((p for p in (ROOT / ".ci/s3venv/bin/moto_server", Path("/tmp/s3venv/bin/moto_server")) if p.exists()),
               None)
    if exe is None:
        if os.environ.get("CI_STRICT", "") not in ("", "0", "false"):
            pytest.fail("CI_STRICT=1 but no S3 server: set FLOR_TEST_S3_ENDPOINT", pytrace=False)
        pytest.skip("no S3 server: set FLOR_TEST_S3_ENDPOINT or install moto into /tmp/s3venv (see module doc)")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_http(url + "/moto-api/"), "moto_server did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


_REQUEST = re.compile(rb"(?:^|\r\n)(GET|PUT|HEAD|POST|DELETE) (/[^ ]*) HTTP/1\.[01]\r\n")


class Proxy:
    """A TCP proxy in front of the S3 server: stop() makes the store unreachable, start() brings it back."""

    def __init__(self, target: str) -> None:
        host, port = target.split("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Accept connections again."""
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        threading.Thread(target=self._accept, args=(self._sock,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        """Requests seen so far (of one method, with path containing a text)."""
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and path in p)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        tail = b""
        try:
            while data := src.recv(1 << 16):
                if requests:
                    buf = tail + data
                    found = [(m.group(1).decode(), m.group(2).decode()) for m in _REQUEST.finditer(buf)
                             if m.end() > len(tail)]
                    with self._lock:
                        self.requests += found
                    tail = buf[-512:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(moto_url):
    p = Proxy(moto_url)
    yield p
    p.stop()


@pytest.fixture
def s3(proxy, moto_url, monkeypatch, tmp_path):
    """A fresh bucket behind the proxy; FLOR_STORE, endpoint and a private cache dir set for this test."""
    import s3fs

    bucket = f"flor-s3-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_url}, skip_instance_cache=True).mkdir(bucket)
    url = f"s3://{bucket}/store"
    for k, v in {"FLOR_STORE": url, "FLOR_S3_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL": proxy.url,
                 "FLOR_CACHE_DIR": str(tmp_path / "cache"), "FLOR_FLUSH_SECONDS": "0.2"}.items():
        monkeypatch.setenv(k, v)
    return url


def _direct(moto_url: str):
    """An s3fs client that bypasses the proxy (to look at the bucket while the proxy is down)."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_url}, skip_instance_cache=True)


def _run(repo: Path, *args: str, script: str = "train.py", env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, script, *args], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _store():
    from flor_lib.store import Store

    return Store()


def test_story_two_runs_dataframe_sql_replay(s3, proxy, tmp_path, moto_url, monkeypatch):
    """Two tutorial runs recorded into S3: few requests each, nothing left behind, queryable, replayable."""
    import flor_lib as flor

    repo = init_repo(tmp_path / "proj")
    per_run = []
    for name, hidden in (("s3a", "32"), ("s3b", "16")):
        proxy.reset()
        _run(repo, "--flor", name, "--epochs", "1", "--hidden", hidden)
        per_run.append(proxy.count())
        assert proxy.count("PUT", "/live/") <= 1, "a short run uploads no periodic live copy (one per checkpoint)"
        assert proxy.count("PUT", "/records/") == 1, "records go up as one Parquet file"
    print(f"requests per tutorial run (epochs 1): {per_run}")
    assert max(per_run) <= 25, proxy.requests

    store = _store()
    df = flor.dataframe("loss")
    assert set(df["runid"]) == {"s3a", "s3b"}
    assert len(df) == 8 and df["loss"].notna().all()  # 47 steps, loss every 10th: 4 per run
    assert sorted(df["hidden"]) == [16] * 4 + [32] * 4
    counts = flor.sql("SELECT runid, count(*) AS n FROM logs WHERE name = 'loss' GROUP BY 1 ORDER BY 1")
    assert counts.to_dict("list") == {"runid": ["s3a", "s3b"], "n": [4, 4]}
    assert {m["status"] for m in store.runs()} == {"completed"}
    fs = _direct(moto_url)
    bucket_root = s3.split("//", 1)[1]
    assert len(fs.glob(f"{bucket_root}/records/*/*.parquet")) == 2
    assert len(fs.glob(f"{bucket_root}/checkpoints/*/*/*.pt")) >= 2
    assert not fs.exists(f"{bucket_root}/live") or not fs.find(f"{bucket_root}/live")
    assert not list(store.spool.rglob("*.arrows")) and not store.outbox.exists()

    # hindsight: log accuracy in the newest code, replay both runs from their checkpoints on S3
    from flor_lib.replay.engine import replay
    from tests.replay_story import ACC, edit

    edit(repo, ACC, message="log accuracy")
    monkeypatch.setenv("HOME", str(tmp_path))  # worktrees under the test's tmp dir
    proxy.reset()
    summary = replay(["accuracy"], workers=2, progress=False)
    assert set(summary["status"]) == {"backfilled"} and (summary["restored_iters"] == 1).all(), summary
    assert proxy.count("GET", "/checkpoints/") == 2, "one checkpoint download per run"
    acc = flor.dataframe("accuracy")
    assert acc.set_index("runid")["accuracy"].notna().to_dict() == {"s3a": True, "s3b": True}
    assert len(flor.dataframe("loss")) == 8


def test_live_copy_then_resume_after_sigkill(s3, proxy, tmp_path, moto_url, monkeypatch):
    """A running run is visible from another host; killed with SIGKILL and resumed, every record once."""
    import flor_lib as flor
    from flor_lib.store import Store

    repo = init_repo(tmp_path / "proj")
    (repo / "slow.py").write_text(SLOW)
    env = {"FLOR_UPLOAD_SECONDS": "0.5", "FLOR_EPSILON": "0.5"}
    proc = subprocess.Popen([sys.executable, "slow.py", "--flor", "killed", "--epochs", "10", "--sleep", "0.3"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1"):
            break
    assert seen, proc.stderr.read()[-2000:]
    # another host (its own cache, no spool) sees the running run through the uploaded copy
    monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / "other-host"))
    deadline = time.time() + 20
    while time.time() < deadline:
        live = flor.dataframe("loss")
        if len(live) >= 10:
            break
        time.sleep(0.3)
    assert set(live["runid"]) == {"killed"} and len(live) >= 10
    monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / "cache"))
    assert proc.poll() is None, "the run must still be going: make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    meta = Store().find_run("killed")
    assert meta["status"] == "running" and meta["checkpoints"], meta
    resumed_from = meta["checkpoints"][-1]["iter"]
    assert resumed_from < 9

    _run(repo, "--epochs", "10", "--sleep", "0.1", script="slow.py", env={"FLOR_RESUME": "killed", **env})
    store = Store()
    meta = store.find_run("killed")
    assert meta["status"] == "completed" and len(meta["attempts"]) == 2
    df = flor.dataframe("loss")
    assert len(df) == 50 and not df.duplicated(["epoch", "step"]).any()
    assert sorted(df["epoch"].unique()) == list(range(10))
    both = flor.sql("SELECT attempt, count(*) AS n FROM logs WHERE name = 'loss' GROUP BY 1 ORDER BY 1")
    assert both["n"].sum() == 50 and list(both["attempt"]) == [1, 2]
    assert flor.sql("SELECT count(*) AS n FROM logs WHERE name = 'final'")["n"][0] == 1
    fs = _direct(moto_url)
    root = s3.split("//", 1)[1]
    assert not fs.exists(f"{root}/live") or not fs.find(f"{root}/live"), "live copies are gone once final"
    assert not list(store.spool.rglob("*.arrows"))


def test_store_down_mid_run_then_sync(s3, proxy, tmp_path, moto_url):
    """The store goes away mid-run: one error line, the run finishes locally; sync() uploads it all once."""
    import flor_lib as flor
    from flor_lib.store import Store
    from flor_lib.sync import sync

    repo = init_repo(tmp_path / "proj")
    (repo / "slow.py").write_text(SLOW)
    env = {"FLOR_UPLOAD_SECONDS": "0.5", "FLOR_EPSILON": "0.5"}
    proc = subprocess.Popen([sys.executable, "slow.py", "--flor", "outage", "--epochs", "6", "--sleep", "0.3"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    for line in proc.stdout:
        if line.startswith("epoch 1"):
            break
    fs = _direct(moto_url)
    root = s3.split("//", 1)[1]
    deadline = time.time() + 20
    while time.time() < deadline and not fs.glob(f"{root}/live/*/outage/a1.arrows"):
        time.sleep(0.2)
        fs.invalidate_cache()
    proxy.stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("flor: error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "flor sync" in errors[0], err
    store = Store()
    assert list(store.spool.rglob("outage/a1.arrows")), "records stay in the local spool"
    assert list(store.outbox.rglob("outage.json")), "the final metadata waits in the outbox"

    proxy.start()
    report = sync()
    assert report["finalized"] == 1 and report["records"] > 30 and report["uploaded"] >= 1, report
    assert not report["conflicts"] and not report["still_running"]
    df = flor.dataframe("loss")
    assert len(df) == 30 and not df.duplicated(["epoch", "step"]).any()
    meta = Store().find_run("outage")
    assert meta["status"] == "completed"
    for c in meta["checkpoints"]:
        assert fs.exists(f"{root}/checkpoints/{meta['projid']}/outage/{c['path']}")
    assert not list(store.spool.rglob("*.arrows")) and not any(p.is_file() for p in store.outbox.rglob("*"))
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/live") or not fs.find(f"{root}/live")
    again = sync()
    assert again["finalized"] == again["uploaded"] == 0
    assert len(flor.dataframe("loss")) == 30


def test_unreachable_from_the_start(s3, proxy, tmp_path):
    """No store at all when the run starts: one error line, exit 0, and sync() uploads it later."""
    import flor_lib as flor
    from flor_lib.errors import FlorError
    from flor_lib.sync import sync

    repo = init_repo(tmp_path / "proj")
    (repo / "tiny.py").write_text(TINY)
    proxy.stop()
    t0 = time.time()
    proc = _run(repo, "--flor", "offline", script="tiny.py")
    assert time.time() - t0 < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith("flor:")]
    assert len(errors) == 1 and errors[0].startswith("flor: error: store s3://"), proc.stderr
    with pytest.raises(FlorError, match="unreachable"):
        sync()
    with pytest.raises(FlorError, match="unreachable"):
        flor.dataframe("x")
    proxy.start()
    report = sync()
    meta = _store().find_run("offline")
    assert report["finalized"] == 1 and report["uploaded"] == 1 and report["records"] == meta["records"], report
    assert meta["status"] == "completed"
    df = flor.dataframe("x", "done")
    assert list(df["x"]) == [0, 1, 2] and list(df["runid"].unique()) == ["offline"]


def test_sync_then_resume_never_doubles(s3, proxy, tmp_path):
    """A killed run's stream finalized by sync(), then resumed: the resumed part replaces, not doubles."""
    import flor_lib as flor
    from flor_lib.store import Store
    from flor_lib.sync import sync

    repo = init_repo(tmp_path / "proj")
    (repo / "slow.py").write_text(SLOW)
    env = {"FLOR_EPSILON": "0.5"}
    proc = subprocess.Popen([sys.executable, "slow.py", "--flor", "synced", "--epochs", "5", "--sleep", "0.1"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})
    for line in proc.stdout:
        if line.startswith("epoch 2"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    report = sync()
    assert report["finalized"] == 1 and not report["still_running"] and report["interrupted"] == ["synced"], report
    before = flor.dataframe("loss")
    assert len(before) >= 15
    _run(repo, "--epochs", "5", "--sleep", "0.1", script="slow.py", env={"FLOR_RESUME": "synced", **env})
    df = flor.dataframe("loss")
    assert len(df) == 25 and not df.duplicated(["epoch", "step"]).any()
    assert Store().find_run("synced")["status"] == "completed"


def test_query_requests_follow_projects_not_runs(s3, proxy, tmp_path, monkeypatch):
    """20 runs in 2 projects: after compaction a cross-run query makes about as many requests as at 4 runs."""
    import flor_lib as flor
    from flor_lib import compact
    from flor_lib.store import Store

    repos = [init_repo(tmp_path / f"proj{i}") for i in range(2)]
    for repo in repos:
        (repo / "tiny.py").write_text(TINY)

    def record(n: int, start: int) -> None:
        procs = []
        for i in range(start, start + n):
            repo = repos[i % 2]
            procs.append(subprocess.Popen([sys.executable, "tiny.py", "--flor", f"r{i:02d}", "--k", str(i)],
                                          cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            if len(procs) >= 4:
                assert procs.pop(0).wait(120) == 0
        for p in procs:
            assert p.wait(120) == 0, p.stderr.read()

    def query_requests(cache: str) -> tuple[int, int]:
        monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / cache))
        proxy.reset()
        df = flor.dataframe("x")
        return len(df), proxy.count()

    record(4, 0)
    compact.compact(Store())
    rows4, first4 = query_requests("q4")
    record(16, 4)
    compact.compact(Store())
    rows20, first20 = query_requests("q20")
    _, again20 = query_requests("q20")
    monkeypatch.setenv("FLOR_QUERY_CACHE", "0")
    _, direct20 = query_requests("q20-direct")
    monkeypatch.delenv("FLOR_QUERY_CACHE")
    print(f"query requests: 4 runs {first4}; 20 runs {first20} (repeat {again20}, through s3fs {direct20})")
    assert rows4 == 12 and rows20 == 60
    assert first20 < 30 and first20 <= first4 + 2 and again20 <= first20
    fs = Store().fs
    assert all(len(compact.parquet_files(Store(), p)) == 1 for p in Store().projects())
    assert fs is not None


def test_fetch_cached_downloads_once_per_host(s3, proxy, tmp_path, monkeypatch):
    """Checkpoints (any object) are fetched once per host and version; a new version is fetched again."""
    from flor_lib.store import Store

    store = Store()
    path = store.path("checkpoints", "p", "r", "i000000.pt")
    store.write_bytes(path, b"one")
    proxy.reset()
    assert store.fetch_cached(path) == b"one" and proxy.count("GET") == 1
    assert store.fetch_cached(path) == b"one" and proxy.count("GET") == 1  # a HEAD, no GET
    assert store.fetch_cached(path, version="a1-5-3") == b"one"
    proxy.reset()
    assert store.fetch_cached(path, version="a1-5-3") == b"one" and proxy.count() == 0
    store.write_bytes(path, b"two")
    assert store.fetch_cached(path) == b"two"
    monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    proxy.reset()
    assert Store().fetch_cached(path) == b"two" and proxy.count("GET") == 1
    shutil.rmtree(tmp_path / "elsewhere")


def test_a_local_store_copied_to_s3_replays_packed_checkpoints_one_range_each(s3, proxy):
    """A pack (a local run's small checkpoints) on S3: each checkpoint is one ranged GET, then cached."""
    from flor_lib import ckpt_files
    from flor_lib.store import Store

    store = Store()
    store.write_bytes(store.path("checkpoints", "p", "r", "a1.pack"), b"first" + b"second!")
    entries = [{"iter": 0, "path": "a1.pack", "offset": 0, "bytes": 5, "seq": 3, "attempt": 1},
               {"iter": 1, "path": "a1.pack", "offset": 5, "bytes": 7, "seq": 6, "attempt": 1}]
    proxy.reset()
    assert [ckpt_files.read(store, "p", "r", e) for e in entries] == [b"first", b"second!"]
    assert proxy.count("GET") == 2
    proxy.reset()
    assert ckpt_files.read(store, "p", "r", entries[1]) == b"second!" and proxy.count() == 0
    cut = {**entries[1], "iter": 2, "offset": 10, "seq": 9}  # listed, but the pack ends before it
    with pytest.raises(FileNotFoundError):
        ckpt_files.read(store, "p", "r", cut)


def _synthetic_run(store, projid: str, runid: str, records: int = 12) -> None:
    """One finished run written straight into the store: its metadata and its Parquet file."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from flor_lib import compact
    from flor_lib.schema import RECORD_SCHEMA

    now = datetime.now(UTC)
    cols = {"projid": [projid] * records, "runid": [runid] * records, "tstamp": [now] * records,
            "vid": ["0" * 40] * records, "filename": ["train.py"] * records, "attempt": [1] * records,
            "seq": list(range(records)), "loops": [["epoch"]] * records, "iters": [[i] for i in range(records)],
            "kind": ["log"] * records, "name": ["x"] * records, "value": [float(i) for i in range(records)],
            "value_text": [None] * records, "value_type": ["float"] * records, "source": ["record"] * records,
            "replay_id": [None] * records}
    table = pa.Table.from_pydict(cols, schema=RECORD_SCHEMA)
    store.write_bytes(f"{store.records_dir(projid)}/{runid}--a1.parquet", compact._parquet_bytes(table))
    store.write_json(store.run_meta_path(projid, runid), {
        "projid": projid, "runid": runid, "tstamp": now.isoformat(), "vid": "0" * 40, "filename": "train.py",
        "status": "completed", "host": "h", "end": now.isoformat(), "args": {"k": 1}, "checkpoints": [],
        "attempts": [{"attempt": 1, "start_seq": 0, "start": now.isoformat(), "end": now.isoformat()}]})


def test_query_requests_at_200_runs(s3, proxy, tmp_path, monkeypatch):
    """200 runs in 4 projects: ~400 requests per query on per-run files; compacted 3 + 2 per project, then 3."""
    import flor_lib as flor
    from flor_lib import compact
    from flor_lib.store import Store

    runs, projects = 200, 4
    store = Store()
    store.check_writable()
    for i in range(runs):
        _synthetic_run(store, f"p{i % projects}", f"r{i:03d}")

    def query(cache: str) -> int:
        monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / cache))
        proxy.reset()
        assert len(flor.dataframe("x")) == runs * 12
        return proxy.count()

    per_run_files = query("a")
    proxy.reset()
    compact.compact(Store())
    compaction = proxy.count()
    compacted, repeat = query("b"), query("b")
    print(f"{runs} runs / {projects} projects: query {per_run_files} requests on per-run files; compaction "
          f"{compaction}; compacted {compacted} (repeat on this host {repeat})")
    assert per_run_files >= 2 * runs
    assert compacted <= 3 + 2 * projects + 1 and repeat <= 3 + 1


def test_sync_reports_a_name_taken_meanwhile(s3, proxy):
    """An offline run whose id another host recorded meanwhile is reported and kept, never overwritten."""
    from flor_lib.store import Store
    from flor_lib.sync import sync

    store = Store()
    store.write_json(store.run_meta_path("p", "same"), {"projid": "p", "runid": "same", "tstamp": "A"})
    (store.outbox / "runs" / "p").mkdir(parents=True)
    (store.outbox / "runs" / "p" / "same.json").write_text('{"projid": "p", "runid": "same", "tstamp": "B"}')
    (store.outbox / "checkpoints" / "p" / "same").mkdir(parents=True)
    (store.outbox / "checkpoints" / "p" / "same" / "i000000.pt").write_bytes(b"x")
    report = sync()
    assert report["uploaded"] == 0 and len(report["conflicts"]) == 1 and "p/same" in report["conflicts"][0]
    assert store.run_meta("p", "same")["tstamp"] == "A"
    assert (store.outbox / "runs" / "p" / "same.json").exists()
    assert not store.fs.exists(store.path("checkpoints", "p", "same", "i000000.pt"))
