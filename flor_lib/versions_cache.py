"""Fast paths for versions.locate and versions.snapshot: answer from plain files, without GitPython or git.

Most runs (sweeps, re-runs with other arguments) run an unchanged working tree, whose snapshot is the
previous one. Importing GitPython and running git costs ~0.15 s of CPU per run, so:

- locate_fast reads .git/HEAD and the branch ref directly, for the plain case only (a .git directory on
  a branch with commits); anything unusual returns None and the caller takes GitPython's slow path.
- After a slow-path snapshot, fingerprint + save record the stats of every input of that snapshot (files,
  the directories git scanned for untracked files, ignore/attribute/config files, the index, the
  environment) in .git/flor/snapshot-cache.json; lookup returns the recorded (vid, skipped) only if every
  one of them still matches and the shadow branch still points where it did. Any doubt means a miss.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
import time
from pathlib import Path

VERSION = 2  # 2: the names in each scanned directory
MAX_ENTRIES = 20_000  # more files (or directories) than this: stat-checking costs too much, don't cache
RACY_NS = 2_000_000_000  # mtimes this close to the snapshot's start could hide a same-tick edit
# set by the user, these change which repository/index/objects git uses: always the slow path
_REDIRECTING_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def _redirected() -> bool:
    return any(os.environ.get(v) is not None for v in _REDIRECTING_ENV)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _plain_gitdir(root: Path) -> Path | None:
    """root/.git if it is an ordinary repository directory (no worktree/submodule gitfile, no symlink)."""
    gitdir = root / ".git"
    try:
        if not stat.S_ISDIR(os.lstat(gitdir).st_mode) or os.path.lexists(gitdir / "commondir"):
            return None
    except OSError:
        return None
    if not ((gitdir / "objects").is_dir() and (gitdir / "refs").is_dir()):
        return None  # not a git dir to GitPython either: it would keep searching upwards
    config = (_read(gitdir / "config") or b"").decode("utf-8", "replace").lower()
    # include files or core.bare/core.worktree change what GitPython reports: leave those to it
    if "include" in config or "worktree" in config or re.search(r"^\s*bare\s*=\s*(true|yes|on|1)\s*$",
                                                                    config, re.MULTILINE):
        return None
    return gitdir


def _branch_ref(gitdir: Path, name: str) -> str | None:
    """The commit a branch points to, from its loose file or packed-refs; None if absent or unusual."""
    loose = _read(gitdir / "refs" / "heads" / name)
    if loose is not None:
        value = loose.decode("ascii", "replace").strip()
        return value if _SHA.fullmatch(value) else None
    for line in (_read(gitdir / "packed-refs") or b"").decode("utf-8", "replace").splitlines():
        sha, _, ref = line.partition(" ")
        if ref == f"refs/heads/{name}" and _SHA.fullmatch(sha):
            return sha
    return None


def locate_fast(script: Path) -> tuple[Path, str] | None:
    """(root, branch) of a resolved script's repository when that is unambiguous from files; else None."""
    if _redirected() or not script.parent.is_dir():  # a missing directory: GitPython says "no such path"
        return None
    d = script.parent
    while True:
        if os.path.lexists(d / ".git"):
            break
        if os.path.lexists(d / "HEAD"):  # may itself be a git dir (bare repo), which GitPython would take
            return None
        if d.parent == d:
            return None  # not in a repository: the slow path words the warning
        d = d.parent
    gitdir = _plain_gitdir(d)
    if gitdir is None or os.path.islink(gitdir / "HEAD"):
        return None
    try:
        head = (_read(gitdir / "HEAD") or b"").decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        return None
    m = re.fullmatch(r"ref: refs/heads/(\S+)", head)
    # detached or unborn HEAD: the slow path adds its warning
    if m is None or _branch_ref(gitdir, m.group(1)) is None:
        return None
    return d, m.group(1)


