"""Benchmark runner: the workers' own code path on SMD, ASD and NAB, next to baselines on the same split.

For each entity (an SMD machine, an ASD service, an NAB file) the runner

1. builds a topology (features ``f0..f{D-1}``, key field ``entity``, the window, score and
   calibration settings of :class:`EvalSettings`),
2. trains with :func:`~stream_vae.model.train.train_model` on the entity's training rows (NAB: the
   probationary period, the first 15 % of the file capped at 750 rows, which NAB leaves unscored),
3. serialises the model to an artifact and loads it back (safetensors + manifest, as a worker
   does),
4. sends every test row, in arrival order, as a JSON :class:`~stream_vae.records.RawRecord`
   through :meth:`~stream_vae.pipeline.Pipeline.process_batch` in batches of
   ``batch_size`` records, and records what the pipeline returned: the (smoothed) score, the
   threshold it applied, whether it flagged the record, the per-feature contributions.

The label-free metrics (``*_online``) are about what the pipeline flagged; the ranking metrics
(``f1_best``, ``f1_pa_best``, ``auc_pr``) use its score with thresholds chosen on the test labels,
as the published tables do. Baselines are fitted on the first ``baseline_fit_fraction`` of the
training rows; their label-free threshold comes from the same calibrator and threshold tracker,
calibrated on their scores of the remaining training rows. ``*_static`` metrics keep the
threshold where training put it (no online adaptation), the protocol of the numbers quoted in
issue 5.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from stream_vae.alerts import incident_alerts
from stream_vae.evaluation.baselines import BASELINES, SupportsContributions
from stream_vae.evaluation.datasets import Entity, NabSeries, list_entities, load_nab, load_smd_like
from stream_vae.evaluation.metrics import (
    NAB_PROFILES,
    auc_pr,
    best_f1,
    f1_score,
    hitrate_at_p,
    nab_probation_length,
    nab_raw_score,
    nab_scored_windows,
    point_adjust,
)
from stream_vae.exceptions import ConfigError
from stream_vae.preprocess import seasonal_differences
from stream_vae.records import BoolArray, FloatArray, RawRecord
from stream_vae.topology import AlertGrouping

__all__ = [
    "METRIC_KEYS",
    "NAB_PROFILE_KEYS",
    "EntityReport",
    "EvalSettings",
    "StreamTrace",
    "detection_metrics",
    "entity_topology",
    "evaluate_entity",
    "evaluate_nab",
    "evaluate_smd_like",
    "run_baseline",
    "run_pipeline",
]

METRIC_KEYS = (
    "f1_best",
    "f1_pa_best",
    "f1_online",
    "f1_pa_online",
    "precision_online",
    "recall_online",
    "auc_pr",
    "hitrate_100",
    "hitrate_150",
)
"""The metrics of the ``eval`` contract, per entity and as a mean."""

EXTRA_KEYS = ("f1_online_static", "f1_pa_online_static", "flag_rate")
NAB_PROFILE_KEYS = {"standard": "score_standard", "reward_low_FP_rate": "score_low_fp",
                    "reward_low_FN_rate": "score_low_fn"}

Progress = Callable[[str], None]
Metrics = dict[str, Any]


@dataclass(frozen=True)
class EvalSettings:
    """How the detector and the baselines are set up for an evaluation (the same for every entity).

    Attributes
    ----------
    window
        Records per entity the VAE sees at once (``Topology.window``).
    center_windows
        ``ModelSpec.center_windows``: the model sees each window minus its mean (shape, not level).
    score
        ``ModelSpec.score``: ``"robust"`` (sum of log(1 + contribution / scale)) or ``"gaussian"`` (NLL).
    score_quantile
        ``ModelSpec.score_quantile``: the held-out quantile that sets each feature's scale (0 = none).
    seasonal_period, seasonal_min_correlation
        ``ModelSpec`` fields: records between a value and the one it is differenced with (0 = off,
        ``"auto"`` = found in each entity's training rows), and the lag correlation 'auto' needs.
    alert_group
        ``AlertSpec.group``: which flagged records publish an alert (NAB counts those as detections;
        SMD/ASD score the flags themselves).
    calibration
        ``CalibrationSpec.method``: the held-out quantile, or a peaks-over-threshold tail fit (EVT).
    smoothing, fpr, adapt, half_life, rate_cap, range_tolerance, track_every
        ``CalibrationSpec`` fields: score smoothing, false-positive budget, online threshold
        adaptation, its half-life (records), the flag-rate cap (multiple of the budget), the
        range rule's tolerance (0 = off) and how often the tracked threshold moves (records).
    epochs, latent_dim, hidden, seed, ensemble, member_windows
        ``ModelSpec`` fields (``ensemble``: members trained with seeds ``seed``, ``seed + 1``, ...;
        ``member_windows``: one window per member, each at most ``window``; empty = all see ``window``).
    max_train_rows
        Train on at most this many (the most recent) training rows; None = all.
    batch_size
        Records per ``process_batch`` call.
    baselines
        Names from :data:`~stream_vae.evaluation.baselines.BASELINES`.
    baseline_fit_fraction
        Share of the training rows the baselines are fitted on; the rest calibrates their threshold.
    threads
        torch intra-op threads (None leaves torch's default).
    """

    window: int = 5
    center_windows: bool = False
    score: Literal["gaussian", "robust"] = "robust"
    score_quantile: float = 0.0
    seasonal_period: int | Literal["auto"] = 0
    seasonal_min_correlation: float = 0.75
    alert_group: AlertGrouping = "incident"
    calibration: Literal["quantile", "pot"] = "quantile"
    smoothing: int = 1
    fpr: float = 0.005
    adapt: Literal["off", "track"] = "track"
    half_life: int = 2000
    rate_cap: float = 0.0
    range_tolerance: float = 0.0
    track_every: int = 500
    epochs: int = 40
    latent_dim: int = 4
    hidden: tuple[int, ...] = (64, 32)
    seed: int = 0
    ensemble: int = 3
    member_windows: tuple[int, ...] = ()
    max_train_rows: int | None = None
    batch_size: int = 1000
    baselines: tuple[str, ...] = ("hst", "pca", "iforest", "random")
    baseline_fit_fraction: float = 0.9
    threads: int | None = 1


@dataclass
class StreamTrace:
    """What a detector produced over one test stream, record by record (arrival order)."""

    score: FloatArray
    threshold: FloatArray
    flagged: BoolArray
    contributions: FloatArray | None
    base_threshold: float
    reference_median: float
    seconds_fit: float = 0.0
    seconds_score: float = 0.0
    epochs: int = 0
    beyond_range: BoolArray | None = None  # flagged by the range rule, whatever the score
    seasonal_period: int = 0  # the model's (resolved) ModelSpec.seasonal_period
    alerted: BoolArray | None = None  # the records the pipeline built an alert for (alerts.group)


@dataclass
class EntityReport:
    """Metrics of one entity for the VAE and each baseline, plus the traces (for plots)."""

    name: str
    metrics: Metrics
    trace: StreamTrace
    baseline_traces: dict[str, StreamTrace] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the detector, through the pipeline
# --------------------------------------------------------------------------------------------


def entity_topology(n_dims: int, settings: EvalSettings, *, name: str = "eval") -> Any:
    """The topology an entity is evaluated with: features ``f0..f{D-1}``, key field ``entity``."""
    from stream_vae.topology import parse_topology

    return parse_topology(
        {
            "name": name,
            "input_topic": f"eval.{name}",
            "key_field": "entity",
            "features": [{"name": f"f{i}"} for i in range(n_dims)],
            "window": settings.window,
            "model": {
                "epochs": settings.epochs,
                "latent_dim": settings.latent_dim,
                "hidden": list(settings.hidden),
                "seed": settings.seed,
                "ensemble": settings.ensemble,
                "member_windows": list(settings.member_windows),
                "score": settings.score,
                "score_quantile": settings.score_quantile,
                "center_windows": settings.center_windows,
                "seasonal_period": settings.seasonal_period,
                "seasonal_min_correlation": settings.seasonal_min_correlation,
            },
            "calibration": {
                "method": settings.calibration,
                "fpr": settings.fpr,
                "smoothing": settings.smoothing,
                "adapt": settings.adapt,
                "half_life": settings.half_life,
                "rate_cap": settings.rate_cap,
                "range_tolerance": settings.range_tolerance,
                "track_every": settings.track_every,
            },
            "alerts": {"group": settings.alert_group},
        },
        source="<eval>",
    )


def _records(X: FloatArray, key: str) -> list[RawRecord]:
    names = [f"f{i}" for i in range(X.shape[1])]
    kb = key.encode()
    out = []
    for i, row in enumerate(X.tolist()):
        doc: dict[str, Any] = {"entity": key, **dict(zip(names, row, strict=True))}
        out.append(RawRecord(json.dumps(doc).encode(), kb, "eval", 0, i, i))
    return out


def run_pipeline(train: FloatArray, test: FloatArray, settings: EvalSettings, *, key: str = "entity") -> StreamTrace:
    """Train on ``train``, then stream ``test`` through ``Pipeline.process_batch`` as JSON records.

    Raises
    ------
    RuntimeError
        The pipeline rejected a test record (it must score every row).
    """
    import torch

    from stream_vae.model.registry import load_artifact, to_artifact
    from stream_vae.model.train import train_model
    from stream_vae.pipeline import Pipeline

    if settings.threads:
        torch.set_num_threads(settings.threads)
    topo = entity_topology(train.shape[1], settings)
    if settings.max_train_rows and len(train) > settings.max_train_rows:
        train = train[-settings.max_train_rows :]
    t0 = time.perf_counter()
    model = train_model(np.asarray(train, dtype=np.float64), topo)
    loaded = load_artifact(to_artifact(model, "eval-1"), topology=topo)
    t1 = time.perf_counter()
    pipe = Pipeline(topo, loaded)
    n = len(test)
    score, thr = np.empty(n), np.empty(n)
    flagged = np.zeros(n, dtype=bool)
    beyond = np.zeros(n, dtype=bool)
    alerted = np.zeros(n, dtype=bool)
    contrib = np.empty((n, test.shape[1]))
    records = _records(np.asarray(test, dtype=np.float64), key)
    for lo in range(0, n, settings.batch_size):
        out = pipe.process_batch(records[lo : lo + settings.batch_size])
        if out.rejections or out.result is None:
            reason = out.rejections[0].detail if out.rejections else "empty result"
            raise RuntimeError(f"pipeline rejected a test record of '{key}': {reason}")
        hi = lo + len(out.scored)
        score[lo:hi] = out.result.score
        contrib[lo:hi] = out.result.attributions  # what the alerts name: HitRate scores it
        flagged[lo:hi] = out.is_anomaly
        beyond[lo:hi] = out.beyond_range
        thr[lo:hi] = out.thresholds
        alerted[[a.offset for a in out.alerts]] = True  # the eval's offsets are row numbers
    cal = loaded.calibrator
    return StreamTrace(
        score=score, threshold=thr, flagged=flagged, contributions=contrib,
        base_threshold=cal.threshold, reference_median=float(np.median(cal.reference)),
        seconds_fit=t1 - t0, seconds_score=time.perf_counter() - t1, epochs=len(model.history),
        beyond_range=beyond, seasonal_period=loaded.seasonal_period, alerted=alerted,
    )


def seasonal_inputs(train: FloatArray, test: FloatArray, period: int) -> tuple[FloatArray, FloatArray]:
    """The rows with the seasonal differences the pipeline gave the model: the baselines' input too.

    As in training, the first ``period`` training rows (no lagged value) are left out; the test
    stream starts afresh, as the pipeline saw it.
    """
    if period == 0:
        return train, test
    return seasonal_differences(train, period)[period:], seasonal_differences(test, period)


# --------------------------------------------------------------------------------------------
# baselines, with the same label-free threshold machinery
# --------------------------------------------------------------------------------------------


def _tracked(
    ref_scores: FloatArray, test_scores: FloatArray, settings: EvalSettings
) -> tuple[FloatArray, FloatArray, Any]:
    """Calibrate on ``ref_scores`` and run the pipeline's threshold tracker over ``test_scores``."""
    from stream_vae.calibrate import Calibrator, ScoreSmoother, ThresholdTracker

    smooth = ScoreSmoother(settings.smoothing)
    ref = smooth.transform(ref_scores, ["r"] * len(ref_scores))
    cal = Calibrator(method=settings.calibration, fpr=settings.fpr, smoothing=settings.smoothing, adapt=settings.adapt,
                     half_life=settings.half_life, rate_cap=settings.rate_cap,
                     track_every=settings.track_every).infer_threshold(ref)
    tracker = ThresholdTracker(cal)
    smooth = ScoreSmoother(settings.smoothing)
    thr = np.empty(len(test_scores))
    score = np.empty(len(test_scores))
    for lo in range(0, len(test_scores), settings.batch_size):
        s = test_scores[lo : lo + settings.batch_size]
        keys = ["e"] * len(s)
        s = smooth.transform(s, keys)
        thr[lo : lo + len(s)] = tracker.assess(s, keys)[0]
        score[lo : lo + len(s)] = s
    return score, thr, cal


def _range_rule(train_raw: FloatArray, test_raw: FloatArray, settings: EvalSettings) -> BoolArray:
    """The pipeline's range rule (``RangeTracker``, from the training range) over ``test_raw`` in batches."""
    from stream_vae.calibrate import Calibrator, RangeTracker

    ranges = RangeTracker(Calibrator(range_tolerance=settings.range_tolerance).set_range(train_raw))
    keys = ["e"] * len(test_raw)
    return np.concatenate([
        ranges.outside(test_raw[lo : lo + settings.batch_size], keys[lo : lo + settings.batch_size]).any(axis=1)
        for lo in range(0, len(test_raw), settings.batch_size)
    ])


def run_baseline(
    name: str, train: FloatArray, test: FloatArray, settings: EvalSettings,
    *, raw: tuple[FloatArray, FloatArray] | None = None,
) -> StreamTrace:
    """Fit baseline ``name`` on the head of ``train``, calibrate on its tail, score ``test`` in order.

    With ``settings.range_tolerance`` the baseline gets the pipeline's range rule too, on the raw
    values ``raw = (train_raw, test_raw)`` (default: ``train`` and ``test`` themselves; NAB passes
    the series when the detector sees windows).
    """
    det = BASELINES[name]()
    if hasattr(det, "seed"):
        det.seed = settings.seed
    if hasattr(det, "n_jobs"):
        det.n_jobs = 1
    # at least 20 rows are left to calibrate on (the calibrator's minimum)
    n_fit = max(2, min(int(len(train) * settings.baseline_fit_fraction), len(train) - 20))
    t0 = time.perf_counter()
    det.fit(train[:n_fit])
    ref = det.score(train[n_fit:]) if n_fit < len(train) else det.score(train)
    t1 = time.perf_counter()
    scores = det.score(test)
    contrib = det.contributions(test) if isinstance(det, SupportsContributions) else None
    score, thr, cal = _tracked(np.asarray(ref, dtype=np.float64), np.asarray(scores, dtype=np.float64), settings)
    flagged = score > thr
    beyond = _range_rule(*(raw or (train, test)), settings) if settings.range_tolerance > 0 else None
    if beyond is not None:
        flagged |= beyond
    return StreamTrace(
        score=score, threshold=thr, flagged=flagged, contributions=contrib,
        base_threshold=cal.threshold, reference_median=float(np.median(cal.reference)),
        seconds_fit=t1 - t0, seconds_score=time.perf_counter() - t1, beyond_range=beyond,
    )


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def _num(x: float, digits: int = 4) -> float | None:
    """A metric for JSON: rounded, or None where it is undefined (NaN is not JSON)."""
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def detection_metrics(
    trace: StreamTrace,
    label: NDArray[Any],
    *,
    interpretation: Sequence[tuple[int, int, Sequence[int]]] = (),
) -> Metrics:
    """The contract metrics of one detector on one entity.

    ``hitrate_*`` rank the per-feature contributions at the detected points (the points above
    the best-F1 threshold) of each labelled segment, aggregated by the maximum over the segment
    (``smd/RESULTS.md``); None when the detector has no contributions or the entity has no
    interpretation labels.

    Examples
    --------
    >>> tr = StreamTrace(np.array([0.1, 0.9, 0.8, 0.2]), np.full(4, 0.5), np.array([False, True, True, False]),
    ...                  None, 0.5, 0.1)
    >>> m = detection_metrics(tr, np.array([0, 1, 1, 0]))
    >>> m["f1_best"], m["f1_online"], m["auc_pr"], m["hitrate_150"]
    (1.0, 1.0, 1.0, None)
    """
    lab = np.asarray(label).astype(bool)
    s, flags = trace.score, trace.flagged
    out: Metrics = dict.fromkeys((*METRIC_KEYS, *EXTRA_KEYS))
    out["flag_rate"] = _num(float(flags.mean()))
    if not lab.any():
        return out
    f1b, thr_b, _, _ = best_f1(s, lab, point_adjusted=False)
    out["f1_best"] = _num(f1b)
    out["f1_pa_best"] = _num(best_f1(s, lab, point_adjusted=True)[0])
    out["auc_pr"] = _num(auc_pr(s, lab))
    p, r, f1 = f1_score(flags, lab)
    out.update(precision_online=_num(p), recall_online=_num(r), f1_online=_num(f1))
    out["f1_pa_online"] = _num(f1_score(point_adjust(flags, lab), lab)[2])
    static = s > trace.base_threshold
    out["f1_online_static"] = _num(f1_score(static, lab)[2])
    out["f1_pa_online_static"] = _num(f1_score(point_adjust(static, lab), lab)[2])
    if trace.contributions is not None and len(interpretation):
        detected = s >= thr_b
        for p_pct in (100, 150):
            out[f"hitrate_{p_pct}"] = _num(hitrate_at_p(trace.contributions, interpretation, p_pct, pred=detected))
    return out


def _mean(rows: Sequence[Metrics], keys: Sequence[str]) -> Metrics:
    out: Metrics = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = round(float(np.mean(vals)), 4) if vals else None
    return out


# --------------------------------------------------------------------------------------------
# SMD / ASD
# --------------------------------------------------------------------------------------------


def evaluate_entity(entity: Entity, settings: EvalSettings, *, progress: Progress | None = None) -> EntityReport:
    """The VAE through the pipeline and every baseline on one SMD/ASD entity."""
    train = np.asarray(entity.train, dtype=np.float64)
    test = np.asarray(entity.test, dtype=np.float64)
    if settings.max_train_rows and len(train) > settings.max_train_rows:  # the baselines get the same rows
        train = train[-settings.max_train_rows :]
    trace = run_pipeline(train, test, settings, key=entity.name)
    metrics = detection_metrics(trace, entity.label, interpretation=entity.interpretation)
    metrics["seconds"] = round(trace.seconds_fit + trace.seconds_score, 1)
    metrics["epochs"] = trace.epochs
    metrics["seasonal_period"] = trace.seasonal_period
    if progress:
        progress(f"{entity.name}: vae f1_best={metrics['f1_best']} auc_pr={metrics['auc_pr']} "
                 f"f1_online={metrics['f1_online']} ({metrics['seconds']}s)")
    base_traces: dict[str, StreamTrace] = {}
    base_metrics: dict[str, Metrics] = {}
    train, test = seasonal_inputs(train, test, trace.seasonal_period)
    for name in settings.baselines:
        bt = run_baseline(name, train, test, settings)
        if bt.contributions is not None and bt.contributions.shape[1] > entity.test.shape[1]:
            # [features, seasonal differences]: each feature's larger one, as the VAE's attributions read them
            c = bt.contributions
            bt = replace(bt, contributions=c.reshape(len(c), -1, entity.test.shape[1]).max(axis=1))
        base_traces[name] = bt
        base_metrics[name] = detection_metrics(bt, entity.label, interpretation=entity.interpretation)
        base_metrics[name]["seconds"] = round(bt.seconds_fit + bt.seconds_score, 1)
    metrics["baselines"] = base_metrics
    return EntityReport(entity.name, metrics, trace, base_traces)


_LENGTHS = (("short (<10)", 0, 10), ("medium (10-99)", 10, 100), ("long (>=100)", 100, 10**12))


def _segment_slice(items: Sequence[tuple[EntityReport, NDArray[Any], int, int]]) -> Metrics:
    """Recall-type statistics over a set of labelled segments (entity report, label, start, end)."""
    n = len(items)
    hit_online = hit_best = 0
    pts = pts_online = pts_best = 0
    delays: list[int] = []
    for rep, label, a, b in items:
        s, flags = rep.trace.score, rep.trace.flagged
        thr_b = best_f1(s, label, point_adjusted=False)[1]
        seg_flags = flags[a:b]
        pts += b - a
        pts_online += int(seg_flags.sum())
        pts_best += int((s[a:b] >= thr_b).sum())
        if seg_flags.any():
            hit_online += 1
            delays.append(int(np.argmax(seg_flags)))
        hit_best += int((s[a:b] >= thr_b).any())
    return {
        "segments": n,
        "points": pts,
        "segment_recall_online": round(hit_online / n, 4) if n else None,
        "point_recall_online": round(pts_online / pts, 4) if pts else None,
        "segment_recall_best": round(hit_best / n, 4) if n else None,
        "point_recall_best": round(pts_best / pts, 4) if pts else None,
        "median_delay_online": float(np.median(delays)) if delays else None,
    }


def _segments(label: NDArray[Any]) -> list[tuple[int, int]]:
    padded = np.concatenate(([0], np.asarray(label, dtype=np.int8), [0]))
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _slices(reports: Sequence[EntityReport], entities: Sequence[Entity]) -> Metrics:
    by_entity = {
        r.name: {k: r.metrics[k] for k in ("f1_best", "auc_pr", "f1_online", "recall_online", "precision_online",
                                            "flag_rate")}
        for r in reports
    }
    by_length: dict[str, list[tuple[EntityReport, NDArray[Any], int, int]]] = {n: [] for n, _, _ in _LENGTHS}
    by_type: dict[str, list[tuple[EntityReport, NDArray[Any], int, int]]] = {}
    for rep, ent in zip(reports, entities, strict=True):
        lab = np.asarray(ent.label).astype(bool)
        for a, b in _segments(lab):
            for name, lo, hi in _LENGTHS:
                if lo <= b - a < hi:
                    by_length[name].append((rep, lab, a, b))
        for a, b, kind in ent.anomaly_types or []:
            by_type.setdefault(kind, []).append((rep, lab, a, min(b, len(lab))))
    out: Metrics = {
        "entity": by_entity,
        "segment_length": {k: _segment_slice(v) for k, v in by_length.items() if v},
    }
    if by_type:
        out["anomaly_type"] = {k: _segment_slice(v) for k, v in sorted(by_type.items())}
    return out


def evaluate_smd_like(
    data_dir: str | Path,
    *,
    dataset: str,
    entities: Sequence[str] | None = None,
    settings: EvalSettings | None = None,
    progress: Progress | None = None,
) -> tuple[Metrics, list[EntityReport], list[Entity]]:
    """Evaluate every (or the named) entity of an SMD-layout folder; returns the JSON document too."""
    settings = settings or EvalSettings()
    names = list(dict.fromkeys(entities)) if entities else list_entities(data_dir)  # a name given twice: once
    t0 = time.perf_counter()
    reports: list[EntityReport] = []
    loaded: list[Entity] = []
    for name in names:
        ent = load_smd_like(data_dir, name)
        loaded.append(ent)
        reports.append(evaluate_entity(ent, settings, progress=progress))
    keys = (*METRIC_KEYS, *EXTRA_KEYS)
    mean = _mean([r.metrics for r in reports], keys)
    mean["baselines"] = {
        b: _mean([r.metrics["baselines"][b] for r in reports], keys) for b in settings.baselines
    }
    doc: Metrics = {
        "dataset": dataset,
        "entities": {r.name: r.metrics for r in reports},
        "mean": mean,
        "baselines": mean["baselines"],
        "slices": _slices(reports, loaded),
        "settings": _settings_dict(settings),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return doc, reports, loaded


def _settings_dict(settings: EvalSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["hidden"] = list(settings.hidden)
    d["baselines"] = list(settings.baselines)
    return d


# --------------------------------------------------------------------------------------------
# NAB
# --------------------------------------------------------------------------------------------

# (1.0, the pipeline's own decision, among them: a detector's best on the labels is never below its label-free score)
NAB_RATIOS = tuple(sorted({float(x) for x in np.round(np.geomspace(0.5, 200.0, 61), 4)} | {1.0}))
"""Corpus-wide thresholds tried on ``(score - median) / (threshold - median)``; 1.0 = the online decision."""


def alerted(ratio: FloatArray, tau: float, group: AlertGrouping = "incident") -> BoolArray:
    """The records a worker would alert on if it flagged ``ratio > tau`` (``alerts.group``).

    ``ratio`` is :func:`_ratio`: the range rule's records are infinite, so flagged at every ``tau``
    and escalations of an incident. ``"record"``: every flagged record; ``"incident"``: the first
    record of each run of flags and the first of each run of range-rule hits inside it
    (:func:`~stream_vae.alerts.incident_alerts`, what the pipeline publishes).

    Examples
    --------
    >>> r = np.array([0.5, 2.0, np.inf, 3.0, 0.1, 2.0])
    >>> alerted(r, 1.0).astype(int).tolist(), alerted(r, 1.0, "record").astype(int).tolist()
    ([0, 1, 1, 0, 0, 1], [0, 1, 1, 1, 0, 1])
    """
    flags = ratio > tau
    if group == "record":
        return flags
    return incident_alerts(flags, np.isinf(ratio))


def _ratio(trace: StreamTrace) -> FloatArray:
    """Score relative to the online threshold: 1.0 at the threshold, 0 at the reference median.

    Records the range rule flagged are flagged whatever the score: infinite, so at every threshold.
    """
    c = trace.reference_median
    ratio = (trace.score - c) / np.maximum(trace.threshold - c, 1e-12)
    if trace.beyond_range is not None:
        ratio = np.where(trace.beyond_range, np.inf, ratio)
    out: FloatArray = ratio
    return out


def _nab_scores(
    series: Sequence[NabSeries], ratios: Sequence[FloatArray], tau: float, group: AlertGrouping = "incident"
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Normalised corpus score per profile at corpus threshold ``tau`` and raw scores per file; a NAB
    detection is a record alerted on (:func:`alerted`)."""
    per_file: dict[str, dict[str, float]] = {}
    totals = {p: [0.0, 0.0, 0.0] for p in NAB_PROFILES}  # raw, null, perfect
    for s, r in zip(series, ratios, strict=True):
        det = alerted(r, tau, group)
        scored = nab_scored_windows(s.timestamps, s.windows)
        row: dict[str, float] = {}
        for pname, prof in NAB_PROFILES.items():
            raw = nab_raw_score(det, s.timestamps, s.windows, prof)
            row[pname] = raw
            t = totals[pname]
            t[0] += raw
            t[1] += -prof.fn_weight * scored
            t[2] += prof.tp_weight * scored
        per_file[s.name] = row
    norm = {
        p: (100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan"))
        for p, (raw, null, perfect) in totals.items()
    }
    return norm, per_file


def _nab_report(series: Sequence[NabSeries], traces: Sequence[StreamTrace], group: AlertGrouping) -> Metrics:
    """NAB protocol (one corpus threshold per profile, best on the labels) and the label-free decision."""
    ratios = [_ratio(t) for t in traces]
    best: dict[str, tuple[float, float]] = {}
    for tau in NAB_RATIOS:
        norm, _ = _nab_scores(series, ratios, tau, group)
        for p, v in norm.items():
            if p not in best or v > best[p][0]:
                best[p] = (v, tau)
    free, free_files = _nab_scores(series, ratios, 1.0, group)
    out: Metrics = {NAB_PROFILE_KEYS[p]: _num(v, 2) for p, (v, _) in best.items()}
    out["threshold_ratio"] = {NAB_PROFILE_KEYS[p]: tau for p, (_, tau) in best.items()}
    out["label_free"] = {NAB_PROFILE_KEYS[p]: _num(v, 2) for p, v in free.items()}
    std_tau = best["standard"][1]
    _, std_files = _nab_scores(series, ratios, std_tau, group)
    per_file: dict[str, Metrics] = {}
    for s, r, t in zip(series, ratios, traces, strict=True):
        probation = nab_probation_length(len(s.values))
        per_file[s.name] = {
            "seasonal_period": t.seasonal_period,
            "raw_standard": round(std_files[s.name]["standard"], 4),
            "raw_standard_label_free": round(free_files[s.name]["standard"], 4),
            "windows": len(s.windows),
            "detections_label_free": int(alerted(r, 1.0, group)[probation:].sum()),
            "detections_standard": int(alerted(r, std_tau, group)[probation:].sum()),
        }
    out["per_file"] = per_file
    return out


def _nab_category_slices(
    series: Sequence[NabSeries], traces: Sequence[StreamTrace], taus: dict[str, float], group: AlertGrouping
) -> Metrics:
    cats: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        cats.setdefault(s.category, []).append(i)
    out: Metrics = {}
    for cat, idx in sorted(cats.items()):
        sub = [series[i] for i in idx]
        ratios = [_ratio(traces[i]) for i in idx]
        norm, _ = _nab_scores(sub, ratios, taus["score_standard"], group)
        free, _ = _nab_scores(sub, ratios, 1.0, group)
        probations = [nab_probation_length(len(s.values)) for s in sub]
        out[cat] = {
            "files": len(sub),
            "windows": sum(len(s.windows) for s in sub),
            "score_standard": _num(norm["standard"]),
            "score_standard_label_free": _num(free["standard"]),
            "flag_rate_label_free": _num(float(np.mean([traces[i].flagged[p:].mean()
                                                         for i, p in zip(idx, probations, strict=True)]))),
        }
    return out


def evaluate_nab(
    data_dir: str | Path,
    *,
    files: Sequence[str] | None = None,
    settings: EvalSettings | None = None,
    progress: Progress | None = None,
) -> tuple[Metrics, list[NabSeries], list[StreamTrace]]:
    """Evaluate NAB files: train on each file's probationary period, stream the whole file.

    Protocol: the probationary period (``min(floor(0.15 T), 750)`` rows, unscored by NAB) is the
    training split of each file; every row, probation included, then goes through the pipeline.
    The VAE sees windows of ``settings.window`` consecutive values. ``score_*`` follow NAB's own
    procedure: one threshold for the whole corpus per profile, the best one on the labels, here
    on the ratio ``(score - median) / (threshold - median)`` (1.0 = the pipeline's own decision).
    ``label_free`` scores the pipeline's own decisions. Baselines get the same treatment.
    """
    settings = settings or EvalSettings()
    t0 = time.perf_counter()
    series = load_nab(data_dir)
    if files:
        wanted = set(files)
        unmatched = wanted - {n for s in series for n in (s.name, Path(s.name).stem, s.category)}
        if unmatched:  # a typo would drop a file from the corpus without a word
            raise ConfigError(f"--entity {sorted(unmatched)} matches no NAB file, file name or category in {data_dir}")
        series = [s for s in series if s.name in wanted or Path(s.name).stem in wanted or s.category in wanted]
    traces: list[StreamTrace] = []
    base: dict[str, list[StreamTrace]] = {b: [] for b in settings.baselines}
    from stream_vae.preprocess import make_windows

    for s in series:
        x = s.values.reshape(-1, 1)
        n_train = nab_probation_length(len(x))
        trace = run_pipeline(x[:n_train], x, settings, key=s.name)
        traces.append(trace)
        xs_train, xs = seasonal_inputs(x[:n_train], x, trace.seasonal_period)
        W = make_windows(xs, settings.window)
        W_train = W[trace.seasonal_period : n_train]  # what the model trained on: rows with a lagged value
        for b in settings.baselines:
            base[b].append(run_baseline(b, W_train, W, settings, raw=(xs_train, xs)))
        if progress:
            probation = n_train
            progress(f"{s.name}: {len(x)} rows, {len(s.windows)} windows, "
                     f"{int(trace.flagged[probation:].sum())} flagged after probation "
                     f"({trace.seconds_fit + trace.seconds_score:.1f}s)")
    doc: Metrics = {"dataset": "nab", **_nab_report(series, traces, settings.alert_group)}
    doc["baselines"] = {}
    for b, tr in base.items():
        rep = _nab_report(series, tr, settings.alert_group)
        doc["baselines"][b] = {k: rep[k] for k in (*NAB_PROFILE_KEYS.values(), "label_free", "threshold_ratio")}
    doc["slices"] = {"category": _nab_category_slices(series, traces, doc["threshold_ratio"], settings.alert_group)}
    doc["settings"] = _settings_dict(settings)
    doc["files"] = len(series)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    return doc, series, traces
