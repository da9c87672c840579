"""Training state: registration, the adaptive policy, a background writer, and exact restore."""

from __future__ import annotations

import copy
import io
import os
import queue
import random
import threading
import time
from array import array
from collections.abc import Callable

from flor_lib import ckpt_format
from flor_lib.errors import FlorError, warn


def _torch():
    import torch

    return torch


def check_registrable(obj: object) -> None:
    """Raise at registration (not at the first save) for state flor cannot save and restore in place."""
    if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
        return
    if isinstance(obj, dict | list | bytearray | set) or type(obj).__module__ == "numpy":
        if type(obj).__module__ == "numpy" and not hasattr(obj, "__setitem__"):
            raise FlorError(f"flor.checkpoints: a numpy {type(obj).__name__} is immutable: register an array")
        return
    raise FlorError(
        f"flor.checkpoints cannot restore a {type(obj).__name__} in place: register objects with "
        "state_dict()/load_state_dict() (modules, optimizers, schedulers), dicts, lists or numpy arrays"
    )


def to_cpu(tree):
    """Copy a state tree with every tensor detached and on the CPU (the only work on the training thread)."""
    torch = _torch()
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_cpu(v) for v in tree)
    if type(tree).__module__ == "numpy" and hasattr(tree, "shape"):
        return {"__ndarray__": torch.from_numpy(tree.copy())}
    return copy.deepcopy(tree)


def _from_cpu(tree):
    if isinstance(tree, dict):
        if set(tree) == {"__ndarray__"}:
            return tree["__ndarray__"].numpy()
        return {k: _from_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_from_cpu(v) for v in tree)
    return tree


_python_words: tuple = ((), None)  # the last state of Python's RNG seen, and its tensor (never written to)


