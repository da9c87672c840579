"""One recorded (or replayed) execution of a training script: identity, args, logs, loops, checkpoints."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from flor_lib import args as cli
from flor_lib import checkpoint as ckpt
from flor_lib import ckpt_files, config, framevars, values, versions
from flor_lib.buffer import RecordBuffer, RecordsNotWritten
from flor_lib.cost import Cost
from flor_lib.errors import warn
from flor_lib.run_checkpoints import Checkpoints
from flor_lib.run_lifecycle import Lifecycle
from flor_lib.run_lifecycle import truncation as truncation  # re-exported: flows import it from here
from flor_lib.store import Store

_CONTAINERS = (list, tuple, dict)  # a constant: building `list | tuple | dict` per call costs ~1 µs


def _script_path() -> Path:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    if not path or path in ("-c", "-m"):
        return Path.cwd() / "<interactive>"
    return Path(path).resolve()


class Run(Checkpoints, Lifecycle):
    """The state of the current process's run; created by the first flor call."""

    def __init__(self, name: str | None = None, script: Path | None = None, replay=None) -> None:
        self.replay = replay  # a replay.mode.ReplayMode when re-executing an old run
        self.cost = Cost()  # flor's own CPU, per part (saved as meta["attempts"][-1]["cost"])
        self.iterations = 0  # loop iterations flor tracked (their per-call cost is not timed)
        self.store = Store()
        self.script = script or _script_path()
        self.cli_args = cli.parse_cli(sys.argv[1:])
        self.args: dict[str, object] = {}
        self.objects: list = []
        self._stack: list[tuple[str, int]] = []
        self._ctx: tuple = ()
        self._outer_len: int | None = None
        self._nested_done = False
        self._outer_iters = 0
        self.status = "running"
        self._restore_at: int | None = None
        stop = os.environ.get("FLOR_SEGMENT_STOP")
        self._segment_stop = int(stop) if stop else None  # end this process after that many outer iterations
        budget = os.environ.get("FLOR_SEGMENT_SECONDS")
        self._segment_deadline = time.perf_counter() + float(budget) if budget else None
        self._quiet = False  # a resumed attempt does not re-log what happened before its checkpoint
        self._closed = False
        self.lost: RecordsNotWritten | None = None  # records a full disk kept from the store at exit
        self._lock = threading.Lock()
        self.checkpoints: list[dict] = []
        self.skipped_checkpoints = 0
        if replay is not None:
            self.meta = replay.meta
            self.projid, self.runid = self.meta["projid"], self.meta["runid"]
            self.attempt = 0
            self.buffer = RecordBuffer(replay.stream_path, self._keys(), attempt=0, source="replay",
                                       replay_id=replay.replay_id, interval=config.flush_seconds())
            self._install_exit_hooks()
            return
        self.store.check_writable()
        self.project = versions.locate(self.script)
        for w in self.project.warnings:
            warn(w)
        self.projid = self.project.projid
        resume = os.environ.get("FLOR_RESUME")
        self.tstamp = datetime.now(UTC)
        if resume:
            self.meta = self.store.find_run(resume, self.projid)
            self.runid = self.meta["runid"]
            self.attempt = len(self.meta.get("attempts", [])) + 1
            self.checkpoints = self.meta.get("checkpoints", [])
        else:
            self.runid = self._unique_runid(name)
            self.attempt = 1
            self.meta = self._initial_meta()
        self._vid_ready = threading.Event()
        self._meta_saved = threading.Event()  # set once __init__ wrote the run's first metadata
        threading.Thread(target=self._snapshot, name="flor-snapshot", daemon=True).start()
        first_seq = self._resume_point()["seq"] if resume else 0
        self.buffer = RecordBuffer(self.store.spool / self.projid / self.runid / f"a{self.attempt}.arrows",
                                   self._keys(), attempt=self.attempt, interval=config.flush_seconds(),
                                   first_seq=first_seq, mirror=self.store.live_uploader())
        self._quiet = bool(resume)
        self._resume_pending = bool(resume)  # until its checkpoint is restored, a resume redoes nothing
        self.buffer.on_error = lambda exc: warn(f"records not written ({exc}); they stay in memory")
        self.policy = ckpt.Policy(config.epsilon())
        self._meta_pacer = ckpt.Pacer()  # metadata lists checkpoints in batches: see Pacer
        self._unlisted: list[dict] = []  # written, but records before them may not be durable yet
        self._pack: ckpt_files.Pack | None = None  # this attempt's small checkpoints, opened at the first
        self.writer = ckpt.Writer(self._write_checkpoint)
        self.meta.setdefault("attempts", []).append(
            {"attempt": self.attempt, "start_seq": first_seq, "pid": os.getpid(), "host": socket.gethostname(),
             "start": self.tstamp.isoformat(), "resumed_from": self._resume_point()["iter"] if resume else None,
             "device": os.environ.get("CUDA_VISIBLE_DEVICES"), "segment": os.environ.get("FLOR_SEGMENT_INDEX"),
             "worker": os.environ.get("FLOR_WORKER_NAME")})
        self.meta["status"] = "running"
        self._save_meta()
        self._meta_saved.set()
        self._install_exit_hooks()

    # identity -----------------------------------------------------------------------------------
    def _unique_runid(self, name: str | None) -> str:
        if not name:
            return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
        values.check_name(name)
        runid, n = name, 1
        while not self._claim(runid):
            n += 1
            runid = f"{name}-{n}"
        if runid != name:
            warn(f"a run named {name!r} exists already: this one is {runid!r}")
        return runid

    def _claim(self, runid: str) -> bool:
        """Reserve a runid; on a local store atomically, so two runs started at once never share one."""
        path = self.store.run_meta_path(self.projid, runid)
        if os.path.exists(path) if self.store.is_local else self.store.fs.exists(path):
            return False
        if not self.store.is_local:
            return True
        claim = Path(path).with_suffix(".claim")  # not *.json: listings never see a half-made run
        claim.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def _initial_meta(self) -> dict:
        torch = sys.modules.get("torch")
        return {
            "projid": self.projid, "runid": self.runid, "tstamp": self.tstamp.isoformat(), "vid": None,
            "filename": self.project.relpath, "repo": str(self.project.root) if self.project.root else None,
            "cwd": _relative_cwd(self.project.root),
            "branch": self.project.branch, "argv": masked_argv(sys.argv[1:]), "args": {},
            "host": socket.gethostname(),
            "python": platform.python_version(), "torch": getattr(torch, "__version__", None),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "sweep": os.environ.get("FLOR_SWEEP"), "status": "running", "end": None,
            "checkpoints": [], "attempts": [], "snapshot_skipped": [],
        }

    def _keys(self) -> dict:
        run = self

        class Keys(dict):
            """Run keys read at flush time: batches flushed before the code snapshot is taken carry no vid
            (finalizing fills it in), so a slow snapshot never delays the first durable records."""

            def __getitem__(self, key):
                return run.meta.get(key)

        return Keys()

    def _snapshot(self) -> None:
        with self.cost.measure("code_snapshot", children=True):  # the git processes are flor's too
            self._take_snapshot()
            # parse the script for checkpoints' loop variables here, not in the first checkpoint: its
            # cost predicts the next ones' (checkpoint.Policy)
            framevars.nested_loop_names(str(self.script))

    def _take_snapshot(self) -> None:
        try:
            if self.project.root is not None and self.meta.get("vid") is None:
                vid, skipped = versions.snapshot(self.project.root, f"flor: {self.runid} {self.project.relpath}")
                with self._lock:  # the checkpoint thread may be serializing meta right now
                    self.meta["vid"] = vid
                    self.meta["snapshot_skipped"] = skipped
                if skipped:
                    warn(f"left out of the code snapshot (over {config.max_snapshot_bytes() >> 20} MB): "
                         + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
                if self.replay is None and self._meta_saved.is_set():
                    self._save_meta()  # a run killed before its first checkpoint still has its vid
        except Exception as exc:  # a broken repo must not stop training
            warn(f"code snapshot failed ({str(exc).strip().splitlines()[-1][:200]}): run has no vid")
        finally:
            self._vid_ready.set()

    def _resume_point(self) -> dict:
        if not self.checkpoints:
            return {"iter": None, "seq": 0}
        last = self.checkpoints[-1]
        return {"iter": last["iter"], "seq": last["seq"]}

    def _save_meta(self) -> None:
        with self._lock:
            self.meta["checkpoints"] = self.checkpoints
            self.meta["skipped_checkpoints"] = self.skipped_checkpoints
            self.store.write_json(self.store.run_meta_path(self.projid, self.runid), self.meta)

    # API ----------------------------------------------------------------------------------------
    def arg(self, name: str, default: object) -> object:
        """The value of a hyper-parameter for this run."""
        values.check_name(name)
        if self.replay is not None:
            return self.replay.arg(name, default)
        if name in self.cli_args:
            value = cli.cast(name, self.cli_args[name], default)
        elif self.attempt > 1 and name in self.meta.get("args", {}):
            value = self.meta["args"][name]
        else:
            value = default
        stored = "***" if cli.is_secret(name) and not config.store_secrets() else value
        self.args[name] = value
        if self.attempt == 1 or name not in self.meta["args"]:
            self.meta["args"][name] = stored
            if isinstance(stored, list | tuple):  # list args are kept whole, as JSON text
                self.buffer.append(self._ctx, "arg", name, "json", None, json.dumps(list(stored)))
            else:
                self._append("arg", name, stored)
        return value

    def log(self, name: str, value: object) -> object:
        """Record one value at the current loop position."""
        if self._quiet or (self.replay is not None and not self.replay.wants(name, value, self._ctx)):
            return value
        self._append("log", name, value)
        return value

    def _append(self, kind: str, name: str, value: object) -> None:
        if name.__class__ is not str or name not in values._checked_names:
            values.check_name(name)
        if isinstance(value, _CONTAINERS):
            value = self._reject(name, value)
        vtype, number, text = values.encode(value)
        self.buffer.append(self._ctx, kind, name, vtype, number, text)

    @staticmethod
    def _reject(name: str, value: object) -> object:
        raise TypeError(f"flor.log({name!r}, ...) got a {type(value).__name__}: log one scalar per name "
                        "(e.g. flor.log('x0', x[0]))")

    def register(self, *objs: object) -> None:
        """Register the state that checkpoints save and restore."""
        for obj in objs:
            ckpt.check_registrable(obj)
        self.objects.extend(objs)

    # loops --------------------------------------------------------------------------------------
    def loop(self, name: str, iterable):
        """Wrap an iterable so flor knows the loop position and can checkpoint at its boundaries."""
        values.check_name(name)
        if not self._stack:
            if self.replay is not None:
                return self.replay.outer_loop(self, name, iterable)
            return self._outer_loop(name, iterable)
        if len(self._stack) == 1 and self.replay is not None:
            return self.replay.nested_loop(self, name, iterable)
        return self._nested_loop(name, iterable, len(self._stack))

    def iterate(self, name: str, iterable):
        """Yield the items of one loop, tracking its 0-based index in the loop position."""
        index = -1
        try:
            for index, item in enumerate(iterable):
                self.push(name, index)
                try:
                    yield item
                finally:
                    self.pop()
        finally:
            self.iterations += index + 1

    def push(self, name: str, index: int) -> None:
        """Enter iteration index of loop name."""
        self._stack.append((name, index))
        self._ctx = tuple(self._stack)

    def pop(self) -> None:
        """Leave the innermost iteration."""
        self._stack.pop()
        self._ctx = tuple(self._stack)

    def _outer_loop(self, name: str, iterable):
        self._outer_len = len(iterable) if hasattr(iterable, "__len__") else None
        start = self._resume_point()["iter"]
        frame = sys._getframe(1)
        self.policy.start()
        it = iter(iterable)
        index = -1
        if start is None:
            self._resume_pending = False  # nothing to restore: a resume then redoes the run from the start
        else:
            # resume: a nested script re-enters iteration `start` with its nested loop restored, so the rest
            # of that body runs again; a flat script restores the end of `start` and continues after it
            nested = framevars.has_nested_loop(str(self.script))
            skip = start if nested else start + 1
            for _ in range(skip):
                next(it)
            index = skip - 1
            if nested:
                self._restore_at = start
            else:
                self._restore(start, frame)
        self._quiet = False
        for item in it:
            index += 1
            self.iterations += 1
            self.push(name, index)
            self._nested_done = False
            try:
                yield item
            finally:
                self.pop()
            self._outer_iters = index + 1
            if not self._nested_done:
                self.maybe_checkpoint(index, frame)
            if self._segment_stop is not None and index + 1 >= self._segment_stop and (
                    self._outer_len is None or index + 1 < self._outer_len):
                self.status = "suspended"  # a segment boundary: the next segment resumes from this checkpoint
                raise SystemExit(0)

    def _nested_loop(self, name: str, iterable, depth: int):
        frame = sys._getframe(1)
        if depth == 1 and self._restore_at is not None and self._stack[0][1] == self._restore_at:
            self._restore_at = None
            self._restore(self._stack[0][1], frame)
            self._nested_done = True
            return
        yield from self.iterate(name, iterable)
        if depth == 1:
            self._nested_done = True
            self.maybe_checkpoint(self._stack[0][1], frame)

    def _restore(self, index: int, frame) -> None:
        entry = next(c for c in self.checkpoints if c["iter"] == index)
        framevars.restore(frame, ckpt.apply(ckpt.load(self._read_checkpoint(entry)), self.objects))
        self._resume_pending = False


def masked_argv(argv: list[str]) -> list[str]:
    """The command line with the values of secret-looking options replaced by ***."""
    if config.store_secrets():
        return list(argv)
    out = list(argv)
    for i, word in enumerate(out):
        if word.startswith("--") and cli.is_secret(word[2:].split("=", 1)[0]):
            if "=" in word:
                out[i] = word.split("=", 1)[0] + "=***"
            elif i + 1 < len(out) and not out[i + 1].startswith("--"):
                out[i + 1] = "***"
    return out


def _relative_cwd(root: Path | None) -> str | None:
    try:
        return str(Path.cwd().resolve().relative_to(root)) if root else None
    except ValueError:
        return None
