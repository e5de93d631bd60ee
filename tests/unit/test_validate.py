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
        # a key that is an object, a list or a boolean became the Python text of it: "{'name': 'api'}", "True"
        (json.dumps({**GOOD, "k": {"name": "api"}}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "k": ["api"]}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "k": True}).encode(), "wrong_type"),
        (b'{"k": "e", "ts": 1, "a": NaN, "b": 1, "n": 1, "flag": false}', "non_finite"),
        (b'{"k": "e", "ts": 1, "a": Infinity, "b": 1, "n": 1, "flag": false}', "non_finite"),
        (json.dumps({**GOOD, "b": 11}).encode(), "out_of_range"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_records_are_rejected_with_reason(value: bytes | None, reason: str) -> None:
    """Each kind of bad input is rejected with its own reason code."""
    assert _one(value) == (0, [reason])


def test_a_numeric_key_is_its_text() -> None:
    ok, bad = Validator(TOPO).validate([RawRecord(json.dumps({**GOOD, "k": 42}).encode())])
    assert not bad and ok.keys == ["42"]


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


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # an integer literal of 400 digits: json parses it, float() overflows
        (b'{"k": "e", "ts": 1, "a": ' + b"1" * 400 + b', "b": 1, "n": 1, "flag": false}', "non_finite"),
        # 40 KB of nesting, under max_record_bytes: deeper than the JSON parser recurses
        (b'{"k": "e", "a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "invalid_json"),
    ],
)
def test_records_that_break_the_parser_are_rejected_not_raised(value: bytes, reason: str) -> None:
    """Inputs that raised OverflowError / RecursionError out of the validator (and so out of the
    worker's batch, again after each restart) are dead letters with a reason."""
    topo = TOPO.model_copy(update={"max_record_bytes": 65_536})
    ok, bad = Validator(topo).validate([RawRecord(value), RawRecord(json.dumps(GOOD).encode())])
    assert [r.reason for r in bad] == [reason] and len(ok) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # finite for Python, inf in the model's and the reservoir's float32 (a retrain then refused the data)
        (json.dumps({**GOOD, "a": 1e39}).encode(), "non_finite"),
        (json.dumps({**GOOD, "a": -1e39}).encode(), "non_finite"),
        # valid JSON, but no Unicode string: Redis and the alert's Kafka key could not encode it
        (b'{"k": "\\ud800", "ts": 1, "a": 1, "b": 1, "n": 1, "flag": false}', "wrong_type"),
        (b'{"k": "e", "ts": "\\udfff", "a": 1, "b": 1, "n": 1, "flag": false}', "wrong_type"),
    ],
)
def test_values_the_worker_cannot_hold_are_rejected(value: bytes, reason: str) -> None:
    """A value beyond float32 and a key or timestamp with a lone surrogate passed validation and then
    broke the worker further on (a UnicodeEncodeError ended the worker on the same record after every restart)."""
    ok, bad = Validator(TOPO).validate([RawRecord(value), RawRecord(json.dumps({**GOOD, "a": 3e38}).encode())])
    assert [r.reason for r in bad] == [reason] and len(ok) == 1


def test_binary_kafka_keys_stay_distinct() -> None:
    """Without key_field the entity is the Kafka key. Keys that are not UTF-8 (a serialised long:
    128 and 129) must not collapse into one entity, as they did with U+FFFD replacement."""
    topo = parse_topology({"name": "t", "input_topic": "in", "features": [{"name": "a"}]})
    recs = [RawRecord(b'{"a": 1}', n.to_bytes(8, "big")) for n in (128, 129, 128)]
    ok, _ = Validator(topo).validate(recs)
    assert ok.keys[0] == ok.keys[2] != ok.keys[1]


def test_an_unforeseen_error_on_one_record_rejects_that_record_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: whatever a record makes the validator raise, it becomes a dead letter
    ("unreadable", naming the error) and the rest of the batch is scored."""
    v = Validator(TOPO)
    real = v._one

    def fragile(rec: RawRecord) -> object:
        if rec.offset == 1:
            raise RuntimeError("boom")
        return real(rec)

    monkeypatch.setattr(v, "_one", fragile)
    ok, bad = v.validate([RawRecord(json.dumps(GOOD).encode(), offset=i) for i in range(3)])
    assert len(ok) == 2 and [(r.record.offset, r.reason) for r in bad] == [(1, "unreadable")]
    assert "RuntimeError: boom" in bad[0].detail


@pytest.mark.parametrize(("ts", "accepted"), [
    (5, True), (1.7e12, True), ("2026-11-24T10:00:00Z", True), (None, True),  # optional, passed through
    ({"a": 1}, False), ([1, 2], False), (True, False), ("x" * 65, False),
])
def test_the_timestamp_is_optional_but_never_an_object(ts: object, accepted: bool) -> None:
    """An object or a list as the timestamp landed in every alert as its event_time."""
    rec = {**GOOD, "ts": ts} if ts is not None else {k: v for k, v in GOOD.items() if k != "ts"}
    n_ok, reasons = _one(json.dumps(rec).encode())
    assert (n_ok, reasons) == ((1, []) if accepted else (0, ["wrong_type"]))


def test_extra_fields_are_dead_lettered_unless_the_topology_ignores_them() -> None:
    """Events that carry metadata (a region, a host) were all dead-lettered; extra_fields: ignore reads them."""
    value = json.dumps({**GOOD, "region": "eu-west-1", "meta": {"host": "a"}}).encode()
    assert _one(value) == (0, ["unknown_field"])
    lenient = TOPO.model_copy(update={"extra_fields": "ignore"})
    ok, bad = Validator(lenient).validate([RawRecord(value)])
    assert not bad and ok.X.tolist() == [[1.5, 2.0, 3.0, 1.0]] and ok.keys == ["e1"]
    missing = json.dumps({k: v for k, v in GOOD.items() if k != "a"} | {"region": "x"}).encode()
    assert [r.reason for r in Validator(lenient).validate([RawRecord(missing)])[1]] == ["missing_field"]
