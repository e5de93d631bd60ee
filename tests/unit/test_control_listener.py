"""The control.model listener: a malformed event is skipped, an unexpected failure is logged and the
listener started again (it died silently, leaving the worker on the registry poll alone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_vae import hotswap
from stream_vae.testing import iid_topology


async def test_a_failing_listener_is_logged_and_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    stop = asyncio.Event()

    async def listen(*_: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("boom")
        stop.set()

    logged: list[str] = []
    monkeypatch.setattr(hotswap, "listen_control", listen)
    monkeypatch.setattr(hotswap.log, "error", lambda event, **kw: logged.append(event))
    await asyncio.wait_for(hotswap.supervise_control(None, iid_topology(), None, stop, backoff_s=(0.01,)), 5)
    assert calls == [0, 1] and logged == ["control_listener_failed"]
