"""Shared fixtures for flor's tests: real git repositories, real subprocesses, real services.

Every test runs with a fresh, empty store (FLOR_STORE in a tmp dir), no FLOR_* variable from the
caller's environment, and (for the whole session) a private PREFECT_HOME with analytics off and no
PREFECT_API_URL (Prefect's embedded default unless a test asks for the server), so nothing touches
~/.flor or ~/.prefect.

Fixtures
--------
store
    Path of this test's store; FLOR_STORE points at it (monkeypatched, so subprocesses inherit it).
repo
    Path of a fresh git repository (user.name/email set locally) whose first commit on branch
    ``main`` holds ``train.py`` (a copy of examples/tutorial/train.py) and a ``.gitignore``
    (``*.pt``, ``__pycache__/``, ``ignored/``).
make_repo
    ``make_repo(path, commit=True, branch="main") -> Path``: another repository like ``repo``; with
    commit=False the files are written but the branch stays unborn.
write_script
    ``write_script(repo, name, source, commit=False) -> Path``: writes a (dedented) script into a
    repo, optionally committing it.
run_script
    ``run_script(repo, *args, script="train.py", env=None, timeout=240, check=False)`` runs
    ``sys.executable script *args`` in repo as a subprocess with the test's FLOR_STORE and returns the
    CompletedProcess (text stdout/stderr). ``env`` entries are added to the environment (a value of
    None removes a variable). With check=True a non-zero exit fails the test, showing its stderr.
small_args
    ``["--epochs", "2", "--hidden", "32"]``: keeps a tutorial run to a few seconds.
git
    ``git(repo, *args) -> str``: run git in a repo and return its stripped stdout.
run_meta
    ``run_meta(runid) -> dict``: the metadata document of a run in the test's store.
prefect_server_url  (session)
    The API URL of a running Prefect server (FLOR_TEST_PREFECT_API_URL, e.g.
    http://127.0.0.1:4200/api). Skips the test when unset, fails it when CI_STRICT=1.
prefect_api
    Function-scoped: PREFECT_API_URL set to prefect_server_url for the test and its subprocesses.
s3_endpoint  (session)
    The endpoint URL of an S3 server (FLOR_TEST_S3_ENDPOINT, a moto server in CI) with
    AWS_ACCESS_KEY_ID/SECRET set. Skips when unset, fails when CI_STRICT=1.
s3_store
    Function-scoped: a fresh bucket on s3_endpoint; FLOR_STORE=s3://<bucket>/store and
    FLOR_S3_ENDPOINT_URL/AWS_* set. Returns the store URL.

`.ci/run` starts both services and sets CI_STRICT=1; `make test` starts them too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "examples" / "tutorial" / "train.py"

# Session-wide, before anything imports prefect: a private PREFECT_HOME and no analytics.
_PREFECT_HOME = tempfile.mkdtemp(prefix="flor-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):  # the embedded default unless a test
    os.environ.pop(_var, None)                                         # asks for the server (prefect_api)

# variables a caller may have set that change how a training process behaves
_FLOR_VARS = [
    "FLOR_STORE", "FLOR_RUN_NAME", "FLOR_RESUME", "FLOR_DEFER_AGGREGATE", "FLOR_SWEEP", "FLOR_REPLAY",
    "FLOR_EPSILON", "FLOR_FLUSH_SECONDS", "FLOR_MAX_FILE_MB", "FLOR_SHADOW_BRANCH", "FLOR_DEBUG",
    "FLOR_UNSAFE_LOAD", "FLOR_STORE_SECRETS", "FLOR_S3_ENDPOINT_URL", "FLOR_CACHE_DIR", "FLOR_UPLOAD_SECONDS",
    "FLOR_QUERY_CACHE", "FLOR_SEGMENT_STOP", "FLOR_SEGMENT_SECONDS", "FLOR_SEGMENT_INDEX",
    "FLOR_SEGMENT_MINUTES", "FLOR_SEGMENT_LOST_SECONDS", "FLOR_SEGMENT_POLL_SECONDS", "FLOR_WORKER_NAME",
    "FLOR_WORKER_GPU", "FLOR_REPLAY_STREAM", "FLOR_REPLAY_FORK", "FLOR_REPLAY_MIN_SEGMENT_S",
    "FLOR_PARENT_PID",
]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def _strict() -> bool:
    return os.environ.get("CI_STRICT", "") not in ("", "0", "false")


def _need_service(var: str, what: str) -> str:
    value = os.environ.get(var, "").strip()
    if value:
        return value
    reason = f"{var} is not set: needs {what} (bash .ci/run or make test start one)"
    if _strict():
        pytest.fail(f"CI_STRICT=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch, tmp_path_factory):
    """A fresh store per test and none of the caller's FLOR_* settings."""
    for var in _FLOR_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path_factory.mktemp("store")
    monkeypatch.setenv("FLOR_STORE", str(path))
    monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # spools of S3 stores
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return path


