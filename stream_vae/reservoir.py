"""The reservoir: recent records per stream in Redis, for retraining (newest first, capped).

It keeps every scored record of the entities it samples, each marked *normal* or not (what the
model flagged), so that a retrain builds windows and seasonal differences from consecutive
records, as the pipeline did, and trains only on the normal ones. (It once kept only the normal
records: a window or a difference then spanned the records left out, and with
``retrain.sample_every > 1`` every one of them did.)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_vae.records import FloatArray

_HEAD = struct.Struct("<qiq?")  # timestamp_ms, source partition, source offset (-1: not known), normal
_NORMAL_AT = struct.calcsize("<qiq")
_ORIGIN = slice(8, _NORMAL_AT)
_NO_ORIGIN = struct.pack("<iq", -1, -1)


@dataclass(frozen=True)
class Recent:
    """Records read back from the reservoir, in arrival order (oldest first)."""

    X: FloatArray
    keys: list[str]
    ts_ms: npt.NDArray[np.int64]
    normal: npt.NDArray[np.bool_]  # False: the model flagged it (or an outlier of its batch during a drift)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, s: slice) -> Recent:
        return Recent(self.X[s], self.keys[s], self.ts_ms[s], self.normal[s])


def sampled_entity(key: str, every: int) -> bool:
    """Whether ``retrain.sample_every = every`` keeps entity ``key`` (a stable hash: the same on every worker).

    >>> [sampled_entity(k, 1) for k in ("a", "b")]
    [True, True]
    >>> sum(sampled_entity(f"host-{i}", 4) for i in range(1000))
    250
    """
    return every <= 1 or zlib.crc32(key.encode()) % every == 0


class Reservoir:
    """A capped Redis list of ``(timestamp_ms, origin, normal, features, key)`` records, written by every
    worker.

    Each record is packed as 8 bytes of timestamp, 12 bytes of origin (the input partition and
    offset it was read from), 1 byte for ``normal``, ``4 * D`` bytes of float32 features and the
    UTF-8 key; nothing is pickled. Each entity's records come from the one worker that owns its
    partition, so they are in the entity's arrival order.
    """

    # ":3": the layout with the origin (":2" added the normal byte). A list in an older layout is
    # ignored: a retrain waits for records written since the upgrade.
    def __init__(self, client: Any, *, prefix: str, stream: str, n_features: int, buffer_size: int) -> None:
        self.client = client
        self.key = f"{prefix}:{stream}:reservoir:3"
        self.n_features = n_features
        self.buffer_size = buffer_size
        self._row = 4 * n_features
        self._x0 = _HEAD.size

    def add(self, X: FloatArray, keys: Sequence[str], ts_ms: Sequence[int],
            normal: Sequence[bool] | npt.NDArray[np.bool_], origins: Sequence[tuple[int, int]] | None = None) -> None:
        """Push records; ``origins`` are their (input partition, offset), which tell a record pushed again
        after a crash from a new one that happens to look the same."""
        if len(X) == 0:
            return
        rows = np.ascontiguousarray(X, dtype="<f4")
        where = origins if origins is not None else [(-1, -1)] * len(rows)
        vals = [
            _HEAD.pack(int(t), int(p), int(o), bool(n)) + row.tobytes() + k.encode()
            for row, k, t, n, (p, o) in zip(rows, keys, ts_ms, normal, where, strict=True)
        ]
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.key, *vals)
        pipe.ltrim(self.key, 0, self.buffer_size - 1)
        pipe.execute()

    def read(self, *, since_ms: int | None = None) -> Recent:
        """Records in arrival order (oldest first), optionally only those at or after ``since_ms``.

        A record stored twice (same input partition and offset; without them, same key, timestamp and
        features) is read once, where it came first: a worker that crashes before committing its
        offsets scores the uncommitted records again on restart and pushes them a second time
        (at-least-once), which would otherwise repeat a stretch of the entity's history inside its
        windows. (By content alone, an entity's identical readings within one millisecond, a flat
        metric produced as a backlog, were merged into one.)
        """
        raw = _first_copies(self.client.lrange(self.key, 0, -1)[::-1])
        heads = [_HEAD.unpack_from(r) for r in raw]
        ts = np.fromiter((h[0] for h in heads), dtype=np.int64, count=len(raw))
        normal = np.fromiter((h[3] for h in heads), dtype=bool, count=len(raw))
        if since_ms is not None:
            keep = np.flatnonzero(ts >= since_ms)
            raw = [raw[i] for i in keep]
            ts, normal = ts[keep], normal[keep]
        x0, x1 = self._x0, self._x0 + self._row
        X = np.frombuffer(b"".join(r[x0:x1] for r in raw), dtype="<f4").reshape(len(raw), self.n_features)
        keys = [r[x1:].decode() for r in raw]
        return Recent(X.astype(np.float64), keys, ts, normal)

    def count_since(self, since_ms: int) -> int:
        """Normal records at or after ``since_ms``: what a retrain could train on."""
        return int(self.read(since_ms=since_ms).normal.sum())

    def __len__(self) -> int:
        return int(self.client.llen(self.key))


def _first_copies(raw: list[bytes]) -> list[bytes]:
    """``raw`` without the repeats of an earlier record: the same timestamp and origin, or without an origin
    the same content
    (the ``normal`` byte left out: a replayed record may be judged against a threshold restored from an
    older checkpoint)."""
    seen: set[bytes] = set()
    out = []
    for r in raw:
        # with an origin: timestamp, partition and offset (a topic deleted and made again restarts its offsets)
        ident = r[:_NORMAL_AT] if r[_ORIGIN] != _NO_ORIGIN else r[:_NORMAL_AT] + r[_NORMAL_AT + 1 :]
        if ident not in seen:
            seen.add(ident)
            out.append(r)
    return out
