"""Fast checks of the flows' building blocks: configs, GPU masks, child processes, worker stop, run ids."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from flor_flows import configs, process
from flor_flows.training import name_in_args, resolve_runid
from flor_flows.worker import Stopper, map_gpu, worker_command, worker_env
from flor_lib.errors import FlorError
from flor_lib.store import Store


def test_grid_is_a_cross_product_in_order():
    grid = configs.parse_grid(["hidden=100,200", "lr=1e-4,1e-3"])
    assert grid == {"hidden": ["100", "200"], "lr": ["1e-4", "1e-3"]}
    assert configs.cross_prod(**grid) == [{"hidden": "100", "lr": "1e-4"}, {"hidden": "100", "lr": "1e-3"},
                                          {"hidden": "200", "lr": "1e-4"}, {"hidden": "200", "lr": "1e-3"}]
    assert configs.to_argv({"hidden": 100, "lr": 0.001, "deep": True, "sizes": [1, 2]}) == [
        "--hidden", "100", "--lr", "0.001", "--deep", "true", "--sizes", "1,2"]
    for bad in (["hidden"], ["=1,2"], ["hidden="], ["a=1", "a=2"]):
        with pytest.raises(FlorError):
            configs.parse_grid(bad)


def test_explicit_configs_from_json_and_files(tmp_path):
    listing = tmp_path / "configs.json"
    listing.write_text(json.dumps([{"hidden": 1}, {"hidden": 2}]))
    lines = tmp_path / "configs.jsonl"
    lines.write_text('{"lr": 0.1}\n{"lr": 0.2}\n')
    assert configs.parse_configs(['{"hidden": 5}', f"@{listing}", f"@{lines}"]) == [
        {"hidden": 5}, {"hidden": 1}, {"hidden": 2}, {"lr": 0.1}, {"lr": 0.2}]
    with pytest.raises(FlorError, match="JSON object"):
        configs.parse_configs(["[1, 2]"])
    with pytest.raises(FlorError, match="cannot read"):
        configs.parse_configs([f"@{tmp_path / 'missing.json'}"])


def test_notebook_cross_prod_and_batch_inputs():
    import flor_lib as flor

    df = flor.cross_prod(hidden=[100, 200], lr=(1e-4, 1e-3))
    assert list(df.columns) == ["hidden", "lr"] and len(df) == 4
    rows = configs.normalize(df)
    assert rows[1] == {"hidden": 100, "lr": 1e-3} and type(rows[1]["hidden"]) is int
    assert configs.normalize({"a": [1, 2]}) == [{"a": 1}, {"a": 2}]
    with pytest.raises(FlorError):
        configs.normalize([])


def test_gpu_index_maps_through_the_visible_mask():
    assert map_gpu(0, None) == "0" and map_gpu(3, None) == "3"
    assert map_gpu(1, "2,3") == "3" and map_gpu(0, "GPU-abc, GPU-def") == "GPU-abc"
    with pytest.raises(FlorError, match="only 2 GPU"):
        map_gpu(2, "2,3")
    with pytest.raises(FlorError, match="empty"):
        map_gpu(0, "")
    env = worker_env(1, {"CUDA_VISIBLE_DEVICES": "4,5", "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["PATH"] == "/bin"
    assert worker_env(None, {"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == ""
    cmd = worker_command("flor-gpu", "w0")
    assert cmd[-9:] == ["start", "--pool", "flor-gpu", "--type", "process", "--limit", "1", "--name", "w0"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(pid, 0)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_launch_streams_lines_and_kills_the_whole_group_on_timeout(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "spawn.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("one", flush=True)
        print("two", flush=True)
        time.sleep(300)
    """))
    lines: list[str] = []
    t0 = time.monotonic()
    out = process.launch(process.python_command(script), on_line=lines.append, timeout=3, grace=2)
    assert time.monotonic() - t0 < 30
    assert out.timed_out and out.returncode != 0 and lines[:2] == ["one", "two"]
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the script's child survived"
    assert process.live_count() == 0


def test_launch_reports_exit_code_and_env(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text("import os, sys\nprint(os.environ['FLOR_X'])\nsys.exit(3)\n")
    lines: list[str] = []
    out = process.launch(process.python_command(script), env={"FLOR_X": "hello"}, on_line=lines.append)
    assert out.returncode == 3 and not out.timed_out and lines == ["hello"] and out.tail == ("hello",)


def test_worker_stopper_escalates_to_a_second_signal(tmp_path):
    # a stand-in for `prefect worker start`: the first SIGINT only asks it to wind down
    code = textwrap.dedent("""
        import signal, sys, time
        hits = []
        def on_int(*_):
            hits.append(1)
            print("got", len(hits), flush=True)
            if len(hits) == 2:
                sys.exit(0)
        signal.signal(signal.SIGINT, on_int)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    stopper = Stopper(proc, grace=1.0)
    t0 = time.monotonic()
    stopper.request(signal.SIGTERM, None)
    assert proc.wait(20) == 0
    assert 0.5 < time.monotonic() - t0 < 15
    assert proc.stdout.read().split() == ["got", "1", "got", "2"]


def test_resolve_runid_follows_the_librarys_suffixes(tmp_path):
    st = Store(str(tmp_path))
    for runid, pid in (("exp", 11), ("exp-2", 22)):
        st.write_json(st.run_meta_path("p", runid),
                      {"runid": runid, "attempts": [{"pid": pid, "host": socket.gethostname()}]})
    assert resolve_runid(st, "p", "exp", 22) == "exp-2"
    assert resolve_runid(st, "p", "exp", 11) == "exp"
    assert resolve_runid(st, "p", "exp", 33) is None
    assert name_in_args(["--lr", "1", "--flor", "mine"]) == "mine" and name_in_args(["--flor=x"]) == "x"
    assert name_in_args(["--hidden", "3"]) is None


def test_resume_takes_masked_secrets_anew():
    from flor_flows.recover import masked_args, resume_argv

    meta = {"runid": "tok", "argv": ["--lr", "0.1", "--api_token", "***", "--db_password=***"],
            "args": {"lr": 0.1}}
    assert masked_args(meta) == ["api_token", "db_password"]
    with pytest.raises(FlorError, match="api_token, db_password") as err:
        resume_argv(meta, [])
    assert "flor resume tok -- --api_token VALUE --db_password VALUE" in str(err.value)
    with pytest.raises(FlorError, match="db_password"):
        resume_argv(meta, ["--api_token", "T"])
    assert resume_argv(meta, ["--api_token", "T", "--db_password=P"]) == [
        "--lr", "0.1", "--api_token", "T", "--db_password=P"]
    assert resume_argv({"runid": "r", "argv": ["--hidden", "3"], "args": {"hidden": 3}}, []) == ["--hidden", "3"]
