"""Reliability (issue 8): crashes, concurrency, bad input and security, with real git, processes and SIGKILL.

Runs whose script registers state with flor.checkpoints import torch (the RNG states are part of
every checkpoint), which costs many seconds per process on a loaded machine. Those runs are started
by a *zygote*: one helper process that imports torch (and pyarrow, git) once and forks a fresh
child per run, which then executes the script exactly like `python script.py ARGS` would
(runpy as __main__, its own argv, cwd, environment, stdout/stderr file and atexit). Each run is
still its own process and is killed with a real SIGKILL. Everything else is a plain subprocess.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.replay_story import snapshot_state

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROJID = "proj_main"  # conftest's `repo` fixture is a directory proj/ on branch main


# --- helpers ---------------------------------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _env(**extra) -> dict:
    env = dict(os.environ)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def _store(root=None):
    from flor_lib.store import Store

    return Store(str(root) if root else None)


def _sql(query: str, root=None):
    from flor_lib.query import Connection

    return Connection(_store(root)).sql(query)


def _logs(runid: str, root=None, conn=None) -> list[tuple]:
    """(name, epoch, step, value) of a run's visible log records, in the order they were logged."""
    query = f"SELECT * FROM logs WHERE runid = '{runid}' ORDER BY seq"
    df = conn.sql(query) if conn is not None else _sql(query, root)
    out = []
    for row in df.to_dict("records"):
        pos = tuple(-1 if row.get(c) is None or row.get(c) != row.get(c) else int(row[c]) for c in ("epoch", "step"))
        kind = row["value_type"]
        value = int(row["value_text"]) if kind == "int" else row["value_text"] if kind == "str" else row["value"]
        out.append((row["name"], *pos, value))
    return out


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _assert_one_line_error(code: int, err: str, needle: str | None = None) -> str:
    """A non-zero exit with exactly one non-empty stderr line, `flor: error: ...`, and no traceback."""
    lines = _lines(err)
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("flor: error:")]
    assert len(errors) == 1 and len(lines) == 1, err
    if needle:
        assert needle in errors[0], err
    return errors[0]


def _wait_for(predicate, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# --- the zygote: one torch import, a forked process per run ---------------------------------------------------

_ZYGOTE = r"""
import json, os, sys
import torch  # noqa: F401  the costly import, paid once
import pyarrow, pyarrow.ipc, pyarrow.parquet, git, filelock, fsspec  # noqa: F401
reply = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdin = open(os.devnull)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = [job["script"], *job["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(job["script"]))
        import runpy
        runpy.run_path(job["script"], run_name="__main__")
        sys.exit(0)
    reply.write(f"{pid}\n")
    reply.flush()
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
    reply.flush()
"""


class Child:
    """One run forked by the zygote."""

    def __init__(self, zygote: Zygote, pid: int, out: Path) -> None:
        self.zygote, self.pid, self.out, self.code = zygote, pid, out, None

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 300) -> int:
        if self.code is None:
            line = self.zygote.readline(timeout)
            self.code = json.loads(line)["code"]
        return self.code


class Zygote:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([PY, "-u", "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=workdir)
        self.n = 0

    def readline(self, timeout: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"zygote: no answer within {timeout}s")
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return line

    def start(self, cwd: Path, script: str, *args: str, env: dict | None = None) -> Child:
        self.n += 1
        out = self.workdir / f"child-{self.n}.out"
        job = {"cwd": str(cwd), "script": script, "args": [str(a) for a in args], "out": str(out),
               "env": {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in (env or {}).items()}}}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return Child(self, int(self.readline(600)), out)

    def run(self, cwd: Path, script: str, *args: str, env: dict | None = None, timeout: float = 300) -> Child:
        child = self.start(cwd, script, *args, env=env)
        child.wait(timeout)
        return child

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


# a training script with nested loops, checkpointed state and deterministic values that depend on that state
TRIAL = """
import os, time
import flor_lib as flor

N = int(os.environ.get("EPOCHS", "10"))
state = {"w": 0}
flor.checkpoints(state)
for e in flor.loop("epoch", range(N)):
    for s in flor.loop("step", range(4)):
        state["w"] += 1
        flor.log("v", e * 100 + s)
        time.sleep(0.01)
    flor.log("w", state["w"])
    if os.environ.get("DIE_AFTER") == str(e):
        deadline = time.time() + 120  # a checkpoint is durable (the writer skips some while it is busy) ...
        while not flor._run.checkpoints and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # ... and so is every record logged so far
        os.kill(os.getpid(), 9)
flor.log("final", state["w"])
"""


def trial_expected(n: int = 10) -> list[tuple]:
    out = []
    for e in range(n):
        out += [("v", e, s, e * 100 + s) for s in range(4)]
        out.append(("w", e, -1, 4 * (e + 1)))
    return out + [("final", -1, -1, 4 * n)]


def _checkpoint_files(root: Path, runid: str) -> list[Path]:
    return sorted((Path(root) / "checkpoints" / PROJID / runid).glob("*.pt"))


def _make_light_repo(path: Path, scripts: dict[str, str]) -> Path:
    """A git repository named proj on branch main (projid proj_main) holding the given scripts."""
    repo = path / "proj"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Flor Test")
    _git(repo, "config", "user.email", "test@flor.invalid")
    _git(repo, "config", "commit.gpgsign", "false")
    (repo / ".gitignore").write_text("*.pt\n__pycache__/\nignored/\n*.out\n")
    for name, source in scripts.items():
        (repo / name).write_text(textwrap.dedent(source).lstrip())
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "initial")
    return repo


# === crashes ====================================================================================================

