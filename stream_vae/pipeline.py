"""The framework-free data path: validate -> featurize -> score -> calibrate -> alert, one batch at a time.

Kafka glue (``hotpath``) and the evaluation both call ``Pipeline.process_batch``; nothing here
knows about Kafka, Redis or faust.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from stream_vae.alerts import AlertBuilder, IncidentTracker
from stream_vae.calibrate import RangeTracker, ScoreSmoother, ThresholdTracker
from stream_vae.model.registry import LoadedModel
from stream_vae.preprocess import SeasonalDiffer, Windower
from stream_vae.records import Alert, BatchOutcome, IncidentEnd, RawRecord, ValidBatch
from stream_vae.topology import Topology
from stream_vae.validate import Validator

StateSource = Callable[[Sequence[str]], Iterable[dict[str, Any]]]
"""Given a batch's entity keys, the saved ``Pipeline.snapshot`` of those not resumed yet."""


@dataclasses.dataclass(frozen=True)
class _Active:
    """The model and the online state calibrated for it, swapped together as one reference."""

    model: LoadedModel
    smoother: ScoreSmoother
    tracker: ThresholdTracker
    ranges: RangeTracker


def _active(model: LoadedModel) -> _Active:
    cal = model.calibrator
    return _Active(model, ScoreSmoother(cal.smoothing), ThresholdTracker(cal), RangeTracker(cal))


