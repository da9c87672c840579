"""Property tests of the record -> store -> query round trip, in process (no subprocess, no git).

Records are built exactly as a training process builds them (values.encode -> RecordBuffer ->
Arrow stream in the spool), the run's metadata is written like run.py writes it, the run is
finalized (and sometimes compacted) with flor_lib.compact, and read back through
flor_lib.query. Whatever mix of value types, names and loop nests Hypothesis draws must come
back equal, in order, at the positions it was logged at.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flor_lib import compact, values
from flor_lib.buffer import RecordBuffer
from flor_lib.query import Connection, dataframe
from flor_lib.store import Store

SETTINGS = settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])
PROJID = "prop_main"
# columns of the `logs` view and of the wide view's key: DuckDB names are case-insensitive
_VIEW_COLUMNS = {"projid", "runid", "tstamp", "vid", "filename", "name", "value", "value_text", "value_type",
                 "source", "replay_id", "attempt", "seq", "kind", "loops", "iters", "status", "host", "start",
                 "end", "duration_s", "sweep", "checkpoints",
                 "v"}  # "v": see test_a_loop_named_v_does_not_break_the_wide_view

NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,12}", fullmatch=True)
LOOP_NAME = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n not in _VIEW_COLUMNS)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 0.0, math.inf, -math.inf]))
BIG_INT = 2 ** 1000  # beyond ~2**1024 encode() fails: see test_ints_beyond_the_float_range_are_logged_exactly


def any_value(max_int: int = BIG_INT):
    return st.one_of(st.integers(-max_int, max_int), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 3), FLOATS,
                     st.booleans(), st.text(max_size=20), st.sampled_from(["", "'", '"', "it's \"q\"", "é✓🚀", "\x00",
                                                                         "a\nb", "NULL", "None"]), st.none())


@st.composite
def runs(draw, max_int: int = BIG_INT, max_runs: int = 2):
    """[(runid, loops, [(ctx, name, value), ...]), ...] with a consistent loop nest per run."""
    out = []
    for r in range(draw(st.integers(1, max_runs))):
        loops = draw(st.lists(LOOP_NAME, max_size=3, unique=True))
        records = draw(st.lists(
            st.tuples(st.integers(0, len(loops)), st.lists(st.integers(0, 4), min_size=3, max_size=3),
                      NAME.filter(lambda n, taken=tuple(loops): n not in taken), any_value(max_int)),
            max_size=25))
        recs = [(tuple(zip(loops[:depth], iters[:depth], strict=True)), name, value)
                for depth, iters, name, value in records]
        out.append((f"run{r}", loops, recs))
    return out


def write_run(store: Store, runid: str, records: list, index: int = 0) -> None:
    """One finalized run in the store, recorded through a RecordBuffer like Run does."""
    tstamp = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=index)
    keys = {"projid": PROJID, "runid": runid, "tstamp": tstamp.isoformat(), "vid": "0" * 40, "filename": "train.py"}
    buffer = RecordBuffer(store.spool / PROJID / runid / "a1.arrows", keys, attempt=1, interval=3600)
    for ctx, name, value in records:
        values.check_name(name)
        vtype, number, text = values.encode(value)
        buffer.append(ctx, "log", name, vtype, number, text)
    buffer.close()
    meta = {**keys, "repo": None, "branch": "main", "argv": [], "args": {}, "status": "completed",
            "end": (tstamp + timedelta(seconds=1)).isoformat(), "records": len(records), "checkpoints": [],
            "attempts": [{"attempt": 1, "start_seq": 0, "pid": 1, "host": "h", "start": tstamp.isoformat()}]}
    store.write_json(store.run_meta_path(PROJID, runid), meta)
    compact.finalize_run(store, PROJID, runid)


def fresh_store(tmp_path_factory) -> Store:
    return Store(str(tmp_path_factory.mktemp("prop") / uuid.uuid4().hex[:8]))


def same(a, b) -> bool:
    """Equal, with the same type family, NaN equal to NaN and -0.0 told apart from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return type(a) is type(b) and a == b


