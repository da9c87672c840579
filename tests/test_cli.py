"""The `flor` command line: query commands on a recorded store, one-line errors, help, resume."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from flows_fixtures import FLOR, flor, flows_env, show

from flor_lib.store import Store

SUBCOMMANDS = ["run", "sweep", "replay", "worker", "status", "ls", "show", "dataframe", "sql", "resume", "sync",
               "plot"]


def test_query_commands_on_a_recorded_store(repo, store, run_script):
    for name, hidden in (("first", 8), ("second", 16)):
        run_script(repo, "--flor", name, "--epochs", "1", "--hidden", str(hidden), check=True)

    proc = flor("ls", "--json", cwd=repo)
    assert proc.returncode == 0, show(proc)
    runs = json.loads(proc.stdout)
    assert [r["runid"] for r in runs] == ["first", "second"]
    assert [r["args"]["hidden"] for r in runs] == [8, 16]
    assert all(r["status"] == "completed" and isinstance(r["metrics"]["loss"], float) for r in runs)
    assert all(len(r["vid"]) == 40 and r["duration_s"] > 0 for r in runs)

    table = flor("ls", cwd=repo)
    assert table.returncode == 0 and "first" in table.stdout and "hidden=16" in table.stdout, show(table)

    proc = flor("sql", "SELECT runid, count(*) AS n, max(value) AS top FROM logs WHERE name = 'loss' "
                "GROUP BY runid ORDER BY runid", "--json", cwd=repo)
    assert proc.returncode == 0, show(proc)
    rows = json.loads(proc.stdout)
    assert [r["runid"] for r in rows] == ["first", "second"] and all(r["n"] >= 4 for r in rows)

    proc = flor("dataframe", "loss", "--where", "hidden = 16", "--csv", cwd=repo)
    assert proc.returncode == 0, show(proc)
    df = pd.read_csv(io.StringIO(proc.stdout))
    assert set(df["runid"]) == {"second"} and {"epoch", "step", "loss", "hidden", "lr"} <= set(df.columns)
    assert df["loss"].notna().all() and len(df) >= 4
    last_loss = [r for r in runs if r["runid"] == "second"][0]["metrics"]["loss"]
    assert df["loss"].iloc[-1] == pytest.approx(last_loss)

    proc = flor("show", "second", "--json", cwd=repo)
    assert proc.returncode == 0, show(proc)
    item = json.loads(proc.stdout)
    assert item["args"]["hidden"] == 16 and item["checkpoints"] and item["metrics"]["loss"] == last_loss
    cost = item["attempts"][-1]["cost"]  # flor's own CPU, accounted where it ran
    assert {"start", "snapshot", "checkpoint_writer", "exit"} <= set(cost) and cost["records"] >= 4
    parts = [v for k, v in cost.items() if k not in ("total_s", "records", "iterations")]
    assert 0 < cost["total_s"] == pytest.approx(sum(parts), abs=1e-5)
    text = flor("show", "second", cwd=repo)
    assert text.returncode == 0 and "final metrics" in text.stdout and "checkpoints" in text.stdout, show(text)
    assert "flor's own CPU" in text.stdout and "checkpoint writer" in text.stdout, show(text)

    proc = flor("status", "--json", cwd=repo)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], show(proc)


def test_query_commands_do_not_import_prefect(repo, store):
    code = ("import sys\nfrom flor_flows.cli import main\nassert main(['ls', '--json']) == 0\n"
            "assert main(['status']) == 0\nassert 'prefect' not in sys.modules, 'prefect imported'\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=flows_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, show(proc)


@pytest.mark.parametrize("args, needle", [
    (["ls", "--bogus"], "No such option: --bogus"),
    (["show", "nosuchrun"], "no run named 'nosuchrun'"),
    (["sql", "DROP TABLE logs"], "read-only"),
    (["run", "missing.py"], "no such script: missing.py"),
    (["run", "train.py", "--hidden", "5"], "the script's own flags go after --"),
    (["sweep", "train.py"], "--grid"),
    (["sweep", "train.py", "--grid", "hidden"], "expected NAME=V1,V2"),
    (["sweep", "train.py", "--config", "{nope"], "not JSON"),
    (["worker"], "--gpu N or --cpu"),
    (["status", "nosuchsweep"], "no runs of sweep 'nosuchsweep'"),
    (["frobnicate"], "No such command"),
])
def test_bad_command_lines_give_one_line(repo, store, args, needle):
    proc = flor(*args, cwd=repo, timeout=120)
    assert proc.returncode not in (0, None), show(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flor: error: ") and needle in lines[0], show(proc)
    assert proc.stdout == ""


def test_flor_debug_shows_the_traceback(repo, store):
    proc = flor("show", "nosuchrun", cwd=repo, env=flows_env(FLOR_DEBUG="1"), timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FlorError" in proc.stderr, show(proc)


def test_every_subcommand_has_help_with_examples(repo):
    for sub in SUBCOMMANDS:
        proc = flor(sub, "--help", cwd=repo, timeout=120)
        assert proc.returncode == 0, show(proc)
        assert "Usage: flor " + sub in proc.stdout and "Example" in proc.stdout, (sub, proc.stdout)


def test_bash_completion_completes_subcommands_and_options(tmp_path):
    shim = tmp_path / "bin" / "flor"  # the completion function calls `flor` itself: it may not be installed here
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m flor_flows.cli "$@"\n')
    shim.chmod(0o755)
    env = flows_env(PATH=f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # typed in bash, as a user would: the shell is detected from the parent process, whatever ran the suite
    script = subprocess.run(["bash", "-c", "flor --show-completion; exit $?"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert script.returncode == 0 and "complete -o default -F _flor_completion flor" in script.stdout, show(script)
    (tmp_path / "flor.bash").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        """What bash offers for the last word, through the sourced script as a user's shell would run it."""
        line = (f"source flor.bash; COMP_WORDS=({' '.join(map(shlex.quote, words))}); "
                f"COMP_CWORD={len(words) - 1}; _flor_completion flor; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, show(proc)
        return proc.stdout.split()

    assert complete("flor", "re") == ["replay", "resume"]
    assert set(SUBCOMMANDS) <= set(complete("flor", ""))
    assert "--grid" in complete("flor", "sweep", "--gr")
    assert complete("flor", "nosuch") == []


def test_serve_is_flordb_spelling_of_worker(monkeypatch):
    import flor_flows.worker as worker
    from flor_lib.__main__ import main

    calls = []
    monkeypatch.setattr(worker, "run_worker", lambda **kw: calls.append(kw) or 0)
    assert main(["serve", "1"]) == 0
    assert main(["serve", "--pool", "mine"]) == 0
    assert calls[0]["gpu"] == 1 and calls[0]["pool"] is None
    assert calls[1]["gpu"] is None and calls[1]["pool"] == "mine"
    assert main(["serve", "gpu0"]) == 2


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_resume_continues_a_killed_run_from_its_version(repo, store, git):
    env = {**os.environ, "FLOR_EPSILON": "1"}  # checkpoint every epoch
    proc = subprocess.Popen([sys.executable, "train.py", "--flor", "killed", "--epochs", "4", "--hidden", "8"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    st = Store(str(store))

    def checkpointed() -> bool:
        metas = st.runs()
        return bool(metas and metas[0].get("checkpoints"))

    try:
        _wait_for(checkpointed, 180, "a first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    meta = st.find_run("killed")
    assert meta["status"] == "running" and meta.get("outer_iters") is None
    # the code moves on after the run: resume must use the run's own version, in the same project
    (repo / "train.py").write_text((repo / "train.py").read_text().replace("num_classes = 10", "num_classes = 11"))
    git(repo, "commit", "-qam", "change the model")

    listed = json.loads(flor("ls", "--json", cwd=repo).stdout)
    assert [r["status"] for r in listed] == ["interrupted"]  # its process is gone
    out = flor("resume", "killed", cwd=repo, env=flows_env(FLOR_EPSILON="1"), timeout=600)
    assert out.returncode == 0, show(out)
    assert "resuming from a worktree" in out.stderr
    meta = st.find_run("killed")
    assert meta["status"] == "completed" and len(meta["attempts"]) == 2 and meta["outer_iters"] == 4
    assert [m["runid"] for m in st.runs()] == ["killed"]  # same project, no new run
    assert "worktree" not in git(repo, "worktree", "list").split("\n", 1)[-1]  # the worktree is gone
    again = flor("resume", "killed", cwd=repo, timeout=120)
    assert again.returncode != 0 and "nothing to resume" in again.stderr


def test_module_entry_point_runs_the_cli(repo, store):
    proc = subprocess.run([sys.executable, "-m", "flor_lib", "ls", "--json"], cwd=repo, env=flows_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], show(proc)
    assert FLOR[-1] == "flor_flows.cli"
