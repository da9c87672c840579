"""Recording runs (issue 2): the tutorial and small scripts as real subprocesses in real git repos."""

from __future__ import annotations

import json
import math
import re
import signal
import time

import pandas as pd
import pytest

import flor_lib as flor

# A small script (no torch) that logs through nested loops and prints what it logged as JSON.
LOOPS = """
import json, sys
import flor_lib as flor

n = flor.arg("n", 3)
scale = flor.arg("scale", 1.0)

def out(name, value, **pos):
    print("REC " + json.dumps({"name": name, "pos": pos, "value": value}), flush=True)

for e in flor.loop("epoch", range(n)):
    for s in flor.loop("step", range(4)):
        out("loss", flor.log("loss", scale / (e * 4 + s + 1)), epoch=e, step=s)
    out("acc", flor.log("acc", 0.5 + e / 10), epoch=e)
out("final", flor.log("final", "done"))
"""


def parse_recs(stdout: str) -> list[dict]:
    return [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("REC ")]


def test_tutorial_records_equal_what_the_script_computed(repo, run_script, small_args, run_meta, git):
    # print the logged value exactly (repr) instead of the tutorial's 4 decimals
    src = (repo / "train.py").read_text()
    patched = src.replace("Loss: {flor.log('loss', loss.item()):.4f}", "Loss: {flor.log('loss', loss.item())!r}")
    assert patched != src, "examples/tutorial/train.py no longer prints the logged loss as expected"
    (repo / "train.py").write_text(patched)

    proc = run_script(repo, "--flor", "myFirstRun", *small_args, check=True)
    printed = [(int(e) - 1, int(s) - 1, float(v)) for e, s, v in
               re.findall(r"Epoch \[(\d+)/\d+\], Step \[(\d+)/\d+\], Loss: (\S+)", proc.stdout)]
    assert len(printed) == 2 * 4  # 47 steps per epoch at batch 32, a loss every 10 steps

    df = flor.dataframe("loss")
    assert list(df.columns[:7]) == ["projid", "runid", "tstamp", "vid", "epoch", "step", "loss"]
    assert {"hidden", "epochs", "batch_size", "lr"} <= set(df.columns)
    assert set(df["runid"]) == {"myFirstRun"}
    assert set(df["projid"]) == {"proj_main"}
    got = [(int(r.epoch), int(r.step), r.loss) for r in df.itertuples()]
    assert got == printed  # exact floats, in loop order
    assert (df["hidden"] == 32).all() and (df["epochs"] == 2).all()
    assert (df["batch_size"] == 32).all() and (df["lr"] == 1e-3).all()

    meta = run_meta("myFirstRun")
    assert meta["status"] == "completed"
    assert meta["filename"] == "train.py"
    assert meta["vid"] == df["vid"].iloc[0] == git(repo, "rev-parse", "flor.shadow")
    assert meta["args"] == {"hidden": 32, "epochs": 2, "batch_size": 32, "lr": 0.001}
    assert meta["python"] and meta["torch"] and meta["host"]
    assert meta["outer_iters"] == 2
    # the snapshot holds the code as it ran (the uncommitted patch), the user's branch does not
    assert git(repo, "show", f"{meta['vid']}:train.py") == patched.rstrip("\n")
    assert git(repo, "show", "HEAD:train.py") == src.rstrip("\n")


def test_tutorial_args_override_from_the_command_line(repo, run_script, run_meta):
    proc = run_script(repo, "--flor", "mySecondRun", "--hidden", "75", "--lr=0.01", "--epochs", "1",
                      "--unknown-word", "kept", check=True)
    assert "Epoch [1/1]" in proc.stdout
    meta = run_meta("mySecondRun")
    assert meta["args"] == {"hidden": 75, "epochs": 1, "batch_size": 32, "lr": 0.01}
    df = flor.dataframe("loss")
    assert len(df) == 4
    assert (df["hidden"] == 75).all() and (df["lr"] == 0.01).all()
    assert df["hidden"].dtype.kind == "i" and df["lr"].dtype.kind == "f"


def test_tutorial_bad_arg_type_is_a_one_line_error(repo, run_script):
    proc = run_script(repo, "--hidden", "abc")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--hidden" in lines[0] and "'abc'" in lines[0] and "int" in lines[0]
    assert "Epoch" not in proc.stdout


