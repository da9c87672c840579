"""Prefect plumbing shared by the flows: settings for processes flor owns, loggers, artifact keys."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

# A fresh embedded server migrates its SQLite database first: on 2 cores that can exceed Prefect's
# default 20 s start-up timeout. Server telemetry cannot reach the internet from most clusters.
_ENV_DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def prepare_env() -> None:
    """Set flor's Prefect defaults in this process's environment (before prefect is imported)."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def owned_process() -> Iterator[None]:
    """Settings for a process flor owns (the CLI, a notebook call): no flow heartbeat thread.

    Each flow run otherwise ends with about 1 s of heartbeat join; the env var does not disable it.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def call_flow(flow: Any, **params: Any) -> Any:
    """Run a flow in this process and return its final State (never raises for a failed run)."""
    prepare_env()
    with owned_process():
        return flow(**params, return_state=True)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger when inside a flow or task, else the 'flor' logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("flor")


def line_logger() -> Callable[[str], None]:
    """A callable that logs one line of a child's output to the current run's logs."""
    log = run_logger()

    def emit(line: str) -> None:
        if line.strip():
            log.info(line)

    return emit


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from free text."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
    return re.sub(r"-{2,}", "-", key).strip("-")[:120] or "flor"


def in_flow() -> bool:
    """Whether the caller runs inside a Prefect flow run."""
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def api_url() -> str | None:
    """The Prefect API this process talks to, or None for the embedded server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None
