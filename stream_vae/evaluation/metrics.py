"""Benchmark metrics: point-adjusted F1, best F1, AUC-PR, HitRate@P%, NAB score, TCPD F1 and cover.

Everything here is pure numpy on in-memory arrays (no I/O); the loaders live in
:mod:`stream_vae.evaluation.datasets`. Each scorer was written from the public description of its
benchmark, not from the benchmarks' code; the conventions are stated in each docstring.

Conventions shared by the anomaly metrics
-----------------------------------------
* A prediction is ``score >= threshold``; a label or prediction array holds 0/1 or booleans.
* An anomaly *segment* is a maximal run of consecutive 1s in the label; segments and
  interpretation ranges are half-open ``[start, end)`` with 0-based rows.
* Undefined ratios (precision with no positive prediction, recall with no positive label,
  F1 with P + R = 0) are 0.0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NAB_PROFILES",
    "NabProfile",
    "auc_pr",
    "best_f1",
    "f1_score",
    "hitrate_at_p",
    "nab_counts",
    "nab_normalized_score",
    "nab_null_score",
    "nab_perfect_score",
    "nab_probation_length",
    "nab_raw_score",
    "nab_scaled_sigmoid",
    "nab_score",
    "nab_window_indices",
    "point_adjust",
    "tcpd_cover",
    "tcpd_f1",
    "tcpd_precision_recall",
]

Window = tuple[Any, Any]
"""An NAB anomaly window ``(first, last)``, both inclusive, in the units of the timestamps."""

NabFile = tuple[ArrayLike, ArrayLike, Sequence[Window]]
"""One NAB file for :func:`nab_score`: ``(detections, timestamps, windows)``."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_binary(x: ArrayLike, name: str) -> NDArray[np.bool_]:
    """Return ``x`` as a 1-D boolean array; reject anything that is not 0/1."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 (or booleans)")
    return arr.astype(np.bool_)


def _as_scores(x: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _same_length(a: NDArray[Any], b: NDArray[Any], names: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names} differ in length: {a.shape[0]} != {b.shape[0]}")


def _scored_labels(
    scores: ArrayLike, label: ArrayLike, what: str
) -> tuple[NDArray[np.float64], NDArray[np.bool_], int]:
    """Validated scores and labels of equal length, and the number of positives (at least one)."""
    s = _as_scores(scores)
    lab = _as_binary(label, "label")
    _same_length(s, lab, "scores and label")
    n_pos = int(np.count_nonzero(lab))
    if n_pos == 0:
        raise ValueError(f"label has no positive; {what} is undefined")
    return s, lab, n_pos


def _segments(label: NDArray[np.bool_]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Half-open ``(starts, ends)`` of the runs of True in ``label``."""
    padded = np.concatenate(([0], label.astype(np.int8), [0]))
    edges = np.diff(padded)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


# --------------------------------------------------------------------------------------------
# point-wise and point-adjusted F1, AUC-PR
# --------------------------------------------------------------------------------------------


def point_adjust(pred: ArrayLike, label: ArrayLike) -> NDArray[np.bool_]:
    """Point-adjust predictions (Xu et al. 2018): a segment hit anywhere counts as fully detected.

    Parameters
    ----------
    pred : array_like of 0/1 or bool, shape (T,)
        Point-wise predictions.
    label : array_like of 0/1 or bool, shape (T,)
        Ground truth; each maximal run of 1s is one anomaly segment.

    Returns
    -------
    numpy.ndarray of bool, shape (T,)
        ``pred`` with every labelled segment that contains at least one predicted point set to
        True over its whole length. Predictions outside segments are unchanged.

    Examples
    --------
    >>> point_adjust([0, 1, 0, 0, 0, 1], [1, 1, 1, 0, 1, 0]).astype(int).tolist()
    [1, 1, 1, 0, 0, 1]
    """
    p = _as_binary(pred, "pred")
    lab = _as_binary(label, "label")
    _same_length(p, lab, "pred and label")
    out = p.copy()
    starts, ends = _segments(lab)
    if starts.size:
        hits = np.concatenate(([0], np.cumsum(p, dtype=np.int64)))
        detected = hits[ends] - hits[starts] > 0
        for s, e in zip(starts[detected], ends[detected], strict=True):
            out[s:e] = True
    return out


