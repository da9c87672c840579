"""Loop variables that a skipped nested loop would have left behind: find, capture, put back."""

from __future__ import annotations

import ast
import ctypes
import functools
import sys
from types import FrameType

_SCALARS = (int, float, bool, str, bytes, type(None), complex)
_MAX_TENSOR = 1 << 16


@functools.lru_cache(maxsize=32)
def nested_loop_names(path: str) -> frozenset[str]:
    """Names assigned in the loops whose end is checkpointed: nested flor.loops, else outer ones."""
    try:
        tree = ast.parse(open(path).read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    by_depth: dict[int, set[str]] = {1: set(), 2: set()}

    def is_flor_loop(node: ast.AST) -> bool:
        return (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
                and ((isinstance(node.iter.func, ast.Attribute) and node.iter.func.attr == "loop")
                     or (isinstance(node.iter.func, ast.Name) and node.iter.func.id == "loop")))

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            d = depth + 1 if is_flor_loop(child) else depth
            if d in by_depth and is_flor_loop(child):
                for sub in ast.walk(child):
                    if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                        by_depth[d].add(sub.id)
            visit(child, d)

    visit(tree, 0)
    return frozenset(by_depth[2] or by_depth[1])


def _is_flor_loop(node: ast.AST) -> bool:
    return (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
            and (getattr(node.iter.func, "attr", None) == "loop" or getattr(node.iter.func, "id", None) == "loop"))


@functools.lru_cache(maxsize=32)
def has_nested_loop(path: str) -> bool:
    """Whether a script nests one flor.loop in another (checkpoints then sit at the nested loop's end)."""
    try:
        tree = ast.parse(open(path).read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    return any(_is_flor_loop(n) and any(_is_flor_loop(m) for m in ast.walk(n) if m is not n) for n in ast.walk(tree))


def _capturable(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list | tuple):
        return len(value) <= 1024 and all(isinstance(v, _SCALARS) for v in value)
    mod = type(value).__module__
    if mod == "torch" and hasattr(value, "numel"):
        return value.numel() <= _MAX_TENSOR
    if mod == "numpy":
        return getattr(value, "size", 1) <= _MAX_TENSOR
    return False


def capture(frame: FrameType, names: frozenset[str]) -> dict:
    """The capturable values of names in a frame (locals first, then module globals)."""
    scope = frame.f_locals
    return {n: scope[n] for n in names if n in scope and _capturable(scope[n])}


def restore(frame: FrameType, values: dict) -> None:
    """Write values back into a frame's variables."""
    if not values:
        return
    if frame.f_code.co_flags & 0x02 == 0 or frame.f_locals is frame.f_globals:  # module level
        frame.f_globals.update(values)
        return
    if sys.version_info >= (3, 13):
        for k, v in values.items():
            frame.f_locals[k] = v
        return
    frame.f_locals.update(values)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