def test_bad_arg_type_does_not_leave_a_completed_run(repo, write_script, run_script, store):
    write_script(repo, "args.py", """
        import flor_lib as flor
        flor.log("x", 1)
        print(flor.arg("hidden", 5))
    """)
    proc = run_script(repo, "--flor", "badArg", "--hidden", "abc", script="args.py")
    assert proc.returncode == 2
    statuses = set(flor.dataframe()["status"]) if len(flor.dataframe()) else set()
    assert "completed" not in statuses


def test_values_and_positions_are_recorded_exactly(repo, write_script, run_script):
    write_script(repo, "loops.py", LOOPS)
    proc = run_script(repo, "--flor", "loops", "--n", "2", "--scale=3", script="loops.py", check=True)
    recs = parse_recs(proc.stdout)
    df = flor.dataframe("loss", "acc", "final")
    assert list(df.columns[:9]) == ["projid", "runid", "tstamp", "vid", "epoch", "step", "loss", "acc", "final"]
    assert {"n", "scale"} <= set(df.columns)
    assert (df["n"] == 2).all() and (df["scale"] == 3.0).all()
    loss = {(r["pos"]["epoch"], r["pos"]["step"]): r["value"] for r in recs if r["name"] == "loss"}
    got = {(int(r.epoch), int(r.step)): r.loss for r in df.itertuples() if not pd.isna(r.step)}
    assert got == loss
    acc = {r["pos"]["epoch"]: r["value"] for r in recs if r["name"] == "acc"}
    rows = df[df["step"].isna()]
    assert {int(r.epoch): r.acc for r in rows.itertuples()} == acc
    assert (df["final"] == "done").all()  # a run-level value repeats on every row of its run


TYPES = """
import json
import numpy as np
import torch
import flor_lib as flor

values = {
    "f": 0.1, "i": 7, "big": 2**62 + 1, "neg": -3, "b": True, "s": "héllo, wörld", "nan": float("nan"),
    "np32": np.float32(0.1), "np64": np.float64(2.5), "npi": np.int64(9), "npb": np.bool_(False),
    "t0": torch.tensor(1.25), "ti": torch.tensor(4),
}
for k, v in values.items():
    assert flor.log(k, v) is v  # returns its argument
print("EXPECT " + json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}))
for bad in ([1, 2], (1,), {"a": 1}, torch.ones(3), np.zeros(2), object(), b"bytes"):
    try:
        flor.log("bad", bad)
    except TypeError as exc:
        print("TYPEERROR", type(bad).__name__, str(exc).splitlines()[0])
    else:
        print("ACCEPTED", type(bad).__name__)
for name in ("my loss", "", "1st", "a" * 200):
    try:
        flor.log(name, 1)
    except ValueError as exc:
        print("VALUEERROR", repr(name)[:12], exc)
    else:
        print("ACCEPTED-NAME", name)
flor.log("after", 1)
"""


def test_log_types_and_errors(repo, write_script, run_script, run_meta):
    write_script(repo, "types.py", TYPES)
    proc = run_script(repo, "--flor", "types", script="types.py", check=True)
    assert "ACCEPTED" not in proc.stdout, proc.stdout
    assert proc.stdout.count("TYPEERROR") == 7
    assert "shape (3,)" in proc.stdout
    assert proc.stdout.count("VALUEERROR") == 4
    expect = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("EXPECT ")))
    recs = flor.sql("SELECT name, value, value_text, value_type FROM logs ORDER BY seq")
    by = {r.name: r for r in recs.itertuples()}
    assert "bad" not in by and by["after"].value == 1
    assert by["f"].value == 0.1 and by["f"].value_type == "float"
    assert by["big"].value_text == str(2**62 + 1) and by["big"].value_type == "int"
    assert by["s"].value_text == "héllo, wörld" and math.isnan(by["s"].value)
    assert by["b"].value == 1.0 and by["b"].value_type == "bool"
    assert math.isnan(by["nan"].value) and by["nan"].value_type == "float"
    assert by["np32"].value == expect["np32"] and by["np32"].value_type == "float"
    assert by["npi"].value_type == "int" and by["npb"].value_type == "bool"
    assert by["t0"].value == 1.25 and by["ti"].value_type == "int"
    df = flor.dataframe("big", "s", "b", "i", "np32")
    row = df.iloc[0]
    assert row["big"] == 2**62 + 1 and row["s"] == "héllo, wörld"
    assert bool(row["b"]) is True and not isinstance(row["b"], str)
    assert row["i"] == 7 and row["np32"] == expect["np32"]
    assert run_meta("types")["status"] == "completed"


