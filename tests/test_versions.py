"""Code snapshots on the shadow branch (issue 2): the working tree as it ran, the user's repo untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

import flor_lib as flor
from flor_lib import versions

LIGHT = """
import flor_lib as flor
for e in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (e + 1))
print("DONE")
"""


def _state(repo: Path, git) -> dict:
    """Everything of the user's that a run must leave byte-identical."""
    files = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo)
        if rel.parts[0] == ".git" or not (p.is_file() or p.is_symlink()):
            continue
        files[str(rel)] = os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    index = repo / ".git" / "index"
    return {
        "files": files,
        "index": index.read_bytes() if index.exists() else None,
        "head": (repo / ".git" / "HEAD").read_text(),
        "branches": git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads",
                        "refs/tags", "refs/stash"),
        "status": git(repo, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
        "reflog": (repo / ".git" / "logs" / "HEAD").read_text() if (repo / ".git/logs/HEAD").exists() else "",
    }


def _user_refs(state: dict) -> str:
    return "\n".join(line for line in state["branches"].splitlines() if "flor.shadow" not in line)


def _expected_tree(repo: Path, git, skip: set[str] = frozenset()) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob) of every tracked or untracked, not ignored file, computed independently."""
    out = {}
    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for rel in filter(None, dict.fromkeys(listed)):
        p = repo / rel
        if rel in skip or not (p.exists() or p.is_symlink()):
            continue  # deleted in the working tree: not part of the snapshot
        if p.is_symlink():
            blob = subprocess.run(["git", "hash-object", "--stdin"], cwd=repo, input=os.readlink(p).encode(),
                                  capture_output=True, check=True).stdout.decode().strip()
            out[rel] = ("120000", blob)
        else:
            mode = "100755" if os.access(p, os.X_OK) else "100644"
            out[rel] = (mode, git(repo, "hash-object", "--", rel))
    return out


def _tree(repo: Path, git, vid: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in git(repo, "ls-tree", "-r", "-z", "--full-tree", vid).split("\0"):
        if line:
            meta, path = line.split("\t", 1)
            mode, _, blob = meta.split()
            out[path] = (mode, blob)
    return out


def _messy_repo(repo: Path, git) -> None:
    """Tracked, modified, deleted, staged, untracked, ignored, executable, symlinked and large files."""
    (repo / "keep.txt").write_text("committed\n")
    (repo / "gone.txt").write_text("will be deleted\n")
    (repo / "big_tracked.bin").write_bytes(b"t" * 30_000)
    git(repo, "add", "keep.txt", "gone.txt", "big_tracked.bin")
    git(repo, "commit", "-q", "-m", "more files")
    (repo / "keep.txt").write_text("modified, not staged\n")
    (repo / "gone.txt").unlink()
    (repo / "staged.txt").write_text("staged new file\n")
    git(repo, "add", "staged.txt")
    (repo / "staged.txt").write_text("staged, then changed again\n")
    (repo / "sub" / "deep").mkdir(parents=True)
    (repo / "sub" / "deep" / "untracked.py").write_text("x = 1\n")
    (repo / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "sub" / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("keep.txt")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "data.csv").write_text("a,b\n")
    (repo / "model.pt").write_bytes(b"p" * 100)  # ignored by *.pt
    (repo / "big_untracked.bin").write_bytes(b"u" * 30_000)
    (repo / "weird name [1]:*.txt").write_text("glob characters in a name\n")


def test_shadow_commit_is_the_working_tree_and_the_users_repo_is_untouched(repo, git, write_script,
                                                                            run_script, run_meta):
    write_script(repo, "light.py", LIGHT, commit=True)
    _messy_repo(repo, git)
    before = _state(repo, git)
    expected = _expected_tree(repo, git, skip={"big_tracked.bin", "big_untracked.bin"})

    proc = run_script(repo, "--flor", "snap", script="light.py", env={"FLOR_MAX_FILE_MB": "0.02"}, check=True)

    after = _state(repo, git)
    assert after["files"] == before["files"]
    assert after["index"] == before["index"]  # .git/index byte-identical
    assert after["head"] == before["head"] and after["status"] == before["status"]
    assert after["reflog"] == before["reflog"]
    assert _user_refs(after) == _user_refs(before)  # user's branches, tags and stash did not move
    assert not list((repo / ".git").glob("flor-index-*"))  # no temporary index left behind

    vid = run_meta("snap")["vid"]
    assert vid == git(repo, "rev-parse", "refs/heads/flor.shadow")
    tree = _tree(repo, git, vid)
    assert tree == expected
    assert "ignored/data.csv" not in tree and "model.pt" not in tree and "gone.txt" not in tree
    assert tree["sub/run.sh"][0] == "100755" and tree["link"][0] == "120000"
    # the large files are named in a warning and recorded in the metadata ...
    warning = [line for line in proc.stderr.splitlines() if "left out of the code snapshot" in line]
    assert len(warning) == 1 and "big_untracked.bin" in warning[0] and "big_tracked.bin" in warning[0]
    assert sorted(run_meta("snap")["snapshot_skipped"]) == ["big_tracked.bin", "big_untracked.bin"]
    # ... and the untracked one was never hashed into the object store
    big_blob = subprocess.run(["git", "hash-object", "big_untracked.bin"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert subprocess.run(["git", "cat-file", "-e", big_blob], cwd=repo).returncode != 0
    # the shadow commit keeps the user's HEAD reachable as a parent
    parents = git(repo, "rev-list", "--parents", "-n", "1", vid).split()[1:]
    assert git(repo, "rev-parse", "HEAD") in parents


def test_identical_trees_reuse_the_vid_and_a_change_makes_a_new_one(repo, git, write_script, run_script,
                                                                   run_meta):
    write_script(repo, "light.py", LIGHT, commit=True)
    run_script(repo, "--flor", "one", script="light.py", check=True)
    run_script(repo, "--flor", "two", script="light.py", check=True)
    v1, v2 = run_meta("one")["vid"], run_meta("two")["vid"]
    assert v1 == v2
    assert git(repo, "rev-list", "--count", "flor.shadow", "--not", "HEAD") == "1"  # one snapshot commit
    (repo / "light.py").write_text(LIGHT.replace("range(2)", "range(3)"))
    run_script(repo, "--flor", "three", script="light.py", check=True)
    v3 = run_meta("three")["vid"]
    assert v3 != v1
    assert git(repo, "rev-parse", f"{v3}^1") == v1  # the shadow branch is a history of snapshots
    assert "range(3)" in git(repo, "show", f"{v3}:light.py")
    df = flor.dataframe("loss")
    assert df.groupby("runid")["vid"].first().to_dict() == {"one": v1, "two": v1, "three": v3}


def test_not_a_git_repository_records_with_a_warning_and_no_vid(tmp_path, write_script, run_script, run_meta):
    plain = tmp_path / "plain"
    plain.mkdir()
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=plain, capture_output=True).returncode == 0:
        pytest.skip("the test's tmp dir is inside a git repository")
    write_script(plain, "light.py", LIGHT)
    proc = run_script(plain, "--flor", "norepo", script="light.py", check=True)
    assert "DONE" in proc.stdout
    assert "not in a git repository" in proc.stderr and "git init" in proc.stderr
    meta = run_meta("norepo")
    assert meta["vid"] is None and meta["status"] == "completed" and meta["repo"] is None
    df = flor.dataframe("loss")
    assert len(df) == 2 and df["vid"].isna().all()
    assert not (plain / ".git").exists()


def test_repository_without_commits(tmp_path, git, make_repo, write_script, run_script, run_meta):
    repo = make_repo(tmp_path / "fresh", commit=False)
    write_script(repo, "light.py", LIGHT)
    before = _state(repo, git)
    proc = run_script(repo, "--flor", "first", script="light.py", check=True)
    assert "no commits yet" in proc.stderr
    meta = run_meta("first")
    assert meta["vid"] and meta["status"] == "completed" and meta["branch"] == "main"
    assert set(_tree(repo, git, meta["vid"])) == {".gitignore", "train.py", "light.py"}
    # the user's branch is still unborn, nothing staged, nothing else created
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo).returncode != 0
    assert _state(repo, git)["index"] == before["index"] is None
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/heads/flor.shadow"


def test_detached_head(repo, git, write_script, run_script, run_meta):
    write_script(repo, "light.py", LIGHT, commit=True)
    git(repo, "checkout", "-q", "--detach")
    head = git(repo, "rev-parse", "HEAD")
    proc = run_script(repo, "--flor", "det", script="light.py", check=True)
    assert "detached" in proc.stderr
    meta = run_meta("det")
    assert meta["projid"] == "proj_detached" and meta["vid"] and meta["status"] == "completed"
    assert git(repo, "rev-parse", "HEAD") == head
    assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=repo).returncode != 0  # still detached


def test_snapshot_without_a_git_identity_or_with_signing_configured(tmp_path, git, write_script, run_script,
                                                                    run_meta):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(home / "none"),
           "EMAIL": None, "GIT_AUTHOR_NAME": None, "GIT_AUTHOR_EMAIL": None, "GIT_COMMITTER_NAME": None,
           "GIT_COMMITTER_EMAIL": None}
    repo = tmp_path / "anon"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    # a signing setup that would fail (or prompt) if a snapshot tried to sign
    subprocess.run(["git", "config", "commit.gpgsign", "true"], cwd=repo, check=True)
    subprocess.run(["git", "config", "gpg.program", "false"], cwd=repo, check=True)
    write_script(repo, "light.py", LIGHT)
    proc = run_script(repo, "--flor", "anon", script="light.py", env=env, check=True)
    assert "snapshot failed" not in proc.stderr
    vid = run_meta("anon")["vid"]
    assert vid
    assert git(repo, "log", "-1", "--format=%an <%ae>", vid) == "flor <flor@localhost>"


def test_script_in_a_subdirectory_and_a_custom_shadow_branch(repo, git, write_script, run_script, run_meta):
    write_script(repo, "src/light.py", LIGHT, commit=True)
    run_script(repo / "src", "--flor", "sub", script="light.py", env={"FLOR_SHADOW_BRANCH": "my.snapshots"},
               check=True)
    meta = run_meta("sub")
    assert meta["filename"] == "src/light.py" and meta["projid"] == "proj_main"
    assert git(repo, "rev-parse", "my.snapshots") == meta["vid"]
    assert "src/light.py" in _tree(repo, git, meta["vid"])
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "flor.shadow"], cwd=repo).returncode != 0


def test_snapshot_api_many_large_files_and_odd_names(repo, git):
    """versions.snapshot in-process: thousands of left-out files, names with pathspec magic characters."""
    data = repo / "data"
    data.mkdir()
    for i in range(3000):
        (data / f"shard-{i:05d}-with-a-rather-long-name-to-stress-argv.bin").write_bytes(b"x" * 8192)
    for name in [":(glob)*.txt", "-dash.txt", "ünï cödé.txt", "a\tb.txt", "star*.txt"]:
        (repo / name).write_text(name)
    before = _state(repo, git)
    vid, skipped = versions.snapshot(repo, "test", max_bytes=4096)
    assert len(skipped) == 3000 and all(s.startswith("data/") for s in skipped)
    tree = _tree(repo, git, vid)
    assert tree == _expected_tree(repo, git, skip=set(skipped))
    assert {":(glob)*.txt", "-dash.txt", "ünï cödé.txt", "a\tb.txt", "star*.txt"} <= set(tree)
    after = _state(repo, git)
    assert _user_refs(after) == _user_refs(before)
    assert {k: v for k, v in after.items() if k != "branches"} == {k: v for k, v in before.items() if k != "branches"}
    assert versions.snapshot(repo, "again", max_bytes=4096)[0] == vid


def test_locate_names_projects_by_repo_and_branch(repo, git, tmp_path):
    p = versions.locate(repo / "train.py")
    assert (p.projid, p.relpath, p.branch, p.root, p.warnings) == ("proj_main", "train.py", "main", repo, [])
    git(repo, "checkout", "-q", "-b", "feature/x+y")
    assert versions.locate(repo / "train.py").projid == "proj_feature-x-y"


def test_nested_repositories_do_not_break_the_snapshot(repo, git, capfd):
    empty = repo / "scratch"
    empty.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=empty, check=True)
    (empty / "notes.txt").write_text("a nested repository without a commit\n")
    full = repo / "vendored"
    full.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=full, check=True)
    (full / "lib.py").write_text("y = 2\n")
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "add", "lib.py"], cwd=full, check=True)
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "v"], cwd=full,
                   check=True)
    vid, skipped = versions.snapshot(repo, "nested")
    tree = _tree(repo, git, vid)
    assert "scratch" not in tree and not any(p.startswith("scratch/") for p in tree)
    assert tree["vendored"] == ("160000", git(full, "rev-parse", "HEAD"))  # a gitlink, as git add makes
    assert "nested git repositories without a commit): scratch" in capfd.readouterr().err
