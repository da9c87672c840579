"""The README's tutorial walk-through, run as written: the README cannot drift from the code.

Every fenced block preceded by a `<!-- test -->` line is run, in README order, as one bash script in
a temporary directory that holds `examples/tutorial/train.py` (so the README's
`cp ../examples/tutorial/train.py .` works): ```bash blocks as they are, ```python blocks through
`python -`, and a ```diff block marked `<!-- test: git apply -->` through `git apply`. The only
difference from a reader's run: the copied script's defaults are `epochs=1`, `batch_size=128`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TUTORIAL
from flows_fixtures import flows_env

README = ROOT / "README.md"
SMALL = (('flor.arg("epochs", 5)', 'flor.arg("epochs", 1)'),
         ('flor.arg("batch_size", 32)', 'flor.arg("batch_size", 128)'))


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """(marker, language, body) of every fenced block right after a `<!-- test ... -->` line."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        marker = re.fullmatch(r"<!-- (test(?:: [a-z ]+)?) -->", lines[i].strip())
        if marker and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            lang, j = lines[i + 1][3:].strip(), i + 2
            while not lines[j].startswith("```"):
                j += 1
            blocks.append((marker.group(1), lang, "\n".join(lines[i + 2:j])))
            i = j
        i += 1
    return blocks


def as_shell(marker: str, lang: str, body: str) -> str:
    if marker == "test: git apply":
        return f"git apply <<'FLOR_README_EOF'\n{body}\nFLOR_README_EOF"
    if lang == "python":
        return f"python - <<'FLOR_README_EOF'\n{body}\nFLOR_README_EOF"
    assert lang == "bash", f"cannot run a marked ```{lang} block"
    return body


def test_readme_tutorial_walkthrough(tmp_path, store):
    blocks = readme_blocks(README.read_text())
    langs = [lang for _, lang, _ in blocks]
    assert len(blocks) >= 10 and {"bash", "python", "diff"} <= set(langs), blocks

    work = tmp_path / "work"
    (work / "examples" / "tutorial").mkdir(parents=True)
    source = TUTORIAL.read_text()
    for old, new in SMALL:
        assert old in source, f"tutorial default changed: {old}"
        source = source.replace(old, new)
    (work / "examples" / "tutorial" / "train.py").write_text(source)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = README\n\temail = readme@example.com\n[init]\n\tdefaultBranch = main\n")

    script = "set -eux\n" + "\n".join(as_shell(*b) for b in blocks) + "\n"
    (tmp_path / "readme.sh").write_text(script)
    env = flows_env(FLOR_STORE=str(store), GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1",
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    PREFECT_LOGGING_LEVEL="WARNING", COLUMNS="200")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, (f"README walk-through failed (exit {proc.returncode}) after "
                                  f"{time.monotonic() - start:.0f}s\n--- stdout\n{out[-4000:]}\n"
                                  f"--- stderr (set -x shows the command)\n{proc.stderr[-6000:]}")

    # what each step should have shown
    assert "myFirstRun" in out and "mySecondRun" in out
    assert out.count("completed") >= 4                                # the sweep's members
    assert "device (outside), accuracy (outside)" in out              # the dry run's plan
    assert "backfilled" in out                                        # the replay's summary
    tail = out[out.rindex("device"):]                                 # the last block: the backfilled view
    assert "cpu" in tail or "cuda" in tail, tail
    assert (work / "ml_tutorial" / "loss.png").stat().st_size > 1000      # flor plot
    # the replay picked lr = 0.001 only: myFirstRun and mySecondRun and two sweep members
    final = subprocess.run([sys.executable, "-m", "flor_flows.cli", "sql",
                            "SELECT count(DISTINCT runid) AS n FROM logs WHERE name = 'accuracy'"],
                           cwd=work / "ml_tutorial", env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert re.search(r"\b4\b", final.stdout), final.stdout