def test_run_names_with_spaces_are_rejected_in_one_line(repo, write_script, run_script, store):
    write_script(repo, "loops.py", LOOPS)
    proc = run_script(repo, "--flor", "my run", script="loops.py")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line] == [
        line for line in proc.stderr.splitlines() if "'my run'" in line and "not allowed" in line]
    assert "REC" not in proc.stdout
    assert len(flor.dataframe()) == 0


def test_generated_run_name_and_duplicate_names(repo, write_script, run_script):
    write_script(repo, "loops.py", LOOPS)
    run_script(repo, "--n", "1", script="loops.py", check=True)
    run_script(repo, "--flor", "dup", "--n", "1", script="loops.py", check=True)
    proc = run_script(repo, "--flor", "dup", "--n", "1", script="loops.py", check=True)
    assert "'dup-2'" in proc.stderr
    runs = flor.dataframe()
    assert len(runs) == 3
    ids = list(runs["runid"])
    assert "dup" in ids and "dup-2" in ids
    generated = [r for r in ids if not r.startswith("dup")]
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", generated[0])
    assert set(runs["status"]) == {"completed"}


ARGS = """
import json, sys
import flor_lib as flor
vals = {
    "flag": flor.arg("flag", False), "off": flor.arg("off", True), "sizes": flor.arg("sizes", [1, 2]),
    "names": flor.arg("names", ["a"]), "rate": flor.arg("rate", 0.5), "count": flor.arg("count", 1),
    "label": flor.arg("label", "x"), "untyped": flor.arg("untyped"),
}
print("ARGS " + json.dumps(vals))
print("ARGV " + json.dumps(sys.argv[1:]))
"""


def test_cli_arg_casting_bool_list_and_leftover_words():
    from flor_lib import args as cli
    from flor_lib.errors import FlorError

    found = cli.parse_cli(["pos", "--flag", "--off=no", "--sizes", "3,4", "--rate", "-1e-3", "--x-y", "2"])
    assert found == {"flag": "true", "off": "no", "sizes": "3,4", "rate": "-1e-3", "x_y": "2"}
    assert cli.cast("flag", "true", False) is True and cli.cast("off", "no", True) is False
    assert cli.cast("sizes", "3,4", [1, 2]) == [3, 4]
    assert cli.cast("sizes", "[3, 4]", [1]) == [3, 4]
    assert cli.cast("sizes", "5 6", (1,)) == (5, 6)
    assert cli.cast("names", "['a b', 'c']", ["x"]) == ["a b", "c"]
    assert cli.cast("rate", "-1e-3", 0.5) == -0.001
    for name, text, default, expected in [("count", "1.5", 1, "int"), ("flag", "maybe", False, "bool"),
                                          ("sizes", "1,x", [1], "list of int"), ("rate", "fast", 0.1, "float")]:
        with pytest.raises(FlorError, match=rf"--{name} .*expected .*{expected}"):
            cli.cast(name, text, default)
    argv = ["train.py", "--flor", "r1", "--hidden", "3"]
    assert cli.take_flor_flags(argv) == {"name": "r1"} and argv == ["train.py", "--hidden", "3"]
    argv = ["train.py", "--flor=r2"]
    assert cli.take_flor_flags(argv) == {"name": "r2"} and argv == ["train.py"]


def test_bool_and_list_args_in_a_run(repo, write_script, run_script, run_meta):
    write_script(repo, "args.py", ARGS)
    proc = run_script(repo, "--flor", "argsRun", "--flag", "--off=0", "--sizes", "3,4,5", "--names", "p,q",
                      "--rate", "0.25", "--count=4", "--label", "hi there", "--untyped", "u", "--other", "7",
                      "positional", script="args.py", check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ARGS "))
    assert json.loads(line[5:]) == {"flag": True, "off": False, "sizes": [3, 4, 5], "names": ["p", "q"],
                                    "rate": 0.25, "count": 4, "label": "hi there", "untyped": "u"}
    argv = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("ARGV "))[5:])
    assert "--flor" not in argv and "--other" in argv and "positional" in argv  # unknown words left
    assert run_meta("argsRun")["args"]["sizes"] == [3, 4, 5]


