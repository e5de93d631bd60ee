"""structlog configured once: JSON lines in production, a console renderer for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("password", "secret", "token", "sasl_password", "signing_key")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line, whatever a caller binds."""
    for k in list(event):
        if any(s in k.lower() for s in _SECRET_KEYS):
            event[k] = "***"
    return event


def configure_logging(*, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, faust) log through stdlib logging: keep them quiet unless asked.
    logging.basicConfig(
        level=max(lvl, logging.WARNING), stream=stream or sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
