"""Pre-forked replay children: a server per concurrent segment imports the script's libraries once.

A training script spends seconds importing torch and friends before it does anything; a replay that
restores a checkpoint is often shorter than that. Each server imports the script's top-level
third-party modules once, then forks a child per segment, which runs the script as `python script.py`
would. Disabled with FLOR_REPLAY_FORK=0, and off where fork is unsafe (anything but Linux).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

SERVER = str(Path(__file__).with_name("_zygote_server.py"))
MAX_LEARNED = 4000


class ZygoteGone(RuntimeError):
    """The server died or refused: run the segment as a plain process instead."""


def enabled() -> bool:
    """Whether segments may be forked from a pre-imported server."""
    return sys.platform == "linux" and os.environ.get("FLOR_REPLAY_FORK", "1") not in ("0", "false", "")


def _relative_pythonpath(env: dict[str, str]) -> bool:
    # resolved against each segment's own cwd by a fresh interpreter: a server cannot share that
    return any(p and not os.path.isabs(p) for p in env.get("PYTHONPATH", "").split(os.pathsep))


def imports_of(source: str) -> list[str]:
    """Modules a script imports at its top level (inside top-level if/try blocks too), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, (ast.If, ast.Try)):
            todo = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                    *[s for h in getattr(node, "handlers", []) for s in h.body], *todo]
    return list(dict.fromkeys(names))


def _memory(modules: list[str]) -> Path:
    key = hashlib.sha1("\0".join(modules).encode()).hexdigest()[:16]
    from flor_lib.store import cache_root

    return cache_root() / "zygote" / f"{key}.json"


def remembered(modules: list[str]) -> list[str]:
    """Modules that children of a script with these imports loaded late in earlier replays."""
    try:
        names = json.loads(_memory(modules).read_text())
    except (OSError, ValueError):
        return []
    tops = {m.split(".")[0] for m in modules}
    return [n for n in names if isinstance(n, str) and n.split(".")[0] in tops][:MAX_LEARNED]


def remember(modules: list[str], learned: list[str]) -> None:
    """Add to what children of this script import late, so the next replay's servers import it up front."""
    path = _memory(modules)
    names = list(dict.fromkeys([*remembered(modules), *learned]))[:MAX_LEARNED]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(names))
        os.replace(tmp, path)
    except OSError:
        pass  # only a speed-up


def forget(modules: list[str]) -> None:
    """Drop what was remembered for a script's servers."""
    _memory(modules).unlink(missing_ok=True)


