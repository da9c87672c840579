"""flor's checkpoint byte format: a JSON tree plus raw tensor bytes (no pickle, so loading is safe and fast).

Layout: MAGIC, an 8-byte little-endian header length, the JSON header, padding to 64 bytes, then the
tensors' bytes back to back. Every container in the tree is a tagged list, so no user key can collide
with a tag: ["d", [[k, v], ...]] dict, ["l", [...]] list, ["t", [...]] tuple, ["T", i] tensor i,
["B", base64] bytes, ["n", [dtype, value]] a numpy scalar, ["f", repr] a non-finite float. None,
bools, ints, floats and strings are JSON scalars. A tree holding anything else raises Unsupported, and
the caller falls back to torch.save.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import struct

MAGIC = b"FLORCKP1"
_ALIGN = 64
_JSON_SCALARS = {int, bool, str, type(None)}  # exact types: a subclass (IntEnum) would not come back
_finite = math.isfinite


@functools.cache
def _numpy_types() -> dict:
    import numpy as np  # with torch, never before: a torch-free run's start-up stays small

    return {name: np.dtype(name) for name in ("float64", "float32", "float16", "int64", "int32", "int16",
                                              "int8", "uint8", "bool", "complex64", "complex128")}


@functools.cache
def _dtype_name(dtype) -> str:
    return str(dtype)[6:]  # torch.float32 -> float32


class Unsupported(TypeError):
    """The tree holds a value this format does not encode."""


def _torch():
    import torch

    return torch


def is_flor_format(data: bytes | bytearray | memoryview) -> bool:
    """Whether data starts with this format's magic, or a torn prefix of it (torch.save files start with PK)."""
    head = bytes(data[: len(MAGIC)])
    return bool(head) and MAGIC.startswith(head)


def _encode(tree, tensors: list, torch):
    kind = type(tree)
    if kind in _JSON_SCALARS:
        return tree
    if kind is float:
        return tree if math.isfinite(tree) else ["f", repr(tree)]
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        if tree.layout != torch.strided or tree.is_quantized:
            raise Unsupported(f"a {tree.layout} tensor")
        tensors.append(tree)
        return ["T", len(tensors) - 1]
    if kind.__module__ == "numpy":
        return _encode_numpy(tree, tensors, torch)
    if isinstance(tree, dict):  # str keys with plain values (optimizer hyper-parameters) skip the recursion
        return ["d", [[k, v] if type(k) is str and (type(v) in _JSON_SCALARS or type(v) is float and _finite(v))
                      else [_encode(k, tensors, torch), _encode(v, tensors, torch)] for k, v in tree.items()]]
    if type(tree) is list or type(tree) is tuple:
        tag = "l" if type(tree) is list else "t"
        if set(map(type, tree)) <= _JSON_SCALARS:  # Python's RNG state: 625 ints, encoded in one step
            return [tag, list(tree)]
        return [tag, [_encode(v, tensors, torch) for v in tree]]
    if kind is bytes:
        return ["B", base64.b64encode(tree).decode()]
    raise Unsupported(kind.__name__)


def _encode_numpy(value, tensors: list, torch):
    """A numpy array as {"__ndarray__": tensor} (what apply expects), a numpy scalar as its dtype and value."""
    if getattr(value, "ndim", None) == 0 and not hasattr(value, "__setitem__") and value.dtype.kind in "biuf":
        item = value.item()
        return ["n", [value.dtype.name, item if not isinstance(item, float) or math.isfinite(item) else repr(item)]]
    try:
        tensor = torch.from_numpy(value)
    except (TypeError, ValueError) as exc:  # object arrays, non-native byte order
        raise Unsupported(f"a numpy {getattr(value, 'dtype', type(value).__name__)}") from exc
    tensors.append(tensor)
    return ["d", [["__ndarray__", ["T", len(tensors) - 1]]]]


def dumps(tree) -> bytes:
    """Encode a tree of containers, scalars, tensors and numpy values; raise Unsupported for anything else.

    The bytes are a copy: the live tensors of the tree may change as soon as this returns.
    """
    return b"".join(encode(tree))


def encode(tree) -> list:
    """The encoding as a list of buffers, tensors' bytes as views of the live tensors (no copy): write or
    join them before the tensors change. Raise Unsupported for a value this format does not hold."""
    torch = _torch()
    tensors: list = []
    encoded = _encode(tree, tensors, torch)
    blobs, specs, offset = [], [], 0
    for t in tensors:
        if t.requires_grad:
            t = t.detach()
        if not t.is_cpu:
            t = t.to("cpu")  # synchronous: the bytes are taken below, before training goes on
        if not t.is_contiguous():
            t = t.contiguous()
        nbytes = t.nbytes
        try:
            blob = t.numpy()  # a view of the tensor's bytes: the one copy is the caller's join or write
        except (TypeError, RuntimeError):  # bfloat16 and friends have no numpy dtype: view as bytes
            blob = t.reshape(-1).view(torch.uint8).numpy() if nbytes else b""
        blobs.append(blob)
        specs.append([_dtype_name(t.dtype), t.shape, offset, nbytes])
        offset += nbytes
        if offset % _ALIGN:  # each tensor starts aligned, so a view of any dtype is legal
            blobs.append(b"\0" * (_ALIGN - offset % _ALIGN))
            offset += _ALIGN - offset % _ALIGN
    header = json.dumps({"tree": encoded, "tensors": specs}, separators=(",", ":")).encode()
    pad = -(len(MAGIC) + 8 + len(header)) % _ALIGN
    return [MAGIC, struct.pack("<Q", len(header)), header, b"\0" * pad, *blobs]


def _decode(node, tensors: list):
    if not isinstance(node, list):
        return node
    tag, body = node
    if tag == "d":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if tag == "l":
        return [_decode(v, tensors) for v in body]
    if tag == "t":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "T":
        return tensors[body]
    if tag == "f":
        return float(body)
    if tag == "n":
        import numpy as np

        return np.dtype(body[0]).type(float(body[1]) if isinstance(body[1], str) else body[1])
    if tag == "B":
        return base64.b64decode(body)
    raise ValueError(f"unknown tag {tag!r}")


def loads(data: bytes | bytearray | memoryview):
    """Decode bytes written by dumps; each tensor gets its own writable copy of its bytes."""
    torch = _torch()
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a flor checkpoint")
    (size,) = struct.unpack("<Q", view[len(MAGIC): len(MAGIC) + 8])
    start = len(MAGIC) + 8
    header = json.loads(bytes(view[start: start + size]))
    base = start + size + (-(start + size) % _ALIGN)
    specs = header["tensors"]
    end = base + max((spec[2] + spec[3] for spec in specs), default=0)
    if end > len(view):
        raise ValueError(f"truncated: {len(view)} bytes, {end} expected")
    import numpy as np

    types = _numpy_types()
    tensors = []
    for dtype, shape, offset, nbytes in specs:
        start = base + offset
        if dtype in types:  # numpy's copy is the cheapest way to a tensor that owns its bytes
            arr = np.frombuffer(view, dtype=types[dtype], count=nbytes // types[dtype].itemsize,
                                offset=start).reshape(shape).copy()
            tensors.append(torch.from_numpy(arr))
        elif nbytes:  # its own storage at offset 0: torch.set_rng_state and friends read the raw pointer
            raw = bytearray(view[start: start + nbytes])
            tensors.append(torch.frombuffer(raw, dtype=getattr(torch, dtype)).reshape(shape))
        else:
            tensors.append(torch.empty(shape, dtype=getattr(torch, dtype)))
    return _decode(header["tree"], tensors)
