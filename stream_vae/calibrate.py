"""calibrate: a label-free threshold for a false-positive budget, from reference (held-out normal) scores.

Lifecycle (alibi-detect): ``fit`` a detector, ``infer_threshold(ref_scores, fpr=...)``, then
``predict``/``p_value``. The calibration is versioned with the model (``calibration_id``).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

import numpy as np

from stream_vae.exceptions import NotCalibratedError
from stream_vae.records import FloatArray

Method = Literal["quantile", "pot"]
_MAX_REF = 4096  # reference scores kept (sorted, evenly subsampled) for p-values


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

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cal = Calibrator(method="quantile", fpr=0.01).infer_threshold(rng.normal(size=10_000))
    >>> round(cal.threshold, 1)
    2.3
    >>> bool(cal.predict(np.array([0.0, 5.0]))[1])
    True
    """

    def __init__(self, *, method: Method = "quantile", fpr: float = 0.005, tail_start: float = 0.95) -> None:
        self.method = method
        self.fpr = fpr
        self.tail_start = tail_start
        self._reset()

    def _reset(self) -> None:
        self._threshold: float | None = None
        self._ref: FloatArray = np.zeros(0)
        self._n_ref = 0
        self._gpd: tuple[float, float, float, float] | None = None  # (u, xi, sigma, tail_frac)

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

    def infer_threshold(self, ref_scores: FloatArray) -> Calibrator:
        ref = np.sort(np.asarray(ref_scores, dtype=np.float64)[np.isfinite(ref_scores)])
        if len(ref) < 20:
            raise NotCalibratedError(f"need at least 20 finite reference scores to calibrate, got {len(ref)}")
        self._n_ref = len(ref)
        idx = np.linspace(0, len(ref) - 1, min(len(ref), _MAX_REF)).round().astype(int)
        self._ref = ref[idx]
        if self.method == "pot" and self.fpr < 1 - self.tail_start:
            u = float(np.quantile(ref, self.tail_start))
            excess = ref[ref > u] - u
            if len(excess) >= 10:
                xi, sigma = _pwm_gpd(excess)
                frac = len(excess) / len(ref)
                self._gpd = (u, xi, sigma, frac)
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
        # fraction of reference scores >= s, with +1 smoothing so p is never 0
        ge = n - np.searchsorted(self._ref, scores, side="left")
        p = (ge + 1.0) / (n + 1.0)
        if self._gpd is not None:
            u, xi, sigma, frac = self._gpd
            over = scores > u
            z = np.maximum(scores[over] - u, 0.0) / sigma
            tail = np.exp(-z) if abs(xi) < 1e-6 else np.maximum(1 + xi * z, 1e-300) ** (-1 / xi)
            p[over] = frac * tail
        return np.clip(p, 1e-12, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fpr": self.fpr,
            "tail_start": self.tail_start,
            "threshold": self.threshold,
            "n_ref": self._n_ref,
            "ref": self._ref.tolist(),
            "gpd": list(self._gpd) if self._gpd else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        c = cls(method=d["method"], fpr=float(d["fpr"]), tail_start=float(d.get("tail_start", 0.95)))
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