def _stat(path: Path | str) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    # ctime too: no tool can set it back, so an edit that restores size and mtime is still seen
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _env() -> dict[str, str]:
    """Environment that can change the snapshot (git config locations and overrides)."""
    return {k: v for k, v in os.environ.items()
            if k in ("HOME", "XDG_CONFIG_HOME")
            or (k.startswith("GIT_") and not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_")))}


def run_git(root: Path, args: list[str], env: dict, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run git in root (GIT_PYTHON_GIT_EXECUTABLE, as GitPython would) with env added; output as bytes."""
    exe = os.environ.get("GIT_PYTHON_GIT_EXECUTABLE") or "git"
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}  # never the user's terminal
    return subprocess.run([exe, *args], cwd=root, env={**os.environ, **env}, capture_output=True, **feed)


def _split(out: bytes) -> list[str]:
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _ignored_dirs(root: Path, env: dict) -> set[str] | None:
    """Directories git does not descend into for untracked files (each matches an ignore rule)."""
    out = run_git(root, ["ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"], env)
    if out.returncode != 0:
        return None
    listed = _split(out.stdout)
    if len(listed) > MAX_ENTRIES:
        return None  # too many to walk past on every miss
    # a dir/ entry with listed children is an untracked dir holding only ignored files: git does scan it
    parents = {p[: i + 1] for p in listed for i in range(len(p) - 1) if p[i] == "/"}
    candidates = [p.rstrip("/") for p in listed if p.endswith("/") and p not in parents]
    if not candidates:
        return set()
    # and confirm each is ignored itself: pruning a directory git scans would hide new files in it
    out = run_git(root, ["check-ignore", "-z", "--stdin"], env, stdin=b"".join(
        c.encode("utf-8", "surrogateescape") + b"\0" for c in candidates))
    return set(_split(out.stdout)) if out.returncode in (0, 1) else None


def _config_files(root: Path, env: dict) -> list[str] | None:
    """Every file whose change could change the snapshot's tree besides the working tree's own."""
    home = Path(os.environ.get("HOME") or os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    gitdir = root / ".git"
    files = [gitdir / "config", gitdir / "config.worktree", gitdir / "index", gitdir / "info" / "exclude",
             gitdir / "info" / "attributes", home / ".gitconfig", xdg / "config", xdg / "ignore",
             xdg / "attributes", Path("/etc/gitconfig")]
    if os.environ.get("GIT_CONFIG_GLOBAL"):
        files.append(Path(os.environ["GIT_CONFIG_GLOBAL"]))
    out = run_git(root, ["config", "-z", "--list", "--show-origin"], env)
    if out.returncode not in (0, 1):
        return None
    items = _split(out.stdout)
    for origin, entry in zip(items[::2], items[1::2], strict=False):
        if not origin.startswith("file:"):
            continue
        where = root / origin[5:]
        files.append(where)
        key, _, value = entry.partition("\n")
        key = key.lower()
        if key in ("core.excludesfile", "core.attributesfile") or (
                key.startswith(("include.", "includeif.")) and key.endswith(".path")):
            path = Path(os.path.expanduser(value))  # an include path is relative to its file's directory
            files.append(path if path.is_absolute() else (where.parent if "include" in key else root) / path)
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def _walk(root: Path, pruned: set[str], files: dict, dirs: dict, names: dict) -> bool:
    """Stat (and list) every directory git scans for untracked files; False if the tree is unsuitable."""
    stack = [""]
    while stack:
        rel = stack.pop()
        dirs[rel] = _stat(root / rel)
        if len(dirs) > MAX_ENTRIES:
            return False
        try:
            entries = list(os.scandir(root / rel))
        except OSError:
            return False
        names[rel] = sorted(e.name for e in entries)
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            if e.name == ".git":
                if rel:
                    return False  # a nested repository: its commits change the tree without a stat here
                continue
            if e.name in (".gitignore", ".gitattributes") and sub not in files:
                files[sub] = _stat(e.path)  # even one that ignores itself changes what git picks up
            if e.is_dir(follow_symlinks=False) and sub not in pruned:
                stack.append(sub)
    return True


def fingerprint(root: Path, paths: list[str], env: dict, since_ns: int) -> dict | None:
    """Stats of everything a snapshot of root is made from (take before `git add`); None: don't cache.

    paths: every file git would snapshot (ls-files --cached and --others --exclude-standard), env: the
    environment of the snapshot's git commands, since_ns: time.time_ns() before those files were listed.
    """
    try:
        return _fingerprint(root, paths, env, since_ns)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None  # the cache must never fail a snapshot


def _fingerprint(root: Path, paths: list[str], env: dict, since_ns: int) -> dict | None:
    if _redirected() or len(paths) > MAX_ENTRIES or _plain_gitdir(root) is None:
        return None

    def racy(stats) -> bool:  # touched just now: a later edit within the same timestamp tick would go unseen
        return any(s is not None and s[2] > since_ns - RACY_NS for s in stats)

    # the files first, and the cheap verdicts: a run right after an edit spends no git process on this
    files = {p: _stat(root / p) for p in paths}
    if racy(files.values()) or any(s is not None and stat.S_ISDIR(s[0]) for s in files.values()):
        return None  # (a directory is a submodule or nested repository: its HEAD decides, not its stat)
    head = _read(root / ".git" / "HEAD")
    pruned = _ignored_dirs(root, env)
    extra = _config_files(root, env)
    if head is None or pruned is None or extra is None:
        return None
    dirs: dict[str, list[int] | None] = {}
    names: dict[str, list[str]] = {}
    if not _walk(root, pruned, files, dirs, names):
        return None
    extras = {p: _stat(p) for p in extra}
    if racy([*files.values(), *dirs.values(), *extras.values()]):
        return None
    return {"version": VERSION, "env": _env(), "head": head.decode("utf-8", "surrogateescape"),
            "files": files, "dirs": dirs, "names": names, "extra": extras}


def _cache_path(root: Path) -> Path:
    return root / ".git" / "flor" / "snapshot-cache.json"


def _loose_ref(root: Path, shadow: str) -> str | None:
    value = _read(root / ".git" / "refs" / "heads" / shadow)
    return value.decode("ascii", "replace").strip() if value is not None else None


def save(root: Path, fp: dict, *, max_bytes: int, shadow: str, vid: str, tip: str, skipped: list[str]) -> None:
    """Record a slow-path snapshot's fingerprint and result; skipped if the shadow ref is not loose at tip."""
    if _loose_ref(root, shadow) != tip:  # packed, or moved by another run since: can't vouch for it
        return
    _write_entry(root, {**fp, "max_bytes": max_bytes, "shadow": shadow, "tip": tip, "vid": vid,
                        "skipped": skipped})


def _write_entry(root: Path, entry: dict) -> None:
    path = _cache_path(root)
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="snapshot-cache-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f, separators=(",", ":"))
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the new, never half
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, ValueError, TypeError):
        pass  # the cache is only an optimization


def _only_ignored_added(root: Path, entry: dict, changed: list[str]) -> bool:
    """Whether folders that changed only gained or lost entries git ignores (a script's outputs: model.pth,
    logs). Then the snapshot stands; the cache learns the folders' new state unless they changed just now."""
    stats = {d: _stat(root / d) for d in changed}  # before listing: an entry added after shows next time
    added, now = [], {}
    for d in changed:
        try:
            listed = sorted(e.name for e in os.scandir(root / d))
        except OSError:
            return False
        now[d] = listed
        # a lost entry that mattered is seen already: a snapshotted file or a scanned folder has a changed stat
        added += [f"{d}/{n}" if d else n for n in sorted(set(listed) - set(entry["names"][d]))]
    if any(a.rsplit("/", 1)[-1] in (".git", ".gitignore", ".gitattributes") for a in added):
        return False
    if added:
        out = run_git(root, ["check-ignore", "-z", "--stdin"], {}, stdin=b"".join(
            a.encode("utf-8", "surrogateescape") + b"\0" for a in added))
        if out.returncode not in (0, 1) or set(_split(out.stdout)) != set(added):
            return False
    settled = time.time_ns() - RACY_NS
    if all(s is not None and s[2] < settled for s in stats.values()):  # else a same-tick change could hide
        _write_entry(root, {**entry, "dirs": {**entry["dirs"], **stats}, "names": {**entry["names"], **now}})
    return True


def lookup(root: Path, max_bytes: int, shadow: str) -> tuple[str, list[str]] | None:
    """The recorded (vid, skipped) if nothing the last snapshot of root was made from has changed."""
    try:
        root = Path(root).resolve()
        if _redirected() or _plain_gitdir(root) is None:
            return None
        with open(_cache_path(root)) as f:
            entry = json.load(f)
        if (entry.get("version") != VERSION or entry["max_bytes"] != max_bytes or entry["shadow"] != shadow
                or entry["env"] != _env() or _loose_ref(root, shadow) != entry["tip"]):
            return None
        head = _read(root / ".git" / "HEAD")
        if head is None or head.decode("utf-8", "surrogateescape") != entry["head"]:
            return None
        for group, base in (("extra", None), ("files", root)):
            for p, recorded in entry[group].items():
                if _stat(base / p if base else p) != recorded:
                    return None
        changed = [d for d, recorded in entry["dirs"].items() if _stat(root / d) != recorded]
        if changed and not _only_ignored_added(root, entry, changed):
            return None
        vid, skipped = entry["vid"], entry["skipped"]
        if not (isinstance(vid, str) and _SHA.fullmatch(vid) and isinstance(skipped, list)):
            return None
        return vid, [str(s) for s in skipped]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, unreadable or corrupt cache: the slow path rewrites it