class Pipeline:
    """Scores batches of raw records with the active model.

    Per record, in arrival order: validate, append each feature's seasonal difference when the
    model has a ``seasonal_period``, window per entity, scale, score (one torch call per
    batch), smooth the score over the entity's last ``calibration.smoothing`` records, compare
    with the entity's threshold (the calibrated one, moved by the label-free
    :class:`~stream_vae.calibrate.ThresholdTracker` when ``calibration.adapt == "track"``); with
    ``calibration.range_tolerance`` set, a record whose raw feature leaves its entity's range so far
    (:class:`~stream_vae.calibrate.RangeTracker`) is flagged too, and its alert names the features
    (``beyond_range``); then build alerts: one per flagged record, or with ``alerts.group:
    incident`` one when a run of flagged records of an entity opens and one when it escalates.
    ``BatchOutcome.result.score`` is the smoothed score the threshold was applied to; every alert
    carries its own threshold. Each record is judged by the threshold its entity had published
    before it (``calibration.track_every``), so the same records are flagged whatever the batching.

    ``swap(model)`` replaces the model between batches: one reference assignment, so a batch is
    always scored by exactly one version and every alert names it. The smoothing and threshold
    state start afresh with the new model (its scores live on its own scale); the windows of raw
    records (and the seasonal history) are kept when the window length (and the seasonal period)
    do not change.
    """

    def __init__(self, topology: Topology, model: LoadedModel) -> None:
        self.topology = topology
        self.validator = Validator(topology)
        self.seasonal = SeasonalDiffer(model.seasonal_period)
        self.windower = Windower(model.window)
        self.alerts = AlertBuilder(topology)
        self.incidents = IncidentTracker(topology.alerts.group)  # kept across swaps: an open incident stays open
        self._active = _active(model)

    @property
    def model(self) -> LoadedModel:
        return self._active.model

    @property
    def tracker(self) -> ThresholdTracker:
        """The online threshold state of the active model."""
        return self._active.tracker

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Make ``model`` active for the next batch; returns the previous one."""
        if model.seasonal_period != self.seasonal.period:
            self.seasonal = SeasonalDiffer(model.seasonal_period)
            self.windower = Windower(model.window)  # its rows change width (or meaning) with the period
        elif model.window != self.windower.window:
            self.windower = Windower(model.window)
        old, self._active = self._active, _active(model)
        return old.model

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        """Online state (windows, smoothing buffers, threshold histograms, open incidents) for a checkpoint.

        With ``keys``, only those entities' state (what a worker checkpoints after a batch touched them).
        """
        act = self._active
        return {
            "model_version": act.model.version,
            "seasonal_period": self.seasonal.period,
            "seasonal": self.seasonal.snapshot(keys),
            "windower": self.windower.snapshot(keys),
            "incidents": self.incidents.snapshot(keys),
            "smoother": act.smoother.snapshot(keys),
            "tracker": act.tracker.snapshot(keys),
            "ranges": act.ranges.snapshot(keys),
        }

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Resume from ``snapshot()``; score state is only taken back for the same model version.

        ``merge`` adds the snapshot's entities to those held (a worker resuming entities one by one)
        instead of replacing everything.
        """
        act = self._active
        self.seasonal.restore(state.get("seasonal", {}), merge=merge)  # raw records: any period reads its last ones
        if state.get("seasonal_period", 0) == self.seasonal.period:  # else the rows differ in width
            self.windower.restore(state.get("windower", {}), merge=merge)  # it skips windows of another length
        self.incidents.restore(state.get("incidents", {}), merge=merge)
        if state.get("model_version") == act.model.version:
            act.smoother.restore(state.get("smoother", {}), merge=merge)
            act.tracker.restore(state.get("tracker", {}), merge=merge)
            act.ranges.restore(state.get("ranges", {}), merge=merge)

    def forget(self, keys: Collection[str]) -> None:
        """Drop these entities' state (their partitions moved to another worker, which resumes them)."""
        act = self._active
        for part in (self.seasonal, self.windower, self.incidents, act.smoother, act.tracker, act.ranges):
            part.forget(keys)

    def process_batch(self, records: Sequence[RawRecord], *, drift_episode: str | None = None,
                      resume: StateSource | None = None) -> BatchOutcome:
        """Score ``records``; ``resume`` is asked for the saved state of entities before they are scored
        (a worker's checkpoint store: it answers once per entity, with what another worker left)."""
        act = self._active  # read once: a concurrent swap affects the next batch, not this one
        model, cal = act.model, act.model.calibrator
        batch, rejected = self.validator.validate(records)
        if len(batch) == 0:
            return BatchOutcome([], [], rejected, None, cal.threshold, model.version)
        keys = batch.keys
        if resume is not None:
            for saved in resume(keys):
                self.restore(saved, merge=True)
        feats = self.seasonal.transform(batch.X, keys)  # [features, their seasonal differences] or batch.X
        X = model.scaler.transform(self.windower.transform(feats, keys))
        result = model.scorer.score_many(X)
        score = act.smoother.transform(result.score, keys)
        if score is not result.score:
            result = dataclasses.replace(result, score=score)
        thresholds, p_all = act.tracker.assess(score, keys)  # each record's threshold, then the state moves on
        outside = act.ranges.outside(feats, keys)  # all False unless calibration.range_tolerance > 0
        d = batch.X.shape[1]
        if outside.shape[1] > d:  # a seasonal difference beyond its range is reported on its feature
            outside = outside[:, :d] | outside[:, d:]
        beyond = np.any(outside, axis=1, keepdims=False).astype(bool)
        flagged = (score > thresholds) | beyond  # a feature beyond its range so far: flagged whatever the score
        alerting, incident_ids, ends = self.incidents.select(batch, flagged, beyond)  # alerts.group
        idx = np.flatnonzero(alerting)
        alerts: list[tuple[int, Alert]] = []
        for thr in np.unique(thresholds[idx]):
            mask = alerting & (thresholds == thr)
            built = self.alerts.build(
                batch, result, mask, p_all,
                threshold=float(thr), calibration_id=model.calibration_id, drift_episode=drift_episode,
                outside=outside if act.ranges.active else None, incidents=incident_ids,
            )
            alerts.extend(zip(np.flatnonzero(mask).tolist(), built, strict=True))
        alerts.sort(key=lambda pair: pair[0])
        return BatchOutcome(
            batch.records, [a for _, a in alerts], rejected, result, float(thresholds[-1]), model.version, flagged,
            batch=batch,  # the reservoir keeps the raw features, each record marked flagged or not
            beyond_range=beyond, thresholds=thresholds,
            resolved=[self._ended(batch, i, inc, n, model.version, announced=told) for i, inc, n, told in ends],
        )

    def expire_incidents(self, *, now: float | None = None,
                         partition_now: Mapping[int, float] | None = None) -> list[IncidentEnd]:
        """Resolve the open incidents of entities that sent nothing for ``alerts.incident_idle_s``
        (measured as :meth:`~stream_vae.alerts.IncidentTracker.expire` does)."""
        idle_s, version = self.topology.alerts.incident_idle_s, self.model.version
        return [IncidentEnd(self.topology.name, key, incident, n, None, None, None, None, version, reason="idle",
                            announced=told)
                for key, incident, n, told in self.incidents.expire(idle_s, now=now, partition_now=partition_now)]

    def _ended(self, batch: ValidBatch, i: int, incident: str, records: int, version: str, *,
               announced: bool) -> IncidentEnd:
        rec = batch.records[i]
        return IncidentEnd(self.topology.name, batch.keys[i], incident, records, rec.topic, rec.partition,
                           rec.offset, batch.event_times[i], version, announced=announced)
