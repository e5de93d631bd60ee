"""Library logs (aiokafka, faust) come out in our format: one JSON object per line, repeats held back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import faust
import pytest

from stream_vae.app import faust_logging
from stream_vae.logging import configure_logging, library_handler


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level


def test_a_library_error_is_one_json_line_and_its_repeats_are_counted_not_printed() -> None:
    """While a broker was down aiokafka wrote about 90 plain-text lines a second into the JSON log."""
    buf = io.StringIO()
    configure_logging(fmt="json", level="info", stream=buf)
    log = logging.getLogger("aiokafka")
    for _ in range(100):
        log.error("Unable connect to node with id %s: %s", 111, "Connect call failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert first["event"] == "Unable connect to node with id 111: Connect call failed"
    assert (first["level"], first["logger"]) == ("error", "aiokafka") and "timestamp" in first
    handler = library_handler()
    assert handler is not None
    handler.filters[0].every_s = 0.0  # type: ignore[attr-defined]  # the window has passed
    log.error("Unable connect to node with id %s: %s", 111, "Connect call failed")
    assert json.loads(buf.getvalue().splitlines()[1])["repeats_suppressed"] == 99
    logging.getLogger("faust").info("quiet unless asked")  # below WARNING: not shown
    assert len(buf.getvalue().splitlines()) == 2


def test_faust_keeps_our_handler_when_it_sets_up_logging() -> None:
    """faust.Worker cleared the root logger's handlers and installed its own '[time] [pid] [LEVEL]' format."""
    buf = io.StringIO()
    configure_logging(fmt="json", level="info", stream=buf)
    app = faust.App("logtest", broker="kafka://127.0.0.1:1", **faust_logging())
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)  # as run_app does
    worker.spinner = None
    worker._setup_logging()
    logging.getLogger("faust.transport").warning("Heartbeat failed for group %s", "g")
    assert [json.loads(line)["event"] for line in buf.getvalue().splitlines()] == ["Heartbeat failed for group g"]
    ours = [h for h in logging.getLogger().handlers if not type(h).__module__.startswith("_pytest")]
    assert ours == [library_handler()]  # no faust handler beside it


def test_overlapping_quiet_client_starts_leave_the_kafka_client_audible() -> None:
    """Two client starts overlapping (each hides aiokafka's first-connection error) restored each other's
    level in the wrong order and left aiokafka silenced for the life of the process."""
    from stream_vae.kafka import _quiet

    logger = logging.getLogger("aiokafka")
    before = logger.level
    a, b = _quiet(), _quiet()
    a.__enter__()
    b.__enter__()
    assert logger.level == logging.CRITICAL
    a.__exit__(None, None, None)
    assert logger.level == logging.CRITICAL  # b still starting
    b.__exit__(None, None, None)
    assert logger.level == before
