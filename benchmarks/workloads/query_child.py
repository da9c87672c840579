"""Child process: time flor's (or FlorDB's) dataframe and SQL over the store it is pointed at.

Usage: python query_child.py flor|flordb CALLS OUT.json   (flor: FLOR_STORE set; flordb: cwd = its repo)
"""

import json
import sys
import time

system, calls, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv[1:] = []
if system == "flor":
    import flor_lib as flor
    import flor_lib.query  # noqa: F401  (pandas + duckdb, loaded lazily by flor.dataframe: not timed)

    def frame():
        return flor.dataframe("loss")

    def sql():
        return flor.sql("SELECT runid, max(value) AS m FROM logs WHERE name = 'loss' GROUP BY 1")
else:
    import flordb as flor

    def frame():
        return flor.dataframe("loss")

    def sql():
        return flor.query("SELECT tstamp, max(CAST(value AS REAL)) AS m FROM logs "
                          "WHERE value_name = 'loss' GROUP BY 1")

result = {"dataframe": [], "sql": [], "rows": {}, "errors": {}}
for _ in range(calls):
    for name, fn in (("sql", sql), ("dataframe", frame)):  # the cheap one first: a failing call ends nothing else
        if name in result["errors"]:
            continue
        t0 = time.perf_counter()
        try:
            df = fn()
        except (MemoryError, Exception) as exc:  # reported as the figure for this size
            result["errors"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        result[name].append(time.perf_counter() - t0)
        result["rows"][name] = 0 if df is None else len(df)
        del df
with open(out, "w") as f:
    json.dump(result, f)
