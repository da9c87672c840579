"""Arrow arrays built from their buffers, for the record path of a training process.

pyarrow's converter from Python objects (pa.array, pa.scalar) imports pandas on first use to check
for pandas inputs: ~0.6 s of CPU in every training run that does not import pandas itself. Records
only hold strings, ints, floats and lists of those, so their buffers are packed here with the
standard library, and pa.Array.from_buffers never looks for pandas.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate

import pyarrow as pa


def _validity(values: Sequence) -> pa.Buffer | None:
    """A little-endian bitmap of which values are not None (None when all are)."""
    if all(v is not None for v in values):
        return None
    bits = int("".join("0" if v is None else "1" for v in reversed(values)) or "0", 2)
    return pa.py_buffer(bits.to_bytes((len(values) + 7) // 8 or 1, "little"))


def _offsets(lengths: Sequence[int]) -> pa.Buffer:
    ends = array("i", accumulate(lengths, initial=0))  # int32: a batch never holds 2 GiB of text
    return pa.py_buffer(ends.tobytes())


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string array (None is null)."""
    encoded = [b"" if v is None else v.encode() for v in values]
    data = b"".join(encoded)
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [_validity(values), _offsets([len(b) for b in encoded]), pa.py_buffer(data)])


def repeated_string(value: str | None, n: int) -> pa.Array:
    """n copies of one string (or n nulls)."""
    return strings([value] * n)


def numbers(kind: pa.DataType, values: Sequence) -> pa.Array:
    """An int32, int64, float64 or timestamp[us] array (None is null; timestamps as int microseconds)."""
    code = {pa.int32(): "i", pa.float64(): "d"}.get(kind, "q")
    packed = array(code, (0 if v is None else v for v in values))
    return pa.Array.from_buffers(kind, len(values), [_validity(values), pa.py_buffer(packed.tobytes())])


def lists(child: pa.Array, lengths: Sequence[int]) -> pa.Array:
    """A list array whose i-th list holds the next lengths[i] items of child."""
    return pa.Array.from_buffers(pa.list_(child.type), len(lengths), [None, _offsets(lengths)],
                                 children=[child])


def int64_scalar(value: int) -> pa.Scalar:
    """One int64, for compute kernels (pa.scalar would import pandas)."""
    return numbers(pa.int64(), [value])[0]


def bools_false(n: int) -> pa.Array:
    """n false booleans."""
    return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bytes((n + 7) // 8 or 1))])