def test_scalar_args_in_a_run_and_unknown_words_left_to_the_script(repo, write_script, run_script, run_meta):
    write_script(repo, "args.py", """
        import json, sys
        import flor_lib as flor
        vals = {"flag": flor.arg("flag", False), "off": flor.arg("off", True), "rate": flor.arg("rate", 0.5),
                "count": flor.arg("count", 1), "label": flor.arg("label", "x"), "untyped": flor.arg("untyped")}
        print("ARGS " + json.dumps(vals))
        print("ARGV " + json.dumps(sys.argv[1:]))
    """)
    proc = run_script(repo, "--flor", "argsRun", "--flag", "--off=0", "--rate", "0.25", "--count=4",
                      "--label", "hi there", "--untyped", "u", "--other", "7", "positional",
                      script="args.py", check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ARGS "))
    expected = {"flag": True, "off": False, "rate": 0.25, "count": 4, "label": "hi there", "untyped": "u"}
    assert json.loads(line[5:]) == expected
    argv = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("ARGV "))[5:])
    assert "--flor" not in argv and "argsRun" not in argv
    assert argv[-3:] == ["--other", "7", "positional"]
    assert run_meta("argsRun")["args"] == expected
    runs = flor.dataframe()
    assert runs.loc[0, "flag"] == True and runs.loc[0, "count"] == 4  # noqa: E712


def test_loop_over_a_generator_without_len(repo, write_script, run_script):
    write_script(repo, "gen.py", """
        import flor_lib as flor
        def batches():
            yield from ("a", "b", "c")
        for e in flor.loop("epoch", (i for i in range(2))):
            for s, item in flor.loop("step", enumerate(batches())):
                flor.log("item", item)
        print("DONE")
    """)
    proc = run_script(repo, "--flor", "gen", script="gen.py", check=True)
    assert "DONE" in proc.stdout
    df = flor.dataframe("item")
    assert [(int(r.epoch), int(r.step), r.item) for r in df.itertuples()] == [
        (e, s, x) for e in range(2) for s, x in enumerate("abc")]


def test_secret_looking_args_are_masked(repo, write_script, run_script, run_meta, store):
    write_script(repo, "secret.py", """
        import flor_lib as flor
        key = flor.arg("api_key", "none")
        tok = flor.arg("hf_token", "none")
        mt = flor.arg("max_tokens", 10)
        print("GOT", key, tok, mt)
        flor.log("x", 1.0)
    """)
    proc = run_script(repo, "--flor", "sec", "--api_key", "SUPERSECRET123", "--hf_token=HFSECRET456",
                      "--max_tokens", "20", script="secret.py", check=True)
    assert "GOT SUPERSECRET123 HFSECRET456 20" in proc.stdout  # the script gets the real values
    meta = run_meta("sec")
    assert meta["args"] == {"api_key": "***", "hf_token": "***", "max_tokens": 20}
    df = flor.dataframe("x")
    assert df.loc[0, "api_key"] == "***" and df.loc[0, "hf_token"] == "***" and df.loc[0, "max_tokens"] == 20
    assert "SUPERSECRET123" not in flor.sql("SELECT * FROM runs").to_string()


def test_secret_values_are_nowhere_in_the_store(repo, write_script, run_script, store):
    write_script(repo, "secret.py", """
        import flor_lib as flor
        flor.arg("api_key", "none")
        flor.log("x", 1.0)
    """)
    run_script(repo, "--flor", "sec", "--api_key", "SUPERSECRET123", script="secret.py", check=True)
    leaks = [str(p) for p in store.rglob("*") if p.is_file() and b"SUPERSECRET123" in p.read_bytes()]
    assert leaks == []


# --- lifecycle: crash, signals, exceptions ------------------------------------------------------

TICKER = """
import signal, sys, time
import flor_lib as flor
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when the test runs where SIGINT is ignored
for e in flor.loop("epoch", range(100000)):
    v = flor.log("tick", e * 1.5)
    print(f"LOGGED {e} {v!r} {time.time():.3f}", flush=True)
    time.sleep(0.05)
"""


def _read_until(proc, pattern: str, timeout: float = 60) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"{pattern!r} not seen; output: {''.join(lines)[-2000:]}")


