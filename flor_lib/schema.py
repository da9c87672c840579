"""The Arrow schema of a record, shared by the writer, compaction and queries."""

from __future__ import annotations

import pyarrow as pa

RECORD_SCHEMA = pa.schema(
    [
        ("projid", pa.string()),
        ("runid", pa.string()),
        ("tstamp", pa.timestamp("us", tz="UTC")),
        ("vid", pa.string()),
        ("filename", pa.string()),
        ("attempt", pa.int32()),
        ("seq", pa.int64()),
        ("loops", pa.list_(pa.string())),
        ("iters", pa.list_(pa.int64())),
        ("kind", pa.string()),  # "log" or "arg"
        ("name", pa.string()),
        ("value", pa.float64()),  # numbers and bools, so SQL aggregates stay numeric
        ("value_text", pa.string()),  # strings, and ints exactly
        ("value_type", pa.string()),
        ("source", pa.string()),  # "record" or "replay"
        ("replay_id", pa.string()),
    ]
)

RUN_KEYS = ("projid", "runid", "tstamp", "vid", "filename")