def f1_score(pred: ArrayLike, label: ArrayLike) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1.

    Parameters
    ----------
    pred, label : array_like of 0/1 or bool, shape (T,)
        Predictions and ground truth. Apply :func:`point_adjust` first for the PA protocol.

    Returns
    -------
    tuple of float
        ``(precision, recall, f1)``; an undefined ratio is 0.0.

    Examples
    --------
    >>> f1_score([1, 1, 0, 0], [1, 0, 1, 0])
    (0.5, 0.5, 0.5)
    """
    p = _as_binary(pred, "pred")
    lab = _as_binary(label, "label")
    _same_length(p, lab, "pred and label")
    tp = int(np.count_nonzero(p & lab))
    fp = int(np.count_nonzero(p & ~lab))
    fn = int(np.count_nonzero(~p & lab))
    return _prf(tp, fp, fn)


def _candidate_thresholds(s: NDArray[np.float64], n_thresholds: int | None) -> NDArray[np.float64]:
    """Candidate thresholds in DEScending order: all unique scores, or a quantile grid of them."""
    if n_thresholds is None:
        cand = np.unique(s)
    else:
        if n_thresholds < 1:
            raise ValueError("n_thresholds must be >= 1 or None")
        q = np.linspace(0.0, 1.0, n_thresholds)
        cand = np.unique(np.quantile(s, q, method="inverted_cdf"))
    return np.asarray(cand[::-1], dtype=np.float64)


def best_f1(
    scores: ArrayLike,
    label: ArrayLike,
    *,
    point_adjusted: bool,
    n_thresholds: int | None = None,
) -> tuple[float, float, float, float]:
    """Best F1 over thresholds on the test labels (the usual, optimistic, SMD protocol).

    The search is exact and costs O(T log T): the confusion counts of every candidate threshold
    come from one sort. Without point-adjust, TP and FP are cumulative counts over the scores
    sorted in descending order. With point-adjust, a segment is detected at threshold ``t`` iff its
    maximum score is ``>= t`` (then all its rows are TP), and FP counts normal rows with score
    ``>= t``; both are read off sorted arrays with ``searchsorted``. There is therefore no need
    for a coarse grid; ``n_thresholds`` only exists to mimic papers that search a grid.

    Parameters
    ----------
    scores : array_like of float, shape (T,)
        Anomaly scores, higher = more anomalous. NaN is rejected.
    label : array_like of 0/1 or bool, shape (T,)
        Ground truth; must contain at least one positive.
    point_adjusted : bool
        Score the point-adjusted predictions (see :func:`point_adjust`).
    n_thresholds : int or None, optional
        None (default): every unique score is a candidate. An int ``n``: the candidates are the
        ``n`` quantiles ``np.quantile(scores, linspace(0, 1, n), method="inverted_cdf")`` (observed
        scores), deduplicated.

    Returns
    -------
    tuple of float
        ``(f1, threshold, precision, recall)``. ``threshold`` is an observed score; predictions are
        ``scores >= threshold``. Ties in F1 go to the highest threshold.

    Examples
    --------
    >>> best_f1([0.1, 0.9, 0.8, 0.3], [0, 1, 0, 1], point_adjusted=False)
    (0.8, 0.3, 0.6666666666666666, 1.0)
    >>> best_f1([0.1, 0.9, 0.2, 0.0], [0, 1, 1, 1], point_adjusted=True)
    (1.0, 0.9, 1.0, 1.0)
    """
    s, lab, n_pos = _scored_labels(scores, label, "best F1")
    thr = _candidate_thresholds(s, n_thresholds)

    normal_sorted = np.sort(s[~lab])
    fp = (normal_sorted.size - np.searchsorted(normal_sorted, thr, side="left")).astype(np.float64)
    if point_adjusted:
        starts, ends = _segments(lab)
        seg_max = np.array([s[a:b].max() for a, b in zip(starts, ends, strict=True)])
        seg_len = (ends - starts).astype(np.float64)
        order = np.argsort(seg_max, kind="stable")
        seg_max_sorted = seg_max[order]
        suffix = np.concatenate((np.cumsum(seg_len[order][::-1])[::-1], [0.0]))
        tp = suffix[np.searchsorted(seg_max_sorted, thr, side="left")]
    else:
        pos_sorted = np.sort(s[lab])
        tp = (pos_sorted.size - np.searchsorted(pos_sorted, thr, side="left")).astype(np.float64)

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / n_pos
    # F1 from the counts (one correctly rounded division), so equal F1s are equal floats and argmax
    # keeps the documented tie rule; 2PR / (P + R) could differ in the last bit.
    f1 = 2 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best]), float(precision[best]), float(recall[best])


def auc_pr(scores: ArrayLike, label: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the unique thresholds in descending order, the
    definition of ``sklearn.metrics.average_precision_score`` (the tests check the two agree).

    Parameters
    ----------
    scores : array_like of float, shape (T,)
        Anomaly scores, higher = more anomalous.
    label : array_like of 0/1 or bool, shape (T,)
        Ground truth; must contain at least one positive.

    Returns
    -------
    float
        Average precision in [0, 1]; the base rate is the value of an uninformative score.

    Examples
    --------
    >>> auc_pr([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.8333333333333333
    """
    s, lab, n_pos = _scored_labels(scores, label, "average precision")
    order = np.argsort(-s, kind="stable")
    s_desc = s[order]
    tp = np.cumsum(lab[order], dtype=np.float64)
    last = np.concatenate((np.flatnonzero(np.diff(s_desc) != 0), [s.size - 1]))
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    d_recall = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(d_recall * precision))


