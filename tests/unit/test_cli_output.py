"""How `stream-vae alerts` prints a message: dead letters with their reason, other streams' alerts left out."""

from __future__ import annotations

import json
from types import SimpleNamespace

from stream_vae.cli import _printable


def _msg(value: bytes | None, headers: list[tuple[str, bytes]] | None = None, key: bytes | None = None) -> object:
    return SimpleNamespace(value=value, headers=headers or [], key=key)


def test_a_dead_letter_is_printed_with_its_reason_and_source() -> None:
    m = _msg(b"{oops", [("stream-vae.reason", b"invalid_json"), ("stream-vae.detail", b"not valid JSON"),
                        ("stream-vae.source.topic", b"records.demo"), ("stream-vae.source.offset", b"41")], b"h\xff")
    assert json.loads(_printable(m, None) or "") == {
        "reason": "invalid_json", "detail": "not valid JSON", "source": {"topic": "records.demo", "offset": "41"},
        "key": "h\\xff", "value": "{oops",
    }


def test_alerts_of_another_stream_are_left_out_when_a_stream_is_named() -> None:
    ours = json.dumps({"type": "io.stream-vae.anomaly", "data": {"stream": "pay"}}).encode()
    theirs = json.dumps({"type": "io.stream-vae.anomaly", "data": {"stream": "web"}}).encode()
    assert _printable(_msg(ours), "pay") == ours.decode()
    assert _printable(_msg(theirs), "pay") is None
    assert _printable(_msg(theirs), None) == theirs.decode()
    assert _printable(_msg(b"not json"), "pay") == "not json"