@pytest.fixture
def store(_hermetic_env) -> Path:
    """This test's store directory (FLOR_STORE points at it)."""
    return _hermetic_env


def _git(repo: Path, *args: str, env: dict | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return out.stdout.strip()


@pytest.fixture
def git():
    """git(repo, *args) -> stdout."""
    return _git


def init_repo(path: Path, *, commit: bool = True, branch: str = "main") -> Path:
    """A git repo at path with the tutorial as train.py and a .gitignore (committed unless commit=False)."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", branch)
    _git(path, "config", "user.name", "Flor Test")
    _git(path, "config", "user.email", "test@flor.invalid")
    _git(path, "config", "commit.gpgsign", "false")
    shutil.copyfile(TUTORIAL, path / "train.py")
    (path / ".gitignore").write_text("*.pt\n__pycache__/\nignored/\n")
    if commit:
        _git(path, "add", "train.py", ".gitignore")
        _git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    """A fresh git repository with train.py (the tutorial) and .gitignore committed on branch main."""
    return init_repo(tmp_path / "proj")


@pytest.fixture
def make_repo():
    """make_repo(path, commit=True, branch="main") -> Path: another repo like `repo` (unborn if not commit)."""
    return init_repo


@pytest.fixture
def write_script():
    def write(repo: Path, name: str, source: str, commit: bool = False) -> Path:
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
        if commit:
            _git(repo, "add", name)
            _git(repo, "commit", "-q", "-m", f"add {name}")
        return path

    return write


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


@pytest.fixture
def run_script(store):
    """run_script(repo, *args, script="train.py", env=None, timeout=240, check=False) -> CompletedProcess."""

    def run(repo: Path, *args: str, script: str = "train.py", env: dict | None = None, timeout: float = 240,
            check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=repo, env=_env(env),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-4000:]}",
                        pytrace=False)
        return proc

    return run


@pytest.fixture
def popen_script(store):
    """popen_script(repo, *args, script=..., env=None) -> Popen (text stdout piped, stderr to a file)."""
    procs = []

    def start(repo: Path, *args: str, script: str = "train.py", env: dict | None = None) -> subprocess.Popen:
        err = open(repo / f".stderr-{uuid.uuid4().hex[:6]}", "w+")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=repo, env=_env(env),
                                stdout=subprocess.PIPE, stderr=err, text=True)
        proc.stderr_file = err
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stderr_file.close()


@pytest.fixture
def small_args() -> list[str]:
    """Arguments that keep a tutorial run short."""
    return ["--epochs", "2", "--hidden", "32"]


@pytest.fixture
def run_meta(store):
    """run_meta(runid) -> the run's metadata dict (searching every project)."""
    from flor_lib.store import Store

    def meta(runid: str) -> dict:
        return Store(str(store)).find_run(runid)

    return meta


@pytest.fixture(scope="session")
def prefect_server_url() -> str:
    """URL of a running Prefect server API (FLOR_TEST_PREFECT_API_URL)."""
    return _need_service("FLOR_TEST_PREFECT_API_URL", "a Prefect server").rstrip("/")


@pytest.fixture
def prefect_api(prefect_server_url, monkeypatch) -> str:
    """PREFECT_API_URL pointed at the test server for this test and its subprocesses."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server_url)
    return prefect_server_url


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """Endpoint URL of an S3 server on loopback (FLOR_TEST_S3_ENDPOINT), with test credentials set."""
    url = _need_service("FLOR_TEST_S3_ENDPOINT", "an S3 server (moto)").rstrip("/")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return url


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket; FLOR_STORE=s3://bucket/store for this test. Returns the store URL."""
    import s3fs

    bucket = f"flor-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FLOR_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(bucket)
    url = f"s3://{bucket}/store"
    monkeypatch.setenv("FLOR_STORE", url)
    return url
