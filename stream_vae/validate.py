"""validate: raw Kafka bytes -> typed feature matrix, or a rejection with a reason. Never raises on input."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_vae.records import RawRecord, Rejection, ValidBatch
from stream_vae.topology import Topology


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity by default; turn them into a rejection reason instead.
    raise ValueError(f"non-finite constant {name}")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Validator:
    """Checks records against one topology.

    Examples
    --------
    >>> from stream_vae.topology import parse_topology
    >>> topo = parse_topology({"name": "t", "input_topic": "in", "key_field": "k",
    ...                        "features": [{"name": "a"}, {"name": "b", "min": 0}]})
    >>> v = Validator(topo)
    >>> ok, bad = v.validate([RawRecord(b'{"k": "x", "a": 1, "b": 2}'), RawRecord(b'{"a": 1}')])
    >>> ok.X.tolist(), [r.reason for r in bad]
    ([[1.0, 2.0]], ['missing_field'])
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._features = topology.features
        self._allowed = set(topology.feature_names) | {
            f for f in (topology.key_field, topology.timestamp_field) if f
        }

    def validate(self, records: Sequence[RawRecord]) -> tuple[ValidBatch, list[Rejection]]:
        rows: list[list[float]] = []
        good: list[RawRecord] = []
        keys: list[str] = []
        times: list[Any] = []
        rejected: list[Rejection] = []
        for rec in records:
            try:
                outcome = self._one(rec)
            except Exception as exc:  # a record we failed to foresee goes to the DLQ, never stops the worker
                outcome = Rejection(rec, "unreadable", f"could not read the record: {type(exc).__name__}: {exc}"[:300])
            if isinstance(outcome, Rejection):
                rejected.append(outcome)
                continue
            row, key, ts = outcome
            rows.append(row)
            good.append(rec)
            keys.append(key)
            times.append(ts)
        X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self._features))
        return ValidBatch(records=good, X=X, keys=keys, event_times=times), rejected

    def _one(self, rec: RawRecord) -> tuple[list[float], str, Any] | Rejection:
        topo = self.topology
        if rec.value is None:
            return Rejection(rec, "empty", "message has no value (tombstone)")
        if len(rec.value) > topo.max_record_bytes:
            return Rejection(rec, "oversize", f"{len(rec.value)} bytes > max_record_bytes={topo.max_record_bytes}")
        try:
            obj = json.loads(rec.value, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "non_finite" if "non-finite" in str(exc) else "invalid_json"
            return Rejection(rec, reason, f"not valid JSON: {exc}"[:300])
        except RecursionError:  # a few KB of "[[[[..." nest deeper than the parser recurses
            return Rejection(rec, "invalid_json", "not valid JSON: nested too deeply")
        if not isinstance(obj, dict):
            return Rejection(rec, "not_object", f"expected a JSON object, got {type(obj).__name__}")
        extra = set(obj) - self._allowed if topo.extra_fields == "reject" else ()
        if extra:
            return Rejection(rec, "unknown_field", f"fields not in topology '{topo.name}': {sorted(extra)[:10]}")
        row: list[float] = []
        for f in self._features:
            if f.name not in obj or obj[f.name] is None:
                return Rejection(rec, "missing_field", f"field '{f.name}' is missing or null")
            v = obj[f.name]
            if f.type == "bool":
                if not isinstance(v, bool):
                    return Rejection(rec, "wrong_type", f"field '{f.name}' must be a boolean, got {v!r:.40}")
                x = float(v)
            else:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    return Rejection(rec, "wrong_type", f"field '{f.name}' must be a number, got {v!r:.40}")
                if f.type == "int" and isinstance(v, float) and not v.is_integer():
                    return Rejection(rec, "wrong_type", f"field '{f.name}' must be an integer, got {v!r}")
                try:
                    x = float(v)
                except OverflowError:  # an integer literal of hundreds of digits
                    return Rejection(rec, "non_finite", f"field '{f.name}' is too large for a float")
                if not math.isfinite(x):
                    return Rejection(rec, "non_finite", f"field '{f.name}' is not finite")
                if abs(x) > _FLOAT32_MAX:  # the model and the retraining reservoir hold float32: it would be inf
                    return Rejection(rec, "non_finite", f"field '{f.name}'={x:.3g} is beyond +-{_FLOAT32_MAX:.3g}, "
                                                        "the largest value the model holds")
            if (f.min is not None and x < f.min) or (f.max is not None and x > f.max):
                return Rejection(rec, "out_of_range", f"field '{f.name}'={x} outside [{f.min}, {f.max}]")
            row.append(x)
        key = ""
        if topo.key_field:
            k = obj.get(topo.key_field)
            if k is None:
                return Rejection(rec, "missing_field", f"key field '{topo.key_field}' is missing or null")
            if isinstance(k, bool | dict | list):  # str() would make Python text of it: "True", "{'a': 1}"
                return Rejection(rec, "wrong_type", f"key field '{topo.key_field}' must be a string or a number, "
                                                    f"got {k!r:.40}")
            key = str(k)
        elif rec.key is not None:
            # binary keys (serialised integers) stay distinct: an invalid byte becomes \xNN, not U+FFFD
            key = rec.key.decode("utf-8", "backslashreplace")
        if not _utf8(key):  # a lone surrogate ("\ud800" in JSON) cannot be written to Redis or Kafka
            return Rejection(rec, "wrong_type", f"key {key!r:.40} is not valid Unicode (a lone surrogate)")
        ts = obj.get(topo.timestamp_field) if topo.timestamp_field else None
        # optional, and only passed through to alerts as event_time: a number (epoch) or a short string (ISO
        # 8601), not an object that would land in every alert
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)
                               or (isinstance(ts, str) and (len(ts) > 64 or not _utf8(ts)))
                               or (isinstance(ts, float) and not math.isfinite(ts))):
            return Rejection(rec, "wrong_type", f"timestamp field '{topo.timestamp_field}' must be a number or "
                                                f"a date string, got {ts!r:.40}")
        return row, key, ts
