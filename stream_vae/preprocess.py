"""featurize: scaling learned at training time (stored with the model) and per-entity sliding windows."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np

from stream_vae.exceptions import NotFittedError
from stream_vae.lru import forget, lru_slot, pick, put
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
        for i, (view, key) in enumerate(zip(X, keys, strict=True)):
            row = view.copy()  # a view would keep the whole batch alive while the entity's buffer holds it
            buf = lru_slot(self._buffers, key, partial(self._start, row), self.max_entities)
            buf.append(row)
            out[i] = np.concatenate(list(buf))
        return out

    def _start(self, first: FloatArray) -> deque[FloatArray]:
        """A new entity's window: its first record repeated (as ``make_windows`` pads the start)."""
        return deque([first] * (self.window - 1), maxlen=self.window)

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        return {"buffers": {k: [r.tolist() for r in v] for k, v in pick(self._buffers, keys)}}

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._reset()
        for k, rows in state.get("buffers", {}).items():
            if len(rows) == self.window:  # a window of another length is not ours
                put(self._buffers, k, deque((np.asarray(r) for r in rows), maxlen=self.window), self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._buffers, keys)


# --------------------------------------------------------------------------------------------
# seasonal differences: each feature next to its change since one period ago
# --------------------------------------------------------------------------------------------


def seasonal_differences(X: FloatArray, period: int) -> FloatArray:
    """``[X, X - X lagged by period]`` for the rows of one entity in arrival order.

    The first ``period`` rows have no lagged value: their difference is 0 (what
    :class:`SeasonalDiffer` gives a new entity), and training leaves them out. ``period`` 0 is
    the identity.

    Examples
    --------
    >>> seasonal_differences(np.array([[1.0], [5.0], [2.0], [7.0]]), 2).tolist()
    [[1.0, 0.0], [5.0, 0.0], [2.0, 1.0], [7.0, 2.0]]
    """
    if period == 0:
        return X
    d = np.zeros_like(X, dtype=np.float64)
    d[period:] = X[period:] - X[:-period]
    out: FloatArray = np.hstack([X, d])
    return out