def rng_state() -> dict:
    """Every RNG state that replay needs to reproduce shuffling and dropout."""
    torch = _torch()
    version, words, gauss = random.getstate()  # 625 ints: one small tensor, not 625 JSON numbers
    global _python_words
    if words != _python_words[0]:  # a script that never draws from random keeps one tensor for all checkpoints
        _python_words = (words, torch.frombuffer(array("Q", words), dtype=torch.int64))
    state = {"python": [version, _python_words[1], gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Put back the RNG states saved by rng_state."""
    torch = _torch()
    py = state["python"]
    random.setstate((py[0], tuple(py[1].tolist() if hasattr(py[1], "tolist") else py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(objs: list, frame_vars: dict) -> dict:
    """A CPU copy of registered objects, RNG states and loop variables, ready to serialize."""
    return {
        "objects": [to_cpu(o.state_dict() if hasattr(o, "state_dict") else o) for o in objs],
        "rng": rng_state(),
        "vars": to_cpu(frame_vars),
    }


def snapshot_parts(objs: list, frame_vars: dict) -> list | dict:
    """The checkpoint, taken on the training thread: flor's format as buffers that view the live tensors
    (write or join them before training goes on; no pickling), or, for state the format cannot hold, a
    deep CPU copy that serialize() pickles later."""
    tree = {"objects": [o.state_dict() if hasattr(o, "state_dict") else o for o in objs],
            "rng": rng_state(), "vars": frame_vars}
    try:
        return ckpt_format.encode(tree)
    except ckpt_format.Unsupported:
        return to_cpu(tree)  # the same tree, copied (state_dict and RNG states are not taken twice)


def serialize(state: dict) -> bytes:
    """Encode a captured state in flor's pickle-free format, or with torch.save when it holds other objects."""
    try:
        return ckpt_format.dumps(state)
    except ckpt_format.Unsupported:
        buf = io.BytesIO()
        _torch().save(state, buf)
        return buf.getvalue()


def load(data: bytes, unsafe: bool = False) -> dict:
    """Deserialize a checkpoint; full unpickling only when the caller opts in (FLOR_UNSAFE_LOAD=1)."""
    if ckpt_format.is_flor_format(data):
        try:
            return ckpt_format.loads(data)
        except Exception as exc:  # a torn or tampered file: the same message as a bad torch.save file
            raise FlorError(
                f"checkpoint is corrupted ({exc.__class__.__name__}): replay from an earlier one") from exc
    torch = _torch()
    unsafe = unsafe or os.environ.get("FLOR_UNSAFE_LOAD") == "1"
    try:
        return torch.load(io.BytesIO(data), weights_only=not unsafe, map_location="cpu")
    except Exception as exc:
        if unsafe or "weights_only" not in str(exc).lower():
            raise FlorError(
                f"checkpoint is corrupted ({exc.__class__.__name__}): replay from an earlier one") from exc
        raise FlorError(
            f"checkpoint could not be loaded safely ({str(exc).splitlines()[0][:160]}); if you trust "
            "this store, FLOR_UNSAFE_LOAD=1 allows full unpickling (it can run arbitrary code)"
        ) from exc


def apply(state: dict, objs: list) -> dict:
    """Load a deserialized checkpoint into registered objects in place and return its loop variables."""
    saved = state["objects"]
    if len(saved) != len(objs):
        raise FlorError(f"checkpoint holds {len(saved)} objects but {len(objs)} are registered now")
    for obj, data in zip(objs, saved, strict=True):
        data = _from_cpu(data)
        if hasattr(obj, "load_state_dict"):
            obj.load_state_dict(data)
        elif isinstance(obj, dict):
            obj.clear()
            obj.update(data)
        elif isinstance(obj, list | bytearray):
            obj[:] = data
        elif isinstance(obj, set):
            obj.clear()
            obj.update(data)
        else:
            obj[...] = data
    set_rng_state(state["rng"])
    return _from_cpu(state["vars"])


class Policy:
    """FlorDB's adaptive rule, (k+1)*M <= eps*n*C: checkpoint while what checkpoints have cost, plus the
    next one, stays within eps of the training done so far.

    The next one is predicted by the last one (not the mean): the first checkpoint pays for warm-up
    (allocation, first imports) and would otherwise skip the next few iterations. n*C, the training
    done, is the larger of its wall time and its CPU time: flor's overhead promise is in CPU time, and
    a loop on 8 threads does 8 CPU-seconds of work per second.
    """

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.taken = 0
        self.spent = 0.0  # seconds all checkpoints cost (copy + serialize + write)
        self.last_cost = 0.0
        self.start()

    def start(self) -> None:
        """Start counting training time (the outer loop begins)."""
        self.started, self.started_cpu = time.perf_counter(), time.process_time()

    def should_save(self, iterations_done: int, last: bool) -> bool:
        """Whether to checkpoint now, after iterations_done outer iterations."""
        if last or self.taken == 0:
            return True
        elapsed = max(time.perf_counter() - self.started, time.process_time() - self.started_cpu)
        return self.spent + self.last_cost <= self.eps * elapsed

    def record_cost(self, seconds: float) -> None:
        """Count the measured cost of one checkpoint."""
        self.taken += 1
        self.spent += seconds
        self.last_cost = seconds


class Pacer:
    """Runs a write at most every so often: the run's metadata grows with each checkpoint it lists.

    Rewriting it after every checkpoint of a 2500-epoch run is quadratic; a crash between two writes
    only makes a resume start from the checkpoint before, which is as correct and slightly longer.
    """

    def __init__(self, min_interval: float = 5.0, share: float = 0.005) -> None:
        self.min_interval, self.share = min_interval, share
        self.last_at: float | None = None
        self.cost = 0.0

    def maybe(self, write: Callable[[], None], force: bool = False) -> bool:
        """Call write if forced or if enough time passed since the last one (keeping it under share)."""
        now = time.perf_counter()
        if not force and self.last_at is not None and now - self.last_at < max(self.min_interval,
                                                                                self.cost / self.share):
            return False
        write()
        self.last_at, self.cost = time.perf_counter(), time.perf_counter() - now
        return True


class Writer:
    """Serializes and writes checkpoints on a daemon thread, behind a bounded queue."""

    def __init__(self, write: Callable[[int, bytes | dict | int, int, float, bool], None], depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._loop, name="flor-ckpt", daemon=True)
        self._thread.start()
        self.error: BaseException | None = None

    def submit(self, index: int, state: dict, seq: int, copy_s: float, last: bool = False) -> bool:
        """Queue a captured state; False (skip, don't stall training) when the queue is full, unless last."""
        try:
            self._queue.put((index, state, seq, copy_s, last), block=last)
            return True
        except queue.Full:
            return False

    def idle(self) -> bool:
        """Whether nothing is queued (an inline write must not overtake a queued one of the same run)."""
        return self._queue.empty()

    def close(self) -> None:
        """Wait for queued checkpoints to be written."""
        self._queue.put(None)
        self._thread.join()

    def failed(self, exc: BaseException) -> None:
        """Note a checkpoint that could not be written (said once): training goes on without it."""
        if self.error is None:
            self.error = exc
            warn(f"checkpoint not written ({exc}); training continues")

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(*item)
            except BaseException as exc:
                self.failed(exc)
