"""flor: hindsight logging for model training. `import flor_lib as flor` in a training script.

Importing is cheap (no Prefect, pandas or DuckDB); the run starts at the first flor call.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from flor_lib.errors import FlorError, exit_with

T = TypeVar("T")
_run = None


def _take_flags() -> dict[str, str]:
    # at import, so a script's own argparse never sees --flor NAME
    from flor_lib.args import take_flor_flags

    return take_flor_flags(sys.argv)


_flags = _take_flags()


def _one_line_errors() -> None:
    # a FlorError reaching the top of a script is a user error: one line, a traceback only with FLOR_DEBUG=1
    previous = sys.excepthook

    def hook(kind, exc, tb):
        if issubclass(kind, FlorError) and os.environ.get("FLOR_DEBUG", "") in ("", "0", "false"):
            print(f"flor: error: {exc}", file=sys.stderr)
            return
        previous(kind, exc, tb)

    sys.excepthook = hook


_one_line_errors()


def _current():
    global _run
    if _run is None:
        cpu = time.thread_time()
        from flor_lib import args as cli
        from flor_lib.run import Run

        try:
            replay = None
            if os.environ.get("FLOR_REPLAY"):
                from flor_lib.replay.mode import ReplayMode

                replay = ReplayMode.from_env()
            flags = {**_flags, **cli.take_flor_flags(sys.argv)}
            _run = Run(name=flags.get("name") or os.environ.get("FLOR_RUN_NAME"), replay=replay)
        except FlorError as exc:
            exit_with(exc)
        _run.cost.add("start", time.thread_time() - cpu)
    return _run


def arg(name: str, default: Any = None) -> Any:
    """A hyper-parameter: `--name value` on the command line, else the default (cast to its type)."""
    try:
        return _current().arg(name, default)
    except FlorError as exc:
        if _run is not None:
            _run.status = "failed"
        exit_with(exc)


def log(name: str, value: T) -> T:
    """Record a value at the current loop position and return it."""
    run = _run or _current()
    return run.log(name, value)


def loop(name: str | Iterable, iterable: Iterable[T] | None = None) -> Iterator[T]:
    """Iterate, tracking the 0-based index of each enclosing flor.loop (and checkpointing between)."""
    run = _current()
    if iterable is None:  # FlorDB's MTK.loop(iterable): the name follows the nesting depth
        name, iterable = ("epoch" if not run._stack else "step"), name
    return run.loop(name, iterable)


def checkpoints(*objs: Any) -> None:
    """Register the training state (models, optimizers, schedulers, dicts, arrays) to checkpoint."""
    try:
        _current().register(*objs)
    except FlorError as exc:
        if _run is not None:
            _run.status = "failed"
        exit_with(exc)


def commit() -> None:
    """Flush every record and finalize the run (also done at exit)."""
    if _run is not None:
        _run.commit()


def logged(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: log a function's return value under name on every call."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> T:
            return log(name, fn(*a, **k))

        return inner

    return wrap


def run(name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator for a main(): the run starts on entry and commits on exit (failed on an exception)."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> T:
            global _run
            if _run is None and name:
                os.environ.setdefault("FLOR_RUN_NAME", name)
            current = _current()
            try:
                return fn(*a, **k)
            except BaseException as exc:
                current.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                raise
            finally:
                current.commit()
                _run = None

        return inner

    return wrap


def __getattr__(attr: str) -> Any:
    # the query and flow faces import pandas/duckdb/prefect: load them only when used
    lazy = {
        "dataframe": "flor_lib.query", "sql": "flor_lib.query", "dataset": "flor_lib.query",
        "log_records": "flor_lib.query", "full_pivot": "flor_lib.query", "show": "flor_lib.query",
        "replay": "flor_lib.notebook", "batch": "flor_lib.notebook", "cross_prod": "flor_lib.notebook",
        "DATA_PREP": "flor_lib.query",
    }
    if attr in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[attr]), attr)
    if attr == "MTK":
        return sys.modules[__name__]
    raise AttributeError(f"module 'flor_lib' has no attribute {attr!r}")


__all__ = ["arg", "log", "loop", "checkpoints", "commit", "logged", "run", "FlorError", "dataframe", "sql",
           "dataset", "replay", "batch", "cross_prod", "log_records", "full_pivot", "MTK"]
