"""The benchmark suite's smoke mode runs end to end, so the suite cannot rot (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_the_table(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out),
                           "--work", str(work)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = (out / "RESULTS.md").read_text()
    for section in ("Record overhead", "Per-call and fixed costs", "Checkpoints", "Queries", "Replay",
                    "Prefect flow"):
        assert f"### {section}" in results, section
    assert "| flor.log in a nested flor.loop: CPU µs per call" in results
    assert "| Measure | flor | baseline | FlorDB 4.0.1 |" in proc.stdout
    assert "error" not in [cell.strip() for line in results.splitlines() for cell in line.split("|")]
