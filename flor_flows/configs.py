"""Sweep configurations: grids (cross products of value lists), explicit lists, and script argv."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flor_lib.errors import FlorError


def cross_prod(**lists: Iterable[Any]) -> list[dict[str, Any]]:
    """Every combination of the given value lists, first name varying slowest (FlorDB's cross_prod)."""
    names = list(lists)
    pools = [list(v) if isinstance(v, list | tuple | range | set) else [v] for v in lists.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*pools)]


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """Parse `--grid name=v1,v2` options into {name: [v1, v2]} (values stay text: the script casts them)."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().lstrip("-")
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not name or not items:
            raise FlorError(f"--grid {spec!r}: expected NAME=V1,V2,... (e.g. --grid hidden=100,200)")
        if name in grid:
            raise FlorError(f"--grid {name} given twice: list all its values in one option")
        grid[name] = items
    return grid


def parse_configs(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Explicit configs: each a JSON object, or @FILE naming a JSON list of objects (or JSON lines)."""
    out: list[dict[str, Any]] = []
    for text in texts:
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            try:
                body = path.read_text()
            except OSError as exc:
                raise FlorError(f"--config {text}: cannot read {path} ({exc.strerror})") from exc
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                data = [_json_object(line, text) for line in body.splitlines() if line.strip()]
            items = data if isinstance(data, list) else [data]
        else:
            items = [_json_object(text, text)]
        for item in items:
            if not isinstance(item, dict):
                raise FlorError(f"--config {text}: each config must be a JSON object such as '{{\"hidden\": 100}}'")
            out.append(item)
    return out


def _json_object(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlorError(f"--config {where!r}: not JSON ({exc.msg}); write e.g. '{{\"hidden\": 100}}'") from exc


def to_argv(config: Mapping[str, Any]) -> list[str]:
    """A config as script flags: {'hidden': 100, 'lr': 1e-3} -> ['--hidden', '100', '--lr', '0.001']."""
    argv: list[str] = []
    for name, value in config.items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        argv += [f"--{name}", str(value)]
    return argv


def normalize(configs: Any) -> list[dict[str, Any]]:
    """Configs given as a list of dicts, a pandas DataFrame (FlorDB's cross_prod) or a dict of lists."""
    if hasattr(configs, "to_dict") and hasattr(configs, "columns"):
        return [{k: _plain(v) for k, v in row.items()} for row in configs.to_dict(orient="records")]
    if isinstance(configs, Mapping):
        return cross_prod(**configs)
    out = [dict(c) for c in configs]
    if not out:
        raise FlorError("a sweep needs at least one config (e.g. --grid hidden=100,200)")
    return out


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars from a DataFrame
    return item() if callable(item) else value


def describe(config: Mapping[str, Any]) -> str:
    """A config as one short label: hidden=100 lr=0.001."""
    return " ".join(f"{k}={v}" for k, v in config.items()) or "(defaults)"
