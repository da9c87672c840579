"""Unchanged working trees skip GitPython and git: locate and snapshot answer from .git's files and a cache.

The cache only ever saves time: every change a snapshot could depend on makes the next run take the slow
path, which gives the right vid and records it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from flor_lib import versions, versions_cache

SPY = """
import atexit, json, os, subprocess, sys
spawned = []
_init = subprocess.Popen.__init__
def _spy(self, args, *a, **k):
    spawned.append([str(x) for x in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)])
    _init(self, args, *a, **k)
subprocess.Popen.__init__ = _spy
# registered before flor's own exit hook, so it runs after it (the snapshot is done by then)
atexit.register(lambda: open(os.environ["REPORT"], "w").write(
    json.dumps({"gitpython": "git" in sys.modules, "spawned": spawned})))
import flor_lib as flor
for e in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (e + 1))
"""

SHADOW = "flor.shadow"
_clock = [0]


def age(repo: Path) -> None:
    """Set every mtime in the repo (.git included) well in the past, a distinct instant per call, so the
    racy-mtime rule lets the next snapshot be cached and no check depends on the clock's resolution."""
    _clock[0] += 1
    t = time.time_ns() - 3600 * 10**9 + _clock[0] * 10**6
    for d, dirs, files in os.walk(repo):
        for name in [*dirs, *files, ""]:
            os.utime(os.path.join(d, name) if name else d, ns=(t, t), follow_symlinks=False)


def worktree_tree(repo: Path, git, drop: tuple[str, ...] = ()) -> str:
    """The tree of the working tree (tracked + untracked, not ignored), built with git's own plumbing."""
    env = {"GIT_INDEX_FILE": str(repo.parent / f"expect-{uuid.uuid4().hex}")}
    git(repo, "add", "-A", env=env)
    for path in drop:
        git(repo, "rm", "--cached", "-q", "--", path, env=env)
    return git(repo, "write-tree", env=env)


def cached(repo: Path, max_bytes: int = 10 << 20):
    return versions_cache.lookup(repo, max_bytes, SHADOW)


@pytest.fixture
def project(repo, git):
    """The test repo plus a subdirectory, a directory of only ignored files, an empty directory, an
    ignored directory and an untracked note; aged, snapshotted once and cached."""
    (repo / "sub").mkdir()
    (repo / "sub" / "a.py").write_text("a = 1\n")
    (repo / "data").mkdir()
    (repo / "data" / "weights.pt").write_bytes(b"w" * 100)  # ignored by *.pt
    (repo / "empty").mkdir()
    (repo / "ignored").mkdir()
    (repo / "ignored" / "scratch.txt").write_text("ignored/\n")
    git(repo, "add", "sub/a.py")
    git(repo, "commit", "-q", "-m", "sub")
    (repo / "notes.txt").write_text("untracked\n")
    age(repo)
    vid, skipped = versions.snapshot(repo, "first")
    assert skipped == [] and cached(repo) == (vid, [])
    return repo, vid


def test_second_run_of_an_unchanged_tree_runs_no_git_and_no_run_imports_gitpython(
        repo, git, write_script, run_script, run_meta, tmp_path):
    write_script(repo, "spy.py", SPY, commit=True)
    age(repo)
    reports = []
    for runid in ("first", "second"):
        report = tmp_path / f"{runid}.json"
        run_script(repo, "--flor", runid, script="spy.py", env={"REPORT": report}, check=True)
        reports.append(json.loads(report.read_text()))
    first, second = reports
    git_runs = [cmd for cmd in first["spawned"] if os.path.basename(cmd[0]) == "git"]
    assert git_runs  # the first run took the slow path (git's plumbing, GitPython not even imported) ...
    assert not first["gitpython"] and not second["gitpython"], "a run imported GitPython"
    assert not [cmd for cmd in second["spawned"] if os.path.basename(cmd[0]) == "git"]
    vid = run_meta("first")["vid"]  # ... and the second reused its vid
    assert vid and run_meta("second")["vid"] == vid
    assert run_meta("second")["projid"] == run_meta("first")["projid"] == "proj_main"
    assert git(repo, "rev-parse", f"{vid}^{{tree}}") == worktree_tree(repo, git)


