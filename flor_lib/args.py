"""Hyper-parameters from the script's command line: `--name value` or `--name=value`."""

from __future__ import annotations

import ast
import re
import sys

from flor_lib.errors import FlorError

# a name part (split at _ - . or a case change) that marks a secret: api_key, hfToken, DB_PASSWORD, aws_secret_x
_SECRET_PARTS = {"key", "apikey", "token", "authtoken", "accesstoken", "password", "passwd", "pwd", "secret",
                 "secrets", "credential", "credentials", "auth", "passphrase", "privatekey", "secretkey"}
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def take_flor_flags(argv: list[str]) -> dict[str, str]:
    """Remove flor's own flags (--flor NAME) from argv in place and return them."""
    flags = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--flor" and i + 1 < len(argv):
            flags["name"] = argv[i + 1]
            del argv[i : i + 2]
            continue
        if word.startswith("--flor="):
            flags["name"] = word.split("=", 1)[1]
            del argv[i]
            continue
        i += 1
    return flags


def parse_cli(argv: list[str]) -> dict[str, str]:
    """Every `--name value` / `--name=value` pair on the command line (other words are ignored)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and len(word) > 2:
            key = word[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                found[key.replace("-", "_")] = value
            elif i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                found[key.replace("-", "_")] = argv[i + 1]
                i += 1
            else:
                found[key.replace("-", "_")] = "true"
        i += 1
    return found


def cast(name: str, text: str, default: object) -> object:
    """Cast a command-line string to the type of the default, or raise a FlorError naming both."""
    kind = type(default)
    try:
        if default is None or kind is str:
            return text
        if kind is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind in (list, tuple):
            items = _list_items(text)
            if default:
                items = [cast(name, w, default[0]) for w in items]
            return kind(items)
    except (ValueError, FlorError):
        pass
    else:
        return kind(text)
    raise FlorError(f"--{name} {text!r}: expected {_type_name(default)} (the type of the default {default!r})")


def _list_items(text: str) -> list[str]:
    """The words of a list on the command line: `1,2,3`, `1 2 3`, `[1, 2]` or `['a', 'b']`."""
    stripped = text.strip()
    if stripped[:1] in "[(" and stripped:
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list | tuple):
            return [str(v) for v in parsed]
    return [w.strip("'\"") for w in re.split(r"[,\s]+", stripped.strip("[]()")) if w.strip("'\"")]


def _type_name(default: object) -> str:
    if isinstance(default, list | tuple):
        inner = _type_name(default[0]) if default else "str"
        return f"a comma-separated list of {inner}"
    return type(default).__name__


def is_secret(name: str) -> bool:
    """Whether an arg's name suggests it holds a secret that must not be stored (api_key, hf_token, ...)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    parts = [w for w in re.split(r"[_\-.:/]+", words) if w]
    joined = "".join(parts)
    return any(p in _SECRET_PARTS for p in parts) or any(
        joined.endswith(s) for s in ("apikey", "authtoken", "accesstoken", "secretkey", "privatekey", "password"))


def script_args() -> list[str]:
    """The script's own command-line words (after flor's flags were taken out)."""
    return sys.argv[1:]