def test_sigkill_mid_training_keeps_every_flushed_record(repo, write_script, popen_script, run_meta):
    write_script(repo, "ticker.py", TICKER)
    proc = popen_script(repo, "--flor", "killed", script="ticker.py", env={"FLOR_FLUSH_SECONDS": "0.2"})
    lines = _read_until(proc, r"^LOGGED 20 ")
    time.sleep(2.0)  # ten flush intervals
    kill_time = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    lines += proc.stdout.readlines()
    assert proc.returncode == -signal.SIGKILL
    logged = {}
    for line in lines:
        if line.startswith("LOGGED "):
            _, e, v, t = line.split()
            logged[int(e)] = (float(v), float(t))
    df = flor.dataframe("tick")
    stored = {int(r.epoch): r.tick for r in df.itertuples()}
    assert stored, "nothing readable after SIGKILL"
    # nothing invented, nothing torn: every stored record is one the script logged, with its value
    assert all(stored[e] == logged[e][0] for e in stored)
    # every record logged well before the kill (> 10 flush intervals) was durable
    old = {e for e, (_, t) in logged.items() if t < kill_time - 2.0}
    assert len(old) >= 20 and old <= set(stored), sorted(old - set(stored))[:10]
    assert sorted(stored) == list(range(len(stored)))  # a prefix of the run
    assert run_meta("killed")["status"] == "running"
    runs = flor.dataframe()
    assert runs.set_index("runid").loc["killed", "status"] == "running"
    assert flor.sql("SELECT status FROM runs WHERE runid = 'killed'")["status"].tolist() == ["running"]


@pytest.mark.parametrize("sig,status,code", [(signal.SIGTERM, "interrupted", 128 + 15),
                                             (signal.SIGINT, "interrupted", None)])
def test_signals_mark_the_run_interrupted_and_keep_its_records(repo, write_script, popen_script, run_meta,
                                                               sig, status, code):
    write_script(repo, "ticker.py", TICKER)
    proc = popen_script(repo, "--flor", "stopped", script="ticker.py")
    lines = _read_until(proc, r"^LOGGED 5 ")
    proc.send_signal(sig)
    rest = proc.stdout.read()
    proc.wait(60)
    if code is not None:
        assert proc.returncode == code
    else:
        assert proc.returncode != 0
    n = sum(1 for line in lines + rest.splitlines() if line.startswith("LOGGED "))
    meta = run_meta("stopped")
    assert meta["status"] == status and meta["end"]
    assert len(flor.dataframe("tick")) == n  # everything logged before the signal, flushed on exit


def test_exception_marks_the_run_failed(repo, write_script, run_script, run_meta):
    write_script(repo, "boom.py", """
        import flor_lib as flor
        for e in flor.loop("epoch", range(5)):
            flor.log("loss", 1.0 / (e + 1))
            if e == 2:
                raise RuntimeError("boom at epoch 2")
    """)
    proc = run_script(repo, "--flor", "boom", script="boom.py")
    assert proc.returncode == 1
    assert "RuntimeError: boom at epoch 2" in proc.stderr  # the user's traceback is kept
    meta = run_meta("boom")
    assert meta["status"] == "failed" and meta["end"]
    assert list(flor.dataframe("loss")["epoch"]) == [0, 1, 2]


