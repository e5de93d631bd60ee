"""structlog configured once: JSON lines in production, a console renderer for people."""

from __future__ import annotations

import logging
import sys
import time
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


class _Repeats(logging.Filter):
    """Lets a library's message through once per ``every_s`` (per logger, level and message template) and
    counts what it held back: aiokafka logs 'Unable connect to node' about 90 times a second while a broker
    is down, which buried every other line."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, record.levelno, str(record.msg)[:200]), time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        record.repeats_suppressed = int(seen[1]) if seen else 0
        if len(self._seen) > 1000:  # bounded: a library that puts data in its message templates
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


def _from_record(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if record is not None:
        event["logger"] = record.name
        if getattr(record, "repeats_suppressed", 0):
            event["repeats_suppressed"] = record.repeats_suppressed
    return event


_library_handler: list[logging.Handler] = []  # the one configure_logging made


def library_handler() -> logging.Handler | None:
    """The handler that renders stdlib logging (aiokafka, faust) like our own lines (None before
    :func:`configure_logging`); ``app.faust_logging`` gives it to faust, which replaces the root's handlers."""
    return _library_handler[0] if _library_handler else None


def configure_logging(*, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, faust) log through stdlib logging: the same format (one JSON object per line in
    # production: their plain-text lines broke log pipelines), quiet unless asked, repeats held back.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _from_record],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    handler.addFilter(_Repeats())
    root = logging.getLogger()
    for old in _library_handler:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(lvl, logging.WARNING))
    _library_handler[:] = [handler]