# --------------------------------------------------------------------------------------------
# interpretation: HitRate@P%
# --------------------------------------------------------------------------------------------


def hitrate_at_p(
    contrib: ArrayLike,
    interpretation: Sequence[tuple[int, int, Sequence[int]]],
    p: float,
    *,
    pred: ArrayLike | None = None,
    mode: Literal["segment", "point"] = "segment",
) -> float:
    """HitRate@P% of per-dimension anomaly contributions (OmniAnomaly / InterFusion).

    For a ground-truth dimension set ``G``, the dimensions are ranked by contribution (highest
    first; ties go to the lower index) and ``HitRate = |top floor(P/100 * |G|) ∩ G| / |G|``.

    Which points are used, and how they are averaged (``mode``):

    * ``"segment"`` (default; the InterFusion evaluation described in ``smd/RESULTS.md``): for each
      labelled segment, take the used points in it, aggregate their contributions by the maximum
      over those points (InterFusion takes the minimum log-likelihood, i.e. the strongest
      evidence), compute one hit rate, and average over segments.
    * ``"point"`` (OmniAnomaly paper): one hit rate per used point, averaged over all used points
      of all segments (long segments weigh more).

    The *used* points are the detected points inside the segment when ``pred`` is given (pass the
    raw or the point-adjusted predictions; they are taken as they are), or every labelled point of
    the segment when ``pred`` is None. Segments with no used point, or with an empty ``G``, are
    left out of the average. To follow ``smd/RESULTS.md`` (detected points only), pass ``pred``:
    typically the point-adjusted predictions at the best-F1 threshold.

    Parameters
    ----------
    contrib : array_like of float, shape (T, D)
        Per-dimension anomaly evidence, higher = more anomalous (e.g. squared reconstruction error
        or negative log-likelihood per dimension).
    interpretation : sequence of (start, end, dims)
        Half-open row ranges ``[start, end)`` with 0-based dimension indices, as returned by
        :func:`stream_vae.evaluation.datasets.load_smd_like`.
    p : float
        P in percent, e.g. 100 or 150 (``k = floor(P/100 * |G|)``, capped at D).
    pred : array_like of 0/1 or bool, shape (T,), optional
        Detected points; None uses every labelled point.
    mode : {"segment", "point"}
        Averaging, see above.

    Returns
    -------
    float
        Mean hit rate in [0, 1]; NaN when no segment has a used point.

    Examples
    --------
    >>> contrib = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]]
    >>> hitrate_at_p(contrib, [(0, 2, [0, 1])], 100)
    1.0
    >>> hitrate_at_p(contrib, [(0, 2, [0, 1])], 100, mode="point")
    0.75
    """
    c = np.asarray(contrib, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"contrib must be 2-D [T, D], got shape {c.shape}")
    n_rows, n_dims = c.shape
    if not p > 0:
        raise ValueError("p (in percent) must be > 0")
    if mode not in ("segment", "point"):
        raise ValueError(f"mode must be 'segment' or 'point', got {mode!r}")
    used_mask: NDArray[np.bool_] | None = None
    if pred is not None:
        used_mask = _as_binary(pred, "pred")
        if used_mask.shape[0] != n_rows:
            raise ValueError(f"pred has {used_mask.shape[0]} rows, contrib has {n_rows}")

    rates: list[float] = []
    for start, end, dims in interpretation:
        gt = np.unique(np.asarray(list(dims), dtype=np.int64))
        if gt.size == 0:
            continue
        if gt.min() < 0 or gt.max() >= n_dims:
            raise ValueError(f"interpretation dims {gt.tolist()} out of range for D={n_dims}")
        lo, hi = max(int(start), 0), min(int(end), n_rows)
        rows = np.arange(lo, hi)
        if used_mask is not None:
            rows = rows[used_mask[lo:hi]]
        if rows.size == 0:
            continue
        k = min(math.floor(p * gt.size / 100.0 + 1e-9), n_dims)
        block = c[rows]
        if mode == "segment":
            block = block.max(axis=0, keepdims=True)
        top = np.argsort(-block, axis=1, kind="stable")[:, :k]
        hits = np.isin(top, gt).sum(axis=1) / gt.size
        rates.extend(hits.tolist())
    return float(np.mean(rates)) if rates else math.nan


