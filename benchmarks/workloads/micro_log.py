"""Child process: N flor.log calls in 10 x N/10 nested flor.loop iterations; writes timings as JSON
(wall, CPU of the calling thread, and CPU of the whole process: background flush threads included).

Usage: python micro_log.py MODULE N OUT.json   (MODULE: flor_lib, flordb, or flor_lib with the stub on PYTHONPATH)
"""

import importlib
import json
import sys
import time

module, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv[1:] = []  # nothing for the library's own argv parsing
t0 = time.perf_counter()
flor = importlib.import_module(module)
t_import = time.perf_counter() - t0
outer = 10
flor.arg("n", n)  # the run starts here, outside the timed loop
t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
for _e in flor.loop("epoch", range(outer)):
    for s in flor.loop("step", range(n // outer)):
        flor.log("x", s * 0.5)
t_loop, c_loop, p_loop = time.perf_counter() - t1, time.thread_time() - c1, time.process_time() - p1
calls = outer * (n // outer)
with open(out, "w") as f:
    json.dump({"import_s": t_import, "loop_s": t_loop, "per_log_us": 1e6 * t_loop / calls,
               "thread_cpu_us": 1e6 * c_loop / calls, "process_cpu_us": 1e6 * p_loop / calls,
               "file": getattr(flor, "__file__", "")}, f)
