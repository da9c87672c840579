"""`flor resume` (re-launch a killed run from its last checkpoint) and `flor sync` (land leftover records)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flor_flows import process, status
from flor_lib import compact, versions
from flor_lib.errors import FlorError
from flor_lib.run import truncation
from flor_lib.store import Store


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def script_differs(repo: Path, vid: str, relpath: str) -> bool:
    """Whether the script in the working tree differs from its version in the snapshot vid."""
    try:
        old = versions.show_file(repo, vid, relpath)
    except Exception as exc:
        raise FlorError(f"code version {vid[:8]} of {relpath} is not in {repo} ({str(exc).splitlines()[-1]})") from exc
    path = repo / relpath
    return not path.exists() or path.read_text() != old


@contextmanager
def version_checkout(repo: Path, vid: str, branch: str | None) -> Iterator[Path]:
    """A throwaway worktree of vid that flor sees as the same project (same directory name and branch)."""
    base = Path(tempfile.mkdtemp(prefix="flor-resume-"))
    tree = base / repo.name  # the project id is <directory name>_<branch>
    out = _git(repo, "worktree", "add", "--detach", str(tree), vid)
    if out.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise FlorError(f"cannot check out {vid[:8]} in a worktree: {out.stderr.strip().splitlines()[-1:]}")
    try:
        if branch and branch != "detached":
            # HEAD names the run's branch without checking it out (the files stay those of vid)
            _git(tree, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
        yield tree
    finally:
        _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(base, ignore_errors=True)
        _git(repo, "worktree", "prune")


def masked_args(meta: dict) -> list[str]:
    """Args whose values were masked as secrets when the run was recorded (in its args or its argv)."""
    from flor_lib.args import parse_cli

    found = dict(parse_cli(list(meta.get("argv") or [])))
    found.update(meta.get("args") or {})
    return sorted(k for k, v in found.items() if v == "***")


def resume_argv(meta: dict, extra: list[str]) -> list[str]:
    """The recorded argv without masked secret values, plus the extra words (which must supply them)."""
    from flor_lib.args import parse_cli

    masked = set(masked_args(meta))
    missing = sorted(masked - set(parse_cli(extra)))
    if missing:
        flags = " ".join(f"--{m} VALUE" for m in missing)
        raise FlorError(f"run {meta['runid']} was recorded with the secret arg(s) {', '.join(missing)} masked: "
                        f"give them again, e.g. `flor resume {meta['runid']} -- {flags}`")
    argv, words, i = [], list(meta.get("argv") or []), 0
    while i < len(words):
        word = words[i]
        key = word[2:].split("=", 1)[0].replace("-", "_") if word.startswith("--") else None
        if key in masked:
            i += 1 if "=" in word else 2
            continue
        argv.append(word)
        i += 1
    return argv + list(extra)


def resume(runid: str, on_line: Callable[[str], None] | None = None, store: Store | None = None,
           extra: list[str] | None = None) -> int:
    """Re-launch a run's script with its recorded args and FLOR_RESUME=runid; return the exit code.

    When the script in the repository changed since the run, it runs from a worktree of the run's vid.
    Secret args that were masked in the metadata must be given again in extra.
    """
    store = store or Store()
    meta = store.find_run(runid)
    if status.effective_status(meta) == "running":
        raise FlorError(f"run {runid} is still running (pid {(meta.get('attempts') or [{}])[-1].get('pid')})")
    if meta.get("status") == "completed":
        raise FlorError(f"run {runid} completed: there is nothing to resume")
    if not meta.get("repo"):
        raise FlorError(f"run {runid} was recorded outside a git repository: flor cannot find its script")
    repo, relpath, vid = Path(meta["repo"]), meta["filename"], meta.get("vid")
    argv = resume_argv(meta, list(extra or []))
    env = {"FLOR_RESUME": meta["runid"], "FLOR_STORE": store.root}
    echo = on_line or print

    def launch(root: Path) -> int:
        script = root / relpath
        out = process.launch(process.python_command(script, argv), cwd=script.parent, env=env,
                             on_line=echo)
        return out.returncode

    if vid and script_differs(repo, vid, relpath):
        print(f"flor: {relpath} changed since {runid}: resuming from a worktree of {vid[:8]}", file=sys.stderr)
        with version_checkout(repo, vid, meta.get("branch")) as tree:
            return launch(tree)
    return launch(repo)


def sync(store: Store | None = None) -> dict[str, Any]:
    """Land leftover records: flor_lib.sync.sync() when it exists, else finalize streams of dead runs."""
    if importlib.util.find_spec("flor_lib.sync") is not None:
        from flor_lib import sync as lib_sync

        out = lib_sync.sync()
        return out if isinstance(out, dict) else {"result": out}
    store = store or Store()
    runs: dict[tuple[str, str], list[Path]] = {}
    for stream in compact.visible_streams(store):
        runs.setdefault((stream.parent.parent.name, stream.parent.name), []).append(stream)
    landed, live, records, projects = [], [], 0, set()
    for (projid, runid), _streams in sorted(runs.items()):
        meta = store.run_meta(projid, runid) or {}
        if status.effective_status(meta) == "running":
            live.append(runid)  # still writing: leave its stream alone
            continue
        if meta.get("status") == "running":  # its process died without closing the run
            meta["status"] = "interrupted"
            store.write_json(store.run_meta_path(projid, runid), meta)
        records += compact.finalize_run(store, projid, runid, truncate=truncation(meta))
        landed.append(runid)
        projects.add(projid)
    for projid in projects:
        compact.merge_project(store, projid)
    return {"landed": landed, "records": records, "still_running": live}

