"""The reservoir: recent normal records per stream in Redis, for retraining (newest first, capped)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_vae.records import FloatArray

_TS = struct.Struct("<q")


class Reservoir:
    """A capped Redis list of ``(timestamp_ms, features, key)`` records, written by every worker.

    Each record is packed as 8 bytes of timestamp, ``4 * D`` bytes of float32 features and the
    UTF-8 key; nothing is pickled.
    """

    def __init__(self, client: Any, *, prefix: str, stream: str, n_features: int, buffer_size: int) -> None:
        self.client = client
        self.key = f"{prefix}:{stream}:reservoir"
        self.n_features = n_features
        self.buffer_size = buffer_size
        self._row = 4 * n_features

    def add(self, X: FloatArray, keys: Sequence[str], ts_ms: Sequence[int]) -> None:
        if len(X) == 0:
            return
        rows = np.ascontiguousarray(X, dtype="<f4")
        vals = [
            _TS.pack(int(t)) + row.tobytes() + k.encode() for row, k, t in zip(rows, keys, ts_ms, strict=True)
        ]
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.key, *vals)
        pipe.ltrim(self.key, 0, self.buffer_size - 1)
        pipe.execute()

    def read(self, *, since_ms: int | None = None) -> tuple[FloatArray, list[str], np.ndarray]:  # type: ignore[type-arg]
        """Records in arrival order (oldest first), optionally only those at or after ``since_ms``."""
        raw = self.client.lrange(self.key, 0, -1)[::-1]
        ts = np.fromiter((_TS.unpack_from(r)[0] for r in raw), dtype=np.int64, count=len(raw))
        if since_ms is not None:
            keep = np.flatnonzero(ts >= since_ms)
            raw = [raw[i] for i in keep]
            ts = ts[keep]
        X = np.frombuffer(b"".join(r[8 : 8 + self._row] for r in raw), dtype="<f4").reshape(len(raw), self.n_features)
        keys = [r[8 + self._row :].decode() for r in raw]
        return X.astype(np.float64), keys, ts

    def count_since(self, since_ms: int) -> int:
        return len(self.read(since_ms=since_ms)[0])

    def __len__(self) -> int:
        return int(self.client.llen(self.key))