def test_two_runs_of_one_repo_at_once_both_complete(repo, write_script, popen_script, run_meta, git):
    write_script(repo, "par.py", """
        import os, time
        import flor_lib as flor
        for e in flor.loop("epoch", range(15)):
            flor.log("pid", os.getpid())
            time.sleep(0.02)
        flor._run._vid_ready.wait(60)  # the snapshot thread is done: later edits are not in this vid
        print("VID-READY", flush=True)
    """, commit=True)
    a = popen_script(repo, "--flor", "runA", script="par.py", env={"FLOR_FLUSH_SECONDS": "0.1"})
    b = popen_script(repo, "--flor", "runB", script="par.py", env={"FLOR_FLUSH_SECONDS": "0.1"})
    outs = [p.communicate(timeout=120)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    ma, mb = run_meta("runA"), run_meta("runB")
    assert ma["status"] == mb["status"] == "completed"
    assert ma["vid"] and ma["vid"] == mb["vid"]  # identical trees share a vid even when racing
    df = flor.dataframe("pid")
    assert df.groupby("runid")["pid"].agg(["count", "nunique"]).to_dict("index") == {
        "runA": {"count": 15, "nunique": 1}, "runB": {"count": 15, "nunique": 1}}
    assert set(df[df.runid == "runA"]["pid"]) == {a.pid} and set(df[df.runid == "runB"]["pid"]) == {b.pid}

    # a third run on changed code while a fourth one is going: distinct vids, both complete
    c = popen_script(repo, "--flor", "runC", script="par.py")
    _read_until(c, "VID-READY", timeout=120)
    (repo / "notes.txt").write_text("changed while runs go\n")
    d = popen_script(repo, "--flor", "runD", script="par.py")
    for p in (c, d):
        p.communicate(timeout=120)
        assert p.returncode == 0
    mc, md = run_meta("runC"), run_meta("runD")
    assert mc["status"] == md["status"] == "completed"
    assert mc["vid"] != md["vid"]
    assert "notes.txt" in git(repo, "ls-tree", "--name-only", md["vid"])
    assert "notes.txt" not in git(repo, "ls-tree", "--name-only", mc["vid"])
    assert git(repo, "merge-base", "--is-ancestor", ma["vid"], "flor.shadow") == ""


# --- decorators and FlorDB spellings ------------------------------------------------------------

def test_logged_and_run_decorators(repo, write_script, run_script, run_meta):
    write_script(repo, "deco.py", """
        import sys
        import flor_lib as flor

        @flor.logged("acc")
        def evaluate(e):
            return e / 10

        @flor.run("nbRun")
        def main(fail=False):
            for e in flor.loop("epoch", range(3)):
                for s in flor.loop("step", range(2)):
                    flor.log("loss", float(e + s))
                evaluate(e)
            if fail:
                raise ValueError("bad main")
            return "ok"

        print("FIRST", main())
        print("SECOND", main())          # a notebook calling main() again: a new run
        try:
            main(fail=True)
        except ValueError:
            print("RAISED")
    """)
    proc = run_script(repo, script="deco.py", check=True)
    assert "FIRST ok" in proc.stdout and "SECOND ok" in proc.stdout and "RAISED" in proc.stdout
    runs = flor.dataframe().set_index("runid")
    assert dict(runs["status"]) == {"nbRun": "completed", "nbRun-2": "completed", "nbRun-3": "failed"}
    df = flor.dataframe("loss", "acc")
    first = df[df.runid == "nbRun"]
    acc = first[first["step"].isna()]
    assert [(int(r.epoch), r.acc) for r in acc.itertuples()] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert first["loss"].notna().sum() == 6
    assert run_meta("nbRun")["filename"] == "deco.py"


def test_flor_flag_overrides_the_run_decorator_name(repo, write_script, run_script):
    write_script(repo, "deco.py", """
        import flor_lib as flor

        @flor.run("fromDecorator")
        def main():
            flor.log("x", 1)

        main()
    """)
    run_script(repo, "--flor", "fromFlag", script="deco.py", check=True)
    assert list(flor.dataframe()["runid"]) == ["fromFlag"]


def test_mtk_aliases_name_unnamed_loops_epoch_and_step(repo, write_script, run_script, run_meta):
    write_script(repo, "mtk.py", """
        import flor_lib as flor
        from flor_lib import MTK as Flor

        state = {"w": 0}
        Flor.checkpoints(state)
        for epoch in Flor.loop(range(2)):
            for i in Flor.loop(range(3)):
                state["w"] += 1
                flor.log("loss", float(state["w"]))
        flor.commit()
        print("COMMITTED")
    """)
    proc = run_script(repo, "--flor", "mtk", script="mtk.py", check=True)
    assert "COMMITTED" in proc.stdout
    df = flor.dataframe("loss")
    assert list(df.columns[4:7]) == ["epoch", "step", "loss"]
    assert [(int(r.epoch), int(r.step), r.loss) for r in df.itertuples()] == [
        (e, s, float(e * 3 + s + 1)) for e in range(2) for s in range(3)]
    meta = run_meta("mtk")
    assert meta["status"] == "completed" and meta["checkpoints"]


def test_flor_flag_is_hidden_from_the_scripts_own_argparse(repo, write_script, run_script, run_meta):
    write_script(repo, "ap.py", """
        import argparse
        import flor_lib as flor

        parser = argparse.ArgumentParser()
        parser.add_argument("--data", default="d")
        opts = parser.parse_args()
        for e in flor.loop("epoch", range(2)):
            flor.log("loss", 1.0)
        print("DATA", opts.data)
    """)
    proc = run_script(repo, "--flor", "apRun", "--data", "x", script="ap.py")
    assert proc.returncode == 0, proc.stderr
    assert "DATA x" in proc.stdout and run_meta("apRun")["status"] == "completed"


def test_nonzero_sys_exit_is_not_completed(repo, write_script, run_script, run_meta):
    write_script(repo, "ex.py", """
        import sys
        import flor_lib as flor
        for e in flor.loop("epoch", range(2)):
            flor.log("loss", 1.0)
        sys.exit(3)
    """)
    proc = run_script(repo, "--flor", "exitRun", script="ex.py")
    assert proc.returncode == 3
    assert len(flor.dataframe("loss")) == 2
    assert run_meta("exitRun")["status"] != "completed"
