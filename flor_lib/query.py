"""Reading records back: the pyarrow dataset, DuckDB views `logs` and `runs`, and wide dataframes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from flor_lib import compact
from flor_lib.buffer import read_stream
from flor_lib.errors import FlorError
from flor_lib.schema import RECORD_SCHEMA
from flor_lib.store import Store, remote_failure

DATA_PREP = ("projid", "runid", "tstamp", "vid")
_RUN_COLS = ["projid", "runid", "tstamp", "vid", "filename", "status", "host", "start", "end", "duration_s",
             "sweep"]


_RETRIES = 3  # a file merged away between listing and scan is retried; merges rarely come three in a row
# how a deleted file shows through pyarrow, DuckDB's arrow scan and s3fs (errno 2 in every local message)
_VANISHED = re.compile(r"errno 2\]|No such file|FileNotFoundError|NoSuchKey")


def _vanished(exc: BaseException) -> bool:
    """Whether an error means a listed record file was deleted (merged or finalized) before it was read."""
    return isinstance(exc, FileNotFoundError) or bool(_VANISHED.search(str(exc)))


def dataset(store: Store | None = None, relist: bool = False) -> ds.Dataset:
    """The pyarrow dataset of every record: compacted Parquet plus streams of runs not yet finalized.

    A listed file that a concurrent merge or finalize deleted is not an error: list again and rebuild
    (relist: a scan of an earlier dataset hit one). Each build uses one view of records/, whose merged
    files name what they replaced, so a retry never counts a record twice.
    """
    store = store or Store()
    tries = 0
    while True:
        try:
            if store.remote and not store.offline:
                return _remote_dataset(store)
            return _local_dataset(store, relist or tries > 0)
        except FlorError:
            raise
        except Exception as exc:
            tries += 1
            if tries < _RETRIES and _vanished(exc):
                continue
            if store.remote and not store.offline and remote_failure(exc):
                raise store.unreachable(exc) from exc
            raise


def _local_dataset(store: Store, relist: bool) -> ds.Dataset:
    done = None
    if relist:  # files vanished under an earlier listing: one listing of records/ decides files and streams
        files, done = compact.split_visible(store, compact.record_files(store))
    else:
        files = [f for p in _record_projects(store) for f in compact.parquet_files(store, p)]
    parts: list[ds.Dataset] = []
    if files:
        parts.append(ds.dataset(files, schema=RECORD_SCHEMA, format="parquet", filesystem=store.fs))
    streams = compact.visible_streams(store, done=done)
    if streams:
        parts.append(ds.dataset(pa.concat_tables([read_stream(s) for s in streams])))
    if not parts:
        return ds.dataset(RECORD_SCHEMA.empty_table())
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def _remote_dataset(store: Store) -> ds.Dataset:
    """On S3: one listing each of records/ and live/, then a pyarrow dataset over the Parquet files.

    Files are immutable per version (ETag), so each is fetched once per host into the store's
    object cache and read from there; FLOR_QUERY_CACHE=0 reads them through s3fs on every scan.
    Streams come from this host's spool, else from the copies running runs upload to live/.
    """
    files = compact.record_files(store)
    cache = os.environ.get("FLOR_QUERY_CACHE", "1") not in ("0", "false")
    if cache:  # merged files are read anyway: fetched first, their footers are read locally
        store.cache_many({f: i for f, i in files.items() if f.rsplit("/", 1)[-1].startswith("merged-")})
    visible, done = compact.split_visible(store, files)
    parts: list[ds.Dataset] = []
    if visible and not cache:
        parts.append(ds.dataset(visible, schema=RECORD_SCHEMA, format="parquet", filesystem=store.fs))
    elif visible:
        local = store.cache_many({f: files[f] for f in visible})
        parts.append(ds.dataset([str(p) for p in local], schema=RECORD_SCHEMA, format="parquet"))
        _prune(store.objects / "records", local)
    tables = [read_stream(s) for s in compact.visible_streams(store, done=done)]
    here = {str(s.relative_to(store.spool)) for s in compact.stream_files(store)}
    copies = {}
    for path, info in compact.live_copies(store).items():
        projid, runid, name = store.rel(path).split("/")[1:4]
        if f"{projid}/{runid}--{name.rsplit('.', 1)[0]}.parquet" not in done and f"{projid}/{runid}/{name}" not in here:
            copies[path] = info
    cached = store.cache_many(copies) if copies else []
    tables += [read_stream(p) for p in cached]
    _prune(store.objects / "live", cached)
    if tables:
        parts.append(ds.dataset(pa.concat_tables(tables)))
    if not parts:
        return ds.dataset(RECORD_SCHEMA.empty_table())
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def _prune(root: Path, keep: list[Path]) -> None:
    """Drop cached copies of objects that are gone (merged away or finalized)."""
    keep_set = set(keep)
    for p in root.rglob("*@*"):
        if p not in keep_set:
            p.unlink(missing_ok=True)


def _record_projects(store: Store) -> list[str]:
    try:
        return [p.rsplit("=", 1)[-1] for p in store.fs.ls(store.path("records"), detail=False)]
    except NotADirectoryError as exc:
        raise FlorError(f"the store {store.root} is not a directory: set FLOR_STORE to one") from exc
    except FileNotFoundError:
        return []


def runs_frame(store: Store | None = None, metas: list[dict] | None = None) -> pd.DataFrame:
    """One row per run: identity, status, timing and every arg as a column."""
    metas = (store or Store()).runs() if metas is None else metas
    rows = []
    for m in metas:
        row = {k: m.get(k) for k in _RUN_COLS if k in m}
        attempts = m.get("attempts") or [{}]
        row["start"] = attempts[0].get("start")
        row["end"] = m.get("end")
        if row["end"] and row["start"]:
            row["duration_s"] = (pd.Timestamp(row["end"]) - pd.Timestamp(row["start"])).total_seconds()
        row["checkpoints"] = len(m.get("checkpoints", []))
        for k, v in (m.get("args") or {}).items():
            row.setdefault(k, v)
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else _RUN_COLS)
    if "tstamp" in df:
        df["tstamp"] = pd.to_datetime(df["tstamp"], utc=True, format="ISO8601")
    return df


_LOOPS_BY_FILE: dict[tuple, set[tuple[str, ...]]] = {}


def _distinct_loop_lists(column: pa.ChunkedArray) -> set[tuple[str, ...]]:
    joined = pc.unique(pc.binary_join(column, "\x1f")).to_pylist()
    return {tuple(j.split("\x1f")) if j else () for j in joined if j is not None}


def loop_names(data: ds.Dataset) -> list[str]:
    """Every loop name in the records, outer loops first; each Parquet file is read once per process."""
    lists: set[tuple[str, ...]] = set()
    for part in data.children if isinstance(data, ds.UnionDataset) else [data]:
        if isinstance(part, ds.FileSystemDataset):
            for frag in part.get_fragments():
                info = frag.filesystem.get_file_info(frag.path)
                key = (frag.path, info.size, info.mtime_ns)  # a run resumed later rewrites its file in place
                if key not in _LOOPS_BY_FILE:
                    _LOOPS_BY_FILE[key] = _distinct_loop_lists(frag.to_table(columns=["loops"]).column("loops"))
                lists |= _LOOPS_BY_FILE[key]
        else:  # streams of live runs: small, and they grow
            lists |= _distinct_loop_lists(part.to_table(columns=["loops"]).column("loops"))
    depth: dict[str, int] = {}
    for loops in lists:
        for i, name in enumerate(loops):
            depth[name] = min(depth.get(name, i), i)
    return sorted(depth, key=lambda n: (depth[n], n))


class Connection:
    """A read-only DuckDB connection with views `logs`, `runs` and `records` over one store."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.con = duckdb.connect(config={"threads": 2})
        self.records = dataset(self.store)
        self.con.register("records_raw", self.records)
        metas = self.store.runs()
        # a resumed attempt redoes everything after its checkpoint: hide what the earlier attempt logged there
        cut = pa.table({"c_projid": pa.array([m["projid"] for m in metas for _ in _cuts(m)], pa.string()),
                        "c_runid": pa.array([m["runid"] for m in metas for _ in _cuts(m)], pa.string()),
                        "c_attempt": pa.array([a for m in metas for a, _ in _cuts(m)], pa.int32()),
                        "c_bound": pa.array([b for m in metas for _, b in _cuts(m)], pa.int64())})
        self.con.register("cuts", cut)
        self.con.execute(
            "CREATE VIEW records AS SELECT r.* FROM records_raw r LEFT JOIN cuts c ON r.runid = c.c_runid "
            "AND r.projid = c.c_projid AND r.attempt = c.c_attempt AND r.source = 'record' "
            "WHERE c.c_bound IS NULL OR r.seq < c.c_bound")
        for tries in range(1, _RETRIES + 1):
            try:
                self.loops = loop_names(self.records)
                break
            except Exception as exc:  # a file merged away since the listing: list again
                if tries == _RETRIES or not _vanished(exc):
                    raise
                self.records = dataset(self.store, relist=True)
                self.con.register("records_raw", self.records)
        loop_cols = "".join(f', iters[list_position(loops, {_lit(n)})] AS "{n}"' for n in self.loops)
        self.con.execute(
            "CREATE VIEW logs AS SELECT projid, runid, tstamp, vid, filename" + loop_cols +
            ", name, value, value_text, value_type, source, replay_id, attempt, seq FROM records WHERE kind = 'log'")
        runs = runs_frame(self.store, metas)
        self.con.register("runs_df", runs)
        self.con.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def _execute(self, query: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        """Execute a query; when a record file was merged away since the dataset was built, rebuild and rerun."""
        tries = 0
        while True:
            try:
                return self.con.execute(query, params)
            except duckdb.Error as exc:
                tries += 1
                if tries >= _RETRIES or not _vanished(exc):
                    raise
                self.records = dataset(self.store, relist=True)
                self.con.register("records_raw", self.records)  # the views read it by name

    def sql(self, query: str) -> pd.DataFrame:
        """Run a read-only query and return a DataFrame."""
        if re.match(r"\s*(insert|update|delete|create|drop|alter|copy|attach|install|load|set|pragma|export)\b",
                    query, re.I):
            raise FlorError("flor.sql is read-only: use SELECT (or WITH ... SELECT) over logs and runs")
        try:
            return self._execute(query).df()
        except duckdb.Error as exc:
            raise FlorError(f"SQL error: {str(exc).splitlines()[0]}") from exc

    def run_level(self) -> pd.DataFrame:
        """Runs with their args and every value logged outside loops (the columns --where can use)."""
        runs = self._execute("SELECT * FROM runs").df()
        top = self._execute(
            "SELECT runid, projid, name, value, value_text, value_type FROM records "
            "WHERE kind = 'log' AND len(loops) = 0 ORDER BY source DESC, seq").df()
        if len(top):
            top["__flor_v"] = _decode(top)
            wide = top.pivot_table(index=["projid", "runid"], columns="name", values="__flor_v", aggfunc="last")
            wide = wide.reset_index()
            wide.columns.name = None
            runs = runs.merge(wide.drop(columns=[c for c in wide.columns if c in runs.columns
                                                 and c not in ("projid", "runid")]),
                              on=["projid", "runid"], how="left")
        return runs

    def select_runs(self, where: str | None) -> pd.DataFrame:
        """Run-level rows matching a SQL condition (all runs when where is empty)."""
        level = self.run_level()
        if not where:
            return level
        self.con.register("run_level", level)
        try:
            keys = self._execute(f"SELECT projid, runid FROM run_level WHERE {where}").df()
        except duckdb.Error as exc:
            cols = ", ".join(str(c) for c in level.columns)
            raise FlorError(f"--where {where!r}: {str(exc).splitlines()[0]} (columns: {cols})") from exc
        return level.merge(keys, on=["projid", "runid"])


def _cuts(meta: dict) -> list[tuple[int, int]]:
    attempts = meta.get("attempts") or []
    return [(a["attempt"], b["start_seq"]) for a, b in zip(attempts, attempts[1:], strict=False)]


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _decode(df: pd.DataFrame) -> pd.Series:
    # built as a list: masked assignment into an object Series may coerce ints back to float
    def one(value: float, text: object, kind: str) -> object:
        if kind == "int":
            return int(text)
        if kind == "str":
            return text
        if kind == "bool":
            return bool(value)
        return value
    vals = [one(v, t, k) for v, t, k in zip(df["value"].tolist(), df["value_text"].tolist(), df["value_type"].tolist(), strict=True)]
    return pd.Series(vals, index=df.index, dtype=object)


def sql(query: str) -> pd.DataFrame:
    """Run DuckDB SQL over the views `logs` (one row per record) and `runs` (one row per run)."""
    return Connection().sql(query)


def dataframe(*names: str, where: str | None = None, store: Store | None = None) -> pd.DataFrame:
    """Wide view: one row per (run, loop position) that logged a requested name, args as columns."""
    conn = Connection(store)
    clash = [n for n in names if n in {"projid", "runid", "tstamp", "vid", "filename", *conn.loops}]
    if clash:
        raise FlorError(f"{clash[0]!r} is a key column of the wide view: read it with "
                        f"flor.sql(\"SELECT * FROM logs WHERE name = '{clash[0]}'\")")
    runs = conn.select_runs(where)
    arg_cols = [c for c in runs.columns if c not in _RUN_COLS and c != "checkpoints"]
    if not names:
        return runs.reset_index(drop=True)
    loop_cols = [f'"{n}"' for n in conn.loops]
    long = conn.con.execute(
        "SELECT projid, runid, tstamp, vid" + "".join(", " + c for c in loop_cols) +
        ", name, value, value_text, value_type, source FROM logs WHERE name IN (SELECT unnest(?))"
        " ORDER BY projid, runid, seq", [list(names)]).df()
    keys = ["projid", "runid"]
    long = long.merge(runs[keys], on=keys)
    if long.empty:
        cols = ["projid", "runid", "tstamp", "vid", *conn.loops, *names]
        return pd.DataFrame(columns=cols)
    long["__flor_v"] = _decode(long)
    int_names = set(long.loc[long["value_type"] == "int", "name"]) - set(long.loc[long["value_type"] != "int", "name"])
    # recorded values win over replayed ones at the same position
    long = long.sort_values("source", key=lambda s: s.map({"replay": 0, "record": 1}), kind="stable")
    is_top = long[conn.loops].isna().all(axis=1) if conn.loops else pd.Series(True, index=long.index)
    idx = ["projid", "runid", "tstamp", "vid", *conn.loops]
    nested = long[~is_top]
    if len(nested):
        # groupby+unstack keeps object values: ints stay exact where a pivot would make them floats
        wide = nested.groupby([*idx, "name"], dropna=False, sort=False)["__flor_v"].last().unstack("name")
        wide = wide.reset_index()  # a position whose only value is NaN keeps its row
    else:
        wide = long[idx].drop_duplicates(subset=keys).reset_index(drop=True)
    wide.columns.name = None
    top = long[is_top]
    if len(top):
        top_wide = top.groupby([*keys, "name"], sort=False)["__flor_v"].last().unstack("name").reset_index()
        top_wide.columns.name = None
        wide = wide.merge(top_wide, on=keys, how="outer", suffixes=("", "_run"))
        wide["tstamp"] = wide["tstamp"].fillna(wide[keys].merge(runs[[*keys, "tstamp"]], on=keys)["tstamp"])
    wide = wide.merge(runs[[*keys, *[c for c in arg_cols if c not in wide.columns]]], on=keys, how="left")
    for n in names:
        if n not in wide.columns:
            wide[n] = None
    for c in conn.loops:
        if c in wide:
            wide[c] = wide[c].astype("Int64")
    ordered = ["projid", "runid", "tstamp", "vid", *[c for c in conn.loops if c in wide], *names]
    rest = [c for c in wide.columns if c not in ordered]
    out = wide[ordered + rest].sort_values(["tstamp", "runid", *[c for c in conn.loops if c in wide]])
    for n in int_names & set(names):  # exact ints: nullable Int64 where empty rows would turn them into floats
        vals = out[n].dropna()
        out[n] = out[n].astype("Int64") if vals.map(lambda x: -(2**63) <= x < 2**63).all() else out[n]
    out = out.infer_objects()
    return out.reset_index(drop=True)


def log_records(store: Store | None = None) -> pd.DataFrame:
    """FlorDB spelling: every record in long form."""
    return Connection(store).sql("SELECT * FROM logs ORDER BY tstamp, runid, seq")


def full_pivot(df: pd.DataFrame | None = None) -> pd.DataFrame:
    """FlorDB spelling: the wide view of the given long records (all of them by default)."""
    names = sorted(set(df["name"])) if df is not None and len(df) else []
    return dataframe(*names) if names else dataframe()


def show(*names: str, where: str | None = None) -> Any:
    """A compact HTML table of the wide view, for notebooks."""
    from IPython.display import HTML

    return HTML(dataframe(*names, where=where).to_html(max_rows=50, index=False))