def _edit_same_size(repo, git):
    path = repo / "train.py"
    before = os.lstat(path)
    path.write_text(path.read_text().replace("import", "IMPORT", 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert os.lstat(path).st_size == before.st_size


def _edit_keeping_size_and_mtime(repo, git):  # as some copy tools do: the ctime still tells
    path = repo / "sub" / "a.py"
    before = os.lstat(path)
    path.write_text("b = 1\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _ungitignore(repo, git):  # same size: *.pt -> *.px, so data/weights.pt joins the snapshot
    gitignore = repo / ".gitignore"
    gitignore.write_text(gitignore.read_text().replace("*.pt", "*.px"))


def _exclude_note(repo, git):
    with open(repo / ".git" / "info" / "exclude", "a") as f:
        f.write("notes.txt\n")


CHANGES = {
    "edit a tracked file, same size": _edit_same_size,
    "edit keeping size and mtime": _edit_keeping_size_and_mtime,
    "new file in the root": lambda repo, git: (repo / "new.txt").write_text("new\n"),
    "new file in a subdirectory": lambda repo, git: (repo / "sub" / "b.py").write_text("b = 2\n"),
    "new file in a new subdirectory": lambda repo, git: (
        (repo / "new" / "deep").mkdir(parents=True), (repo / "new" / "deep" / "c.py").write_text("c\n")),
    "new file beside only ignored files": lambda repo, git: (repo / "data" / "load.py").write_text("x\n"),
    "new file in an empty directory": lambda repo, git: (repo / "empty" / "d.py").write_text("d\n"),
    "delete a file": lambda repo, git: (repo / "sub" / "a.py").unlink(),
    "rename a file": lambda repo, git: (repo / "notes.txt").rename(repo / "sub" / "notes.txt"),
    "chmod +x": lambda repo, git: (repo / "train.py").chmod(0o755),
    "un-ignore an ignored file": _ungitignore,
    "edit .git/info/exclude": _exclude_note,
    "an ignored output beside a new source file": lambda repo, git: (
        (repo / "model.pt").write_bytes(b"m"), (repo / "sub" / "c.py").write_text("c\n")),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_makes_the_next_snapshot_take_the_slow_path(project, git, change):
    repo, vid = project
    CHANGES[change](repo, git)
    assert cached(repo) is None
    new, skipped = versions.snapshot(repo, "second")
    assert new != vid and skipped == []
    got, want = git(repo, "rev-parse", f"{new}^{{tree}}"), worktree_tree(repo, git)
    assert got == want, {"snapshot": git(repo, "ls-tree", "-r", got), "worktree": git(repo, "ls-tree", "-r", want),
                         "status": git(repo, "status", "--porcelain", "--ignored")}  # seen once under load
    age(repo)  # once the change is no longer racy, the new state is cached in turn
    assert versions.snapshot(repo, "third") == (new, []) and cached(repo) == (new, [])


def test_outputs_a_script_leaves_beside_its_code_keep_the_cache(project, git, monkeypatch):
    repo, vid = project
    (repo / "model.pt").write_bytes(b"weights")  # a new ignored file in the root
    (repo / "sub" / "out.pt").write_bytes(b"more")  # ... in a subdirectory
    (repo / "__pycache__").mkdir()  # a new ignored directory
    (repo / "__pycache__" / "x.pyc").write_bytes(b"pyc")
    tmp = repo / "data" / "weights.pt.tmp"  # an ignored file replaced by rename, as atomic saves do
    tmp.write_bytes(b"w" * 50)
    tmp.rename(repo / "data" / "weights.pt")
    (repo / "ignored" / "scratch.txt").unlink()  # and one removed
    assert cached(repo) == (vid, [])
    assert git(repo, "rev-parse", f"{vid}^{{tree}}") == worktree_tree(repo, git)
    past = time.time_ns() - 3600 * 10**9
    for d in ("", "sub", "data", "ignored"):  # settled: the cache learns the folders' new state ...
        os.utime(repo / d, ns=(past, past))
    assert cached(repo) == (vid, [])  # ... and asks git no more
    calls = []
    monkeypatch.setattr(versions_cache, "run_git", lambda *a, **k: calls.append(a) or pytest.fail("git ran"))
    assert cached(repo) == (vid, []) and calls == []
    monkeypatch.undo()
    (repo / "sub" / "late.py").write_text("late\n")  # a source file after that still misses
    assert cached(repo) is None


def test_a_new_gitignore_that_ignores_itself_still_misses(project, git):
    repo, _ = project
    (repo / "sub" / "n.txt").write_text("untracked\n")
    age(repo)
    vid, _ = versions.snapshot(repo, "with n.txt")
    (repo / "sub" / ".gitignore").write_text("n.txt\n.gitignore\n")  # ignored itself, and n.txt too
    assert cached(repo) is None
    new, _ = versions.snapshot(repo, "without n.txt")
    assert new != vid and git(repo, "rev-parse", f"{new}^{{tree}}") == worktree_tree(repo, git)


def test_a_file_growing_past_the_size_limit(project, git):
    repo, _ = project
    limit = (repo / "train.py").stat().st_size + 10
    vid, _ = versions.snapshot(repo, "limit", max_bytes=limit)
    assert cached(repo, limit) == (vid, []) and cached(repo) is None  # the limit is part of the key
    (repo / "sub" / "a.py").write_text("#" * (limit + 1))
    assert cached(repo, limit) is None
    new, skipped = versions.snapshot(repo, "limit", max_bytes=limit)
    assert skipped == ["sub/a.py"]
    assert git(repo, "rev-parse", f"{new}^{{tree}}") == worktree_tree(repo, git, drop=("sub/a.py",))
    age(repo)
    assert versions.snapshot(repo, "limit", max_bytes=limit) == (new, ["sub/a.py"])
    assert cached(repo, limit) == (new, ["sub/a.py"])


def test_switching_branch_changes_the_project_and_misses_the_cache(project, git):
    repo, vid = project
    git(repo, "checkout", "-q", "-b", "experiment")
    assert versions.locate(repo / "train.py").projid == "proj_experiment"
    assert cached(repo) is None  # HEAD changed
    assert versions.snapshot(repo, "branch") == (vid, [])  # same tree: the slow path reuses the commit


def test_a_moved_shadow_branch_is_a_miss(project, git):
    repo, vid = project
    git(repo, "update-ref", f"refs/heads/{SHADOW}", "HEAD")  # e.g. reset by hand: vid may be unreachable
    assert cached(repo) is None
    assert versions.snapshot(repo, "again")[0] != vid


def test_a_deleted_shadow_branch_is_not_answered_from_the_cache(project, git):
    repo, vid = project
    git(repo, "branch", "-D", SHADOW)
    assert cached(repo) is None
    new, _ = versions.snapshot(repo, "again")
    assert new != vid and git(repo, "rev-parse", SHADOW) == new
    assert git(repo, "rev-parse", f"{new}^{{tree}}") == worktree_tree(repo, git)


def test_a_packed_shadow_branch_or_other_git_settings_miss(project, git, monkeypatch, tmp_path):
    repo, vid = project
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "other-gitconfig"))
    assert cached(repo) is None  # the environment git reads its settings from changed
    monkeypatch.delenv("GIT_CONFIG_GLOBAL")
    assert cached(repo) == (vid, [])
    git(repo, "pack-refs", "--all")  # no loose ref file left to compare
    assert cached(repo) is None
    assert versions.snapshot(repo, "packed") == (vid, [])


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"version": 1}', b"\xff\xfe",
                                     b'{"version": 1, "max_bytes": 1, "files": 3}'])