def _na(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


@SETTINGS
@given(data=runs(), compacted=st.booleans())
def test_any_records_come_back_equal_in_order_at_their_positions(tmp_path_factory, data, compacted):
    store = fresh_store(tmp_path_factory)
    for i, (runid, _, records) in enumerate(data):
        write_run(store, runid, records, i)
    if compacted:
        compact.compact(store)
    conn = Connection(store)
    all_loops = sorted({n for _, _, recs in data for ctx, _, _ in recs for n, _ in ctx})
    assert sorted(conn.loops) == all_loops
    for runid, _, records in data:
        cols = "".join(f', "{n}"' for n in all_loops)
        got = conn.sql(f"SELECT name, value, value_text, value_type, seq{cols} FROM logs "
                       f"WHERE runid = '{runid}' ORDER BY seq")
        assert list(got["seq"]) == list(range(len(records)))  # in order, nothing lost or doubled
        for row, (ctx, name, value) in zip(got.to_dict("records"), records, strict=True):
            assert row["name"] == name
            number = None if _na(row["value"]) and row["value_type"] != "float" else row["value"]
            back = values.decode(row["value_type"], number, None if _na(row["value_text"]) else row["value_text"])
            assert same(back, value), (name, value, back, row)
            position = dict(ctx)
            for loop in all_loops:
                cell = row[loop]
                if loop in position:
                    assert not _na(cell) and int(cell) == position[loop], (loop, ctx, row)
                else:
                    assert _na(cell), (loop, ctx, row)


@SETTINGS
@given(data=runs(max_int=2 ** 53, max_runs=2))
def test_the_wide_view_shows_the_last_value_logged_at_each_position(tmp_path_factory, data):
    store = fresh_store(tmp_path_factory)
    for i, (runid, _, records) in enumerate(data):
        write_run(store, runid, records, i)
    names = sorted({name for _, _, recs in data for _, name, _ in recs})
    all_loops = sorted({n for _, _, recs in data for ctx, _, _ in recs for n, _ in ctx})
    names = [n for n in names if n not in all_loops]
    if not names:
        return
    df = dataframe(*names, store=store)
    conn_loops = [c for c in df.columns if c in all_loops]
    nested_names = {name for _, _, recs in data for ctx, name, _ in recs if ctx}
    for runid, _, records in data:
        last: dict[tuple, object] = {}
        top: dict[str, object] = {}
        for ctx, name, value in records:
            if value is None:
                continue  # a None never hides a value logged before it at the same place
            if ctx:
                key = tuple(dict(ctx).get(n) for n in conn_loops)
                last[(key, name)] = value
            else:
                top[name] = value
        mine = df[df["runid"] == runid]
        for (key, name), value in last.items():
            match = mine
            for loop, i in zip(conn_loops, key, strict=True):
                match = match[match[loop].isna()] if i is None else match[match[loop] == i]
            assert len(match) == 1, (runid, key, name, mine)
            cell = match.iloc[0][name]
            assert not _na(cell) or (isinstance(value, float) and math.isnan(value)), (key, name, value, cell)
            if isinstance(value, float) and math.isnan(value):
                continue
            if isinstance(value, bool | str):
                assert cell == value and not isinstance(cell, float), (key, name, value, cell)
            else:
                assert float(cell) == float(value), (key, name, value, cell)
        for name, value in top.items():
            # a name that some run logs inside a loop keeps its run-level values in NAME_run (by design)
            column = f"{name}_run" if name in nested_names else name
            cells = mine[column].tolist()
            assert cells, (runid, name)
            for cell in cells:  # run-level values repeat on every row of the run
                if isinstance(value, float) and math.isnan(value):
                    assert _na(cell)
                elif isinstance(value, bool | str):
                    assert cell == value
                else:
                    assert float(cell) == float(value), (name, value, cell)


@SETTINGS
@given(value=any_value(), name=NAME)
def test_a_value_logged_outside_loops_round_trips_exactly(tmp_path_factory, value, name):
    store = fresh_store(tmp_path_factory)
    write_run(store, "solo", [((), name, value)])
    got = Connection(store).sql("SELECT value, value_text, value_type FROM logs")
    assert len(got) == 1
    row = got.iloc[0]
    number = None if _na(row["value"]) and row["value_type"] != "float" else row["value"]
    back = values.decode(row["value_type"], number, None if _na(row["value_text"]) else row["value_text"])
    assert same(back, value)


def test_ints_beyond_the_float_range_are_logged_exactly(tmp_path):
    store = Store(str(tmp_path / "store"))
    big = 10 ** 400 + 7
    write_run(store, "huge", [((), "n", big), ((), "m", -big)])
    got = Connection(store).sql("SELECT value_text FROM logs ORDER BY seq")
    assert [int(t) for t in got["value_text"]] == [big, -big]


def test_big_ints_keep_their_exact_value_in_the_wide_view(tmp_path):
    store = Store(str(tmp_path / "store"))
    big = 2 ** 60 + 1
    write_run(store, "ids", [((("epoch", 0),), "sample_id", big), ((("epoch", 1),), "loss", 0.5)])
    df = dataframe("sample_id", "loss", store=store)
    cell = df.loc[df["epoch"] == 0, "sample_id"].iloc[0]
    assert int(cell) == big, cell


def test_strings_are_stored_byte_exact(tmp_path):
    store = Store(str(tmp_path / "store"))
    texts = ["", "'; DROP TABLE logs; --", '"quoted"', "tab\tnew\nline", "nul\x00byte", "é✓🚀" * 50, "x" * 100_000]
    write_run(store, "texts", [((("i", k),), "t", t) for k, t in enumerate(texts)])
    got = Connection(store).sql("SELECT value_text FROM logs ORDER BY seq")
    assert list(got["value_text"]) == texts
    df = dataframe("t", store=store)
    assert list(df.sort_values("i")["t"]) == texts


def test_store_path_with_odd_characters(tmp_path):
    store = Store(str(tmp_path / "a store with spaces, 'quotes' & é"))
    write_run(store, "r", [((("epoch", 0),), "loss", 1.5)])
    assert dataframe("loss", store=store)["loss"].tolist() == [1.5]



def test_a_loop_named_v_does_not_break_the_wide_view(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_run(store, "r", [((("v", 0),), "loss", 1.5), ((("v", 1),), "loss", 0.5)])
    df = dataframe("loss", store=store)
    assert df["loss"].tolist() == [1.5, 0.5] and df["v"].tolist() == [0, 1]


def test_records_logged_from_several_threads_while_flushing_are_all_kept_once(tmp_path):
    import threading

    from flor_lib.buffer import read_stream

    store = Store(str(tmp_path / "store"))
    keys = {"projid": PROJID, "runid": "threads", "tstamp": datetime(2024, 1, 1, tzinfo=UTC).isoformat(),
            "vid": "0" * 40, "filename": "train.py"}
    path = store.spool / PROJID / "threads" / "a1.arrows"
    buffer = RecordBuffer(path, keys, attempt=1, interval=0.001)  # the flush thread drains while they append

    def log(t: int) -> None:
        for i in range(20_000):
            buffer.append((("i", i),), "log", f"t{t}", "int", float(i), str(i))

    threads = [threading.Thread(target=log, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    buffer.close()
    table = read_stream(path).to_pandas()
    assert len(table) == 80_000 and table["seq"].is_unique
    assert sorted(table["seq"]) == list(range(80_000)) and buffer.next_seq <= 80_000
    for t in range(4):  # each thread's records keep their order
        assert table.loc[table["name"] == f"t{t}"].sort_values("seq")["value_text"].astype(int).tolist() == \
            list(range(20_000))


def test_a_position_whose_only_value_is_nan_keeps_its_row(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_run(store, "nan", [((("epoch", 0),), "loss", float("nan")), ((("epoch", 1),), "loss", 0.5)])
    df = dataframe("loss", store=store)
    assert df["epoch"].tolist() == [0, 1] and math.isnan(df["loss"][0]) and df["loss"][1] == 0.5
