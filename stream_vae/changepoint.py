"""Online change detectors: one observation at a time, bounded memory, checkpointable.

Every detector here has the same small surface (STYLE rules 2, 3, 9):

* ``update(x)`` feeds one observation (a float; a vector for :class:`MultiSeriesDetector`).
  Non-finite values (NaN, inf) are *skipped*: the state does not change, the step is not counted
  and ``drift_detected`` is False for it.
* ``drift_detected`` (read-only) is True on the step at which a change is declared, and only then.
* ``change_point`` (read-only) is the detector's estimate of where the last declared change
  started, as a 0-based index into the observations it has counted (``n_seen``). For
  :class:`BOCPD` it is the first observation of the new segment (retrospective, so it is earlier
  than the step of the declaration); for :class:`RiverDetector` it is the step of the declaration.
* ``snapshot() -> dict`` returns JSON-serialisable state of bounded size; ``restore(dict)`` puts it
  back (what a worker checkpoints to Redis). Hyper-parameters are not part of the snapshot: restore
  into a detector built with the same arguments.
* ``_test_params()`` lists constructor arguments for the shared contract suite
  (``tests/contract/test_drift_contract.py``).

Detectors
---------
:class:`BOCPD`
    Bayesian online change-point detection (Adams & MacKay 2007) with a conjugate Normal-Gamma
    model (Student-t predictive), constant hazard and a truncated run-length distribution.
:class:`RiverDetector`
    ``river.drift`` ADWIN, PageHinkley or KSWIN behind the same verbs; its snapshot is the bounded
    list of recent inputs, replayed into a fresh river object on restore (river objects are never
    pickled).
:class:`MultiSeriesDetector`
    One univariate detector per dimension after online standardisation; declares a change when
    ``k`` dimensions fire within ``window`` steps and reports the dimensions ``implicated``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BOCPD",
    "ChangeDetector",
    "DetectorName",
    "MultiSeriesDetector",
    "RiverDetector",
    "RiverName",
    "make_detector",
]

FloatArray = NDArray[np.float64]
BocpdModel = Literal["constant", "linear", "ar1", "linear-ar1"]
BocpdRule = Literal["prob", "map"]
RiverName = Literal["adwin", "page_hinkley", "kswin"]
DetectorName = Literal["bocpd", "adwin", "page_hinkley", "kswin"]
Standardize = Literal["auto", "always", "never"]

_MAD_TO_SIGMA = 0.6744897501960817 * math.sqrt(2.0)
"""median(|x_t - x_{t-1}|) of i.i.d. N(0, s^2) noise is s * sqrt(2) * Phi^-1(0.75)."""
_PRUNE_LOG = math.log(1e-100)
"""Run-length hypotheses whose posterior falls below 1e-100 are dropped (keeps the state finite)."""


@runtime_checkable
class ChangeDetector(Protocol):
    """What :class:`MultiSeriesDetector` (and the drift monitor) need from a univariate detector."""

    def update(self, x: float) -> None:
        """Feed one observation."""
        ...

    @property
    def drift_detected(self) -> bool:
        """True on the step a change is declared."""
        ...

    @property
    def change_point(self) -> int | None:
        """Index (in ``n_seen`` counts) where the last declared change started."""
        ...

    @property
    def n_seen(self) -> int:
        """Number of observations counted so far."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable, bounded state."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Put back a state returned by :meth:`snapshot`."""
        ...


def _logsumexp(a: FloatArray) -> float:
    m = float(a.max())
    return m + math.log(float(np.exp(a - m).sum()))


def _check_state(state: dict[str, Any], keys: Sequence[str], owner: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner}.restore: snapshot lacks {missing}; pass a dict returned by {owner}.snapshot()")


# --------------------------------------------------------------------------------------------
# Bayesian online change-point detection
# --------------------------------------------------------------------------------------------


class _Declared:
    """Read-only results every detector here shares; subclasses set ``_drift``, ``_cp`` and ``_n_seen``.

    How ``change_point`` is defined is each detector's own (see its docstring): BOCPD's estimate of
    where the new segment started, the declaring step for river detectors, the earliest start among
    the implicated dimensions for :class:`MultiSeriesDetector`.
    """

    _drift: bool
    _cp: int | None
    _n_seen: int

    @property
    def drift_detected(self) -> bool:
        """True on the step at which a change is declared."""
        return self._drift

    @property
    def change_point(self) -> int | None:
        """Index (in ``n_seen`` counts) of the last declared change, or None."""
        return self._cp

    @property
    def n_seen(self) -> int:
        """Observations counted so far (non-finite input is skipped, not counted)."""
        return self._n_seen


class BOCPD(_Declared):
    """Bayesian online change-point detection (Adams & MacKay 2007), Normal-Gamma model.

    The data are modelled as segments. Within a segment, observations are Gaussian around a
    Bayesian linear regression with a conjugate Normal-Gamma prior (hence a Student-t predictive):

    * ``model="constant"``: unknown mean and variance (i.i.d.);
    * ``model="linear"``: unknown level, slope (per observation) and variance: a straight line;
    * ``model="ar1"``: unknown level, lag-one coefficient and variance (``x_t = a + b x_{t-1} + e``):
      autocorrelated noise is part of the segment, not a change;
    * ``model="linear-ar1"``: both, ``x_t = a + b u + c x_{t-1} + e``.

    A new segment starts at each step with probability ``1 / expected_run_length`` (constant
    hazard). The posterior over the *run length* (observations since the current segment
    started) is updated exactly at each step, then truncated so memory is bounded: hypotheses below
    1e-100 are dropped, and when more than ``max_run_length`` remain the two oldest are merged
    (probabilities added, the statistics of the more probable one kept).

    Scale-free prior. Each new segment's prior is centred on the last observation before it and
    scaled by a robust running noise level: ``s = median(|x_t - x_{t-1}|) / (sqrt(2) * 0.6745)``
    over the last ``scale_window`` differences (insensitive to level shifts), with
    ``beta0 = alpha0 * s**2`` (prior precision ``alpha0 / beta0 = 1 / s**2``); the level has prior
    precision ``kappa0 / sigma**2`` and the second coefficient ``kappa1 / sigma**2`` (``ar1``: the
    lag is measured in units of ``s``). Multiplying the input by a positive constant or adding a
    constant does not change the decisions. The first ``grace_period`` observations open the
    first segment (its prior scale comes from their differences); no change can start among them.

    Decision rule. Let ``p_t`` be the posterior probability that the current segment started at
    most ``window`` observations ago and more than ``window`` observations after the last declared
    change point (the start of the stream counts as one):

    * ``rule="prob"``: declare a change when ``p_t >= threshold``;
    * ``rule="map"``: declare a change when the most probable run length is such a young segment
      (the MAP run length has dropped).

    :attr:`change_point` is then the start of the most probable young segment: it is reported with
    a delay of a few observations but placed where the change happened. A change is declared once,
    and two declared change points are more than ``window`` observations apart.

    Defaults. ``alpha0 = kappa0 = kappa1 = 1`` (weak, unit-information priors), ``threshold=0.5``
    ("a change in the last ``window=10`` observations is more likely than not") are set on
    principle. The segment model and the hazard were chosen on a synthetic suite of
    piecewise-stationary series (mean and variance shifts, slope changes, AR(1) noise, change-free
    series; :func:`stream_vae.evaluation.tcpd.run_synthetic`), never on benchmark labels:
    ``model="linear-ar1"`` and ``expected_run_length=250`` had the best mean F1 there (table in
    ``benchmarks/tcpd.md``). Caveat for drift monitoring: ``linear`` and ``linear-ar1`` treat a
    steady trend as one segment, so a slow, steady drift is *not* a change for them; where a trend
    in a score or latent mean is itself the alarm, use ``model="ar1"`` (or ``"constant"``).

    Parameters
    ----------
    expected_run_length : float
        Prior mean segment length ``lambda``; the hazard is ``1 / lambda``.
    model : {"constant", "linear", "ar1", "linear-ar1"}
        Segment model (see above).
    rule : {"prob", "map"}
        Decision rule (see above).
    threshold : float
        Posterior probability of a recent change needed to declare one (``rule="prob"``).
    window : int
        How recent (in observations) a segment start must be to be declared, and the minimum
        distance between two declared change points.
    alpha0 : float
        Shape of the Gamma prior on the noise precision (weak when small).
    kappa0 : float
        Prior precision of the segment level, in units of the noise precision.
    kappa1 : float
        Prior precision of the second coefficient (slope or lag), in units of the noise precision.
    max_run_length : int
        Maximum number of run-length hypotheses kept (memory is O(max_run_length) floats).
    grace_period : int
        Warm-up observations (at least 1): they form the first segment and set its prior scale;
        no change can start among them.
    scale_window : int
        Number of recent absolute differences kept for the noise level.

    Raises
    ------
    ValueError
        A hyper-parameter is out of range; the message says which and what is allowed.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0.0, 1.0, 100), rng.normal(4.0, 1.0, 100)]
    >>> det = BOCPD()
    >>> found = []
    >>> for i, v in enumerate(x):
    ...     det.update(float(v))
    ...     if det.drift_detected:
    ...         found.append((i, det.change_point))
    >>> found  # declared at the first point after the jump, placed 2 points early
    [(100, 98)]
    """

    state_keys = (
        "n_seen",
        "log_r",
        "n",
        "c",
        "b0",
        "sy",
        "syy",
        "s1",
        "s2",
        "s11",
        "s12",
        "s22",
        "s1y",
        "s2y",
        "diffs",
        "warm",
        "last_x",
        "last_cp",
        "drift_detected",
        "change_probability",
    )
    _ROWS = ("n", "c", "b0", "sy", "syy", "s1", "s2", "s11", "s12", "s22", "s1y", "s2y")

    def __init__(
        self,
        *,
        expected_run_length: float = 250.0,
        model: BocpdModel = "linear-ar1",
        rule: BocpdRule = "prob",
        threshold: float = 0.5,
        window: int = 10,
        alpha0: float = 1.0,
        kappa0: float = 1.0,
        kappa1: float = 1.0,
        max_run_length: int = 500,
        grace_period: int = 5,
        scale_window: int = 100,
    ) -> None:
        self.expected_run_length = expected_run_length
        self.model = model
        self.rule = rule
        self.threshold = threshold
        self.window = window
        self.alpha0 = alpha0
        self.kappa0 = kappa0
        self.kappa1 = kappa1
        self.max_run_length = max_run_length
        self.grace_period = grace_period
        self.scale_window = scale_window
        self._validate()
        self._reset()

    def _validate(self) -> None:
        if not self.expected_run_length > 1.0:
            raise ValueError(f"BOCPD: expected_run_length must be > 1, got {self.expected_run_length}")
        if self.model not in ("constant", "linear", "ar1", "linear-ar1"):
            raise ValueError(f"BOCPD: model must be 'constant', 'linear', 'ar1' or 'linear-ar1', got {self.model!r}")
        if self.rule not in ("prob", "map"):
            raise ValueError(f"BOCPD: rule must be 'prob' or 'map', got {self.rule!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"BOCPD: threshold must be in (0, 1], got {self.threshold}")
        for name in ("alpha0", "kappa0", "kappa1"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"BOCPD: {name} must be > 0, got {getattr(self, name)}")
        if self.window < 1:
            raise ValueError(f"BOCPD: window must be >= 1, got {self.window}")
        if self.max_run_length <= max(1, self.window):
            raise ValueError(f"BOCPD: max_run_length must be > window and > 1, got {self.max_run_length}")
        if self.grace_period < 1 or self.scale_window < 1:
            raise ValueError(
                f"BOCPD: grace_period and scale_window must be >= 1, got {self.grace_period}, {self.scale_window}"
            )

    def _reset(self) -> None:
        self._n_seen = 0
        self._log_r = np.empty(0)  # log posterior of each run-length hypothesis, newest first
        # one column per hypothesis; rows: observations n, prior centre c, prior beta b0, and the
        # sums of y, y**2, h1, h2, h1**2, h1*h2, h2**2, h1*y, h2*y with y = x - c and h1, h2 the
        # regressors besides the intercept (see _regressors)
        self._S = np.empty((len(self._ROWS), 0))
        self._diffs: deque[float] = deque(maxlen=self.scale_window)
        self._warm: list[float] = []  # the first grace_period observations (the first segment)
        self._last_x: float | None = None
        self._cp: int | None = None
        self._drift = False
        self._p = 0.0
        # lgamma((nu + 1) / 2) - lgamma(nu / 2) with nu = 2 * alpha0 + n, for n = 0..max_run_length
        nus = 2.0 * self.alpha0 + np.arange(self.max_run_length + 1, dtype=np.float64)
        self._lg_table = np.array([math.lgamma((v + 1) / 2) - math.lgamma(v / 2) for v in nus])

    # -- read-only results ---------------------------------------------------------------------

    @property
    def change_probability(self) -> float:
        """Posterior probability of a recent, not yet reported change (``p_t`` of the rule)."""
        return self._p

    @property
    def run_length(self) -> int:
        """Most probable number of observations in the current segment (0 before any data)."""
        if self._log_r.size == 0:
            return 0
        return int(self._S[0, int(np.argmax(self._log_r))])

    # -- model ----------------------------------------------------------------------------------

    def _regressors(self, prev: float | None) -> FloatArray:
        """Regressors ``h1, h2`` (shape (2, m)) of each hypothesis for the next observation.

        ``h1`` is the index in the segment (``linear``, ``linear-ar1``) or the lag (``ar1``); ``h2``
        is the lag (``linear-ar1``). The lag is ``(prev - c) / s`` in units of the segment's prior
        noise scale ``s = sqrt(b0 / alpha0)``, so that its coefficient is free of the data's units.
        """
        n, c, b0 = self._S[0], self._S[1], self._S[2]
        h = np.zeros((2, n.size))
        lag = None if prev is None else (prev - c) / np.sqrt(b0 / self.alpha0)
        if self.model in ("linear", "linear-ar1"):
            h[0] = n
        if lag is not None and self.model == "ar1":
            h[0] = lag
        if lag is not None and self.model == "linear-ar1":
            h[1] = lag
        return h

    def _log_predictive(self, x: float, h: FloatArray) -> FloatArray:
        """Student-t log density of ``x`` under each hypothesis' posterior predictive."""
        n, c, b0, sy, syy, s1, s2, s11, s12, s22, s1y, s2y = self._S
        an = self.alpha0 + 0.5 * n
        l11 = self.kappa0 + n
        if self.model == "constant":
            m = sy / l11
            bn = b0 + 0.5 * (syy - m * sy)
            loc = c + m
            var = 1.0 / l11
        elif self.model in ("linear", "ar1"):
            l22 = self.kappa1 + s11
            det = l11 * l22 - s1 * s1
            ma = (l22 * sy - s1 * s1y) / det
            mb = (l11 * s1y - s1 * sy) / det
            bn = b0 + 0.5 * (syy - ma * sy - mb * s1y)
            loc = c + ma + mb * h[0]
            var = (l22 - 2.0 * h[0] * s1 + h[0] * h[0] * l11) / det
        else:
            # symmetric 3x3 posterior precision [[a, b, c], [b, d, e], [c, e, f]], inverted by cofactors
            a, b, cc, d, e, f = l11, s1, s2, self.kappa1 + s11, s12, self.kappa1 + s22
            i00, i01, i02 = d * f - e * e, cc * e - b * f, b * e - cc * d
            i11, i12, i22 = a * f - cc * cc, b * cc - a * e, a * d - b * b
            det = a * i00 + b * i01 + cc * i02
            m0 = (i00 * sy + i01 * s1y + i02 * s2y) / det
            m1 = (i01 * sy + i11 * s1y + i12 * s2y) / det
            m2 = (i02 * sy + i12 * s1y + i22 * s2y) / det
            bn = b0 + 0.5 * (syy - m0 * sy - m1 * s1y - m2 * s2y)
            loc = c + m0 + m1 * h[0] + m2 * h[1]
            h1, h2 = h[0], h[1]
            var = (i00 + i11 * h1 * h1 + i22 * h2 * h2 + 2.0 * (i01 * h1 + i02 * h2 + i12 * h1 * h2)) / det
        # each observation is read as rounded to the data's resolution q (variance q**2 / 12 each, and the
        # prior scale is at least that, _noise_scale): on counts or quantised metrics a young run of
        # identical values otherwise predicted its next value with a variance near 0, out-bid every longer
        # run, and a stationary series "changed" every few steps. Negligible on continuous data.
        scale2 = (np.maximum(bn, b0) + 0.5 * n * self._rounding_var()) / an * (1.0 + np.maximum(var, 0.0))
        nu = 2.0 * an
        top = self.max_run_length
        lg: FloatArray = self._lg_table[np.minimum(n, top).astype(np.intp)]
        for j in np.flatnonzero(n > top):  # only the merged oldest hypothesis can be longer
            v = float(nu[j])
            lg[j] = math.lgamma((v + 1) / 2) - math.lgamma(v / 2)
        z2 = (x - loc) ** 2 / (nu * scale2)
        out: FloatArray = lg - 0.5 * np.log(nu * math.pi * scale2) - 0.5 * (nu + 1.0) * np.log1p(z2)
        return out

    def _rounding_var(self) -> float:
        """``q**2 / 12`` for the data's resolution ``q``, the smallest non-zero recent difference."""
        d = np.fromiter(self._diffs, dtype=np.float64)
        d = d[d > 0]
        return float(d.min()) ** 2 / 12.0 if d.size else 0.0

    def _noise_scale(self, around: float) -> float:
        s = float(np.median(np.fromiter(self._diffs, dtype=np.float64))) / _MAD_TO_SIGMA if self._diffs else 0.0
        # at least the rounding noise: on counts most differences are 0 and their median says nothing
        return max(s, math.sqrt(self._rounding_var()), 1e-9 * (abs(around) + 1e-3))

    def _new_column(self, c: float) -> FloatArray:
        col = np.zeros((len(self._ROWS), 1))
        s = self._noise_scale(c)
        col[1, 0] = c
        col[2, 0] = self.alpha0 * s * s
        return col

    # -- the verb -------------------------------------------------------------------------------

    def update(self, x: float) -> None:
        """Feed one observation; non-finite values are skipped.

        Parameters
        ----------
        x : float
            The observation.
        """
        self._drift = False
        x = float(x)
        if not math.isfinite(x):
            return
        if self._n_seen < self.grace_period:
            self._warm.append(x)
        else:
            assert self._last_x is not None
            if self._log_r.size == 0:
                self._start()
            hazard = 1.0 / self.expected_run_length
            self._S = np.concatenate((self._new_column(self._last_x), self._S), axis=1)
            self._log_r = np.concatenate(([math.log(hazard)], self._log_r + math.log1p(-hazard)))
            h = self._regressors(self._last_x)
            self._log_r = self._log_r + self._log_predictive(x, h)
            self._log_r -= _logsumexp(self._log_r)
            self._absorb(x, h)
            self._truncate()
        if self._last_x is not None:
            self._diffs.append(abs(x - self._last_x))
        self._last_x = x
        self._n_seen += 1
        if self._log_r.size:
            self._decide()

    def _start(self) -> None:
        """Open the first segment: prior from the warm-up differences, then absorb the warm-up."""
        self._S = self._new_column(self._warm[0])
        self._log_r = np.zeros(1)
        prev: float | None = None
        for v in self._warm:
            self._absorb(v, self._regressors(prev))
            prev = v
        self._warm = []

    def _absorb(self, x: float, h: FloatArray) -> None:
        S = self._S
        y = x - S[1]
        S[0] += 1.0
        S[3] += y
        S[4] += y * y
        S[5] += h[0]
        S[6] += h[1]
        S[7] += h[0] * h[0]
        S[8] += h[0] * h[1]
        S[9] += h[1] * h[1]
        S[10] += h[0] * y
        S[11] += h[1] * y

    def _truncate(self) -> None:
        keep = self._log_r >= _PRUNE_LOG
        if not keep.all():
            keep[int(np.argmax(self._log_r))] = True
            self._log_r = self._log_r[keep]
            self._S = self._S[:, keep]
            self._log_r -= _logsumexp(self._log_r)
        top = self.max_run_length
        if self._log_r.size > top:  # merge the two oldest hypotheses into column top - 1
            a, b = top - 1, top
            src = a if self._log_r[a] >= self._log_r[b] else b
            self._S[:, a] = self._S[:, src]
            self._log_r[a] = np.logaddexp(self._log_r[a], self._log_r[b])
            self._log_r = self._log_r[:top]
            self._S = self._S[:, :top]

    def _decide(self) -> None:
        n = self._S[0]
        start = (self._n_seen - 1) - n + 1.0
        ref = 0 if self._cp is None else self._cp  # the stream start counts as a change
        young = (n <= self.window) & (start > ref + self.window)
        if not young.any():
            self._p = 0.0
            return
        idx = np.flatnonzero(young)
        self._p = float(np.exp(self._log_r[idx]).sum())
        best = int(idx[np.argmax(self._log_r[idx])])
        fire = self._p >= self.threshold if self.rule == "prob" else best == int(np.argmax(self._log_r))
        if fire:
            self._drift = True
            self._cp = int(start[best])

    # -- checkpoint -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return the learned state as a JSON-serialisable dict (O(max_run_length + scale_window)).

        Returns
        -------
        dict
            Keys :attr:`state_keys`; numbers and lists of numbers only.
        """
        out: dict[str, Any] = {"n_seen": self._n_seen, "log_r": self._log_r.tolist()}
        out.update({name: row.tolist() for name, row in zip(self._ROWS, self._S, strict=True)})
        out.update(
            diffs=list(self._diffs),
            warm=list(self._warm),
            last_x=self._last_x,
            last_cp=self._cp,
            drift_detected=self._drift,
            change_probability=self._p,
        )
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the learned state by ``state`` (from :meth:`snapshot` of an identical detector).

        Raises
        ------
        ValueError
            A key is missing or the arrays disagree in length.
        """
        _check_state(state, self.state_keys, "BOCPD")
        log_r = np.asarray(state["log_r"], dtype=np.float64).reshape(-1)
        rows = [np.asarray(state[k], dtype=np.float64).reshape(-1) for k in self._ROWS]
        if any(r.size != log_r.size for r in rows) or log_r.size > self.max_run_length:
            raise ValueError(
                "BOCPD.restore: run-length arrays differ in length or exceed max_run_length; "
                "restore into a detector built with the same max_run_length"
            )
        self._reset()
        self._log_r = log_r
        self._S = np.stack(rows) if rows[0].size else np.empty((len(self._ROWS), 0))
        self._n_seen = int(state["n_seen"])
        self._diffs.extend(float(d) for d in state["diffs"])
        self._warm = [float(v) for v in state["warm"]]
        self._last_x = None if state["last_x"] is None else float(state["last_x"])
        self._cp = None if state["last_cp"] is None else int(state["last_cp"])
        self._drift = bool(state["drift_detected"])
        self._p = float(state["change_probability"])

    @classmethod
    def _test_params(cls) -> list[dict[str, Any]]:
        """Constructor arguments for the contract suite."""
        return [
            {},
            {"model": "linear", "rule": "map", "max_run_length": 40, "window": 5},
            {"model": "ar1", "expected_run_length": 20.0, "threshold": 0.8, "max_run_length": 30, "scale_window": 10},
        ]


