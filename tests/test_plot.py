"""`flor plot`: loss of two recorded runs to a PNG; x flattened across epochs; the flows' embedded figure."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from flows_fixtures import PNG, png_of

from flor_flows.plot import flat_x, markdown_png, runs_png, runs_where
from flor_lib.store import Store


def test_flat_x_continues_across_epochs():
    df = pd.DataFrame({"runid": ["a"] * 4 + ["b"] * 2, "epoch": [0, 0, 1, 1, 0, 0],
                       "step": [9, 19, 9, 19, 9, 19]})
    assert flat_x(df, ["epoch", "step"]).tolist() == [9, 19, 29, 39, 9, 19]
    assert flat_x(df, ["step"]).tolist() == [9, 19, 9, 19, 9, 19]


def test_runs_where_quotes_names():
    assert runs_where([("p", "it's")]) == "(projid = 'p' AND runid = 'it''s')"
    assert runs_where([]) == "FALSE"


def test_plot_loss_of_two_runs(repo, run_script, tmp_path, store):
    args = ["--epochs", "2", "--batch_size", "64", "--hidden", "32"]
    run_script(repo, "--flor", "a", *args, check=True)
    run_script(repo, "--flor", "b", *args, "--lr", "0.01", check=True)
    out = tmp_path / "plots" / "loss.png"
    proc = subprocess.run([sys.executable, "-m", "flor_flows.cli", "plot", "loss", "--by", "runid", "-o", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == PNG
    bad = subprocess.run([sys.executable, "-m", "flor_flows.cli", "plot", "nothing", "-o", str(tmp_path / "x.png")],
                         cwd=repo, capture_output=True, text=True, timeout=240)
    assert bad.returncode != 0 and "no values logged as 'nothing'" in bad.stderr
    assert not (tmp_path / "x.png").exists()

    # the figure a sweep or replay flow embeds: only the given runs, names with no numbers left out
    st = Store(str(store))
    keys = [(m["projid"], m["runid"]) for m in st.runs()]
    assert sorted(r for _, r in keys) == ["a", "b"]
    png = runs_png(["loss", "nothing"], keys, store=st)
    assert png is not None and png[:8] == PNG and 1000 < len(png) < 200_000
    assert png_of(markdown_png(png, "loss per run")) == png
    assert runs_png(["nothing"], keys, store=st) is None
    assert runs_png(["loss"], [(keys[0][0], "nosuchrun")], store=st) is None