def test_a_corrupt_cache_is_a_miss_and_gets_rewritten(project, git, content):
    repo, vid = project
    path = repo / ".git" / "flor" / "snapshot-cache.json"
    path.write_bytes(content)
    assert cached(repo) is None
    assert versions.snapshot(repo, "again") == (vid, [])
    assert cached(repo) == (vid, [])


def test_recently_touched_files_are_not_cached(repo, git):
    vid, _ = versions.snapshot(repo, "fresh")  # the fixture's files were all written just now
    assert not (repo / ".git" / "flor" / "snapshot-cache.json").exists()
    age(repo)
    assert versions.snapshot(repo, "aged") == (vid, [])
    assert cached(repo) == (vid, [])
    (repo / "sub").mkdir()
    (repo / "sub" / "now.py").write_text("x\n")  # racy: its mtime is now
    new, _ = versions.snapshot(repo, "racy")
    assert new != vid and cached(repo) is None


def test_large_trees_and_nested_repositories_are_not_cached(repo, git, monkeypatch):
    monkeypatch.setattr(versions_cache, "MAX_ENTRIES", 2)  # the repo holds 2 files: .gitignore, train.py
    (repo / "third.txt").write_text("3\n")
    age(repo)
    versions.snapshot(repo, "many")
    assert cached(repo) is None
    monkeypatch.undo()
    nested = repo / "vendored"
    nested.mkdir()
    git(nested, "init", "-q")
    (nested / "lib.py").write_text("y = 2\n")
    git(nested, "add", "lib.py")
    git(nested, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "v")
    age(repo)
    vid, _ = versions.snapshot(repo, "nested")
    assert cached(repo) is None  # a commit inside it would change the gitlink without any stat here
    (nested / "lib.py").write_text("y = 3\n")
    git(nested, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-am", "v2")
    age(repo)
    assert versions.snapshot(repo, "nested")[0] != vid


def _slow_locate(script: Path, monkeypatch) -> versions.Project:
    with monkeypatch.context() as m:
        m.setattr(versions_cache, "locate_fast", lambda script: None)
        return versions.locate(script)


@pytest.mark.parametrize("case", ["root", "subdirectory", "branch with a slash", "packed refs", "symlinked dir"])
def test_locate_fast_path_equals_the_slow_path(repo, git, monkeypatch, tmp_path, case):
    script = repo / "train.py"
    if case == "subdirectory":
        (repo / "src" / "deep").mkdir(parents=True)
        script = repo / "src" / "deep" / "t.py"
        script.write_text("")
    elif case == "branch with a slash":
        git(repo, "checkout", "-q", "-b", "feature/x")
    elif case == "packed refs":
        git(repo, "pack-refs", "--all")
        assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    elif case == "symlinked dir":
        (tmp_path / "link").symlink_to(repo)
        script = tmp_path / "link" / "train.py"
    assert versions_cache.locate_fast(script.resolve()) is not None  # the fast path answers ...
    fast = versions.locate(script)
    assert fast == _slow_locate(script, monkeypatch)  # ... exactly as GitPython would
    assert fast.root == repo.resolve() and fast.warnings == []
    assert fast.branch == {"branch with a slash": "feature/x"}.get(case, "main")


def test_locate_leaves_unusual_repositories_to_gitpython(repo, git, make_repo, tmp_path, monkeypatch):
    git(repo, "checkout", "-q", "--detach")
    detached = versions.locate(repo / "train.py")
    assert versions_cache.locate_fast((repo / "train.py").resolve()) is None
    assert detached.projid == "proj_detached" and "HEAD is detached" in detached.warnings[0]
    git(repo, "checkout", "-q", "main")

    fresh = make_repo(tmp_path / "fresh", commit=False)
    unborn = versions.locate(fresh / "train.py")
    assert versions_cache.locate_fast((fresh / "train.py").resolve()) is None
    assert unborn.branch == "main" and "no commits yet" in unborn.warnings[0]

    git(repo, "worktree", "add", "-q", "-b", "wt", str(tmp_path / "wt"))
    assert (tmp_path / "wt" / ".git").is_file()
    assert versions_cache.locate_fast((tmp_path / "wt" / "train.py").resolve()) is None
    wt = versions.locate(tmp_path / "wt" / "train.py")
    assert (wt.projid, wt.root, wt.branch, wt.warnings) == ("wt_wt", (tmp_path / "wt").resolve(), "wt", [])

    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    assert versions_cache.locate_fast((repo / "train.py").resolve()) is None
    monkeypatch.delenv("GIT_DIR")

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.py").write_text("")
    if subprocess.run(["git", "rev-parse"], cwd=plain, capture_output=True).returncode != 0:
        assert versions_cache.locate_fast((plain / "x.py").resolve()) is None
        assert "not in a git repository" in versions.locate(plain / "x.py").warnings[0]
