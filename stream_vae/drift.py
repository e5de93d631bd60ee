"""drift monitor: sequential tests on the latent posterior and the score stream, bounded memory.

Records are summarised into blocks of ``block_size``; each block gives one value per test:

- ``score``: the block's median score in reference standard deviations (the VAE's surprise);
- ``latent``: per latent dimension, the block's median posterior mean in reference units;
- ``multivariate``: the block's median of the mean squared standardised posterior mean (a
  chi-square-like statistic over all dimensions at once, diagonal reference covariance).

Medians, not means: anomalies are what the stream is monitored for, and a few of them in a block
(scores tens of standard deviations out) would make block means so noisy that a real shift
takes thousands of records longer to stand out.

Each value stream is watched by river's Page-Hinkley test (two-sided, allowance ``min_shift / 2``,
threshold ``threshold``, both in reference standard deviations), or by ADWIN. A change is declared
when the detector fires *and* the level moved by at least ``min_shift``, so slow seasonal wobble
and tiny, harmless shifts do not page anyone. ADWIN's bound assumes values in [0, 1]; on these
unbounded, post-shift noisy statistics it reacted 35 blocks after a 5-sigma jump where
Page-Hinkley reacted in 2 (measured on the demo generator, see BENCHMARKS.md), hence the default.
Detector state is the bounded history of block values, replayed into fresh detectors on
``restore`` (river objects are never pickled). The monitor also keeps exponentially weighted
means of the per-feature contributions and of the latent dimensions to say which of them a drift
implicates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stream_vae.records import FloatArray
from stream_vae.topology import Topology

_HISTORY = 256  # block values kept per detector for snapshot/replay


@dataclass(frozen=True)
class DriftSignal:
    """A declared change in one monitored quantity."""

    stream: str
    topology_id: str
    test: str  # "score" | "latent" | "multivariate"
    detector: str
    statistic: float  # shift, in reference standard deviations, between ADWIN's two sub-windows
    threshold: float  # min_shift
    window: int  # records in the detector window after the cut
    latent_dims: list[int] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    model_version: str = ""
    partition: int | None = None
    offset: int | None = None  # last offset of the batch that completed the block

    def data(self) -> dict[str, Any]:
        return {
            "stream": self.stream, "topology_id": self.topology_id, "test": self.test, "detector": self.detector,
            "statistic": round(self.statistic, 4), "threshold": self.threshold, "window": self.window,
            "latent_dims": self.latent_dims, "features": self.features, "model_version": self.model_version,
            "partition": self.partition, "offset": self.offset,
        }


def _level_shift(history: deque[float], since_cut: int) -> float:
    """How far the level moved since the last change: split the values since then where the two sides
    differ most (the CUSUM estimate of the change point, at least 3 values a side), and take the mean after
    the split minus the mean of up to 20 values before it.

    A fixed split (the newest values against those just before) measured nothing for a moderate shift:
    Page-Hinkley fires ``threshold / (shift - min_shift / 2)`` values after the change, by which time the
    values "before" are already on the new level, and the change was dropped for being too small.

    >>> from collections import deque
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, 0.1, 60), rng.normal(0.7, 0.1, 25)]
    >>> round(_level_shift(deque(x), len(x)), 1)
    0.7
    """
    h = np.asarray(history, dtype=np.float64)[-max(since_cut, 1):]
    n = len(h)
    if n < 6:  # too few values since the last change to place a split: the newest against the ones before
        full = list(history)
        recent, before = full[-3:], full[-3 - min(20, max(since_cut, 1)) : -3]
        return float(np.mean(recent) - np.mean(before)) if before else 0.0
    c = np.cumsum(h)
    k = np.arange(3, n - 2)  # values before the split
    contrast = np.abs(c[k - 1] / k - (c[-1] - c[k - 1]) / (n - k)) * np.sqrt(k * (n - k) / n)
    j = int(k[int(np.argmax(contrast))])
    return float(h[j:].mean() - h[max(0, j - 20) : j].mean())


def _ewm(prev: FloatArray, batch_mean: FloatArray, alpha: float, n: int) -> FloatArray:
    """Exponentially weighted mean after n observations whose mean is batch_mean (batch treated as one step)."""
    w = (1 - alpha) ** n
    out: FloatArray = w * prev + (1 - w) * batch_mean
    return out


class Watch:
    """A river drift detector on one value stream, with a minimum shift and a replayable bounded history.

    Parameters
    ----------
    detector
        ``"page_hinkley"`` (river, two-sided, allowance ``min_shift / 2``, ``threshold``), ``"adwin"``
        (river, ``delta``) or ``"bocpd"`` (``stream_vae.changepoint.BOCPD`` with AR(1) segments, so a
        trend in a block statistic also counts as a change).

    Examples
    --------
    >>> w = Watch("page_hinkley", threshold=8.0, min_shift=0.5)
    >>> fired = [w.update(v) for v in [0.0] * 60 + [3.0] * 20]
    >>> any(fired[:60]), fired.index(True) - 60 < 5
    (False, True)
    >>> w = Watch("adwin", delta=0.002, min_shift=0.5)
    >>> fired = [w.update(v) for v in [0.0] * 60 + [2.0] * 60]
    >>> any(fired[:60]), any(fired[60:])
    (False, True)
    """

    state_keys = ("history",)

    def __init__(self, detector: Literal["page_hinkley", "adwin", "bocpd"] = "page_hinkley", *, threshold: float = 8.0,
                 delta: float = 0.002, min_shift: float = 0.5) -> None:
        self.detector = detector
        self.threshold = threshold
        self.delta = delta
        self.min_shift = min_shift
        self._reset()

    def _reset(self) -> None:
        from river.drift import ADWIN, PageHinkley

        self._river: Any
        if self.detector == "bocpd":
            from stream_vae.changepoint import BOCPD

            self._river = BOCPD(model="ar1")
        elif self.detector == "adwin":
            # check every input (river defaults to every 32: at block level that is thousands of records)
            self._river = ADWIN(delta=self.delta, clock=1, grace_period=5, min_window_length=3)  # type: ignore[no-untyped-call]
        else:
            self._river = PageHinkley(  # type: ignore[no-untyped-call]
                min_instances=5, delta=self.min_shift / 2, threshold=self.threshold, alpha=1 - 1e-4, mode="both"
            )
        self._history: deque[float] = deque(maxlen=_HISTORY)
        self._since_cut = 0
        self.last_shift = 0.0
        self.last_width = 0  # inputs from the previous change to the one just detected

    def update(self, x: float) -> bool:
        self._river.update(float(x))
        self._history.append(float(x))
        self._since_cut += 1
        if not self._river.drift_detected:
            return False
        self.last_shift = _level_shift(self._history, self._since_cut)
        self.last_width, self._since_cut = self._since_cut, 0
        return abs(self.last_shift) >= self.min_shift

    @property
    def width(self) -> int:
        """Inputs seen since the last change."""
        return self._since_cut

    def snapshot(self) -> dict[str, Any]:
        return {"history": list(self._history)}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        for v in state.get("history", []):
            self.update(v)


class DriftMonitor:
    """Drift tests for one stream partition (or one series in an evaluation).

    Parameters
    ----------
    topology
        Supplies the block size, tests, ADWIN delta and minimum shift.
    reference
        The model's reference statistics (``latent_mu_mean``, ``latent_mu_std``, ``score_mean``,
        ``score_std``) from held-out training data; stored in the model manifest.
    """

    def __init__(self, topology: Topology, reference: dict[str, Any], *, model_version: str = "",
                 partition: int | None = None) -> None:
        self.topology = topology
        self.reference = reference
        self.model_version = model_version
        self.partition = partition
        self._reset()

    def _reset(self) -> None:
        spec = self.topology.drift
        ref = self.reference
        self._mu0 = np.asarray(ref.get("latent_mu_mean", []), dtype=np.float64)
        self._sd0 = np.maximum(np.asarray(ref.get("latent_mu_std", []), dtype=np.float64), 1e-6)
        self._s0 = float(ref.get("score_mean", 0.0))
        self._ssd = max(float(ref.get("score_std", 1.0)), 1e-6)
        L = len(self._mu0)

        def mk() -> Watch:
            return Watch(spec.detector, threshold=spec.threshold, delta=spec.delta, min_shift=spec.min_shift)

        self._watch: dict[str, Watch] = {}
        if "score" in spec.tests:
            self._watch["score"] = mk()
        if "multivariate" in spec.tests and L:
            self._watch["multivariate"] = mk()
        if "latent" in spec.tests:
            for d in range(L):
                self._watch[f"latent.{d}"] = mk()
        self._block: list[FloatArray] = []  # [n, 2 + L] rows of the current block: score, mv, latent dims
        self._n = 0
        self._blocks = 0
        self._ewm_feat: FloatArray | None = None
        self._ewm_lat = np.zeros(L)
        self.signals_total = 0

    def update(
        self, *, score: FloatArray, latent_mu: FloatArray, contributions: FloatArray | None = None
    ) -> list[DriftSignal]:
        """Feed one batch (any size); returns the drift signals declared by the blocks it completed."""
        spec = self.topology.drift
        if not spec.enabled or len(score) == 0:
            return []
        zl = (latent_mu - self._mu0) / self._sd0 if len(self._mu0) else np.zeros((len(score), 0))
        zs = (score - self._s0) / self._ssd
        a = 2.0 / (1 + spec.block_size * 5)  # EWMA over ~5 blocks
        if contributions is not None and contributions.size:
            m = contributions.mean(0)
            self._ewm_feat = m if self._ewm_feat is None else _ewm(self._ewm_feat, m, a, len(contributions))
        if zl.size:
            self._ewm_lat = _ewm(self._ewm_lat, zl.mean(0), a, len(zl))
        # one row per record: standardised score, multivariate statistic, standardised latent dims
        rows = np.column_stack([zs, (zl**2).mean(axis=1) if zl.shape[1] else np.zeros(len(zs)), zl])
        out: list[DriftSignal] = []
        i = 0
        B = spec.block_size
        while i < len(rows):
            take = min(B - self._n, len(rows) - i)
            self._block.append(rows[i : i + take])
            self._n += take
            i += take
            if self._n == B:
                out += self._close_block()
        return out

    def _close_block(self) -> list[DriftSignal]:
        spec = self.topology.drift
        med = np.median(np.concatenate(self._block), axis=0)
        self._block, self._n = [], 0
        fired: dict[str, float] = {}
        for key, w in self._watch.items():
            col = 0 if key == "score" else 1 if key == "multivariate" else 2 + int(key.split(".")[1])
            if w.update(float(med[col])) and self._blocks >= spec.warmup_blocks:
                fired[key] = w.last_shift
        self._blocks += 1
        if not fired:
            return []
        self.signals_total += 1
        lat_dims = sorted(int(k.split(".")[1]) for k in fired if k.startswith("latent."))
        lat_dims = lat_dims or [int(d) for d in np.flatnonzero(np.abs(self._ewm_lat) >= spec.min_shift)]
        feats: list[str] = []
        if self._ewm_feat is not None:
            # a contribution is 0.5 z^2 per record and window position: ~0.5 * window when a feature is as
            # expected (the members' mean window in a multi-scale ensemble); report the features now at
            # least 4x that (|z| >= 2 on average)
            order = np.argsort(-self._ewm_feat)
            expected = 0.5 * float(np.mean(self.topology.member_windows))
            feats = [self.topology.feature_names[j] for j in order[:3] if self._ewm_feat[j] >= 4 * expected]
        out = []
        for test in ("multivariate", "latent", "score"):
            keys = [k for k in fired if k == test or k.startswith(test + ".")]
            if not keys:
                continue
            k = max(keys, key=lambda x: abs(fired[x]))
            out.append(DriftSignal(
                stream=self.topology.name, topology_id=self.topology.name, test=test, detector=spec.detector,
                statistic=fired[k], threshold=spec.min_shift,
                window=max(1, self._watch[k].last_width) * spec.block_size,
                latent_dims=lat_dims, features=feats, model_version=self.model_version, partition=self.partition,
            ))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "watch": {k: w.snapshot() for k, w in self._watch.items()},
            "blocks": self._blocks,
            "model_version": self.model_version,
            "ewm_feat": None if self._ewm_feat is None else self._ewm_feat.tolist(),
            "ewm_lat": self._ewm_lat.tolist(),
            # the records of the block not closed yet: without them every restore (a rebalance, a deploy)
            # dropped up to block_size - 1 records, and a partition moved more often than it filled a block
            # would never close one
            "block": np.concatenate(self._block).tolist() if self._block else [],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        if state.get("model_version") != self.model_version:
            return  # a different model has a different latent space: start afresh
        for k, st in state.get("watch", {}).items():
            if k in self._watch:
                self._watch[k].restore(st)
        self._blocks = int(state.get("blocks", 0))
        if state.get("ewm_feat") is not None:
            self._ewm_feat = np.asarray(state["ewm_feat"])
        if len(state.get("ewm_lat", [])) == len(self._ewm_lat):
            self._ewm_lat = np.asarray(state["ewm_lat"])
        block = np.asarray(state.get("block") or [], dtype=np.float64)
        if block.ndim == 2 and block.shape[1] == 2 + len(self._mu0) and len(block) < self.topology.drift.block_size:
            self._block, self._n = [block], len(block)
