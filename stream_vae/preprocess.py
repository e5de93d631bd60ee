"""featurize: scaling learned at training time (stored with the model) and per-entity sliding windows."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from stream_vae.exceptions import NotFittedError
from stream_vae.lru import lru_slot
from stream_vae.records import FloatArray


class Scaler:
    """Robust standardisation fitted once on training data; its parameters travel in the model manifest.

    With ``center_windows``, a windowed row (``w`` records side by side) also has each feature's
    mean over the window subtracted: the model then sees the shape of the recent past, not its
    level, so a slow drift of the level is invisible and a sudden change shows while it is
    inside the window. Useful for univariate, non-stationary series (NAB); off by default.

    Examples
    --------
    >>> s = Scaler().fit(np.array([[0.0, 10.0], [2.0, 10.0]]))
    >>> s.transform(np.array([[1.0, 10.0]])).tolist()
    [[0.0, 0.0]]
    >>> Scaler(center_windows=True).fit(np.array([[0.0], [2.0]])).transform(np.array([[3.0, 5.0]])).tolist()
    [[-1.0, 1.0]]
    """

    def __init__(self, *, min_std: float = 1e-3, clip: float = 50.0, center_windows: bool = False) -> None:
        self.min_std = min_std
        self.clip = clip
        self.center_windows = center_windows
        self._reset()

    def _reset(self) -> None:
        self._mean: FloatArray | None = None
        self._std: FloatArray | None = None

    def fit(self, X: FloatArray) -> Scaler:
        self._mean = X.mean(axis=0)
        std = X.std(axis=0)
        # Constant features get a floor relative to their magnitude so a later change is visible
        # but not infinitely anomalous.
        floor = np.maximum(self.min_std, 1e-3 * np.abs(self._mean))
        self._std = np.maximum(std, floor)
        return self

    def transform(self, X: FloatArray) -> FloatArray:
        if self._mean is None or self._std is None:
            raise NotFittedError("Scaler.transform called before fit(); train a model first")
        # A window of w records is w copies of the features side by side: tile the parameters.
        reps = X.shape[1] // len(self._mean)
        mean, std = np.tile(self._mean, reps), np.tile(self._std, reps)
        out: FloatArray = np.clip((X - mean) / std, -self.clip, self.clip)
        if self.center_windows and reps > 1:
            w = out.reshape(len(out), reps, -1)
            out = (w - w.mean(axis=1, keepdims=True)).reshape(len(out), -1)
        return out

    def to_dict(self) -> dict[str, Any]:
        if self._mean is None or self._std is None:
            raise NotFittedError("Scaler.to_dict called before fit()")
        return {
            "mean": self._mean.tolist(), "std": self._std.tolist(), "clip": self.clip,
            "center_windows": self.center_windows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        s = cls(clip=float(d.get("clip", 50.0)), center_windows=bool(d.get("center_windows", False)))
        s._mean = np.asarray(d["mean"], dtype=np.float64)
        s._std = np.asarray(d["std"], dtype=np.float64)
        return s


def make_windows(X: FloatArray, window: int) -> FloatArray:
    """Stack each row with the ``window - 1`` rows before it (first row repeated to fill the start).

    Examples
    --------
    >>> make_windows(np.array([[1.0], [2.0], [3.0]]), 2).tolist()
    [[1.0, 1.0], [1.0, 2.0], [2.0, 3.0]]
    """
    if window == 1:
        return X
    pad = np.repeat(X[:1], window - 1, axis=0)
    Xp = np.concatenate([pad, X], axis=0)
    idx = np.arange(len(X))[:, None] + np.arange(window)[None, :]
    out: FloatArray = Xp[idx].reshape(len(X), -1)
    return out


class Windower:
    """Per-entity sliding windows over the stream, bounded to ``max_entities`` (least recently seen evicted).

    With ``window == 1`` it is the identity. The state is snapshot/restorable so a restarted
    worker resumes the windows it had.
    """

    state_keys = ("buffers",)

    def __init__(self, window: int, *, max_entities: int = 100_000) -> None:
        self.window = window
        self.max_entities = max_entities
        self._reset()

    def _reset(self) -> None:
        self._buffers: OrderedDict[str, deque[FloatArray]] = OrderedDict()

    def transform(self, X: FloatArray, keys: Sequence[str]) -> FloatArray:
        if self.window == 1:
            return X
        out = np.empty((len(X), X.shape[1] * self.window), dtype=np.float64)
        for i, (row, key) in enumerate(zip(X, keys, strict=True)):
            buf = lru_slot(self._buffers, key, partial(self._start, row), self.max_entities)
            buf.append(row)
            out[i] = np.concatenate(list(buf))
        return out

    def _start(self, first: FloatArray) -> deque[FloatArray]:
        """A new entity's window: its first record repeated (as ``make_windows`` pads the start)."""
        return deque([first] * (self.window - 1), maxlen=self.window)

    def snapshot(self) -> dict[str, Any]:
        return {"buffers": {k: [r.tolist() for r in v] for k, v in self._buffers.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        for k, rows in state.get("buffers", {}).items():
            self._buffers[k] = deque((np.asarray(r) for r in rows), maxlen=self.window)
