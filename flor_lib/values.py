"""Turning a logged Python value into the typed columns of a record."""

from __future__ import annotations

import re

from flor_lib.errors import FlorError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
_checked_names: set[str] = set()


class BadName(FlorError, ValueError):
    """A log, loop, arg or run name that cannot be a column name (a ValueError, reported in one line)."""


def check_name(name: str) -> str:
    """Return name if it can be a column name, else raise BadName (a ValueError) saying what is allowed."""
    if name.__class__ is str and name in _checked_names:
        return name
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadName(
            f"the name {name!r} is not allowed: use 1-128 letters, digits, '_', '.', ':', '/' or '-', "
            "starting with a letter or '_'"
        )
    _checked_names.add(name)
    return name


def encode(value: object) -> tuple[str, float | None, str | None]:
    """Return (value_type, number, text) for a loggable value or raise TypeError."""
    t = type(value)
    if t is float:
        return "float", value, None  # type: ignore[return-value]
    if t is int:
        return "int", (float(value) if -(2**1023) < value < 2**1023 else None), str(value)  # type: ignore
    if t is bool:
        return "bool", float(value), None  # type: ignore[arg-type]
    if t is str:
        return "str", None, value  # type: ignore[return-value]
    if value is None:
        return "none", None, None
    # numpy scalars, 0-d arrays and 0-d / one-element tensors: `.item()` is the only sync
    item = getattr(value, "item", None)
    if item is not None and _is_scalar_like(value):
        return encode(item())
    if isinstance(value, bool | int | float | str):  # subclasses (e.g. IntEnum)
        return encode(t.__mro__[[c in (bool, int, float, str) for c in t.__mro__].index(True)](value))
    raise TypeError(
        f"flor.log accepts numbers, strings, bools, numpy scalars and 0-d tensors, not {t.__name__}"
        + (f" of shape {tuple(value.shape)}" if hasattr(value, "shape") else "")
        + ": log a scalar such as x.item() or float(x)"
    )


def _is_scalar_like(value: object) -> bool:
    shape = getattr(value, "shape", None)
    if shape is None:
        return True
    return len(shape) == 0


def decode(value_type: str, number: float | None, text: str | None) -> object:
    """Invert encode for one record."""
    if value_type == "float":
        return number
    if value_type == "int":
        return int(text) if text is not None else int(number)  # type: ignore[arg-type]
    if value_type == "bool":
        return bool(number)
    if value_type == "none":
        return None
    if value_type == "json":
        import json

        return json.loads(text)  # type: ignore[arg-type]
    return text
