"""Code snapshots: the working tree as a commit on a shadow branch, never touching the user's."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flor_lib import config, versions_cache
from flor_lib.errors import FlorError, warn


@dataclass
class Project:
    """Where a script lives: repository root, project id, and the script's path inside it."""

    projid: str
    root: Path | None
    relpath: str
    branch: str | None
    warnings: list[str] = field(default_factory=list)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "default"


def locate(script: Path) -> Project:
    """Find the repository of a script and name its project (repo + branch)."""
    script = script.resolve()
    fast = versions_cache.locate_fast(script)  # the plain case from .git's files: no GitPython import
    if fast is not None:
        root, branch = fast
        return Project(projid=_sanitize(f"{root.name}_{branch}"), root=root,
                       relpath=str(script.relative_to(root)), branch=branch)
    import git

    try:
        repo = git.Repo(script.parent, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return Project(
            projid=_sanitize(script.parent.name), root=None, relpath=script.name, branch=None,
            warnings=[f"{script.parent} is not in a git repository: recording without a code version "
                      "(replay needs one: run `git init` and commit)"],
        )
    root = Path(repo.working_tree_dir)
    warnings = []
    if repo.head.is_detached:
        branch = "detached"
        warnings.append("HEAD is detached: the run is recorded under the project "
                        f"{_sanitize(root.name)}_detached (check out a branch to group runs by branch)")
    else:
        branch = repo.head.reference.name
        if not repo.head.is_valid():
            warnings.append(f"branch {branch} has no commits yet: the snapshot is the first commit "
                            f"of {config.shadow_branch()}")
    return Project(projid=_sanitize(f"{root.name}_{branch}"), root=root,
                   relpath=str(script.relative_to(root)), branch=branch, warnings=warnings)


class GitFailed(RuntimeError):
    """A git command of the snapshot failed."""


def _git(root: Path, *args: str, env: dict | None = None, check: bool = True) -> str:
    """Run git in root and return its output without the last newline (as GitPython's repo.git does)."""
    out = versions_cache.run_git(root, list(args), env or {})
    if check and out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit {out.returncode}"]
        raise GitFailed(f"git {args[0]}: {err[-1]}")
    text = out.stdout.decode("utf-8", "surrogateescape")
    return text[:-1] if text.endswith("\n") else text


def _succeeds(root: Path, *args: str) -> bool:
    """Whether a git command exits 0 (a probe: its failure is an answer, not an error)."""
    return versions_cache.run_git(root, list(args), {}).returncode == 0


def snapshot(root: Path, message: str, max_bytes: int | None = None) -> tuple[str, list[str]]:
    """Commit the working tree (tracked + untracked, not ignored) to the shadow branch; return (vid, skipped).

    Uses a private index file, so the user's HEAD, branch, index and files stay as they were.
    Files over max_bytes are left out (and never hashed into the object store). Identical trees
    reuse an earlier snapshot's commit. An unchanged working tree (see versions_cache) reuses the last
    snapshot without running git at all; a changed one runs git's plumbing directly (importing GitPython
    would cost every code change 0.1 s of CPU for a wrapper around the same commands).
    """
    max_bytes = config.max_snapshot_bytes() if max_bytes is None else max_bytes
    shadow = config.shadow_branch()
    cached = versions_cache.lookup(root, max_bytes, shadow)
    if cached is not None:
        return cached
    since_ns = time.time_ns()  # before anything is listed: a file touched after this is not cached
    gitdir, top = _git(Path(root), "rev-parse", "--absolute-git-dir", "--show-toplevel").splitlines()
    gitdir, top = Path(gitdir), Path(top)
    ref = f"refs/heads/{shadow}"
    fd, index = tempfile.mkstemp(prefix="flor-index-", dir=gitdir)
    os.close(fd)
    specs = index + ".pathspecs"
    try:
        if (gitdir / "index").exists():
            shutil.copyfile(gitdir / "index", index)  # reuse stat data: unchanged files are not rehashed
        else:
            os.unlink(index)
        env = {"GIT_INDEX_FILE": index}
        skipped, tracked, empty_repos, paths = _large_files(top, env, max_bytes)
        # stats before `git add`: an edit after them shows as a changed stat next time (a miss, not a
        # stale hit); nested repositories without a commit are warned about every time, so never cached
        fp = None if empty_repos else versions_cache.fingerprint(top, paths, env, since_ns)
        if empty_repos:
            warn("left out of the code snapshot (nested git repositories without a commit): "
                 + ", ".join(empty_repos[:5]) + (" ..." if len(empty_repos) > 5 else ""))
        # pathspecs from a file: "." plus an exclusion per left-out path (no argv length limit)
        _write_specs(specs, [".", *(f":(exclude,literal){p}" for p in [*skipped, *empty_repos])])
        _git(top, "add", "-A", f"--pathspec-from-file={specs}", "--pathspec-file-nul", env=env)
        if tracked:  # tracked large files are still in the copied index: drop them from the tree
            _write_specs(specs, [f":(literal){p}" for p in tracked])
            _git(top, "rm", "--cached", "-q", "--ignore-unmatch", f"--pathspec-from-file={specs}",
                 "--pathspec-file-nul", env=env)
        tree = _git(top, "write-tree", env=env)
        vid, tip = _commit(top, ref, tree, message)
        if fp is not None:
            versions_cache.save(top, fp, max_bytes=max_bytes, shadow=shadow, vid=vid, tip=tip, skipped=skipped)
        return vid, skipped
    finally:
        for p in (index, index + ".lock", specs):
            if os.path.exists(p):
                os.unlink(p)


def _write_specs(path: str, specs: list[str]) -> None:
    with open(path, "wb") as f:
        f.write(b"".join(s.encode("utf-8", "surrogateescape") + b"\0" for s in specs))


def _large_files(root: Path, env: dict, max_bytes: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """Files (tracked, or untracked and not ignored) larger than max_bytes, which of them are tracked,
    untracked nested git repositories without a commit (which `git add` refuses), and every listed path."""
    tracked = [p for p in _git(root, "ls-files", "-z", "--cached", env=env).split("\0") if p]
    others = [p for p in _git(root, "ls-files", "-z", "--others", "--exclude-standard", env=env).split("\0") if p]
    paths = list(dict.fromkeys(tracked + others))
    large, empty_repos = [], []
    for path in paths:
        if path.endswith("/"):  # an untracked nested repository: git adds its HEAD commit, if it has one
            if not _has_commit(root / path):
                empty_repos.append(path.rstrip("/"))
            continue
        try:
            st = os.lstat(root / path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
            large.append(path)
    big = set(large)
    return large, [p for p in dict.fromkeys(tracked) if p in big], empty_repos, paths


def _has_commit(path: Path) -> bool:
    return _succeeds(path, "rev-parse", "--verify", "-q", "HEAD")


def _commit(root: Path, ref: str, tree: str, message: str) -> tuple[str, str]:
    """(commit, the ref's tip it was found under or became): reuses a recent commit of the same tree."""
    for attempt in range(50):
        tip = _git(root, "rev-parse", "--verify", "-q", ref, check=False)
        if tip:
            for line in _git(root, "log", "--format=%H %T", "-n", "64", tip).splitlines():
                commit, commit_tree = line.split()
                if commit_tree == tree:
                    return commit, tip
        parents = ["-p", tip] if tip else []
        head = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
        if head and head != tip:
            parents += ["-p", head]
        commit = _git(root, "commit-tree", "--no-gpg-sign", tree, *parents, "-m", message, env=_identity(root))
        # compare-and-swap: fails if another run moved the branch since we read it
        if _succeeds(root, "update-ref", ref, commit, tip or "0" * 40):
            return commit, commit
        time.sleep(0.01 * (attempt + 1))
    raise FlorError(f"could not update {ref} after 50 tries: another process keeps moving it")


_FALLBACK_IDENTITY = {"name": "flor", "email": "flor@localhost"}


def _identity(root: Path) -> dict[str, str]:
    """Environment for commit-tree: the user's identity, or flor's where git has none configured."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        if not _succeeds(root, "var", f"GIT_{role}_IDENT"):
            for part, value in _FALLBACK_IDENTITY.items():
                env.setdefault(f"GIT_{role}_{part.upper()}", os.environ.get(f"GIT_{role}_{part.upper()}") or value)
    return env


def show_file(root: Path, vid: str, relpath: str) -> str:
    """The text of a file as it was in a snapshot."""
    import git

    return git.Repo(root).git.show(f"{vid}:{relpath}")