# --------------------------------------------------------------------------------------------
# NAB
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabProfile:
    """Weights of one NAB application profile (``config/profiles.json``, ``CostMatrix``).

    ``tn_weight`` is carried for completeness; NAB's score does not use true negatives.
    """

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


NAB_PROFILES: Mapping[str, NabProfile] = MappingProxyType(
    {
        "standard": NabProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
        "reward_low_FP_rate": NabProfile(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
        "reward_low_FN_rate": NabProfile(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
    }
)
"""The three NAB v1.1 profiles, identical to ``nab/config/profiles.json`` (checked by a test)."""


def _profile(profile: str | NabProfile) -> NabProfile:
    if isinstance(profile, NabProfile):
        return profile
    try:
        return NAB_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown NAB profile {profile!r}; known: {sorted(NAB_PROFILES)}") from None


def nab_scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``, and exactly -1 for ``y > 3``.

    ``y`` is a relative position: -1 at the first row of a window, about 0 at its last row,
    positive after it. The value is +0.987 at y = -1, 0 at y = 0 and tends to -1 far after.

    Examples
    --------
    >>> round(nab_scaled_sigmoid(-1.0), 6), nab_scaled_sigmoid(0.0), nab_scaled_sigmoid(4.0)
    (0.986614, 0.0, -1.0)
    """
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def nab_probation_length(n_rows: int, probationary_percent: float = 0.15) -> int:
    """Rows at the start of an NAB file that are not scored.

    NAB runs with ``probationaryPercent = 0.15`` and caps the period at the same fraction of 5000
    rows: ``min(floor(0.15 n), 750)``. The cap matters for the 15k-row realTweets files; the
    published TP+TN+FP+FN counts in ``results/*_scores.csv`` confirm it.

    Examples
    --------
    >>> nab_probation_length(4032), nab_probation_length(15833)
    (604, 750)
    """
    return int(min(math.floor(probationary_percent * n_rows), round(probationary_percent * 5000)))


def _as_timestamps(timestamps: ArrayLike) -> NDArray[Any]:
    ts = np.asarray(timestamps)
    if ts.ndim != 1:
        raise ValueError(f"timestamps must be 1-D, got shape {ts.shape}")
    if ts.size > 1 and not (ts[1:] >= ts[:-1]).all():
        raise ValueError("timestamps must be sorted (non-decreasing)")
    return ts


def nab_window_indices(timestamps: ArrayLike, windows: Sequence[Window]) -> list[tuple[int, int]]:
    """Map NAB windows ``(first, last)`` (inclusive, in timestamp units) to inclusive row ranges.

    The bounds are converted to the dtype of ``timestamps`` (so ISO strings work against
    ``datetime64`` timestamps). Windows must be sorted, disjoint and contain at least one row.

    Examples
    --------
    >>> nab_window_indices([10, 20, 30, 40, 50], [(20, 35), (50, 50)])
    [(1, 2), (4, 4)]
    """
    ts = _as_timestamps(timestamps)
    if not windows:
        return []
    first = np.asarray([w[0] for w in windows]).astype(ts.dtype)
    last = np.asarray([w[1] for w in windows]).astype(ts.dtype)
    lo = np.searchsorted(ts, first, side="left")
    hi = np.searchsorted(ts, last, side="right") - 1
    out: list[tuple[int, int]] = []
    for k, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        if b < a:
            raise ValueError(f"window {k} {windows[k]!r} contains no timestamp")
        if out and a <= out[-1][1]:
            raise ValueError(f"window {k} {windows[k]!r} overlaps or precedes the previous window")
        out.append((int(a), int(b)))
    return out


def nab_scored_windows(timestamps: ArrayLike, windows: Sequence[Window], probationary_percent: float = 0.15) -> int:
    """How many of a file's windows NAB scores: those that end after the probationary period (a window
    inside it is neither found nor missed). The null and perfect detectors' scores count these.

    Examples
    --------
    >>> nab_scored_windows(range(100), [(2, 5), (50, 60)])  # probation: the first 15 rows
    1
    """
    ts = _as_timestamps(timestamps)
    probation = nab_probation_length(ts.size, probationary_percent)
    return sum(right >= probation for _, right in nab_window_indices(ts, windows))


def nab_raw_score(
    detections: ArrayLike,
    timestamps: ArrayLike,
    windows: Sequence[Window],
    profile: str | NabProfile = "standard",
    *,
    probationary_percent: float = 0.15,
) -> float:
    """Raw (un-normalised) NAB score of one file.

    Rules, as in NAB v1.1 (checked against the published per-file scores, see the tests):

    * Rows before :func:`nab_probation_length` are ignored: a detection there is neither TP nor FP.
    * Window ``[l, r]`` (``w = r - l + 1`` rows) detected first at row ``i`` adds
      ``tp_weight * sigma(-(r - i + 1) / w) / sigma(-1)``, with ``sigma`` the scaled sigmoid: the
      earliest possible detection earns exactly ``tp_weight``, one at the last row about
      ``0.09 * tp_weight`` (w = 29). Only the first detection in a window counts; later ones in
      the same window neither add nor cost anything.
    * A window with no (post-probation) detection costs ``fn_weight``.
    * A detection outside every window costs ``fp_weight * sigma((i - r') / (w' - 1))`` where
      ``[l', r']`` is the closest window ending before ``i`` (its weight rises from ~0 just after
      the window to -1 far from it), or ``fp_weight * -1`` when no window precedes ``i``.

    Parameters
    ----------
    detections : array_like of 0/1 or bool, shape (T,)
        Thresholded detector output, one per row.
    timestamps : array_like, shape (T,)
        Sorted row times (``datetime64`` or numbers); repeated times are allowed (a few NAB files
        have them) and a window holds every row whose time lies in ``[first, last]``.
    windows : sequence of (first, last)
        Inclusive anomaly windows in timestamp units (``labels/combined_windows.json``).
    profile : str or NabProfile
        ``"standard"``, ``"reward_low_FP_rate"``, ``"reward_low_FN_rate"`` or custom weights.
    probationary_percent : float
        Fraction of the file left unscored at the start (NAB default 0.15, capped at 750 rows).

    Returns
    -------
    float
        The raw score: at most ``tp_weight * len(windows)``, ``-fn_weight * len(windows)`` for a
        detector that never fires.

    Examples
    --------
    >>> det = [0] * 20
    >>> det[12] = 1  # first row of the window [12, 15]: full reward
    >>> nab_raw_score(det, range(20), [(12, 15)])
    1.0
    >>> det[19] = 1  # plus an FP 4 rows after the window (w - 1 = 3)
    >>> round(nab_raw_score(det, range(20), [(12, 15)]), 6)
    0.89028
    """
    prof = _profile(profile)
    det = _as_binary(detections, "detections")
    ts = _as_timestamps(timestamps)
    _same_length(det, ts, "detections and timestamps")
    spans = nab_window_indices(ts, windows)
    probation = nab_probation_length(det.size, probationary_percent)
    max_tp = nab_scaled_sigmoid(-1.0)

    score = 0.0
    in_window = np.zeros(det.size, dtype=np.bool_)
    for left, right in spans:
        in_window[left : right + 1] = True
        if right < probation:  # NAB scores no window that ends inside the probationary period
            continue
        width = right - left + 1
        first_scored = max(left, probation)
        hits = np.flatnonzero(det[first_scored : right + 1])
        if hits.size:
            i = first_scored + int(hits[0])
            score += prof.tp_weight * nab_scaled_sigmoid(-(right - i + 1) / width) / max_tp
        else:
            score -= prof.fn_weight

    fp_rows = np.flatnonzero(det & ~in_window)
    fp_rows = fp_rows[fp_rows >= probation]
    if fp_rows.size:
        rights = np.asarray([r for _, r in spans], dtype=np.int64)
        widths = np.asarray([r - le + 1 for le, r in spans], dtype=np.int64)
        prev = np.searchsorted(rights, fp_rows, side="left") - 1
        for i, k in zip(fp_rows.tolist(), prev.tolist(), strict=True):
            # No window before i: weight -1; else the sigmoid of the distance past that window.
            past = -1.0 if k < 0 else nab_scaled_sigmoid((i - int(rights[k])) / max(int(widths[k]) - 1, 1))
            score += prof.fp_weight * past
    return float(score)


def nab_counts(
    detections: ArrayLike,
    timestamps: ArrayLike,
    windows: Sequence[Window],
    *,
    probationary_percent: float = 0.15,
) -> dict[str, int]:
    """Row-level TP/TN/FP/FN after the probationary period, as in NAB's ``*_scores.csv`` columns.

    A row counts as TP if it is detected and inside a window (every detected window row counts,
    unlike the score), FP if detected outside, FN if inside and not detected, TN otherwise.

    Examples
    --------
    >>> nab_counts([0, 0, 1, 1, 0, 1], range(6), [(2, 4)], probationary_percent=0.0)
    {'tp': 2, 'tn': 2, 'fp': 1, 'fn': 1}
    """
    det = _as_binary(detections, "detections")
    ts = _as_timestamps(timestamps)
    _same_length(det, ts, "detections and timestamps")
    in_window = np.zeros(det.size, dtype=np.bool_)
    for left, right in nab_window_indices(ts, windows):
        in_window[left : right + 1] = True
    probation = nab_probation_length(det.size, probationary_percent)
    d, w = det[probation:], in_window[probation:]
    return {
        "tp": int(np.count_nonzero(d & w)),
        "tn": int(np.count_nonzero(~d & ~w)),
        "fp": int(np.count_nonzero(d & ~w)),
        "fn": int(np.count_nonzero(~d & w)),
    }


def nab_null_score(n_windows: int, profile: str | NabProfile = "standard") -> float:
    """Raw score of the null detector (never fires) on a file: ``-fn_weight * n_windows``.

    Examples
    --------
    >>> nab_null_score(3, "reward_low_FN_rate")
    -6.0
    """
    return -_profile(profile).fn_weight * n_windows


def nab_perfect_score(n_windows: int, profile: str | NabProfile = "standard") -> float:
    """Raw score of NAB's perfect detector on a file: ``tp_weight * n_windows``.

    This is what NAB normalises with (one detection at each window's first row, worth exactly
    ``tp_weight`` after the ``1 / sigma(-1)`` scaling); the published ``final_results.json`` and
    the raw totals in ``config/thresholds.json`` agree with it.

    Examples
    --------
    >>> nab_perfect_score(3)
    3.0
    """
    return _profile(profile).tp_weight * n_windows


def nab_normalized_score(
    per_file_raw: Iterable[float],
    per_file_null: Iterable[float],
    per_file_perfect: Iterable[float],
) -> float:
    """Corpus-level NAB score, 0 = null detector, 100 = perfect detector.

    ``100 * (sum(raw) - sum(null)) / (sum(perfect) - sum(null))``: the files are summed first,
    not averaged after normalising.

    Examples
    --------
    >>> nab_normalized_score([0.5, -1.0], [-1.0, -1.0], [1.0, 1.0])
    37.5
    """
    raw = math.fsum(per_file_raw)
    null = math.fsum(per_file_null)
    perfect = math.fsum(per_file_perfect)
    if perfect == null:
        raise ValueError("perfect and null scores coincide (no anomaly window in the corpus)")
    return 100.0 * (raw - null) / (perfect - null)


def nab_score(
    files: Mapping[str, NabFile],
    profile: str | NabProfile = "standard",
    *,
    probationary_percent: float = 0.15,
) -> tuple[float, dict[str, float]]:
    """Score a corpus: normalised NAB score and the raw score of each file.

    Parameters
    ----------
    files : mapping of name -> (detections, timestamps, windows)
        See :func:`nab_raw_score` for each element.
    profile : str or NabProfile
        Application profile.
    probationary_percent : float
        Unscored head of each file.

    Returns
    -------
    tuple
        ``(normalized, {name: raw})``.

    Examples
    --------
    >>> f = {"a": ([0, 0, 1, 0], range(4), [(2, 3)]), "b": ([0, 0, 0, 0], range(4), [(1, 1)])}
    >>> nab_score(f, probationary_percent=0.0)
    (50.0, {'a': 1.0, 'b': -1.0})
    """
    raw: dict[str, float] = {}
    null: list[float] = []
    perfect: list[float] = []
    for name, (det, ts, wins) in files.items():
        raw[name] = nab_raw_score(det, ts, wins, profile, probationary_percent=probationary_percent)
        null.append(nab_null_score(len(wins), profile))
        perfect.append(nab_perfect_score(len(wins), profile))
    return nab_normalized_score(raw.values(), null, perfect), raw


# --------------------------------------------------------------------------------------------
# TCPD (TCPDBench metrics)
# --------------------------------------------------------------------------------------------


def _cp_set(cps: Iterable[int], n_obs: int, what: str) -> set[int]:
    out: set[int] = set()
    for cp in cps:
        value = int(cp)
        if value != cp or not 0 <= value < n_obs:
            raise ValueError(f"{what} change point {cp!r} is not an integer in [0, {n_obs})")
        out.add(value)
    out.add(0)
    return out


def _annotation_sets(annotations: Mapping[str, Sequence[int]], n_obs: int) -> list[set[int]]:
    if not annotations:
        raise ValueError("annotations is empty: need at least one annotator")
    return [_cp_set(cps, n_obs, f"annotator {user!r}") for user, cps in annotations.items()]


def _n_true_positives(truth: set[int], predicted: set[int], margin: int) -> int:
    """Greedy one-to-one matching: each true CP (ascending) takes the closest free prediction."""
    free = sorted(predicted)
    count = 0
    for tau in sorted(truth):
        best: int | None = None
        for x in free:
            if abs(tau - x) <= margin and (best is None or abs(tau - x) < abs(tau - best)):
                best = x
        if best is not None:
            free.remove(best)
            count += 1
    return count


def tcpd_precision_recall(
    predicted_cps: Iterable[int],
    annotations: Mapping[str, Sequence[int]],
    n_obs: int,
    *,
    margin: int = 5,
) -> tuple[float, float]:
    """Precision and recall of change points as defined by TCPDBench (van den Burg & Williams).

    Conventions: index 0 is added to the predictions and to every annotator's set (the start of
    the series is a trivial change point, so P and R are never undefined); a true change point
    ``tau`` is matched by a prediction ``x`` with ``|tau - x| <= margin``, each prediction
    matching at most one ``tau`` (greedy: true change points in ascending order, each takes the
    closest free prediction, ties to the earlier one). Precision matches the predictions against
    the union of all annotators' change points; recall is the mean over annotators of the
    fraction of their change points matched.

    Returns
    -------
    tuple of float
        ``(precision, recall)``.

    Examples
    --------
    >>> tcpd_precision_recall([10], {"a": [], "b": [10], "c": [50]}, 100)
    (1.0, 0.8333333333333334)
    """
    x = _cp_set(predicted_cps, n_obs, "predicted")
    truth = _annotation_sets(annotations, n_obs)
    union: set[int] = set().union(*truth)
    precision = _n_true_positives(union, x, margin) / len(x)
    recall = sum(_n_true_positives(t, x, margin) / len(t) for t in truth) / len(truth)
    return precision, recall


def tcpd_f1(
    predicted_cps: Iterable[int],
    annotations: Mapping[str, Sequence[int]],
    n_obs: int,
    margin: int = 5,
) -> float:
    """F1 of change points against several annotators (TCPDBench's F-measure, margin 5).

    ``F1 = 2 P R / (P + R)`` with P and R from :func:`tcpd_precision_recall` (read it for the
    conventions: index 0 always counts as a change point, precision over the union of the
    annotators, recall averaged over them). Change points must be integers in ``[0, n_obs)``.

    Examples
    --------
    >>> tcpd_f1([10], {"a": [], "b": [10], "c": [50]}, 100)
    0.9090909090909091
    >>> tcpd_f1([], {"a": [], "b": [10], "c": [50]}, 100)
    0.8
    """
    precision, recall = tcpd_precision_recall(predicted_cps, annotations, n_obs, margin=margin)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _partition(cps: set[int], n_obs: int) -> list[tuple[int, int]]:
    bounds = [*sorted(cps), n_obs]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _jaccard(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union


def tcpd_cover(
    predicted_cps: Iterable[int],
    annotations: Mapping[str, Sequence[int]],
    n_obs: int,
) -> float:
    """Covering metric of TCPDBench, averaged over annotators.

    The change points split ``0..n_obs-1`` into segments ``[cp_k, cp_{k+1})`` (0 is always a
    boundary). For an annotator's segmentation ``G`` and the predicted one ``S``:
    ``C(G, S) = (1 / n_obs) * sum_{A in G} |A| * max_{A' in S} |A ∩ A'| / |A ∪ A'|``;
    the result is the mean of ``C`` over annotators.

    Examples
    --------
    >>> round(tcpd_cover([10], {"a": [], "b": [10], "c": [40]}, 45), 6)
    0.795414
    >>> tcpd_cover([], {"a": []}, 45)
    1.0
    """
    predicted = _partition(_cp_set(predicted_cps, n_obs, "predicted"), n_obs)
    covers: list[float] = []
    for truth in _annotation_sets(annotations, n_obs):
        total = sum((b - a) * max(_jaccard((a, b), seg) for seg in predicted) for a, b in _partition(truth, n_obs))
        covers.append(total / n_obs)
    return float(np.mean(covers))
