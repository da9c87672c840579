"""Shared set-up for the replay and checkpoint tests: a repo whose train.py evolves over versions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tutorial" / "train.py"
FAST = ["--epochs", "3", "--hidden", "24", "--batch_size", "128"]

# hindsight statements, each RNG-neutral so a from-scratch run of the patched code is the ground truth
DEVICE = ('device = torch.device("cuda" if torch.cuda.is_available() else "cpu")\n',
          'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")\nflor.log("device", str(device))\n')
GRAD = ("        optimizer.step()\n",
        "        optimizer.step()\n"
        "        flor.log(\"grad_norm\", sum(p.grad.norm().item() ** 2 for p in model.parameters()) ** 0.5)\n")
VAL = ("# Test the model\n",
       "    with torch.no_grad():\n"
       "        flor.log(\"val_acc\", (model(x_all[1500:]).argmax(1) == y_all[1500:]).float().mean().item())\n"
       "\n# Test the model\n")
ACC = ('    print(f"Accuracy of', '    flor.log("accuracy", 100 * correct / total)\n    print(f"Accuracy of')


def git(repo: Path, *args: str) -> str:
    """Run git in repo with a fixed identity."""
    return subprocess.run(["git", "-c", "user.email=t@flor", "-c", "user.name=t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def make_repo(root: Path) -> Path:
    """A git repo holding the tutorial example as train.py (version 1)."""
    repo = root / "proj"
    repo.mkdir(parents=True)
    shutil.copy(EXAMPLE, repo / "train.py")
    (repo / ".gitignore").write_text("*.pth\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    return repo


def edit(repo: Path, *pairs: tuple[str, str], message: str = "edit") -> None:
    """Apply (old, new) text replacements to train.py and commit."""
    path = repo / "train.py"
    text = path.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    git(repo, "commit", "-qam", message)


def record(repo: Path, store: Path, name: str, *args: str, env: dict | None = None, check: bool = True):
    """Record one run of train.py as a subprocess."""
    full_env = {**os.environ, "FLOR_STORE": str(store), "FLOR_FLUSH_SECONDS": "0.2", **(env or {})}
    proc = subprocess.run([sys.executable, "train.py", "--flor", name, *args], cwd=repo, env=full_env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def snapshot_state(repo: Path) -> dict:
    """Bytes of everything a replay must leave alone: files, index, HEAD and branch refs."""
    out = {}
    for p in sorted(repo.rglob("*")):
        if p.is_file() and ".git/objects" not in str(p) and ".git/logs" not in str(p) \
                and "/.git/worktrees" not in str(p) and not p.name.endswith(".lock"):
            rel = str(p.relative_to(repo))
            if rel.startswith(".git/") and rel not in (".git/index", ".git/HEAD") and not rel.startswith(".git/refs/heads/main"):
                continue
            out[rel] = p.read_bytes()
    return out
