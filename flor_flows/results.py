"""What a run ended with: its args and the last value of every name it logged (no Prefect import)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flor_lib import compact, values
from flor_lib.buffer import read_stream
from flor_lib.errors import FlorError
from flor_lib.store import Store


def run_records(store: Store, projid: str, runid: str) -> Any:
    """The run's recorded records as an Arrow table: its spooled streams, else its Parquet files."""
    import pyarrow as pa
    import pyarrow.compute as pc

    streams = [s for s in compact.stream_files(store, projid, runid) if s.stem.startswith("a")]
    if streams:
        return pa.concat_tables([read_stream(s) for s in streams])
    from flor_lib.query import dataset

    for attempt in range(5):  # a concurrent merge may delete a file between listing and reading it
        try:
            return dataset(store).to_table(filter=(pc.field("projid") == projid) & (pc.field("runid") == runid))
        except FileNotFoundError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def final_metrics(table: Any, truncate: dict[int, int] | None = None) -> dict[str, Any]:
    """The last recorded value of each logged name, in logging order (attempt, seq)."""
    cols = table.select(["attempt", "seq", "kind", "source", "name", "value", "value_text", "value_type"])
    rows = sorted(
        (r for r in cols.to_pylist() if r["kind"] == "log" and r["source"] == "record"
         and not (truncate and r["attempt"] in truncate and r["seq"] >= truncate[r["attempt"]])),
        key=lambda r: (r["attempt"], r["seq"]))
    out: dict[str, Any] = {}
    for r in rows:
        out.pop(r["name"], None)  # keep first-logged order of the names, last value of each
        out[r["name"]] = values.decode(r["value_type"], r["value"], r["value_text"])
    return out


def all_final_metrics(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    """Final metrics of every run in the store, keyed by (projid, runid), with one DuckDB query."""
    import duckdb

    from flor_lib.query import dataset

    con = duckdb.connect(config={"threads": 2})
    con.register("records", dataset(store))
    rows = con.execute(
        "SELECT projid, runid, name, arg_max(value, k), arg_max(value_text, k), arg_max(value_type, k), min(k) "
        "FROM (SELECT *, attempt::BIGINT * 1000000000000 + seq AS k FROM records "
        "      WHERE kind = 'log' AND source = 'record') GROUP BY ALL ORDER BY projid, runid, min(k)").fetchall()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for projid, runid, name, number, text, vtype, _ in rows:
        out.setdefault((projid, runid), {})[name] = values.decode(vtype, number, text)
    return out


def duration_s(meta: dict) -> float | None:
    """Seconds from the first attempt's start to the run's end, or None while it runs."""
    start = (meta.get("attempts") or [{}])[0].get("start") or meta.get("tstamp")
    end = meta.get("end")
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


def summary(meta: dict, metrics: dict[str, Any]) -> dict[str, Any]:
    """One run as a flat JSON-able dict: identity, status, duration, args, final metrics."""
    return {"runid": meta.get("runid"), "projid": meta.get("projid"), "vid": meta.get("vid"),
            "status": meta.get("status"), "tstamp": meta.get("tstamp"), "duration_s": duration_s(meta),
            "sweep": meta.get("sweep"), "device": meta.get("cuda_visible_devices"),
            "args": dict(meta.get("args") or {}), "metrics": metrics}


def table_rows(meta: dict, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's args and final metrics as rows (kind, name, value) for a Prefect table artifact."""
    rows = [{"kind": "arg", "name": k, "value": v} for k, v in (meta.get("args") or {}).items()]
    return rows + [{"kind": "metric", "name": k, "value": v} for k, v in metrics.items()]


def flat_row(item: dict[str, Any]) -> dict[str, Any]:
    """A summary (see summary) flattened to one row: identity columns, then args, then metrics."""
    row = {k: item.get(k) for k in ("runid", "status", "vid", "duration_s", "device") if k in item}
    if row.get("vid"):
        row["vid"] = str(row["vid"])[:8]
    row.update(item.get("args") or {})
    for k, v in (item.get("metrics") or {}).items():
        row[k if k not in row else f"{k} (final)"] = v
    for k in ("returncode", "error"):
        if item.get(k) not in (None, 0, ""):
            row[k] = item[k]
    return row


def flow_rows(state: Any, what: str) -> list[dict[str, Any]]:
    """The rows a sweep or replay flow returned, also when it ended Failed (its data holds them)."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data if isinstance(data, FlorError) else FlorError(f"{what} failed: {data}")
    return list(data or [])
