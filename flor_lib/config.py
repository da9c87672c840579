"""Settings read from the environment, each with the default a user would expect."""

from __future__ import annotations

import os
from pathlib import Path


def store_root() -> str:
    """The fsspec URL or path of the store (FLOR_STORE, default ~/.flor)."""
    return os.environ.get("FLOR_STORE") or str(Path.home() / ".flor")


def epsilon() -> float:
    """Share of training time checkpointing may cost (FLOR_EPSILON, default 0.03).

    FlorDB's 1/15 spends up to 6.7% of training on checkpoints. 3% of the training's wall or CPU time
    (checkpoint.Policy) still checkpoints every epoch of the tutorial, even over 2500 epochs, which is
    what makes replaying a per-epoch statement a restore per epoch; 1.5% left a fifth of them out.
    """
    return float(os.environ.get("FLOR_EPSILON", 0.03))


def flush_seconds() -> float:
    """Longest time a logged record waits in memory before it is written (FLOR_FLUSH_SECONDS)."""
    return float(os.environ.get("FLOR_FLUSH_SECONDS", 2.0))


def max_snapshot_bytes() -> int:
    """Files larger than this are left out of code snapshots (FLOR_MAX_FILE_MB, default 10)."""
    return int(float(os.environ.get("FLOR_MAX_FILE_MB", 10)) * 1024 * 1024)


def shadow_branch() -> str:
    """The git branch that holds code snapshots (FLOR_SHADOW_BRANCH, default flor.shadow)."""
    return os.environ.get("FLOR_SHADOW_BRANCH", "flor.shadow")


def debug() -> bool:
    """Whether to show full tracebacks for user errors (FLOR_DEBUG=1)."""
    return os.environ.get("FLOR_DEBUG", "") not in ("", "0", "false")


def store_secrets() -> bool:
    """Whether args whose names look like secrets are stored unmasked (FLOR_STORE_SECRETS=1)."""
    return os.environ.get("FLOR_STORE_SECRETS", "") not in ("", "0", "false")