# --------------------------------------------------------------------------------------------
# river wrapper
# --------------------------------------------------------------------------------------------


class RiverDetector(_Declared):
    """A ``river.drift`` detector (ADWIN, PageHinkley, KSWIN) behind the verbs of this module.

    The river object is built from ``name`` and ``params`` and is never pickled: the snapshot is
    the list of the last ``max_replay`` inputs, and :meth:`restore` replays it into a fresh river
    object. The restored detector is *exactly* the original one when it had seen at most
    ``max_replay`` inputs (KSWIN: with a fixed ``seed``); after that it is the detector warmed on
    the last ``max_replay`` inputs (ADWIN's window and PageHinkley's sums restart from them), which
    is the price of a bounded snapshot. :attr:`change_point` is the step of the declaration (river
    does not estimate where the change started).

    Parameters
    ----------
    name : {"adwin", "page_hinkley", "kswin"}
        Which river detector.
    max_replay : int
        Number of recent inputs kept for the snapshot.
    **params
        Passed unchanged to the river class (e.g. ``delta=0.002`` for ADWIN).

    Raises
    ------
    ValueError
        Unknown ``name`` or ``max_replay < 1``.

    Examples
    --------
    >>> det = RiverDetector("page_hinkley", threshold=10.0)
    >>> for v in [0.0] * 100 + [5.0] * 20:
    ...     det.update(v)
    ...     if det.drift_detected:
    ...         print(det.change_point)
    102
    """

    state_keys = ("detector", "n_seen", "recent", "drift_detected", "change_point")

    def __init__(self, name: RiverName = "adwin", *, max_replay: int = 1000, **params: Any) -> None:
        self.name = name
        self.max_replay = max_replay
        self.params = params
        if name not in ("adwin", "page_hinkley", "kswin"):
            raise ValueError(f"RiverDetector: name must be 'adwin', 'page_hinkley' or 'kswin', got {name!r}")
        if max_replay < 1:
            raise ValueError(f"RiverDetector: max_replay must be >= 1, got {max_replay}")
        self._reset()

    def _new_river(self) -> Any:
        from river import drift

        classes: dict[str, Any] = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}
        cls = classes[self.name]
        return cls(**self.params)

    def _reset(self) -> None:
        self._river = self._new_river()
        self._recent: deque[float] = deque(maxlen=self.max_replay)
        self._n_seen = 0
        self._drift = False
        self._cp: int | None = None

    def update(self, x: float) -> None:
        """Feed one observation; non-finite values are skipped.

        Parameters
        ----------
        x : float
            The observation.
        """
        self._drift = False
        x = float(x)
        if not math.isfinite(x):
            return
        self._river.update(x)
        self._recent.append(x)
        self._n_seen += 1
        if self._river.drift_detected:
            self._drift = True
            self._cp = self._n_seen - 1

    def snapshot(self) -> dict[str, Any]:
        """Return ``{"detector", "n_seen", "recent", "drift_detected", "change_point"}`` (bounded).

        Returns
        -------
        dict
            ``recent`` holds at most ``max_replay`` floats.
        """
        return {
            "detector": self.name,
            "n_seen": self._n_seen,
            "recent": list(self._recent),
            "drift_detected": self._drift,
            "change_point": self._cp,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the river object and replay the recent inputs of ``state`` into it.

        Raises
        ------
        ValueError
            A key is missing or the snapshot was taken from another river detector.
        """
        _check_state(state, self.state_keys, "RiverDetector")
        if state["detector"] != self.name:
            raise ValueError(
                f"RiverDetector.restore: snapshot is of {state['detector']!r}, this detector is {self.name!r}"
            )
        self._reset()
        for v in state["recent"][-self.max_replay :]:
            self._river.update(float(v))
            self._recent.append(float(v))
        self._n_seen = int(state["n_seen"])
        self._drift = bool(state["drift_detected"])
        self._cp = None if state["change_point"] is None else int(state["change_point"])

    @classmethod
    def _test_params(cls) -> list[dict[str, Any]]:
        """Constructor arguments for the contract suite."""
        return [
            {"name": "adwin", "max_replay": 300},
            {"name": "page_hinkley", "max_replay": 300},
            {"name": "kswin", "seed": 7, "max_replay": 300},
        ]


def make_detector(name: DetectorName = "bocpd", **params: Any) -> BOCPD | RiverDetector:
    """Build a univariate detector by name.

    Parameters
    ----------
    name : {"bocpd", "adwin", "page_hinkley", "kswin"}
        ``"bocpd"`` is :class:`BOCPD`; the others are :class:`RiverDetector`.
    **params
        Constructor arguments.

    Returns
    -------
    BOCPD or RiverDetector

    Examples
    --------
    >>> type(make_detector("adwin", delta=0.01)).__name__
    'RiverDetector'
    """
    if name == "bocpd":
        return BOCPD(**params)
    return RiverDetector(name, **params)


# --------------------------------------------------------------------------------------------
# multivariate
# --------------------------------------------------------------------------------------------


class MultiSeriesDetector(_Declared):
    """One univariate detector per dimension, after online standardisation; k-of-D vote.

    Each dimension ``d`` is standardised with its running mean and standard deviation (Welford,
    using the statistics *before* the current value, so a jump is not damped by itself), then fed
    to its own detector (built by :func:`make_detector` from ``detector`` and ``params``).
    ``standardize="auto"`` standardises for the river detectors, whose thresholds are in the units
    of the data, and not for :class:`BOCPD`, which is scale-free by construction (its prior is
    scaled by a running noise level); on the synthetic suite of
    :mod:`stream_vae.evaluation.tcpd` the extra, time-varying standardisation only cost BOCPD
    accuracy. A change is declared when at least ``k`` dimensions have fired
    within the last ``window`` steps; the firings are then consumed, so each is counted once.
    Non-finite entries of a vector are skipped for their dimension only.

    Parameters
    ----------
    n_dims : int
        Number of dimensions D.
    detector : {"bocpd", "adwin", "page_hinkley", "kswin"}
        The univariate detector for each dimension.
    params : dict, optional
        Its constructor arguments (JSON-able).
    k : int
        Number of dimensions that must fire within ``window`` steps (1 = any).
    window : int
        Steps within which the ``k`` firings must fall.
    standardize : {"auto", "always", "never"}
        Standardise each dimension online before its detector (``"auto"``: unless it is BOCPD).

    Raises
    ------
    ValueError
        ``n_dims < 1``, ``k`` not in ``1..n_dims`` or ``window < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> X = rng.normal(size=(200, 3))
    >>> X[120:, 2] += 5.0
    >>> det = MultiSeriesDetector(3)
    >>> for i, row in enumerate(X):
    ...     det.update(row)
    ...     if det.drift_detected:
    ...         print(i, det.change_point, det.implicated)
    120 120 [2]
    """

    state_keys = (
        "n_seen",
        "count",
        "mean",
        "m2",
        "fires",
        "detectors",
        "drift_detected",
        "change_point",
        "implicated",
    )

    def __init__(
        self,
        n_dims: int,
        *,
        detector: DetectorName = "bocpd",
        params: dict[str, Any] | None = None,
        k: int = 1,
        window: int = 5,
        standardize: Standardize = "auto",
    ) -> None:
        self.n_dims = n_dims
        self.detector = detector
        self.params = params
        self.k = k
        self.window = window
        self.standardize = standardize
        if n_dims < 1:
            raise ValueError(f"MultiSeriesDetector: n_dims must be >= 1, got {n_dims}")
        if not 1 <= k <= n_dims:
            raise ValueError(f"MultiSeriesDetector: k must be in 1..n_dims={n_dims}, got {k}")
        if window < 1:
            raise ValueError(f"MultiSeriesDetector: window must be >= 1, got {window}")
        if standardize not in ("auto", "always", "never"):
            raise ValueError(
                f"MultiSeriesDetector: standardize must be 'auto', 'always' or 'never', got {standardize!r}"
            )
        self._reset()

    def _reset(self) -> None:
        self._detectors = [make_detector(self.detector, **(self.params or {})) for _ in range(self.n_dims)]
        self._count = np.zeros(self.n_dims)
        self._mean = np.zeros(self.n_dims)
        self._m2 = np.zeros(self.n_dims)
        self._fires: list[tuple[int, int] | None] = [None] * self.n_dims  # (step fired, change start)
        self._n_seen = 0
        self._drift = False
        self._cp: int | None = None
        self._implicated: list[int] = []

    @property
    def implicated(self) -> list[int]:
        """Dimensions (0-based) that fired for the last declared change."""
        return list(self._implicated)

    @property
    def _scaled(self) -> bool:
        return self.standardize == "always" or (self.standardize == "auto" and self.detector != "bocpd")

    def _standardise(self, d: int, v: float) -> float:
        if not self._scaled:
            return v
        n, mean = self._count[d], self._mean[d]
        sd = math.sqrt(self._m2[d] / (n - 1)) if n >= 2 else 0.0
        # no spread before two values: the second one divided by the floor gave about -2e9, which blinded ADWIN
        z = (v - mean) / max(sd, 1e-9 * (abs(mean) + 1e-3)) if n >= 2 else 0.0
        n += 1
        delta = v - mean
        self._mean[d] = mean + delta / n
        self._m2[d] += delta * (v - self._mean[d])
        self._count[d] = n
        return z

    def update(self, x: ArrayLike) -> None:
        """Feed one vector of ``n_dims`` values; non-finite entries are skipped per dimension.

        Parameters
        ----------
        x : array_like of float, shape (n_dims,)
            The observation.

        Raises
        ------
        ValueError
            ``x`` does not have ``n_dims`` entries.
        """
        self._drift = False
        row = np.asarray(x, dtype=np.float64).reshape(-1)
        if row.size != self.n_dims:
            raise ValueError(f"MultiSeriesDetector.update: expected {self.n_dims} values, got {row.size}")
        finite = np.isfinite(row)
        if not finite.any():
            return
        t = self._n_seen
        self._n_seen += 1
        for d in np.flatnonzero(finite):
            det = self._detectors[d]
            det.update(self._standardise(int(d), float(row[d])))
            if det.drift_detected and det.change_point is not None:
                lag = det.n_seen - 1 - det.change_point
                self._fires[d] = (t, t - lag)
        recent = [d for d, f in enumerate(self._fires) if f is not None and f[0] > t - self.window]
        if len(recent) >= self.k:
            starts = [f[1] for f in self._fires if f is not None and f[0] > t - self.window]
            self._drift = True
            self._cp = max(0, min(starts))
            self._implicated = recent
            self._fires = [None] * self.n_dims

    def snapshot(self) -> dict[str, Any]:
        """Return the standardiser, pending firings and each dimension's detector snapshot.

        Returns
        -------
        dict
            Bounded by ``n_dims`` times the size of one detector's snapshot.
        """
        return {
            "n_seen": self._n_seen,
            "count": self._count.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
            "fires": [None if f is None else list(f) for f in self._fires],
            "detectors": [d.snapshot() for d in self._detectors],
            "drift_detected": self._drift,
            "change_point": self._cp,
            "implicated": list(self._implicated),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Put back a state from :meth:`snapshot` of a detector with the same arguments.

        Raises
        ------
        ValueError
            A key is missing or the number of dimensions differs.
        """
        _check_state(state, self.state_keys, "MultiSeriesDetector")
        if len(state["detectors"]) != self.n_dims or len(state["mean"]) != self.n_dims:
            raise ValueError(
                f"MultiSeriesDetector.restore: snapshot has {len(state['detectors'])} dimensions, "
                f"this detector {self.n_dims}"
            )
        self._reset()
        for det, sub in zip(self._detectors, state["detectors"], strict=True):
            det.restore(sub)
        self._n_seen = int(state["n_seen"])
        self._count = np.asarray(state["count"], dtype=np.float64)
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._m2 = np.asarray(state["m2"], dtype=np.float64)
        self._fires = [None if f is None else (int(f[0]), int(f[1])) for f in state["fires"]]
        self._drift = bool(state["drift_detected"])
        self._cp = None if state["change_point"] is None else int(state["change_point"])
        self._implicated = [int(d) for d in state["implicated"]]

    @classmethod
    def _test_params(cls) -> list[dict[str, Any]]:
        """Constructor arguments for the contract suite."""
        return [
            {"n_dims": 3},
            {"n_dims": 2, "detector": "page_hinkley", "k": 2, "params": {"max_replay": 200}},
            {"n_dims": 2, "params": {"max_run_length": 30}, "standardize": "always"},
        ]