class ForkedChild:
    """A segment process forked by a Zygote, with the parts of Popen's interface the engine uses."""

    def __init__(self, zygote: Zygote, pid: int, stdout: IO[str]) -> None:
        self.zygote, self.pid, self.stdout = zygote, pid, stdout
        self.returncode: int | None = None
        zygote.child = self

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit code (negative: killed by that signal)."""
        if self.returncode is not None:
            return self.returncode
        self.zygote.sock.settimeout(timeout)
        try:
            self.returncode = int(self.zygote.recv()["exit"])
            return self.returncode
        except TimeoutError:
            self.zygote.broken = True
            raise subprocess.TimeoutExpired("replay segment", timeout) from None
        except (KeyError, TypeError, ValueError) as exc:  # out of step: never fork from it again
            self.zygote.broken = True
            raise ZygoteGone(f"unexpected reply: {exc}") from exc
        finally:
            self.zygote.sock.settimeout(None)


class Zygote:
    """One server process: pre-imported modules, one forked child at a time."""

    def __init__(self, modules: list[str], roots: list[str], env: dict[str, str]) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tops = {m.split(".")[0] for m in modules}
        self.base = list(modules)
        learned = remembered(modules)  # what children of this script imported late in earlier replays
        self.loaded = set(learned)
        modules = [*modules, *learned]
        self.broken = False
        self.child: ForkedChild | None = None
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, SERVER, str(theirs.fileno()), json.dumps(roots), json.dumps(modules)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=tempfile.gettempdir(),
                start_new_session=True)
        self._usable: bool | None = None

    @property
    def usable(self) -> bool:
        """Whether the server is ready and safe to fork from (waits for its imports the first time)."""
        if self._usable is None:
            try:
                ready = self.recv()
            except ZygoteGone:
                ready = {}
            # a library that starts threads or pulls flor_lib in at import cannot be forked safely
            self._usable = ready.get("threads") == 1 and not ready.get("flor_loaded")
            if not self._usable and self.loaded:
                forget(self.base)  # a remembered late import may be what spoiled it: start clean next time
        return self._usable

    def recv(self) -> dict:
        """The next reply, or ZygoteGone when the server is gone."""
        try:
            msg = self.sock.recv(1 << 20)
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise ZygoteGone(str(exc)) from exc
        if not msg:
            self.broken = True
            raise ZygoteGone("replay server exited")
        try:
            return json.loads(msg)
        except ValueError as exc:
            self.broken = True
            raise ZygoteGone(f"unreadable reply: {exc}") from exc

    def spawn(self, argv: list[str], cwd: str, env: dict[str, str], modules_out: str) -> ForkedChild:
        """Fork a child running argv (a script and its args) in cwd with env."""
        if not self.usable:
            raise ZygoteGone("replay server not usable")
        r, w = os.pipe()
        try:
            req = {"op": "run", "argv": argv, "cwd": cwd, "env": env, "modules_out": modules_out}
            socket.send_fds(self.sock, [json.dumps(req).encode()], [w])
        except OSError as exc:
            os.close(r)
            self.broken = True
            raise ZygoteGone(str(exc)) from exc
        finally:
            os.close(w)
        try:
            pid = int(self.recv()["pid"])
        except (ZygoteGone, OSError, KeyError, TypeError, ValueError) as exc:
            os.close(r)
            self.broken = True
            raise ZygoteGone(f"no child forked: {exc}") from exc
        return ForkedChild(self, pid, os.fdopen(r, "r", encoding="utf-8", errors="replace"))

    def learn(self, modules_file: Path) -> None:
        """Import what the last child imported late (e.g. torch._dynamo on an optimizer's first use)."""
        try:
            names = json.loads(modules_file.read_text())
        except (OSError, ValueError):
            return
        new = [n for n in names if n.split(".")[0] in self.tops and n not in self.loaded][:MAX_LEARNED]
        if new and self.usable:
            self.sock.send(json.dumps({"op": "import", "modules": new}).encode())
            reply = self.recv()
            self.loaded.update(new)
            if reply.get("threads") != 1 or reply.get("flor_loaded"):
                self.broken = True  # no longer safe to fork from, and not worth remembering
            else:
                remember(self.base, new)

    def close(self) -> None:
        """Stop the server: it exits as soon as it sees its socket closed."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """Idle zygotes of one replay, keyed by the modules they hold; at most one per concurrent segment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, tuple[str, ...]], list[Zygote]] = {}

    def prewarm(self, replay_id: str, modules: list[str], roots: list[str], env: dict[str, str]) -> None:
        """Start importing for a replay's first segment while the rest of the replay is planned."""
        if enabled() and modules and not self.idle.get((replay_id, tuple(modules))):
            z = self._start(replay_id, modules, roots, env)
            if z is not None:
                with self.lock:
                    self.idle.setdefault(z.key, []).append(z)

    def acquire(self, replay_id: str, modules: list[str], roots: list[str], env: dict[str, str]) -> Zygote | None:
        """An idle zygote for these modules, a new one, or None when forking is off or unusable."""
        if not enabled() or not modules or _relative_pythonpath(env):
            return None
        key = (replay_id, tuple(modules))
        with self.lock:
            z = self.idle[key].pop() if self.idle.get(key) else None
        z = z or self._start(replay_id, modules, roots, env)
        if z is not None and not z.usable:
            z.close()
            return None
        return z

    @staticmethod
    def _start(replay_id: str, modules: list[str], roots: list[str], env: dict[str, str]) -> Zygote | None:
        try:
            z = Zygote(modules, roots, env)
        except OSError:
            return None
        z.key = (replay_id, tuple(modules))
        return z

    def release(self, z: Zygote, modules_file: Path | None = None) -> None:
        """Give a zygote back after its child exited (teaching it the child's late imports)."""
        if z.child is not None and z.child.returncode is None:
            z.broken = True  # its exit reply was never read: the protocol would be out of step
        if not z.broken and modules_file is not None:
            try:
                z.learn(modules_file)
            except (ZygoteGone, OSError):
                z.broken = True
        if z.broken:
            z.close()
            return
        with self.lock:
            self.idle.setdefault(z.key, []).append(z)

    def close(self, replay_id: str) -> None:
        """Stop every idle zygote of a replay."""
        with self.lock:
            keys = [k for k in self.idle if k[0] == replay_id]
            gone = [z for k in keys for z in self.idle.pop(k)]
        for z in gone:
            z.close()


POOL = Pool()
