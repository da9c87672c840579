"""Replay: re-run old versions of a training script with hindsight log statements."""