def lag_correlations(x: FloatArray, max_lag: int) -> FloatArray:
    """Pearson correlation of ``x[:-k]`` with ``x[k:]`` for k = 0..max_lag (0 where either part is constant).

    The correlation of the overlapping parts, not the textbook ACF estimator: that one shrinks by
    ``(n - k) / n`` and would hide a period of half the data. O(n log n) through one FFT.

    Examples
    --------
    >>> r = lag_correlations(np.sin(np.arange(200) * 2 * np.pi / 25), 60)
    >>> [round(float(r[k]), 2) for k in (0, 25, 50, 12)]
    [1.0, 1.0, 1.0, -0.99]
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    x = x - x.mean()
    f = np.fft.rfft(x, 2 * n)
    xy = np.fft.irfft(f * np.conj(f), 2 * n)[: max_lag + 1]  # sum_t x[t] x[t + k]
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    k = np.arange(max_lag + 1)
    m = n - k  # pairs at lag k
    sa, sb = c1[m], c1[n] - c1[k]  # sums of x[:n-k] and x[k:]
    va, vb = c2[m] - sa * sa / m, (c2[n] - c2[k]) - sb * sb / m
    cov = xy - sa * sb / m
    den = np.sqrt(np.maximum(va * vb, 0.0))
    ok = den > 1e-12 * max(1.0, float(c2[n]))
    out: FloatArray = np.where(ok, cov / np.where(ok, den, 1.0), 0.0)
    return out


def detect_period(
    series: Sequence[FloatArray], *, min_lag: int, min_correlation: float = 0.75, min_rows_left: int = 100
) -> int:
    """The strongest seasonal period of training data, or 0 when there is none.

    ``series``: one ``[n, D]`` array per entity, in arrival order. The lag correlations of every
    non-constant feature of every entity are averaged; the period is the shortest lag in
    ``[min_lag, max_lag]`` where they have a local maximum that reaches ``min_correlation`` and
    comes within 0.05 of the highest such maximum (multiples of a period correlate as well as the
    period itself; the shortest is the period). ``max_lag`` leaves two periods and
    ``min_rows_left`` rows (training drops each entity's first period) in the longest entity; an
    entity votes on the lags up to half its length (a short one does not veto a long period). At
    a correlation ``r`` the seasonal difference has ``2 (1 - r)`` of the series' variance, so the
    default 0.75 asks for a difference with at most half of it.

    Examples
    --------
    >>> t = np.arange(600)
    >>> x = np.sin(t * 2 * np.pi / 48) + 0.1 * np.random.default_rng(0).normal(size=600)
    >>> detect_period([x.reshape(-1, 1)], min_lag=5)
    48
    >>> detect_period([x.reshape(-1, 1), x[:30].reshape(-1, 1)], min_lag=5)  # a new entity with 30 rows
    48
    >>> detect_period([np.random.default_rng(1).normal(size=(600, 2))], min_lag=5)
    0
    """
    n_max = max((len(X) for X in series), default=0)
    max_lag = min(n_max // 2, n_max - min_rows_left)
    if max_lag <= min_lag:
        return 0
    total, count = np.zeros(max_lag + 1), np.zeros(max_lag + 1)
    for X in series:
        lags = min(max_lag, len(X) // 2)
        for j in range(X.shape[1]):
            if lags > min_lag and np.ptp(X[:, j]) > 0:
                total[: lags + 1] += lag_correlations(X[:, j], lags)
                count[: lags + 1] += 1
    r = np.where(count > 0, total / np.maximum(count, 1), -np.inf)  # mean over the entities that reach the lag
    k = np.arange(max(min_lag, 1), max_lag)  # local maxima need both neighbours
    peaks = k[(r[k] > r[k - 1]) & (r[k] >= r[k + 1]) & (r[k] >= min_correlation)]
    if not len(peaks):
        return 0
    return int(peaks[r[peaks] >= r[peaks].max() - 0.05][0])


class SeasonalDiffer:
    """Per entity, appends each record's change since ``period`` records ago (:func:`seasonal_differences` online).

    A repeating pattern (a daily cycle) that the window is too short to see becomes visible: the
    difference is small while today looks like yesterday, and large when the pattern breaks (a
    missing daily peak, a flat stretch where a cycle should be). ``period`` 0 is the identity.
    Bounded to ``max_entities`` (least recently seen forgotten); snapshot/restorable.

    Examples
    --------
    >>> s = SeasonalDiffer(2)
    >>> s.transform(np.array([[1.0], [5.0], [2.0]]), ["a"] * 3).tolist()
    [[1.0, 0.0], [5.0, 0.0], [2.0, 1.0]]
    >>> s.transform(np.array([[7.0]]), ["a"]).tolist()  # batches continue each other
    [[7.0, 2.0]]
    """

    state_keys = ("history",)

    def __init__(self, period: int, *, max_entities: int = 100_000) -> None:
        self.period = period
        self.max_entities = max_entities
        self._history: OrderedDict[str, deque[FloatArray]] = OrderedDict()

    def transform(self, X: FloatArray, keys: Sequence[str]) -> FloatArray:
        if self.period == 0:
            return X
        d = np.zeros_like(X, dtype=np.float64)
        for i, (row, key) in enumerate(zip(X, keys, strict=True)):
            hist = lru_slot(self._history, key, partial(deque, maxlen=self.period), self.max_entities)
            if len(hist) == self.period:
                d[i] = row - hist[0]
            hist.append(np.array(row, dtype=np.float64))  # a copy: a view would keep the whole batch alive
        out: FloatArray = np.hstack([X, d])
        return out

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        return {"history": {k: [r.tolist() for r in v] for k, v in pick(self._history, keys)}}

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._history = OrderedDict()
        if self.period == 0:
            return  # nothing to difference against: keep no history
        for k, rows in state.get("history", {}).items():
            hist = deque((np.asarray(r, dtype=np.float64) for r in rows), maxlen=self.period)
            put(self._history, k, hist, self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._history, keys)
