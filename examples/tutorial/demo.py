"""`make demo`: the FlorDB tutorial end to end, in a throwaway git repository.

1. makes a git repository in a temp dir with examples/tutorial/train.py committed,
2. records `python train.py --flor myFirstRun`,
3. records a second run with `--hidden 75` (through `flor run ... -- --hidden 75`, a Prefect flow on
   Prefect's embedded default, when the `flor` CLI is installed; directly otherwise),
4. prints `flor.dataframe("loss")`.

The store is ./demo-store in the project (FLOR_STORE overrides; it is emptied first when it is the
default one). Options: --epochs N (default: the script's 5), --keep (keep the temp repository).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent


def sh(cmd: list[str], cwd: Path, env: dict | None = None) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def flor_cli() -> list[str] | None:
    """The `flor` console script next to this Python, if it is installed and answers `flor run --help`."""
    exe = Path(sys.executable).with_name("flor")
    if not exe.exists():
        return None
    ok = subprocess.run([str(exe), "run", "--help"], capture_output=True).returncode == 0
    return [str(exe)] if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the script's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    opts = parser.parse_args()

    default_store = PROJECT / "demo-store"
    store = Path(os.environ.get("FLOR_STORE") or default_store).resolve()
    if store == default_store and store.exists():
        shutil.rmtree(store)
    env = {**os.environ, "FLOR_STORE": str(store), "PYTHONUNBUFFERED": "1"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")

    repo = Path(tempfile.mkdtemp(prefix="flor-demo-")) / "ml_tutorial"
    repo.mkdir()
    print(f"demo repository: {repo}\nstore: {store}")
    git = ["git", "-c", "user.name=flor demo", "-c", "user.email=demo@flor.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    shutil.copyfile(HERE / "train.py", repo / "train.py")
    (repo / ".gitignore").write_text("__pycache__/\n*.pt\n")
    subprocess.run([*git, "add", "train.py", ".gitignore"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the tutorial's training script"], cwd=repo, check=True)

    extra = ["--epochs", str(opts.epochs)] if opts.epochs else []
    try:
        sh([sys.executable, "train.py", "--flor", "myFirstRun", *extra], repo, env)
        cli = flor_cli()
        if cli:
            sh([*cli, "run", "train.py", "--name", "mySecondRun", "--", "--hidden", "75", *extra], repo, env)
        else:
            sh([sys.executable, "train.py", "--flor", "mySecondRun", "--hidden", "75", *extra], repo, env)

        os.environ["FLOR_STORE"] = str(store)
        import pandas as pd

        import flor_lib as flor

        df = flor.dataframe("loss")
        print('\n>>> flor.dataframe("loss")')
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 20):
            print(df.assign(vid=df["vid"].str[:8]))
        runs = flor.dataframe()
        print("\nruns:", ", ".join(f"{r.runid} ({r.status}, hidden={r.hidden})" for r in runs.itertuples()))
        if sorted(runs["runid"]) != ["myFirstRun", "mySecondRun"] or set(runs["status"]) != {"completed"}:
            print("demo: expected two completed runs", file=sys.stderr)
            return 1
        print(f"\nstore: {store}  (query it: FLOR_STORE={store} python -c "
              "'import flor_lib as flor; print(flor.dataframe(\"loss\"))')")
    finally:
        if not opts.keep:
            shutil.rmtree(repo.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
