"""The training scripts the suite records and replays: the tutorial example, or (--quick) a torch-free mini."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import TUTORIAL, WORKLOADS, BenchError
from suite import Ctx

LEVELS = {"after": "statement after training", "epoch": "per-epoch statement (after the nested loop)",
          "inner": "statement in the inner loop"}


@dataclass
class Script:
    """A training script, its benchmark args, and where each level's hindsight statement goes."""

    label: str
    path: Path
    args: dict
    steps_per_epoch: int
    statements: dict[str, tuple[str, str, str]]  # level -> (name, anchor text, replacement)
    checkpoints: bool  # registers state with flor.checkpoints
    target: str = ""  # the overhead target this workload checks

    @property
    def source(self) -> str:
        return self.path.read_text()

    def patched(self, levels: tuple[str, ...] | None = None) -> str:
        """The script with each level's statement added (RNG-neutral, as in tests/replay_story.py)."""
        src = self.source
        for level, (_, old, new) in self.statements.items():
            if levels is not None and level not in levels:
                continue
            if old not in src:
                raise BenchError(f"{self.path.name} changed: no place for a hindsight statement at {old.strip()!r}")
            src = src.replace(old, new, 1)
        return src

    def per_run(self) -> dict[str, int]:
        """How many values each level's statement logs in one run."""
        e = self.args["epochs"]
        return {"after": 1, "epoch": e, "inner": e * self.steps_per_epoch}

    def describe(self) -> str:
        return f"{self.label} ({', '.join(f'{k}={v}' for k, v in self.args.items())})"


TUTORIAL_STATEMENTS = {
    "after": ("accuracy", '    print(f"Accuracy of',
              '    flor.log("accuracy", 100 * correct / total)\n    print(f"Accuracy of'),
    "epoch": ("val_acc", "# Test the model\n",  # no new block around it: FlorDB cannot anchor one
              '    flor.log("val_acc", (model(x_all[1500:]).argmax(1) == y_all[1500:]).float().mean().item())\n'
              "\n# Test the model\n"),
    "inner": ("grad_norm", "        optimizer.step()\n",
              "        optimizer.step()\n"
              '        flor.log("grad_norm", sum(p.grad.norm().item() ** 2 for p in model.parameters()) ** 0.5)\n'),
}
MINI_STATEMENTS = {
    "after": ("accuracy", '    print(f"Accuracy of',
              '    flor.log("accuracy", 100 * correct / total)\n    print(f"Accuracy of'),
    "epoch": ("val_acc", "# Test the model\n", '    flor.log("val_acc", sum(weights) / hidden)\n\n# Test the model\n'),
    "inner": ("grad_norm", "            weights[j] -= lr * grad[j]\n",
              "            weights[j] -= lr * grad[j]\n"
              '        flor.log("grad_norm", sum(g * g for g in grad) ** 0.5)\n'),
}


def tutorial(epochs: int) -> Script:
    return Script("tutorial", TUTORIAL, {"epochs": epochs}, -(-1500 // 32), TUTORIAL_STATEMENTS, True,
                  "flor < +2% CPU")


def mini() -> Script:
    return Script("mini (torch-free)", WORKLOADS / "mini_train.py", {"epochs": 3, "steps": 20}, 20,
                  MINI_STATEMENTS, False, "fixed cost of a run")


def for_overhead(ctx: Ctx) -> list[Script]:
    """The tutorial with ~5 s of training per run (the rest is importing torch and scikit-learn), and the
    torch-free mini, whose run is nearly all flor's fixed per-run cost (snapshot, spool, compaction)."""
    return [mini()] if ctx.quick else [tutorial(40), mini()]


def for_replay(ctx: Ctx) -> Script:
    if ctx.quick:
        tutorial(1).patched()  # the tutorial's anchors still exist (cheap check without running it)
        return mini()
    return tutorial(30)
