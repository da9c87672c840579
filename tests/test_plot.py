"""`flor plot`: loss of two recorded runs to a PNG; x flattened across epochs."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from flor_flows.plot import flat_x


def test_flat_x_continues_across_epochs():
    df = pd.DataFrame({"runid": ["a"] * 4 + ["b"] * 2, "epoch": [0, 0, 1, 1, 0, 0],
                       "step": [9, 19, 9, 19, 9, 19]})
    assert flat_x(df, ["epoch", "step"]).tolist() == [9, 19, 29, 39, 9, 19]
    assert flat_x(df, ["step"]).tolist() == [9, 19, 9, 19, 9, 19]


def test_plot_loss_of_two_runs(repo, run_script, tmp_path):
    args = ["--epochs", "2", "--batch_size", "64", "--hidden", "32"]
    run_script(repo, "--flor", "a", *args, check=True)
    run_script(repo, "--flor", "b", *args, "--lr", "0.01", check=True)
    out = tmp_path / "plots" / "loss.png"
    proc = subprocess.run([sys.executable, "-m", "flor_flows.cli", "plot", "loss", "--by", "runid", "-o", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "flor_flows.cli", "plot", "nothing", "-o", str(tmp_path / "x.png")],
                         cwd=repo, capture_output=True, text=True, timeout=240)
    assert bad.returncode != 0 and "no values logged as 'nothing'" in bad.stderr
    assert not (tmp_path / "x.png").exists()
