"""User-facing errors: one line that says what to do, a traceback only with FLOR_DEBUG=1."""

from __future__ import annotations

import sys
from typing import NoReturn

from flor_lib import config


class FlorError(Exception):
    """An error caused by input or environment, explained in one line."""

    exit_code = 2


def exit_with(error: FlorError) -> NoReturn:
    """Print a FlorError as one line and exit, or re-raise it under FLOR_DEBUG."""
    if config.debug():
        raise error
    print(f"flor: error: {error}", file=sys.stderr)
    raise SystemExit(error.exit_code)


def warn(message: str) -> None:
    """Print a one-line warning to stderr."""
    print(f"flor: warning: {message}", file=sys.stderr)