def test_sigkill_at_twenty_random_moments_leaves_a_readable_exact_prefix_and_resume_completes_it(
        repo, write_script, store, zygote):
    from flor_lib import checkpoint as ckpt
    from flor_lib import ckpt_files

    write_script(repo, "trial.py", TRIAL, commit=True)
    env = {"FLOR_FLUSH_SECONDS": "0.1", "FLOR_EPSILON": "1000"}
    expected = trial_expected()
    lifetimes = []
    for name in ("whole", "whole2"):  # how long a run lives here, start to exit
        t0 = time.monotonic()
        whole = zygote.run(repo, "trial.py", "--flor", name, env=env)
        lifetimes.append(time.monotonic() - t0)
        assert whole.code == 0, whole.text()
        assert _logs(name) == expected
    lifetime = min(lifetimes)

    rng = random.Random(8)
    kills, resumed, started = 0, 0, time.monotonic()
    for trial in range(20):
        runid = f"k{trial:02d}"
        child = zygote.start(repo, "trial.py", "--flor", runid, env=env)
        delay = rng.uniform(0.0, 0.9 * lifetime)
        time.sleep(delay)
        child.kill()
        code = child.wait()
        kills += code == -signal.SIGKILL
        where = f"trial {trial} killed after {delay:.2f}s (exit {code})"

        # the store opens and answers
        import flor_lib as flor
        from flor_lib.query import Connection

        flor.dataframe("v", "w")
        conn = Connection(_store())
        got = _logs(runid, conn=conn)
        # an exact in-order prefix: no gap, no duplicate, no torn or invented value
        assert got == expected[:len(got)], where
        meta = _store().run_meta(PROJID, runid)
        if meta is None:
            assert got == [], where  # nothing is written before the run's metadata
            continue
        if meta["status"] == "completed":
            assert got == expected, where
        else:
            assert meta["status"] == "running", where
            assert conn.sql(f"SELECT status FROM runs WHERE runid = '{runid}'")["status"].tolist() == ["running"]
        # every record logged before the last durable checkpoint is there
        if meta["checkpoints"]:
            assert len(got) >= meta["checkpoints"][-1]["seq"], (where, meta["checkpoints"][-1], len(got))
        for c in meta["checkpoints"]:  # every listed checkpoint is whole (a pack's torn tail is never listed)
            data = ckpt_files.read(_store(), PROJID, runid, c)
            assert ckpt.load(data)["objects"] == [{"w": 4 * (c["iter"] + 1)}], (where, c)
        for f in _checkpoint_files(store, runid):  # and no checkpoint file of its own is half-visible
            assert ckpt.load(f.read_bytes())["objects"] == [{"w": 4 * (int(f.stem[1:]) + 1)}], (where, f)

        # resume continues it to the records of an uninterrupted run (a few of the trials)
        if meta["status"] == "running" and resumed < 3 and trial >= 4:
            again = zygote.run(repo, "trial.py", env={**env, "FLOR_RESUME": runid})
            assert again.code == 0, (where, again.text()[-3000:])
            assert _logs(runid) == expected, where
            meta = _store().run_meta(PROJID, runid)
            assert meta["status"] == "completed" and len(meta["attempts"]) == 2, where
            resumed += 1
    print(f"lifetime {lifetime:.2f}s, {kills} killed, {resumed} resumed, took {time.monotonic() - started:.1f}s")
    assert kills >= 15, f"only {kills} of 20 trials were killed before the run ended"
    assert resumed == 3


# a light replay story: no flor.checkpoints, so nothing imports torch and segments re-execute from scratch
REPLAYED = """
import time
import flor_lib as flor

for e in flor.loop("epoch", range(6)):
    for s in flor.loop("step", range(5)):
        flor.log("v", e * 10 + s)
        time.sleep(0.04)
"""
HINDSIGHT = ('        flor.log("v", e * 10 + s)\n',
             '        flor.log("v", e * 10 + s)\n        flor.log("sq", (e * 10 + s) ** 2)\n')
SQ = {(e, s): (e * 10 + s) ** 2 for e in range(6) for s in range(5)}

_DRIVER = ("import sys\nfrom flor_lib.replay.engine import replay\n"
           "s = replay(sys.argv[1].split(','), where=sys.argv[2] or None, workers=int(sys.argv[3]), progress=False)\n"
           "print('SUMMARY ' + s.to_json(orient='records'), flush=True)\n")


