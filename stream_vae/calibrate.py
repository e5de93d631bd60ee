"""calibrate: a label-free threshold for a false-positive budget, from reference (held-out normal) scores.

Lifecycle (alibi-detect): ``fit`` a detector, ``infer_threshold(ref_scores, fpr=...)``, then
``predict``/``p_value``. The calibration is versioned with the model (``calibration_id``).

Two online companions, both bounded in memory and snapshot/restorable, used by the pipeline:

* :class:`ScoreSmoother`: the mean score over the last ``n`` records of each entity (segment-like
  anomalies stand out of the noise; calibrated on equally smoothed reference scores).
* :class:`ThresholdTracker`: wraps a calibrated :class:`Calibrator` and lets its threshold follow
  slow shifts of each entity's score distribution, without labels (decayed histogram, robust
  location and spread).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stream_vae.exceptions import NotCalibratedError
from stream_vae.lru import entity_groups, forget, lru_slot, pick, put
from stream_vae.records import FloatArray

if TYPE_CHECKING:
    from stream_vae.topology import CalibrationSpec

Method = Literal["quantile", "pot"]
Adaptation = Literal["off", "track"]
_MAX_REF = 4096  # reference scores kept (sorted, evenly subsampled) for p-values


def _fit_tail(ref: FloatArray, tail_start: float) -> tuple[float, float, float, float] | None:
    """``(u, xi, sigma, share above u)``: a generalised Pareto fit of the scores above the ``tail_start``
    quantile ``u`` (None: fewer than 10 of them)."""
    u = float(np.quantile(ref, tail_start))
    excess = ref[ref > u] - u
    return (u, *_pwm_gpd(excess), len(excess) / len(ref)) if len(excess) >= 10 else None


def _gpd_survival(excess: FloatArray, xi: float, sigma: float) -> FloatArray:
    """P(X > u + excess) / P(X > u) under a generalised Pareto tail (0 past a negative shape's endpoint)."""
    z = np.maximum(excess, 0.0) / sigma
    out: FloatArray = np.exp(-z) if abs(xi) < 1e-6 else np.maximum(1 + xi * z, 0.0) ** (-1 / xi)
    return out


def _pwm_gpd(excess: FloatArray) -> tuple[float, float]:
    """Generalised Pareto (shape xi, scale sigma) by probability-weighted moments (Hosking & Wallis 1987)."""
    x = np.sort(excess)
    n = len(x)
    a0 = x.mean()
    a1 = np.sum(x * (n - 1 - np.arange(n)) / (n - 1)) / n  # E[x (1 - F)]
    if a0 - 2 * a1 <= 0:
        return 0.0, float(max(a0, 1e-12))
    k = a0 / (a0 - 2 * a1) - 2  # Hosking's k; xi = -k
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    return float(-k), float(max(sigma, 1e-12))


class Calibrator:
    """Threshold and p-values for a score stream, inferred from reference scores without labels.

    Parameters
    ----------
    method
        ``"quantile"``: the empirical (1 - fpr) quantile. ``"pot"``: peaks-over-threshold, a
        generalised Pareto tail fitted above the ``tail_start`` quantile, which extrapolates when
        ``fpr`` is smaller than the reference sample can resolve.
    fpr
        Target false-positive rate per record.
    smoothing
        The scores this calibration applies to are means over the last ``smoothing`` records of
        an entity (see :class:`ScoreSmoother`); the reference scores must be smoothed the same way.
    adapt
        ``"track"``: at run time the threshold follows slow shifts of each entity's score
        distribution (:class:`ThresholdTracker`); ``"off"``: it stays where calibration put it.
    half_life
        With ``adapt="track"``, records after which a past score weighs half as much.
    rate_cap
        With ``adapt="track"``, the threshold never drops below the entity's recent
        ``1 - rate_cap * fpr`` score quantile (0 = no floor); see :class:`ThresholdTracker`.
    range_tolerance
        Also flag a record when a raw feature leaves its entity's range so far by more than this
        fraction of the range (0 = off); see :class:`RangeTracker`. The training range it starts
        from is set by :meth:`set_range`.
    track_every
        With ``adapt="track"``, an entity's threshold moves once every ``track_every`` of its
        records; 0 = after every batch (calibrations from before the setting). See
        :class:`ThresholdTracker`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cal = Calibrator(method="quantile", fpr=0.01).infer_threshold(rng.normal(size=10_000))
    >>> round(cal.threshold, 1)
    2.3
    >>> bool(cal.predict(np.array([0.0, 5.0]))[1])
    True
    """

    def __init__(
        self,
        *,
        method: Method = "quantile",
        fpr: float = 0.005,
        tail_start: float = 0.95,
        smoothing: int = 1,
        adapt: Adaptation = "off",
        half_life: int = 10_000,
        rate_cap: float = 0.0,
        range_tolerance: float = 0.0,
        track_every: int = 0,
    ) -> None:
        self.method = method
        self.fpr = fpr
        self.tail_start = tail_start
        self.smoothing = smoothing
        self.adapt = adapt
        self.half_life = half_life
        self.rate_cap = rate_cap
        self.range_tolerance = range_tolerance
        self.track_every = track_every
        self._reset()

    def _reset(self) -> None:
        self.range_lo: FloatArray | None = None  # each raw feature's training range (RangeTracker's start)
        self.range_hi: FloatArray | None = None
        self._threshold: float | None = None
        self._ref: FloatArray = np.zeros(0)
        self._n_ref = 0
        self._gpd: tuple[float, float, float, float] | None = None  # (u, xi, sigma, tail_frac)
        self._tail_fit: tuple[FloatArray, tuple[float, float, float, float] | None] | None = None  # (for ref, fit)

    @classmethod
    def from_spec(cls, spec: CalibrationSpec) -> Calibrator:
        """An uncalibrated calibrator with every setting of a topology's ``calibration`` section.

        Scores given to ``infer_threshold`` must be smoothed as the pipeline will smooth them:
        ``ScoreSmoother(spec.smoothing).transform(scores, entity_keys)``.
        """
        return cls(method=spec.method, fpr=spec.fpr, smoothing=spec.smoothing, adapt=spec.adapt,
                   half_life=spec.half_life, rate_cap=spec.rate_cap, range_tolerance=spec.range_tolerance,
                   track_every=spec.track_every)

    def set_range(self, X: FloatArray) -> Calibrator:
        """Remember each feature's range over the training rows ``X`` (raw values)."""
        self.range_lo, self.range_hi = np.min(X, axis=0).astype(np.float64), np.max(X, axis=0).astype(np.float64)
        return self

    @property
    def threshold(self) -> float:
        if self._threshold is None:
            raise NotCalibratedError(
                "Calibrator has no threshold: call infer_threshold(reference_scores, ...) "
                "(or train a model with `stream-vae train`) before predicting"
            )
        return self._threshold

    @property
    def calibrated(self) -> bool:
        return self._threshold is not None

    @property
    def reference(self) -> FloatArray:
        """The (sorted, evenly subsampled) reference scores the threshold was inferred from."""
        _ = self.threshold
        return self._ref

    def infer_threshold(self, ref_scores: FloatArray) -> Calibrator:
        ref = np.sort(np.asarray(ref_scores, dtype=np.float64)[np.isfinite(ref_scores)])
        if len(ref) < 20:
            raise NotCalibratedError(f"need at least 20 finite reference scores to calibrate, got {len(ref)}")
        self._n_ref = len(ref)
        idx = np.linspace(0, len(ref) - 1, min(len(ref), _MAX_REF)).round().astype(int)
        self._ref = ref[idx]
        if self.method == "pot" and self.fpr < 1 - self.tail_start:
            fit = _fit_tail(ref, self.tail_start)
            if fit is not None:
                self._gpd = fit
                u, xi, sigma, frac = fit
                r = self.fpr / frac
                t = u - sigma * math.log(r) if abs(xi) < 1e-6 else u + sigma / xi * (r ** (-xi) - 1)
                self._threshold = float(t)
                return self
        self._threshold = float(np.quantile(ref, 1 - self.fpr))
        return self

    def predict(self, scores: FloatArray) -> np.ndarray[Any, np.dtype[np.bool_]]:
        out: np.ndarray[Any, np.dtype[np.bool_]] = scores > self.threshold
        return out

    def p_value(self, scores: FloatArray) -> FloatArray:
        """Estimated probability that a normal record scores at least this high."""
        _ = self.threshold
        n = len(self._ref)
        # fraction of reference scores >= s, with +1 smoothing so p is never 0. The kept scores are the
        # reference's order statistics at evenly spaced ranks (its minimum and maximum included), so the
        # count is the reference's at the rank of the smallest kept score >= s: 1 at the maximum, as past it
        # (scaled as ge x n_ref / kept, p stepped 10x there with 40,960 reference scores)
        ge = (n - np.searchsorted(self._ref, scores, side="left")).astype(np.float64)
        N = max(self._n_ref, n)
        if N > n > 1:
            ge = np.where(ge > 0, N - np.round((n - ge) * (N - 1) / (n - 1)), 0.0)
        p = (ge + 1.0) / (N + 1.0)
        tail = self._gpd if self._gpd is not None else self._tail() if n else None
        if tail is not None:
            u, xi, sigma, frac = tail
            floor, top = 1.0 / (N + 1.0), float(self._ref[-1])
            if self._gpd is not None:  # pot: the fitted tail above u, but a score inside the sample is not
                inside = (scores > u) & (scores <= top)  # rarer than 1 in N + 1 (a bounded fit ends early)
                p[inside] = np.maximum(frac * _gpd_survival(scores[inside] - u, xi, sigma), floor)
            # past the largest reference score the empirical p stops at 1 / (N + 1) (2.4e-4 with 4096 kept,
            # above fpr x severity_high: every alert was "medium", and all were held back during a drift).
            # There the tail extrapolates: the fitted one, or, for a bounded fit (negative shape, a finite
            # endpoint often just past the sample's maximum), an exponential from the maximum with the fit's
            # mean excess, so that a score past it is very unlikely rather than impossible.
            beyond = scores > top
            if xi >= 0:
                p[beyond] = np.minimum(floor, frac * _gpd_survival(scores[beyond] - u, xi, sigma))
            else:
                p[beyond] = floor * np.exp(-(scores[beyond] - top) * (1 - xi) / sigma)
        p[np.isnan(scores)] = 1.0  # no evidence of anything (searchsorted puts NaN past every score)
        return np.clip(p, 1e-12, 1.0)

    def _tail(self) -> tuple[float, float, float, float] | None:
        """A generalised Pareto fit above the reference's ``tail_start`` quantile (None: too few scores),
        fitted once per reference."""
        if self._tail_fit is None or self._tail_fit[0] is not self._ref:
            self._tail_fit = (self._ref, _fit_tail(self._ref, self.tail_start))
        return self._tail_fit[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fpr": self.fpr,
            "tail_start": self.tail_start,
            "threshold": self.threshold,
            "n_ref": self._n_ref,
            "ref": self._ref.tolist(),
            "gpd": list(self._gpd) if self._gpd else None,
            "smoothing": self.smoothing,
            "adapt": self.adapt,
            "half_life": self.half_life,
            "rate_cap": self.rate_cap,
            # written only when the range rule is on: the calibration ids of other models stay as they were
            **({"range_tolerance": self.range_tolerance,
                "range_lo": None if self.range_lo is None else self.range_lo.tolist(),
                "range_hi": None if self.range_hi is None else self.range_hi.tolist()}
               if self.range_tolerance > 0 else {}),
            **({"track_every": self.track_every} if self.track_every > 0 else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        c = cls(
            method=d["method"],
            fpr=float(d["fpr"]),
            tail_start=float(d.get("tail_start", 0.95)),
            smoothing=int(d.get("smoothing", 1)),
            adapt=d.get("adapt", "off"),
            half_life=int(d.get("half_life", 10_000)),
            rate_cap=float(d.get("rate_cap", 0.0)),  # calibrations from before the cap have none
            range_tolerance=float(d.get("range_tolerance", 0.0)),
            track_every=int(d.get("track_every", 0)),  # before the setting: the threshold moved after every batch
        )
        if d.get("range_lo") is not None and d.get("range_hi") is not None:
            c.range_lo = np.asarray(d["range_lo"], dtype=np.float64)
            c.range_hi = np.asarray(d["range_hi"], dtype=np.float64)
        c._threshold = float(d["threshold"])
        c._ref = np.asarray(d["ref"], dtype=np.float64)
        c._n_ref = int(d.get("n_ref", len(c._ref)))
        g = d.get("gpd")
        c._gpd = (float(g[0]), float(g[1]), float(g[2]), float(g[3])) if g else None
        return c

    def calibration_id(self, model_version: str) -> str:
        """Stable id of this calibration: model version + method + a digest of its parameters."""
        d = self.to_dict()
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        return f"{model_version}/{self.method}-{self.fpr:g}-{digest}"


class ScoreSmoother:
    """Mean score over the last ``n`` records of each entity, bounded to ``max_entities`` (least recent evicted).

    An entity's first records are averaged over what it has so far. With ``n == 1`` it is the
    identity. State is the last ``n - 1`` scores per entity; ``snapshot``/``restore`` checkpoint it.

    Examples
    --------
    >>> sm = ScoreSmoother(3)
    >>> sm.transform(np.array([3.0, 0.0, 6.0, 9.0]), ["a", "b", "a", "a"]).tolist()
    [3.0, 0.0, 4.5, 6.0]
    >>> sm.transform(np.array([0.0]), ["a"]).tolist()  # (6 + 9 + 0) / 3
    [5.0]
    """

    state_keys = ("buffers",)

    def __init__(self, n: int, *, max_entities: int = 100_000) -> None:
        self.n = n
        self.max_entities = max_entities
        self._reset()

    def _reset(self) -> None:
        self._buffers: OrderedDict[str, deque[float]] = OrderedDict()

    def transform(self, scores: FloatArray, keys: Sequence[str]) -> FloatArray:
        """Smoothed scores, in the order given; remembers the tail of each entity for the next batch."""
        if self.n <= 1:
            return scores
        out = np.empty(len(scores), dtype=np.float64)
        for key, idx in entity_groups(keys).items():
            buf = lru_slot(self._buffers, key, lambda: deque(maxlen=self.n - 1), self.max_entities)
            new = np.asarray(scores[idx], dtype=np.float64)
            seq = np.concatenate([np.fromiter(buf, dtype=np.float64, count=len(buf)), new])
            csum = np.concatenate([[0.0], np.cumsum(seq)])
            end = np.arange(len(buf) + 1, len(seq) + 1)
            start = np.maximum(0, end - self.n)
            out[idx] = (csum[end] - csum[start]) / (end - start)
            buf.extend(new[-(self.n - 1) :].tolist())
        return out

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        return {"buffers": {k: list(v) for k, v in pick(self._buffers, keys)}}

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._reset()
        for k, v in state.get("buffers", {}).items():
            put(self._buffers, k, deque((float(x) for x in v), maxlen=max(1, self.n - 1)), self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._buffers, keys)


@dataclass
class _EntityScores:
    """One entity's tracker state: the live decayed histogram and the one its threshold reads.

    ``published`` is ``live`` itself (the same array) when the threshold moves after every batch
    (``track_every = 0``), a copy taken at the last block boundary otherwise, and None until the
    entity's first block is complete. ``since`` counts the records folded in since that copy.
    """

    live: FloatArray
    published: FloatArray | None
    since: int = 0


_Z_LO, _Z_HI = math.asinh(-50.0), math.asinh(1e6)  # histogram span, in reference spreads around the median


class ThresholdTracker:
    """Label-free online threshold per entity: the calibrated threshold follows slow shifts of the scores.

    Wraps a calibrated :class:`Calibrator`. Its threshold is written ``t = m + k * s`` with ``m`` the
    median and ``s = q90 - m`` (the spread of the upper half) of the reference scores. For each
    entity, a histogram of its recent scores with exponential forgetting (``half_life`` records of
    that entity; fixed bins, so memory is bounded) gives the current ``m_t`` and ``s_t``, and the
    threshold is ``m_t + k * s_t``: when normal behaviour gets noisier or moves (a machine whose test
    period differs from its training period), the threshold moves with it, while anomalies shorter
    than about one half-life barely move a median. ``s_t`` is kept within ``max_spread_ratio`` of
    the reference spread: while the histogram still mixes an old and a new level, the spread measures
    the gap between the two, not noise, and would throw the threshold far above both. A new entity
    starts from the reference histogram (weighted as one full forgetting window), i.e. at the
    calibrated threshold. With
    ``calibrator.adapt == "off"`` it returns the calibrated threshold and p-values unchanged.

    With ``calibrator.rate_cap = c > 0`` the threshold is also never below the entity's recent
    ``1 - c * fpr`` score quantile (same histogram): ``m + k * s`` extrapolates the reference's tail
    shape, and where the live tail is heavier (a model trained on a few hundred records, a noisy
    series) that flags many times the budget; the floor keeps it to about ``c`` times. Measured on
    NAB (calibrated on the probationary period only) the flag rate fell from 21 % to 10 % and the
    score rose by ~10 points, with SMD and ASD unchanged at ``c = 5``. The price: when true
    anomalies are more than ``c * fpr`` of an entity's recent records the floor rises into them
    (the demo's stream, 3 % anomalous records for a 0.2 % budget, lost a fifth of its catches),
    so it is off unless a topology sets it.

    When the threshold moves: with ``calibrator.track_every = N > 0`` an entity's threshold is
    published once every ``N`` of its records, from its scores up to that record, and
    :meth:`assess` judges each record by the threshold published last before it. The decisions
    then do not depend on how records are batched (a worker with small live polls, the same topic
    replayed as one backlog and the evaluation's batches all flag the same records), and an
    anomaly shorter than ``N`` records cannot raise its own threshold. With ``N = 0``
    (calibrations from before the setting) the threshold moves after every batch: a batch is judged
    by the state reached before it, so the lag was the batch size: the evaluation's SMD PA-F1 was
    0.783 in batches of 1000 and 0.831 in batches of 10 of the same records. With ``N > 0`` the
    batching changes nothing. The topology default, 500, beat 1000 (what the evaluation's batches
    had amounted to) on every SMD, ASD and NAB goal metric on each of three seeds; 100 and 250 gain
    PA-F1 and lose ASD F1 and NAB score; 2000 loses everywhere (benchmarks/detection.md, session 4).

    Parameters
    ----------
    calibrator
        A calibrated calibrator (``adapt`` and ``half_life`` are read from it).
    bins
        Histogram bins per entity (asinh-spaced around the reference median).
    quantiles
        ``(location, upper)``: the location quantile and the one whose distance from it is the
        spread. The default, median and q90, extrapolates less into the tail than a lower-half
        spread would (measured: it keeps the budget on a seasonal synthetic stream where
        ``(0.25, 0.5)`` overshot it by 35 %), and a q90 is still safe from anomalies that fill
        less than ~10 % of the recent window.
    max_spread_ratio
        Bound on how much the spread may grow or shrink relative to the reference.
    max_entities
        Entities tracked at once; the least recently seen is forgotten beyond it. The same bound as
        every other per-entity table of the pipeline and :class:`~stream_vae.state.EntityCheckpoints`:
        an entity forgotten here alone would not be read back from its checkpoint, and would start
        again from the calibrated threshold (about 4 KB per entity at 256 bins).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cal = Calibrator(fpr=0.01, adapt="track", half_life=2000).infer_threshold(rng.normal(size=5000))
    >>> tr = ThresholdTracker(cal)
    >>> round(float(tr.thresholds(["a"])[0]), 1)  # starts at the calibrated threshold
    2.3
    >>> for _ in range(20):  # entity "a" becomes twice as noisy and shifts by +3
    ...     tr.update(3 + 2 * rng.normal(size=1000), ["a"] * 1000)
    >>> round(float(tr.thresholds(["a"])[0]), 1), round(float(tr.thresholds(["b"])[0]), 1)
    (7.5, 2.3)
    """

    state_keys = ("hist", "published", "since_published")

    def __init__(
        self,
        calibrator: Calibrator,
        *,
        bins: int = 256,
        quantiles: tuple[float, float] = (0.5, 0.9),
        max_spread_ratio: float = 2.0,
        max_entities: int = 100_000,
    ) -> None:
        self.calibrator = calibrator
        self.bins = bins
        self.quantiles = quantiles
        self.max_spread_ratio = max_spread_ratio
        self.max_entities = max_entities
        self._reset()

    def _reset(self) -> None:
        cal = self.calibrator
        self._base = cal.threshold
        ref = cal.reference
        m, hi = (float(v) for v in np.quantile(ref, self.quantiles))
        self._m_ref, self._s_ref = m, hi - m
        self._active = cal.adapt == "track" and self._s_ref > 0
        self._every = max(0, int(cal.track_every))
        self._hist: OrderedDict[str, _EntityScores] = OrderedDict()
        if not self._active:
            return
        self._k = (self._base - m) / self._s_ref
        self._decay = 0.5 ** (1.0 / max(1, cal.half_life))
        self._edges = m + self._s_ref * np.sinh(np.linspace(_Z_LO, _Z_HI, self.bins + 1))
        prior = np.bincount(self._bin(ref), minlength=self.bins).astype(np.float64)
        self._prior = prior * (1.0 / (1.0 - self._decay)) / prior.sum()

    @property
    def adaptive(self) -> bool:
        return self._active

    def _bin(self, scores: FloatArray) -> np.ndarray[Any, np.dtype[np.intp]]:
        idx = np.searchsorted(self._edges, scores, side="right") - 1
        return np.clip(idx, 0, self.bins - 1)

    def _quantile(self, hist: FloatArray, q: float) -> float:
        cum = np.cumsum(hist)
        target = q * cum[-1]
        i = min(int(np.searchsorted(cum, target, side="left")), self.bins - 1)
        below = cum[i - 1] if i > 0 else 0.0
        frac = (target - below) / hist[i] if hist[i] > 0 else 0.0
        return float(self._edges[i] + frac * (self._edges[i + 1] - self._edges[i]))

    def _location_spread(self, hist: FloatArray | None) -> tuple[float, float]:
        if hist is None:
            return self._m_ref, self._s_ref
        m = self._quantile(hist, self.quantiles[0])
        r = self.max_spread_ratio
        return m, float(np.clip(self._quantile(hist, self.quantiles[1]) - m, self._s_ref / r, self._s_ref * r))

    def _published(self, key: str) -> FloatArray | None:
        state = self._hist.get(key)
        return None if state is None else state.published

    def _threshold(self, hist: FloatArray | None) -> float:
        m, s = self._location_spread(hist)
        t = m + self._k * s
        cap = self.calibrator.rate_cap * self.calibrator.fpr
        if cap > 0 and hist is not None:
            t = max(t, self._quantile(hist, 1.0 - min(cap, 0.5)))
        return t

    def _mapped(self, scores: FloatArray, hist: FloatArray | None) -> FloatArray:
        """Scores moved from the entity's current location/spread onto the reference's (for p-values)."""
        m, s = self._location_spread(hist)
        out: FloatArray = self._m_ref + (scores - m) * (self._s_ref / s)
        return out

    def thresholds(self, keys: Sequence[str]) -> FloatArray:
        """The threshold each record would be compared with now (its entity's published one)."""
        out = np.full(len(keys), self._base, dtype=np.float64)
        if self._active:
            for key, idx in entity_groups(keys).items():
                out[idx] = self._threshold(self._published(key))
        return out

    def p_values(self, scores: FloatArray, keys: Sequence[str]) -> FloatArray:
        """p-values against each entity's published score distribution (mapped back onto the reference)."""
        if not self._active:
            return self.calibrator.p_value(scores)
        mapped = np.empty(len(scores), dtype=np.float64)
        for key, idx in entity_groups(keys).items():
            mapped[idx] = self._mapped(scores[idx], self._published(key))
        return self.calibrator.p_value(mapped)

    def assess(self, scores: FloatArray, keys: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """Threshold and p-value of each record of a batch (arrival order), then fold the batch in.

        Each record is judged by the threshold its entity had published before it; with
        ``track_every > 0`` that can change inside a batch, at the entity's block boundaries.
        """
        if not self._active:
            return np.full(len(scores), self._base, dtype=np.float64), self.calibrator.p_value(scores)
        thr = np.empty(len(scores), dtype=np.float64)
        mapped = np.empty(len(scores), dtype=np.float64)
        for key, idx in entity_groups(keys).items():
            for seg in self._segments(key, idx):
                hist = self._published(key)
                thr[seg] = self._threshold(hist)
                mapped[seg] = self._mapped(scores[seg], hist)
                self._fold(key, scores[seg])
        return thr, self.calibrator.p_value(mapped)

    def update(self, scores: FloatArray, keys: Sequence[str]) -> None:
        """Fold a batch of scores (arrival order) into each entity's decayed histogram."""
        if not self._active:
            return
        for key, idx in entity_groups(keys).items():
            for seg in self._segments(key, idx):
                self._fold(key, scores[seg])

    def _segments(self, key: str, idx: np.ndarray[Any, np.dtype[np.intp]]) -> list[Any]:
        """``idx`` cut where the entity's block boundaries fall (one piece with ``track_every = 0``)."""
        if self._every == 0:
            return [idx]
        state = self._hist.get(key)
        first = self._every - (state.since if state is not None else 0)
        cuts = list(range(first, len(idx), self._every))
        return [p for p in np.split(idx, cuts) if len(p)]

    def _fold(self, key: str, scores: FloatArray) -> None:
        """Decay the entity's live histogram and add ``scores``; publish it at a block boundary."""
        state = lru_slot(self._hist, key, self._new_entity, self.max_entities)
        n = len(scores)
        w = self._decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
        state.live *= self._decay**n
        state.live += np.bincount(self._bin(scores), weights=w, minlength=self.bins)
        if self._every:
            state.since += n
            if state.since >= self._every:  # _segments never lets a fold cross a boundary
                state.published, state.since = state.live.copy(), 0

    def _new_entity(self) -> _EntityScores:
        live = self._prior.copy()
        # nothing published yet: the entity is judged by the calibrated threshold itself until its first block
        return _EntityScores(live, live if self._every == 0 else None)

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        held = dict(pick(self._hist, keys))
        out: dict[str, Any] = {"hist": {k: v.live.tolist() for k, v in held.items()}}
        if self._every:
            out["published"] = {k: v.published.tolist() for k, v in held.items() if v.published is not None}
            out["since_published"] = {k: v.since for k, v in held.items()}
        return out

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._reset()
        if not self._active:
            return
        published, since = state.get("published", {}), state.get("since_published", {})
        for k, v in state.get("hist", {}).items():
            if len(v) != self.bins:
                continue
            live = np.asarray(v, dtype=np.float64)
            pub = published.get(k)
            if self._every == 0:
                entry = _EntityScores(live, live)
            elif pub is not None and len(pub) == self.bins:
                entry = _EntityScores(live, np.asarray(pub, dtype=np.float64), int(since.get(k, 0)))
            elif k in since:  # its first block is not complete yet
                entry = _EntityScores(live, None, int(since[k]))
            else:  # a snapshot from before block publishing: publish what it had
                entry = _EntityScores(live, live.copy())
            put(self._hist, k, entry, self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._hist, keys)


class RangeTracker:
    """Per entity, the running range of each raw feature; finds the records that leave it by a margin.

    HTM's "spatial anomaly" rule in NAB: a value above ``max + tol * (max - min)`` or below
    ``min - tol * (max - min)`` of everything the entity has shown so far is anomalous whatever the
    model's score says (a new all-time high is news even when its shape is familiar); the range then
    grows to include it, so a new level fires once, not for every record at it. The range starts at
    the calibrator's training range (:meth:`Calibrator.set_range`), or at the entity's first record
    without one. ``tol = calibrator.range_tolerance``; 0 turns it off. Measured on NAB (51 files,
    tol 0.05 as HTM publishes it) it added ~7 points to the standard score (benchmarks/detection.md);
    off by default, because on multivariate server metrics one feature's new maximum is often not
    an incident. Bounded to ``max_entities`` (least recently seen forgotten); snapshot/restorable.

    Examples
    --------
    >>> cal = Calibrator(range_tolerance=0.05).set_range(np.array([[0.0], [10.0]]))
    >>> RangeTracker(cal).outside(np.array([[10.4], [11.0], [11.2], [12.0]]), ["a"] * 4)[:, 0].tolist()
    [False, True, False, True]
    """

    state_keys = ("ranges",)

    def __init__(self, calibrator: Calibrator, *, max_entities: int = 100_000) -> None:
        self.calibrator = calibrator
        self.tol = calibrator.range_tolerance
        self.max_entities = max_entities
        self._ranges: OrderedDict[str, FloatArray] = OrderedDict()  # per entity: rows [lo, hi]

    @property
    def active(self) -> bool:
        return self.tol > 0

    def outside(self, X: FloatArray, keys: Sequence[str]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """``[n, D]``: which features of each record (arrival order) leave the entity's range so far.

        The range before a record includes the batch's earlier records; afterwards it includes all.
        """
        out = np.zeros(X.shape, dtype=np.bool_)
        if not self.active or len(X) == 0:
            return out
        for key, idx in entity_groups(keys).items():
            rows = np.asarray(X[idx], dtype=np.float64)
            state = lru_slot(self._ranges, key, partial(self._start, rows[0]), self.max_entities)
            lo0, hi0 = state[0], state[1]
            hi = np.maximum(hi0, np.vstack([hi0, np.maximum.accumulate(rows, axis=0)[:-1]]))
            lo = np.minimum(lo0, np.vstack([lo0, np.minimum.accumulate(rows, axis=0)[:-1]]))
            span = hi - lo
            out[idx] = (span > 0) & ((rows > hi + self.tol * span) | (rows < lo - self.tol * span))
            state[0], state[1] = np.minimum(lo0, rows.min(axis=0)), np.maximum(hi0, rows.max(axis=0))
        return out

    def _start(self, first: FloatArray) -> FloatArray:
        """A new entity's range ``[lo, hi]``: the training range, or its first record without one."""
        cal = self.calibrator
        if cal.range_lo is None or cal.range_hi is None:
            return np.stack([first, first])
        return np.stack([cal.range_lo, cal.range_hi])

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        return {"ranges": {k: v.tolist() for k, v in pick(self._ranges, keys)}}

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._ranges = OrderedDict()
        for k, v in state.get("ranges", {}).items():
            put(self._ranges, k, np.asarray(v, dtype=np.float64), self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._ranges, keys)
