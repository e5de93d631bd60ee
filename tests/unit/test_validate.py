"""Validation turns bytes into a feature matrix or a rejection with a reason, never an exception."""

from __future__ import annotations

import json

import pytest

from stream_vae.records import RawRecord
from stream_vae.topology import parse_topology
from stream_vae.validate import Validator

TOPO = parse_topology({
    "name": "t", "input_topic": "in", "key_field": "k", "timestamp_field": "ts", "max_record_bytes": 200,
    "features": [{"name": "a"}, {"name": "b", "min": 0, "max": 10}, {"name": "n", "type": "int"},
                 {"name": "flag", "type": "bool"}],
})
GOOD = {"k": "e1", "ts": 5, "a": 1.5, "b": 2, "n": 3, "flag": True}


def _one(value: bytes | None) -> tuple[int, list[str]]:
    ok, bad = Validator(TOPO).validate([RawRecord(value, None, "in", 1, 42)])
    return len(ok), [r.reason for r in bad]


def test_valid_record_becomes_a_row() -> None:
    """A conforming record yields its features in topology order, key and timestamp."""
    ok, bad = Validator(TOPO).validate([RawRecord(json.dumps(GOOD).encode())])
    assert not bad
    assert ok.X.tolist() == [[1.5, 2.0, 3.0, 1.0]]
    assert ok.keys == ["e1"] and ok.event_times == [5]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "invalid_json"),
        (b"[1, 2]", "not_object"),
        (None, "empty"),
        (b"x" * 300, "oversize"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "unknown_field"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "a"}).encode(), "missing_field"),
        (json.dumps({**GOOD, "a": None}).encode(), "missing_field"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "k"}).encode(), "missing_field"),
        (json.dumps({**GOOD, "a": "1.0"}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "a": True}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "n": 1.5}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "flag": 1}).encode(), "wrong_type"),
        (b'{"k": "e", "ts": 1, "a": NaN, "b": 1, "n": 1, "flag": false}', "non_finite"),
        (b'{"k": "e", "ts": 1, "a": Infinity, "b": 1, "n": 1, "flag": false}', "non_finite"),
        (json.dumps({**GOOD, "b": 11}).encode(), "out_of_range"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_records_are_rejected_with_reason(value: bytes | None, reason: str) -> None:
    """Each kind of bad input is rejected with its own reason code."""
    assert _one(value) == (0, [reason])


def test_rejection_keeps_origin() -> None:
    """A rejection carries the original bytes, topic, partition and offset."""
    _, bad = Validator(TOPO).validate([RawRecord(b"{", b"key", "in", 3, 99)])
    r = bad[0].record
    assert (r.value, r.key, r.topic, r.partition, r.offset) == (b"{", b"key", "in", 3, 99)


def test_mixed_batch_keeps_arrival_order() -> None:
    """Valid records keep their relative order when invalid ones are interleaved."""
    recs = [RawRecord(json.dumps({**GOOD, "a": float(i)}).encode(), offset=i) if i % 2 == 0
            else RawRecord(b"bad", offset=i) for i in range(10)]
    ok, bad = Validator(TOPO).validate(recs)
    assert ok.X[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [r.record.offset for r in bad] == [1, 3, 5, 7, 9]