def _replay_story(tmp: Path) -> tuple[Path, Path, dict]:
    repo = _make_light_repo(tmp, {"train.py": REPLAYED})
    store = tmp / "store"
    env = _env(FLOR_STORE=store, FLOR_FLUSH_SECONDS="0.1", HOME=tmp / "home")
    proc = subprocess.run([PY, "train.py", "--flor", "past"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (repo / "train.py").read_text()
    (repo / "train.py").write_text(text.replace(*HINDSIGHT))
    _git(repo, "commit", "-qam", "hindsight")
    return repo, store, env


def _driver(repo: Path, env: dict, names: str = "sq", where: str = "", workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", _DRIVER, names, where, str(workers)], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _summary(out: str) -> list[dict]:
    line = [ln for ln in out.splitlines() if ln.startswith("SUMMARY ")]
    assert line, out
    return json.loads(line[-1][len("SUMMARY "):])


def _replay_children(store: Path) -> list[int]:
    """Segment processes (of any replay) running against this store."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                continue
            if b"FLOR_REPLAY=" in environ and f"FLOR_STORE={store}\0".encode() in environ:
                pids.append(int(d.name))
    return pids


def _sq_counts(store: Path) -> dict:
    df = _sql("SELECT epoch, step, count(*) AS n, min(value_text) AS v FROM logs WHERE name = 'sq' "
              "GROUP BY 1, 2", store)
    return {(int(r.epoch), int(r.step)): (int(r.n), int(r.v)) for r in df.itertuples()}


@pytest.fixture(scope="module")
def killed_replay(tmp_path_factory):
    """Record a run, add a statement, SIGKILL the replay driver's process group while segments run, replay again."""
    tmp = tmp_path_factory.mktemp("killed-replay")
    repo, store, env = _replay_story(tmp)
    obs: dict = {"repo": repo, "store": store}
    before = snapshot_state(repo)
    records_before = _logs("past", store)
    driver = _driver(repo, env)
    pending = store / "replays-pending"
    def writing() -> bool:
        try:
            return any(p.stat().st_size > 0 for p in pending.rglob("*.arrows"))
        except FileNotFoundError:
            return False

    _wait_for(writing, 120, "replay segments to write")
    time.sleep(random.Random(3).uniform(0.0, 0.4))
    obs["driver_alive_at_kill"] = driver.poll() is None
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    driver.stdout.close()
    driver.stderr.close()
    obs["replay_rows_after_kill"] = int(_sql("SELECT count(*) AS n FROM logs WHERE source = 'replay'", store)["n"][0])
    orphans = _replay_children(store)
    obs["orphans"] = len(orphans)
    deadline = time.monotonic() + 60  # segments of a dead driver run to their end; then nothing may have landed
    while _replay_children(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _replay_children(store):
        os.kill(pid, signal.SIGKILL)
    obs["replay_rows_after_orphans"] = int(_sql("SELECT count(*) AS n FROM logs WHERE source = 'replay'",
                                                store)["n"][0])
    obs["records_unchanged"] = _logs("past", store) == records_before
    obs["repo_unchanged_after_kill"] = snapshot_state(repo) == before
    rerun = subprocess.run([PY, "-c", _DRIVER, "sq", "", "2"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    obs["rerun"] = rerun
    obs["summary"] = _summary(rerun.stdout) if rerun.returncode == 0 else None
    obs["sq"] = _sq_counts(store)
    obs["repo_unchanged_after_rerun"] = snapshot_state(repo) == before
    obs["worktrees"] = [ln for ln in _git(repo, "worktree", "list", "--porcelain").splitlines()
                        if ln.startswith("worktree ")]
    return obs


def test_sigkill_of_a_replay_midway_leaves_no_backfill_and_a_rerun_completes_it(killed_replay):
    obs = killed_replay
    assert obs["driver_alive_at_kill"], "the replay ended before the kill: the test did not kill it mid-way"
    assert obs["replay_rows_after_kill"] == 0
    assert obs["replay_rows_after_orphans"] == 0  # segments that outlived the driver landed nothing either
    assert obs["records_unchanged"]
    assert obs["repo_unchanged_after_kill"] and obs["repo_unchanged_after_rerun"]
    assert obs["rerun"].returncode == 0, obs["rerun"].stderr[-3000:]
    assert [r["status"] for r in obs["summary"]] == ["backfilled"], obs["summary"]
    assert obs["sq"] == {k: (1, v) for k, v in SQ.items()}  # exactly one value per position


def test_a_killed_replay_leaves_no_worktree_behind_once_replayed_again(killed_replay):
    assert len(killed_replay["worktrees"]) == 1, killed_replay["worktrees"]


def _write_runs(root: Path, first: int, count: int, rows: int = 300) -> dict[str, int]:
    """count finalized runs of `rows` records each, built like a training process builds them."""
    from datetime import UTC, datetime, timedelta

    from flor_lib import compact, values
    from flor_lib.buffer import RecordBuffer

    store = _store(root)
    made = {}
    for i in range(first, first + count):
        runid = f"r{i:03d}"
        tstamp = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
        keys = {"projid": PROJID, "runid": runid, "tstamp": tstamp.isoformat(), "vid": "0" * 40,
                "filename": "train.py"}
        buf = RecordBuffer(store.spool / PROJID / runid / "a1.arrows", keys, attempt=1, interval=3600)
        for k in range(rows):
            buf.append((("epoch", k),), "log", "x", *values.encode(k * 7 + i))
        buf.close()
        store.write_json(store.run_meta_path(PROJID, runid),
                         {**keys, "status": "completed", "args": {}, "checkpoints": [],
                          "attempts": [{"attempt": 1, "start_seq": 0, "start": tstamp.isoformat()}]})
        compact.finalize_run(store, PROJID, runid)
        made[runid] = rows
    return made


def _exact(root: Path, expected: dict[str, int]) -> None:
    """Every run has exactly its records: none lost, none doubled, values intact."""
    df = _sql("SELECT runid, count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi, "
              "sum(CAST(value_text AS BIGINT)) AS total FROM logs GROUP BY runid", root)
    got = {r.runid: (int(r.n), int(r.d), int(r.lo), int(r.hi), int(r.total)) for r in df.itertuples()}
    want = {runid: (n, n, 0, n - 1, sum(k * 7 + int(runid[1:]) for k in range(n))) for runid, n in expected.items()}
    assert got == want


_MERGER = ("import sys\nfrom flor_lib import compact\nfrom flor_lib.store import Store\nimport time\n"
           "print('READY', flush=True)\nsys.stdin.readline()\nt = time.perf_counter()\n"
           "compact.merge_project(Store(sys.argv[1]), sys.argv[2], at_least=2)\n"
           "print('DONE', time.perf_counter() - t, flush=True)\n")


def _merge_child(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", _MERGER, str(root), PROJID], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_compaction_killed_at_random_moments_never_loses_or_doubles_a_record(tmp_path):
    root = tmp_path / "store"
    expected = _write_runs(root, 0, 30)
    # how long one merge takes here (on a copy), so kills land inside it
    shutil.copytree(root, tmp_path / "copy")
    probe = _merge_child(tmp_path / "copy")
    probe.stdin.write("go\n")
    probe.stdin.flush()
    took = float(probe.communicate(timeout=300)[0].split()[-1])
    rng = random.Random(11)
    outcomes = []
    for trial in range(8):
        expected |= _write_runs(root, 30 + 3 * trial, 3)  # something new to merge every time
        child = _merge_child(root)
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rng.uniform(0, took * 1.2))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        outcomes.append(child.returncode)
        _exact(root, expected)
        leftovers = list(root.rglob("*.tmp-*"))  # a torn write is never visible as a Parquet file
        assert all(not p.name.endswith(".parquet") for p in leftovers)
    assert outcomes.count(-signal.SIGKILL) >= 3, outcomes  # most merges were killed mid-way
    from flor_lib import compact

    expected |= _write_runs(root, 60, 2)  # the last merge may have finished before its kill: add work
    assert compact.merge_project(_store(root), PROJID, at_least=2) > 0  # and a later merge finishes the job
    _exact(root, expected)
    files = [p.name for p in (root / "records" / f"projid={PROJID}").glob("*.parquet")]
    assert len(files) == 1 and files[0].startswith("merged-"), files


def test_compaction_that_crashes_after_writing_its_output_never_doubles_a_record(tmp_path, monkeypatch):
    from flor_lib import compact

    root = tmp_path / "store"
    store = _store(root)
    expected = _write_runs(root, 0, 6)

    # merge: the merged file is written, then removing the inputs fails
    def boom(*a, **k):
        raise OSError("simulated crash after the merged file was written")

    with monkeypatch.context() as m:
        m.setattr(store.fs, "rm", boom)
        with pytest.raises(OSError, match="simulated crash"):
            compact.merge_project(store, PROJID, at_least=2)
    names = sorted(p.name for p in (root / "records" / f"projid={PROJID}").glob("*.parquet"))
    assert len(names) == 7 and sum(n.startswith("merged-") for n in names) == 1
    _exact(root, expected)

    # finalize: the Parquet file of a stream is written, then deleting the stream fails
    expected |= _write_runs(root, 6, 1)
    from datetime import UTC, datetime

    from flor_lib import values
    from flor_lib.buffer import RecordBuffer

    keys = {"projid": PROJID, "runid": "late", "tstamp": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
            "vid": "0" * 40, "filename": "train.py"}
    buf = RecordBuffer(store.spool / PROJID / "late" / "a1.arrows", keys, attempt=1, interval=3600)
    for k in range(50):
        buf.append((("epoch", k),), "log", "x", *values.encode(k * 7 + 900))
    buf.close()
    store.write_json(store.run_meta_path(PROJID, "late"), {**keys, "status": "completed", "args": {},
                                                            "attempts": [{"attempt": 1, "start_seq": 0}]})
    real_unlink = Path.unlink

    def unlink(self, *a, **k):
        if self.suffix == ".arrows":
            raise OSError("simulated crash after the Parquet file was written")
        return real_unlink(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", unlink)
        with pytest.raises(OSError, match="simulated crash"):
            compact.finalize_run(store, PROJID, "late")
    assert (store.spool / PROJID / "late" / "a1.arrows").exists()
    late = {"late": 50}

    def exact_all():
        df = _sql("SELECT runid, count(*) AS n, count(DISTINCT seq) AS d FROM logs GROUP BY runid", root)
        got = {r.runid: (int(r.n), int(r.d)) for r in df.itertuples()}
        assert got == {r: (n, n) for r, n in {**expected, **late}.items()}

    exact_all()
    compact.merge_project(store, PROJID, at_least=2)  # merges the leftovers of both crashes
    exact_all()
    compact.finalize_run(store, PROJID, "late")  # the retried finalize (as `flor sync` does)
    exact_all()
    assert not (store.spool / PROJID / "late").exists()
    compact.merge_project(store, PROJID, at_least=2)
    exact_all()

    # truncating a merged file (a resumed run's redone records): crash before the old merged file is removed
    with monkeypatch.context() as m:
        m.setattr(store.fs, "rm_file", boom)
        with pytest.raises(OSError, match="simulated crash"):
            compact.truncate_finalized(store, PROJID, "r003", 1, 100)
    expected["r003"] = 100
    exact_all()
    assert _logs("r003", root) == [("x", k, -1, k * 7 + 3) for k in range(100)]


# === concurrency ================================================================================================

EIGHT = """
import sys, time

name = sys.argv[sys.argv.index("--flor") + 1]  # before flor_lib takes --flor NAME out of argv
import flor_lib as flor  # noqa: E402

open(f"notes-{name}.txt", "w").write(name)  # this run's working tree differs from the others'
for e in flor.loop("epoch", range(20)):
    flor.log("x", e)
    time.sleep(0.01)
flor.log("done", name)
"""


def test_eight_runs_of_one_repository_at_once_all_complete_with_all_records_and_a_vid(
        repo, write_script, store, popen_script):
    write_script(repo, "eight.py", EIGHT, commit=True)
    names = [f"par{i}" for i in range(8)]
    procs = [popen_script(repo, "--flor", n, script="eight.py", env={"FLOR_FLUSH_SECONDS": "0.05"}) for n in names]
    for p in procs:
        p.communicate(timeout=300)
    for p in procs:
        p.stderr_file.seek(0)
        assert p.returncode == 0, p.stderr_file.read()[-2000:]
    tip = _git(repo, "rev-parse", "refs/heads/flor.shadow")
    for n in names:
        meta = _store().run_meta(PROJID, n)
        assert meta["status"] == "completed", n
        assert _logs(n) == [("x", e, -1, e) for e in range(20)] + [("done", -1, -1, n)], n
        vid = meta["vid"]
        assert vid and re.fullmatch(r"[0-9a-f]{40}", vid), n
        # the vid is on the shadow branch (no compare-and-swap lost it) and holds this run's own file
        assert subprocess.run(["git", "merge-base", "--is-ancestor", vid, tip], cwd=repo).returncode == 0, n
        assert f"notes-{n}.txt" in _git(repo, "ls-tree", "--name-only", vid).split("\n"), n
    assert _sql("SELECT value_text FROM logs WHERE name = 'done' ORDER BY value_text")["value_text"].tolist() == names
    assert _git(repo, "status", "--porcelain", "--untracked-files=no") == ""  # the user's branch is untouched


def test_two_replays_of_one_name_at_once_land_it_exactly_once(tmp_path):
    repo, store, env = _replay_story(tmp_path)
    a, b = _driver(repo, env), _driver(repo, env)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, [o[1][-2000:] for o in outs]
    statuses = sorted(_summary(o[0])[0]["status"] for o in outs)
    assert statuses in (["backfilled", "skipped"], ["backfilled", "backfilled"]), statuses
    assert _sq_counts(store) == {k: (1, v) for k, v in SQ.items()}  # nothing lost, nothing doubled
    assert [r for r in _logs("past", store) if r[0] == "v"] == [("v", e, s, e * 10 + s) for e in range(6)
                                                                for s in range(5)]
    # and a third replay has nothing left to do
    third = subprocess.run([PY, "-c", _DRIVER, "sq", "", "2"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0 and [r["status"] for r in _summary(third.stdout)] == ["skipped"], third.stderr
    assert _sq_counts(store) == {k: (1, v) for k, v in SQ.items()}


WRITER = """
import time
import flor_lib as flor

for e in flor.loop("epoch", range(60)):
    flor.log("x", e)
    time.sleep(0.02)
"""


def test_compaction_while_runs_write_loses_and_doubles_nothing(repo, write_script, store, popen_script):
    from flor_lib import compact

    write_script(repo, "writer.py", WRITER, commit=True)
    names = [f"w{i}" for i in range(4)]
    procs = [popen_script(repo, "--flor", n, script="writer.py", env={"FLOR_FLUSH_SECONDS": "0.05"})
             for n in names]
    merges = views = 0
    while any(p.poll() is None for p in procs):
        merges += compact.merge_project(_store(), PROJID, at_least=1) > 0
        try:
            df = _sql("SELECT runid, count(*) AS n, count(DISTINCT seq) AS d, max(seq) AS hi FROM logs GROUP BY 1")
        except Exception:  # a query racing a merge: see test_a_query_that_overlaps_a_compaction_still_answers
            continue
        views += 1
        for r in df.itertuples():  # mid-way too: a prefix of each run, nothing doubled
            assert r.n == r.d == r.hi + 1, r
        time.sleep(0.05)
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    compact.merge_project(_store(), PROJID, at_least=1)
    for n in names:
        assert _logs(n) == [("x", e, -1, e) for e in range(60)], n
    assert merges >= 1 and views >= 1, (merges, views)


def test_a_query_that_overlaps_a_compaction_still_answers(tmp_path, monkeypatch):
    from flor_lib import compact

    root = tmp_path / "store"
    expected = _write_runs(root, 0, 4, rows=20)
    monkeypatch.setenv("FLOR_STORE", str(root))
    listing = compact.parquet_files

    def listed_then_merged(store, projid):  # another process compacts right after this reader listed the files
        files = listing(store, projid)
        subprocess.run([PY, "-c", "from flor_lib import compact\nfrom flor_lib.store import Store\n"
                        f"compact.merge_project(Store({str(root)!r}), {PROJID!r}, at_least=1)"], check=True)
        return files

    monkeypatch.setattr(compact, "parquet_files", listed_then_merged)
    import flor_lib as flor

    got = flor.sql("SELECT runid, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1")
    assert dict(zip(got["runid"], got["n"], strict=True)) == expected


# === bad input ==================================================================================================

def _killed_after_a_checkpoint(tmp: Path, zygote, runid: str, die_after: int):
    """A light repo whose trial run was SIGKILLed after epoch die_after's checkpoint: (repo, store, env, meta, last)."""
    repo = _make_light_repo(tmp, {"trial.py": TRIAL})
    store = tmp / "store"
    env = {"FLOR_STORE": str(store), "FLOR_FLUSH_SECONDS": "0.1", "FLOR_EPSILON": "1000"}
    killed = zygote.run(repo, "trial.py", "--flor", runid, env={**env, "DIE_AFTER": str(die_after)})
    assert killed.code == -signal.SIGKILL, killed.text()
    meta = _store(store).run_meta(PROJID, runid)
    return repo, store, env, meta, LastCheckpoint(store, runid)


class LastCheckpoint:
    """A run's last listed checkpoint, to read and to tamper with (in its own file or in its pack)."""

    def __init__(self, store: Path, runid: str) -> None:
        self.store, self.runid = store, runid

    def read_bytes(self) -> bytes:
        from flor_lib import ckpt_files

        meta = _store(self.store).run_meta(PROJID, self.runid)
        return ckpt_files.read(_store(self.store), PROJID, self.runid, meta["checkpoints"][-1])

    def write_bytes(self, data: bytes) -> None:
        """Replace its bytes: a file of its own is rewritten; a packed one is appended and re-pointed to,
        as the pack's neighbours must stay intact."""
        store = _store(self.store)
        meta = store.run_meta(PROJID, self.runid)
        entry = meta["checkpoints"][-1]
        path = Path(self.store) / "checkpoints" / PROJID / self.runid / entry["path"]
        if "offset" not in entry:
            path.write_bytes(data)
            return
        with open(path, "ab") as pack:
            entry["offset"] = pack.tell()
            pack.write(data)
        entry["bytes"] = len(data)
        store.write_json(store.run_meta_path(PROJID, self.runid), meta)


@pytest.fixture(scope="module")
def corrupted_resume(tmp_path_factory, zygote):
    """A run killed after epoch 5's checkpoint whose last checkpoint file is then corrupted, and resumes of it."""
    repo, store, env, meta, last = _killed_after_a_checkpoint(tmp_path_factory.mktemp("corrupted"), zygote,
                                                              "broken", 5)
    obs = {"before": _logs("broken", store), "meta_before": meta}
    last.write_bytes(b"PK\x03\x04 this is not a checkpoint any more" + os.urandom(64))
    resumed = zygote.run(repo, "trial.py", env={**env, "FLOR_RESUME": "broken"})
    obs["code"], obs["err"] = resumed.code, resumed.text()
    obs["after"] = _logs("broken", store)
    obs["meta_after"] = _store(store).run_meta(PROJID, "broken")
    debug = zygote.run(repo, "trial.py", env={**env, "FLOR_RESUME": "broken", "FLOR_DEBUG": "1"})
    obs["debug_code"], obs["debug_err"] = debug.code, debug.text()
    return obs


def test_resume_from_a_corrupted_checkpoint_is_a_one_line_error(corrupted_resume):
    obs = corrupted_resume
    assert obs["before"] == trial_expected()[:len(obs["before"])] and len(obs["before"]) >= 30
    line = _assert_one_line_error(obs["code"], obs["err"])
    assert "checkpoint" in line, line
    assert obs["meta_after"]["status"] != "completed"
    assert obs["debug_code"] != 0 and "Traceback" in obs["debug_err"], obs["debug_err"]


def test_a_failed_resume_loses_no_record(corrupted_resume):
    assert corrupted_resume["after"] == corrupted_resume["before"]


def test_a_corrupted_checkpoint_is_called_corrupted_not_unsafe(corrupted_resume):
    line = _lines(corrupted_resume["err"])[-1]
    assert "corrupt" in line and "FLOR_UNSAFE_LOAD" not in line, line


def test_replay_from_a_corrupted_checkpoint_reports_it_and_lands_nothing(tmp_path, zygote):
    repo = _make_light_repo(tmp_path, {"trial.py": TRIAL})
    store = tmp_path / "store"
    env = _env(FLOR_STORE=store, FLOR_FLUSH_SECONDS="0.1", FLOR_EPSILON="1000", HOME=tmp_path / "home")
    run = zygote.run(repo, "trial.py", "--flor", "past", env={k: env[k] for k in ("FLOR_STORE", "FLOR_FLUSH_SECONDS",
                                                                              "FLOR_EPSILON")})
    assert run.code == 0, run.text()
    before = _logs("past", store)
    text = (repo / "trial.py").read_text()
    (repo / "trial.py").write_text(text.replace('flor.log("final", state["w"])\n',
                                                'flor.log("final", state["w"])\nflor.log("twice", 2 * state["w"])\n'))
    _git(repo, "commit", "-qam", "hindsight after the loops")
    LastCheckpoint(store, "past").write_bytes(b"\x80\x02garbage" + os.urandom(64))
    proc = subprocess.run([PY, "-c", _DRIVER, "twice", "", "1"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    assert [r["status"] for r in summary] in (["failed"], ["backfilled"]), summary
    assert "Traceback" not in proc.stderr, proc.stderr
    if summary[0]["status"] == "failed":  # reported, naming the checkpoint
        assert "checkpoint" in proc.stderr, proc.stderr
        assert int(_sql("SELECT count(*) AS n FROM logs WHERE source = 'replay'", store)["n"][0]) == 0
    else:  # or it fell back to re-executing: then the value is right
        got = _sql("SELECT value_text FROM logs WHERE name = 'twice'", store)["value_text"].tolist()
        assert got == ["80"]
    assert _logs("past", store)[:len(before)] == before


def _unusable_store(tmp_path: Path) -> Path:
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    return afile / "store"  # root may write anywhere: a path under a regular file is unusable for everyone


def test_a_store_root_that_is_not_writable_stops_a_run_in_one_line(repo, write_script, run_script, tmp_path):
    write_script(repo, "light.py", "import flor_lib as flor\nflor.log('x', 1)\nprint('AFTER')\n", commit=True)
    bad = _unusable_store(tmp_path)
    proc = run_script(repo, "--flor", "nw", script="light.py", env={"FLOR_STORE": bad})
    _assert_one_line_error(proc.returncode, proc.stderr, "not writable")
    assert str(bad) in proc.stderr and "AFTER" not in proc.stdout
    proc = run_script(repo, "--flor", "nw", script="light.py", env={"FLOR_STORE": bad, "FLOR_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_queries_on_an_unusable_store_root_are_one_line_errors(repo, tmp_path):
    from flows_fixtures import flor, flows_env

    bad = _unusable_store(tmp_path)
    proc = flor("ls", cwd=repo, env=flows_env(FLOR_STORE=str(bad)), timeout=120)
    _assert_one_line_error(proc.returncode, proc.stderr)
    code = "import flor_lib as flor\nflor.dataframe('x')\n"
    proc = subprocess.run([PY, "-c", code], cwd=repo, env=_env(FLOR_STORE=bad), capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr


# the disk fills up after 20 durable records (a file-size limit of 0, as on a full disk), optionally frees up later
DISK = """
import os, resource, time
import flor_lib as flor
from flor_lib.buffer import read_stream

FREE_AT = int(os.environ.get("FREE_AT", "-1"))
for e in flor.loop("epoch", range(60)):
    flor.log("x", e)
    if e == 19:
        path = flor._run.buffer.path
        deadline = time.time() + 120
        while read_stream(path).num_rows < 20 and time.time() < deadline:
            time.sleep(0.02)
        print("DURABLE", read_stream(path).num_rows, flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    if e == FREE_AT:
        time.sleep(0.3)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("FREED", flush=True)
    time.sleep(0.02)
print("END", flush=True)
"""


@pytest.fixture
def disk_script(repo, write_script):
    write_script(repo, "disk.py", DISK, commit=True)
    return repo


def _disk_run(repo: Path, run_script, name: str, **env):
    return run_script(repo, "--flor", name, script="disk.py",
                      env={"FLOR_FLUSH_SECONDS": "0.05", "PYTHONDONTWRITEBYTECODE": "1", **env})


def test_a_full_disk_keeps_the_records_flushed_before_it_readable(disk_script, run_script, run_meta):
    proc = _disk_run(disk_script, run_script, "full")
    assert "DURABLE 20" in proc.stdout, proc.stdout + proc.stderr
    got = _logs("full")
    assert got[:20] == [("x", e, -1, e) for e in range(20)]
    assert got == [("x", e, -1, e) for e in range(len(got))]  # nothing torn or invented after them
    assert any(ln.startswith("flor:") and "File too large" in ln for ln in proc.stderr.splitlines()), proc.stderr
    assert run_meta("full")["status"] != "completed"


def test_a_full_disk_is_reported_in_one_line_and_fails_the_run(disk_script, run_script):
    proc = _disk_run(disk_script, run_script, "full")
    assert "Traceback" not in proc.stderr, proc.stderr
    flor_lines = [ln for ln in _lines(proc.stderr) if ln.startswith("flor:")]
    assert flor_lines and len(flor_lines) == len(_lines(proc.stderr)), proc.stderr
    assert proc.returncode != 0


def test_records_logged_while_the_disk_was_full_are_written_once_it_frees_up(disk_script, run_script):
    proc = _disk_run(disk_script, run_script, "freed", FREE_AT="40")
    assert "FREED" in proc.stdout and "END" in proc.stdout, proc.stdout + proc.stderr
    assert _logs("freed") == [("x", e, -1, e) for e in range(60)]


def test_an_unencodable_string_does_not_take_other_records_with_it(repo, write_script, run_script):
    write_script(repo, "surrogate.py", """
        import flor_lib as flor
        for e in flor.loop("epoch", range(5)):
            flor.log("x", e)
            if e == 2:
                try:
                    flor.log("name", "bad \\udc80 text")
                except Exception as exc:  # refusing it at log time is fine too
                    print("REFUSED", type(exc).__name__)
        flor.log("end", 1)
    """, commit=True)
    proc = run_script(repo, "--flor", "sur", script="surrogate.py", env={"FLOR_FLUSH_SECONDS": "10"})
    assert proc.returncode == 0, proc.stderr
    assert [r for r in _logs("sur") if r[0] == "x"] == [("x", e, -1, e) for e in range(5)]
    assert ("end", -1, -1, 1) in _logs("sur")


@pytest.fixture(scope="module")
def recorded_light(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-replay")
    repo, store, env = _replay_story(tmp)
    return repo, store, env


@pytest.mark.parametrize("args, needle", [(["nosuchname"], "no flor.log('nosuchname'"),
                                          (["sq", "--where", "lr = = 1"], "--where")])
def test_flor_replay_of_an_unknown_name_or_a_bad_where_is_one_line(recorded_light, args, needle):
    from flows_fixtures import flor, flows_env

    repo, store, env = recorded_light
    proc = flor("replay", *args, cwd=repo, env=flows_env(FLOR_STORE=str(store), HOME=env["HOME"]), timeout=600)
    assert proc.returncode not in (0, None), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in _lines(proc.stderr) if ln.startswith("flor: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert _logs("past", store) == [("v", e, s, e * 10 + s) for e in range(6) for s in range(5)]


# === security ===================================================================================================

@pytest.fixture(scope="module")
def recorded_small(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    repo = _make_light_repo(tmp, {"small.py": """
        import flor_lib as flor
        flor.arg("lr", 0.5)
        for e in flor.loop("epoch", range(3)):
            flor.log("loss", 1.0 / (e + 1))
    """})
    proc = subprocess.run([PY, "small.py", "--flor", "s1"], cwd=repo, env=_env(FLOR_STORE=tmp / "store"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "store"


@pytest.fixture
def small_store(recorded_small, monkeypatch) -> Path:
    """One recorded run (shared by the module's SQL tests, each of which must leave it byte-identical)."""
    monkeypatch.setenv("FLOR_STORE", str(recorded_small))
    return recorded_small


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_json_auto('{store}/runs/*/*.json')",
    "SELECT * FROM read_ndjson_objects('/etc/passwd')",
    "SELECT * FROM parquet_metadata('{store}/records/*/*.parquet')",
    "SELECT * FROM parquet_schema('{store}/records/*/*.parquet')",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_csv('{store}/../../../../../etc/hostname')",
    "WITH t AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM t",
    "SELECT * FROM logs WHERE name IN (SELECT column0 FROM read_csv('/etc/passwd'))",
])
def test_sql_cannot_read_files_outside_the_registered_views(small_store, query):
    import flor_lib as flor
    from flor_lib.errors import FlorError

    with pytest.raises(FlorError):
        flor.sql(query.format(store=small_store))


@pytest.mark.parametrize("query", [
    "CREATE TABLE t AS SELECT * FROM logs",
    "INSERT INTO logs SELECT * FROM logs",
    "  Insert into logs select * from logs",
    "UPDATE logs SET value = 0",
    "WITH x AS (SELECT 1) INSERT INTO logs SELECT * FROM logs",
    "SELECT 1; CREATE TABLE t AS SELECT 1",
    "SELECT 1; INSERT INTO logs SELECT * FROM logs",
    "SELECT 1; DROP VIEW logs",
    "SELECT 1; CREATE OR REPLACE VIEW logs AS SELECT * FROM logs WHERE false",
    "SELECT 1; COPY (SELECT * FROM logs) TO '{store}/records/projid=proj_main/evil.parquet' (FORMAT parquet)",
    "SELECT 1; ATTACH '{store}/evil.db' AS evil; CREATE TABLE evil.t AS SELECT 1",
    "SELECT 1; SET lock_configuration = false",
])
def test_sql_cannot_modify_records_or_write_into_the_store(small_store, query, tmp_path):
    import flor_lib as flor
    from flor_lib.errors import FlorError

    before = _tree_bytes(small_store)
    counts = flor.sql("SELECT name, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1").to_dict("records")
    try:
        flor.sql(query.format(store=small_store))
    except FlorError:
        pass
    assert _tree_bytes(small_store) == before  # not a byte of the store changed, nothing was added
    assert flor.sql("SELECT name, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1").to_dict("records") == counts
    assert flor.dataframe("loss")["loss"].tolist() == [1.0, 0.5, 1.0 / 3]


class _Payload:
    """Unpickling this runs code (creates a directory): what weights_only must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_checkpoints_load_weights_only_unless_the_user_opts_in(tmp_path, monkeypatch):
    import torch

    from flor_lib import checkpoint as ckpt
    from flor_lib.errors import FlorError

    marker = tmp_path / "code-ran"
    import io

    buf = io.BytesIO()
    torch.save({"objects": [{"w": 1}], "rng": {}, "vars": {"x": _Payload(str(marker))}}, buf)
    data = buf.getvalue()
    monkeypatch.delenv("FLOR_UNSAFE_LOAD", raising=False)
    with pytest.raises(FlorError, match="FLOR_UNSAFE_LOAD=1") as err:
        ckpt.load(data)
    assert "\n" not in str(err.value) and "arbitrary code" in str(err.value)
    assert not marker.exists()  # refused before anything ran
    monkeypatch.setenv("FLOR_UNSAFE_LOAD", "1")
    state = ckpt.load(data)
    assert state["objects"] == [{"w": 1}] and marker.exists()  # the opt-in really unpickles everything


def test_resume_refuses_an_unsafe_checkpoint_in_one_line_and_accepts_it_when_allowed(tmp_path, zygote):
    import io
    from fractions import Fraction

    import torch

    from flor_lib import checkpoint as ckpt

    repo, store, env, _, last = _killed_after_a_checkpoint(tmp_path, zygote, "tampered", 4)
    state = ckpt.load(last.read_bytes())
    state["vars"]["ratio"] = Fraction(1, 3)  # any object outside the weights_only allow-list
    buf = io.BytesIO()
    torch.save(state, buf)
    last.write_bytes(buf.getvalue())
    refused = zygote.run(repo, "trial.py", env={**env, "FLOR_RESUME": "tampered"})
    _assert_one_line_error(refused.code, refused.text(), "FLOR_UNSAFE_LOAD=1")
    allowed = zygote.run(repo, "trial.py", env={**env, "FLOR_RESUME": "tampered", "FLOR_UNSAFE_LOAD": "1"})
    assert allowed.code == 0, allowed.text()
    assert _logs("tampered", store) == trial_expected()
    assert _store(store).run_meta(PROJID, "tampered")["status"] == "completed"


SECRETS = {"db_password": "PW-7f3a91", "hfToken": "TOK-55c2e8", "AWS_SECRET_ACCESS_KEY": "AK-0b9d41",
           "auth": "AUTH-93ee10", "private-key": "PK-4c71aa"}


def test_secret_looking_args_are_masked_in_every_file_of_the_store_and_the_shadow_branch(
        repo, write_script, run_script, store, git):
    write_script(repo, "secrets.py", """
        import flor_lib as flor
        got = [flor.arg(n, "none") for n in ("db_password", "hfToken", "AWS_SECRET_ACCESS_KEY", "auth",
                                              "private_key")]
        kept = flor.arg("keyboard_layout", "qwerty")  # not a secret: "key" is not a part of it
        print("GOT", *got, kept)
        for e in flor.loop("epoch", range(2)):
            flor.log("x", e)
    """, commit=True)
    argv = []
    for name, value in SECRETS.items():
        argv += [f"--{name}={value}"] if name == "auth" else [f"--{name}", value]
    proc = run_script(repo, "--flor", "sec", *argv, "--keyboard_layout", "dvorak", script="secrets.py",
                      env={"FLOR_FLUSH_SECONDS": "0.05"}, check=True)
    assert "GOT " + " ".join(SECRETS.values()) + " dvorak" in proc.stdout  # the script gets the real values
    leaks = [f"{p}: {s}" for p in store.rglob("*") if p.is_file() for s in SECRETS.values() if s.encode() in
             p.read_bytes()]
    assert leaks == []
    shadow = git(repo, "log", "-p", "--all", "--format=%H %s%n%b")
    assert not [s for s in SECRETS.values() if s in shadow]
    import flor_lib as flor

    args = flor.dataframe("x").iloc[0]
    assert args["keyboard_layout"] == "dvorak"
    assert {args[n] for n in ("db_password", "hfToken", "AWS_SECRET_ACCESS_KEY", "auth", "private_key")} == {"***"}


def test_resume_never_hands_a_masked_secret_to_the_script(repo, write_script, store):
    from flows_fixtures import flor, flows_env

    write_script(repo, "tok.py", """
        import os, time
        import flor_lib as flor
        token = flor.arg("api_token", "unset")
        print("TOKEN", token, flush=True)
        for e in flor.loop("epoch", range(3)):
            flor.log("x", e)
            if e == 1 and os.environ.get("DIE") == "1":
                time.sleep(0.5)
                os.kill(os.getpid(), 9)
    """, commit=True)
    first = subprocess.run([PY, "tok.py", "--flor", "tok", "--api_token", "REAL-TOKEN-1"], cwd=repo,
                           env=_env(DIE="1", FLOR_FLUSH_SECONDS="0.05"), capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL and "TOKEN REAL-TOKEN-1" in first.stdout
    proc = flor("resume", "tok", cwd=repo, env=flows_env(), timeout=300)
    assert "TOKEN ***" not in proc.stdout + proc.stderr, proc.stdout
    _assert_one_line_error(proc.returncode, proc.stderr, "api_token")  # asks for it again
    proc = flor("resume", "tok", "--", "--api_token", "REAL-TOKEN-2", cwd=repo, env=flows_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TOKEN REAL-TOKEN-2" in proc.stdout and "TOKEN ***" not in proc.stdout, proc.stdout
    assert _logs("tok") == [("x", e, -1, e) for e in range(3)]
    assert not [p for p in store.rglob("*") if p.is_file() and b"REAL-TOKEN" in p.read_bytes()]


def test_the_shadow_branch_never_holds_ignored_or_oversized_files(repo, write_script, run_script, run_meta, git):
    write_script(repo, "light.py", "import flor_lib as flor\nflor.log('x', 1)\n", commit=True)
    (repo / "sub" / "deep").mkdir(parents=True)
    (repo / "sub" / ".gitignore").write_text("*.ckpt\n!keep.ckpt\n")
    (repo / "sub" / "deep" / "weights.ckpt").write_bytes(b"w" * 100)  # nested .gitignore
    (repo / "sub" / "deep" / "keep.ckpt").write_text("negated: kept\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("local-only.txt\n")
    (repo / "local-only.txt").write_text("excluded by .git/info/exclude\n")
    global_ignore = repo.parent / "global-ignore"
    global_ignore.write_text(".env\n")
    git(repo, "config", "core.excludesFile", str(global_ignore))
    (repo / ".env").write_text("API_KEY=from-a-dotenv-file\n")
    (repo / "ignored" / "nested").mkdir(parents=True)
    (repo / "ignored" / "nested" / "data.bin").write_bytes(b"d" * 100)
    (repo / "sub" / "deep" / "big.bin").write_bytes(os.urandom(40_000))  # over the limit, in a subdirectory
    (repo / "sub" / "deep" / "small.txt").write_text("small\n")
    (repo / "huge-link").symlink_to("sub/deep/big.bin")  # a link is a few bytes: kept as a link
    run_script(repo, "--flor", "snap", script="light.py", env={"FLOR_MAX_FILE_MB": "0.02"}, check=True)
    vid = run_meta("snap")["vid"]
    tree = set(git(repo, "ls-tree", "-r", "--name-only", "--full-tree", vid).splitlines())
    assert {"sub/deep/keep.ckpt", "sub/deep/small.txt", "sub/.gitignore", "light.py"} <= tree
    for name in ("sub/deep/weights.ckpt", "local-only.txt", ".env", "ignored/nested/data.bin", "sub/deep/big.bin"):
        assert name not in tree, name
        blob = subprocess.run(["git", "hash-object", name], cwd=repo, capture_output=True, text=True).stdout.strip()
        assert subprocess.run(["git", "cat-file", "-e", blob], cwd=repo).returncode != 0, f"{name} was hashed"
    assert git(repo, "cat-file", "-p", f"{vid}:huge-link") == "sub/deep/big.bin"
    assert "sub/deep/big.bin" in run_meta("snap")["snapshot_skipped"]


SLOW_SNAPSHOT = """
import os, signal, time
import flor_lib as flor
import flor_lib.versions as versions

real = versions.snapshot


def slow(*args, **kwargs):
    time.sleep(float(os.environ["SLOW_SNAPSHOT"]))
    return real(*args, **kwargs)


versions.snapshot = slow
flor.arg("x", 1)
for i in flor.loop("i", range(3)):
    flor.log("v", i)
time.sleep(1.5)  # several flush intervals
if os.environ.get("DIE"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_records_are_durable_before_a_slow_code_snapshot_and_get_its_vid(repo, store, write_script, run_script):
    import flor_lib as flor
    from flor_lib.buffer import read_stream

    write_script(repo, "slow.py", SLOW_SNAPSHOT, commit=True)
    fast = {"FLOR_FLUSH_SECONDS": "0.2"}
    t0 = time.monotonic()
    died = run_script(repo, "--flor", "killed", script="slow.py", env={**fast, "SLOW_SNAPSHOT": "60", "DIE": "1"})
    assert died.returncode == -9 and time.monotonic() - t0 < 30, died.stderr[-2000:]
    streams = list(store.glob("spool/*/killed/a1.arrows")) or list(store.rglob("killed/a1.arrows"))
    got = read_stream(streams[0]).to_pandas()
    assert got.loc[got["name"] == "v", "value_text"].tolist() == ["0", "1", "2"]  # durable: no snapshot yet
    # a run killed after its snapshot but before any checkpoint keeps the vid in its metadata
    run_script(repo, "--flor", "early", script="slow.py", env={**fast, "SLOW_SNAPSHOT": "0.2", "DIE": "1"})
    assert json.loads(next(store.glob("runs/*/early.json")).read_text())["vid"]
    run_script(repo, "--flor", "slow", script="slow.py", env={**fast, "SLOW_SNAPSHOT": "2.5"}, check=True)
    meta = json.loads(next(store.glob("runs/*/slow.json")).read_text())
    rows = flor.sql("SELECT DISTINCT vid FROM logs WHERE runid = 'slow'")
    assert meta["vid"] and rows["vid"].tolist() == [meta["vid"]]  # early batches got the vid when finalized


ORPHAN = """
import time
import flor_lib as flor

flor.arg("x", 1)
for i in flor.loop("i", range(600)):
    flor.log("v", i)
    if i == 2:
        print("ready", flush=True)
    time.sleep(0.1)
"""
LAUNCHER = """
import os, subprocess, sys, time

env = {**os.environ, "FLOR_PARENT_PID": str(os.getpid())}  # as flor_flows.process.launch sets it
child = subprocess.Popen([sys.executable, "orphan.py", "--flor", "orphan"], env=env, start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_training_process_whose_flow_process_is_killed_ends_as_interrupted(repo, store, write_script):
    import flor_lib as flor

    write_script(repo, "orphan.py", ORPHAN, commit=True)
    write_script(repo, "launch.py", LAUNCHER)
    env = {**os.environ, "FLOR_STORE": str(store), "FLOR_FLUSH_SECONDS": "0.2"}
    launcher = subprocess.Popen([sys.executable, "launch.py"], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        child = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "ready"
        launcher.kill()  # like a worker's flow-run process dying with its machine's agent
        launcher.wait()
        deadline = time.monotonic() + 30
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(child), "the training process outlived the process that launched it"
    finally:
        if launcher.poll() is None:
            launcher.kill()
    meta = json.loads(next(store.glob("runs/*/orphan.json")).read_text())
    assert meta["status"] == "interrupted" and meta["end"]
    got = flor.sql("SELECT value FROM logs WHERE runid = 'orphan' AND name = 'v' ORDER BY seq")["value"].tolist()
    assert got[:3] == [0, 1, 2] and got == list(range(len(got)))  # finalized, no gap
