"""FlorDB 4.0.1 as a comparison column: its own venv, and its spellings of what flor spells differently.

flor                                    FlorDB 4.0.1
import flor_lib as flor                 import flordb as flor
python train.py --flor NAME --lr 0.1    python train.py --kwargs lr=0.1   (no run names)
flor.checkpoints(model, opt)            nothing (4.x has no checkpoints; flor.checkpoints lists files)
flor_lib.replay.engine.replay(names)    echo y | python -m flordb replay --apply NAMES
flor.sql(q) over logs(name, value)      flor.query(q) over sqlite logs(value_name, value TEXT)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from common import WORK, BenchError, git, run_child

VERSION = "4.0.1"
VENV = WORK / "flordb-venv"
REQUIREMENTS = [f"flordb=={VERSION}", "torch==2.13.0", "scikit-learn"]


def python() -> Path:
    return VENV / "bin" / "python"


def _installed() -> bool:
    if not python().exists():
        return False
    probe = subprocess.run([str(python()), "-c", "import importlib.metadata as m, torch, sklearn; "
                            "print(m.version('flordb'))"], capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == VERSION


def ensure(log=print) -> tuple[Path | None, str]:
    """(python of a venv with FlorDB, '') or (None, why it could not be set up)."""
    if _installed():
        return python(), ""
    log(f"setting up FlorDB {VERSION} in {VENV} (pip; a few minutes the first time)")
    try:
        VENV.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        made = subprocess.run([base, "-m", "venv", "--clear", str(VENV)], capture_output=True, text=True,
                              timeout=300)
        if made.returncode != 0:
            return None, f"venv failed: {made.stderr.strip().splitlines()[-1:]}"
        pip = subprocess.run([str(python()), "-m", "pip", "install", "-q", *REQUIREMENTS], capture_output=True,
                             text=True, timeout=1200)
        if pip.returncode != 0:
            errors = [ln for ln in pip.stderr.splitlines() if ln.startswith("ERROR")] or pip.stderr.splitlines()
            return None, f"pip install {' '.join(REQUIREMENTS)} failed: {' '.join(errors[-2:])[:200]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"install failed ({exc.__class__.__name__}: {str(exc)[:120]})"
    if not _installed():
        return None, "installed, but `import flordb, torch, sklearn` fails in its venv"
    return python(), ""


def env(base: dict) -> dict:
    """FlorDB's replay runs a bare `python`: its venv must come first on PATH."""
    out = dict(base)
    out["PATH"] = f"{VENV / 'bin'}{os.pathsep}{base.get('PATH', '')}"
    out.pop("VIRTUAL_ENV", None)
    return out


def adapt_script(source: str) -> str:
    """A flor_lib training script in FlorDB 4.0.1 spellings (same computation, same logs)."""
    out = re.sub(r"^import flor_lib as flor$", "import flordb as flor", source, flags=re.M)
    out = re.sub(r"^(\s*)flor\.checkpoints\(.*\)$", r"\1pass  # FlorDB 4.x has no checkpoints", out, flags=re.M)
    if "import flordb as flor" not in out:
        raise BenchError("could not adapt the script for FlorDB: no `import flor_lib as flor` line")
    return out


def cli_args(args: dict) -> list[str]:
    """`--kwargs k=v ...` (FlorDB) for what flor spells `--k v`."""
    return ["--kwargs", *[f"{k}={v}" for k, v in args.items()]] if args else []


def flor_cli_args(args: dict) -> list[str]:
    """`--k v ...` (flor and the plain stub)."""
    return [w for k, v in args.items() for w in (f"--{k}", str(v))]


def replay(repo: Path, names: list[str], base_env: dict, iters: list[str] = (), timeout: float = 900):
    """Run FlorDB's replay orchestrator (it commits the edited script itself and prompts for y/N)."""
    cmd = [str(python()), "-m", "flordb", "replay", "--apply", ",".join(names)]
    for spec in iters:
        cmd += ["--iter", spec]
    child = run_child(cmd, cwd=repo, env=env(base_env), stdin="y\n", timeout=timeout, check=False)
    text = child.out + child.err
    if child.rc != 0 or "Traceback" in text:
        tail = " | ".join(text.strip().splitlines()[-3:])[:300]
        raise BenchError(f"FlorDB replay --apply {','.join(names)} failed (exit {child.rc}): {tail}")
    return child


def reset_repo(repo: Path) -> None:
    """Undo what a FlorDB replay left in a scratch repo (it checks versions out in place)."""
    git(repo, "reset", "-q", "--hard")


def count_rows(repo: Path, name: str, source: str = "replay") -> int:
    """How many rows FlorDB holds for a value name and source."""
    code = ("import sqlite3, glob, json; c = sqlite3.connect(glob.glob('.flor/*.db')[0]); "
            f"print(json.dumps(c.execute(\"SELECT COUNT(*) FROM logs WHERE value_name=? AND source=?\", "
            f"({name!r}, {source!r})).fetchone()[0]))")
    proc = subprocess.run([str(python()), "-c", code], cwd=repo, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else -1
