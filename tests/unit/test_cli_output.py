"""How `stream-vae alerts` prints a message: dead letters with their reason, other streams' alerts left out."""

from __future__ import annotations

import json
from types import SimpleNamespace

from stream_vae.cli import _printable


def _msg(value: bytes | None, headers: list[tuple[str, bytes]] | None = None, key: bytes | None = None) -> object:
    return SimpleNamespace(value=value, headers=headers or [], key=key)


def test_a_dead_letter_is_printed_with_its_reason_and_source() -> None:
    m = _msg(b"{oops", [("stream-vae.stream", b"demo"), ("stream-vae.reason", b"invalid_json"),
                        ("stream-vae.detail", b"not valid JSON"), ("stream-vae.source.topic", b"records.demo"),
                        ("stream-vae.source.offset", b"41")], b"h\xff")
    assert json.loads(_printable(m, None) or "") == {
        "stream": "demo", "reason": "invalid_json", "detail": "not valid JSON",
        "source": {"topic": "records.demo", "offset": "41"}, "key": "h\\xff", "value": "{oops",
    }
    assert _printable(m, "demo") is not None and _printable(m, "pay") is None  # a shared dead-letter topic


def test_alerts_of_another_stream_are_left_out_when_a_stream_is_named() -> None:
    ours = json.dumps({"type": "io.stream-vae.anomaly", "data": {"stream": "pay"}}).encode()
    theirs = json.dumps({"type": "io.stream-vae.anomaly", "data": {"stream": "web"}}).encode()
    assert _printable(_msg(ours), "pay") == ours.decode()
    assert _printable(_msg(theirs), "pay") is None
    assert _printable(_msg(theirs), None) == theirs.decode()
    assert _printable(_msg(b"not json"), "pay") == "not json"


def test_models_verbs_announce_on_the_streams_own_control_topic(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`models activate vN --stream NAME` announced on the default control.model even when NAME's topology
    (found in STREAM_VAE_TOPOLOGY_DIR) names another topic; workers then waited for their registry poll."""
    import yaml

    from stream_vae.cli import _model_topic_of
    from stream_vae.config import Settings
    from stream_vae.testing import synth_topology

    topo = synth_topology("pay").model_copy(update={"control": synth_topology().control.model_copy(
        update={"model_topic": "pay.control.model"})})
    (tmp_path / "pay.yaml").write_text(yaml.safe_dump(topo.model_dump(mode="json", exclude_none=True)))
    s = Settings(topology_dir=str(tmp_path))
    assert _model_topic_of(s, "pay") == "pay.control.model"
    assert _model_topic_of(s, "other") == "control.model"
    assert _model_topic_of(Settings(topology_dir=str(tmp_path / "missing")), "pay") == "control.model"
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")  # another stream's file that does not parse
    assert _model_topic_of(s, "pay") == "pay.control.model"
