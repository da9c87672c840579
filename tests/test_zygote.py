"""Replay segments forked from a server that imported the script's libraries once behave like fresh processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from flor_lib.replay import zygote

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forking replay servers run on Linux only")


def _run(z: zygote.Zygote, script, *args, env=None, modules_out=""):
    child = z.spawn([str(script), *args], str(script.parent), {**os.environ, **(env or {})}, modules_out)
    out = child.stdout.read()
    child.stdout.close()
    return child.wait(timeout=60), out


@pytest.fixture
def server(tmp_path):
    z = zygote.Zygote(["json", "decimal", "localmod"], [str(tmp_path)], dict(os.environ))
    yield z
    z.close()


def test_imports_of_reads_top_level_imports_only():
    src = ("import os, json as j\nfrom torch import nn\nfrom . import rel\ntry:\n    import numpy\nexcept ImportError:\n"
           "    pass\ndef f():\n    import inside\n")
    assert zygote.imports_of(src) == ["os", "json", "torch", "numpy"]
    assert zygote.imports_of("def broken(:\n") == []


def test_a_forked_segment_runs_like_a_fresh_script(tmp_path, server):
    (tmp_path / "localmod.py").write_text("VERSION = 'v1'\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, os, random, json, decimal\nimport localmod\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'main': __name__, 'file': __file__,\n"
        "    'env': os.environ.get('SEGMENT'), 'local': localmod.VERSION, 'r': random.random(),\n"
        "    'path0': sys.path[0], 'flor': 'flor_lib' in sys.modules}))\n")
    assert server.usable
    code, out = _run(server, script, "--lr", "0.1", env={"SEGMENT": "a"})
    first = json.loads(out)
    assert code == 0
    assert first["argv"] == ["--lr", "0.1"] and first["main"] == "__main__" and first["env"] == "a"
    assert first["cwd"] == str(tmp_path) and first["path0"] == str(tmp_path) and first["file"] == str(script)
    assert first["local"] == "v1" and not first["flor"]
    # the user's own modules come from the segment's code version, never from the server
    (tmp_path / "localmod.py").write_text("VERSION = 'v2'\n")
    code, out = _run(server, script, env={"SEGMENT": "b"})
    second = json.loads(out)
    assert second["local"] == "v2" and second["env"] == "b"
    assert second["r"] != first["r"], "children of one server must not share an RNG state"


def test_exit_codes_errors_and_kills_come_back(tmp_path, server):
    script = tmp_path / "s.py"
    script.write_text("import sys, atexit\natexit.register(lambda: print('bye'))\nprint('hi')\nsys.exit(3)\n")
    assert _run(server, script) == (3, "hi\nbye\n")
    script.write_text("raise ValueError('boom')\n")
    code, out = _run(server, script)
    assert code == 1 and "ValueError: boom" in out and "Traceback" in out
    script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    child = server.spawn([str(script)], str(tmp_path), dict(os.environ), "")
    assert child.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL and time.monotonic() - t0 < 10
    child.stdout.close()
    script.write_text("print('still serving')\n")
    assert _run(server, script) == (0, "still serving\n")


def test_the_server_learns_late_imports_of_known_packages(tmp_path, server):
    script = tmp_path / "late.py"
    script.write_text("import json.tool\nimport xml.dom\n")
    modules = tmp_path / "mods.json"
    assert _run(server, script, modules_out=str(modules))[0] == 0
    assert "json.tool" in json.loads(modules.read_text())
    server.learn(modules)  # json is the script's package: its submodule is imported; xml is not
    script.write_text("import sys\nprint('json.tool' in sys.modules, 'xml.dom' in sys.modules)\n")
    assert _run(server, script) == (0, "True False\n")


def test_forking_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("FLOR_REPLAY_FORK", "0")
    assert zygote.POOL.acquire("r", ["json"], [], dict(os.environ)) is None


def test_late_imports_are_remembered_for_the_next_replays_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOR_CACHE_DIR", str(tmp_path / "cache"))
    script = tmp_path / "late.py"
    script.write_text("import json\nimport json.tool\n")
    first = zygote.Zygote(["json"], [str(tmp_path)], dict(os.environ))
    try:
        modules = tmp_path / "mods.json"
        assert _run(first, script, modules_out=str(modules))[0] == 0
        first.learn(modules)
    finally:
        first.close()
    assert "json.tool" in zygote.remembered(["json"]) and zygote.remembered(["decimal"]) == []
    second = zygote.Zygote(["json"], [str(tmp_path)], dict(os.environ))  # imports it before its first child
    try:
        script.write_text("import sys\nprint('json.tool' in sys.modules)\n")
        assert _run(second, script) == (0, "True\n")
    finally:
        second.close()


def test_pythonpath_stays_and_a_module_beside_the_script_wins_over_an_installed_one(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "helper_mod.py").write_text("WHO = 'pythonpath'\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "decimal.py").write_text("WHO = 'beside the script'\n")
    env = {**os.environ, "PYTHONPATH": str(extra)}
    z = zygote.Zygote(["decimal"], [str(work)], env)  # the server imports the installed decimal
    try:
        script = work / "s.py"
        script.write_text("import decimal, helper_mod\nprint(getattr(decimal, 'WHO', 'installed'), helper_mod.WHO)\n")
        assert _run(z, script, env=env) == (0, "beside the script pythonpath\n")
    finally:
        z.close()
    assert zygote.POOL.acquire("r", ["json"], [], {**os.environ, "PYTHONPATH": "src"}) is None  # relative: no fork
