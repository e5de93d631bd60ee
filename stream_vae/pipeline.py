"""The framework-free data path: validate -> featurize -> score -> calibrate -> alert, one batch at a time.

Kafka glue (``hotpath``) and the evaluation both call ``Pipeline.process_batch``; nothing here
knows about Kafka, Redis or faust.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_vae.alerts import AlertBuilder
from stream_vae.model.registry import LoadedModel
from stream_vae.preprocess import Windower
from stream_vae.records import BatchOutcome, RawRecord
from stream_vae.topology import Topology
from stream_vae.validate import Validator


class Pipeline:
    """Scores batches of raw records with the active model.

    ``swap(model)`` replaces the model between batches: one reference assignment, so a batch is
    always scored by exactly one version and every alert names it.
    """

    def __init__(self, topology: Topology, model: LoadedModel) -> None:
        self.topology = topology
        self.validator = Validator(topology)
        self.windower = Windower(topology.window)
        self.alerts = AlertBuilder(topology)
        self._model = model

    @property
    def model(self) -> LoadedModel:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Make ``model`` active for the next batch; returns the previous one."""
        if model.window != self.topology.window:
            self.windower = Windower(model.window)
        old, self._model = self._model, model
        return old

    def process_batch(self, records: Sequence[RawRecord], *, drift_episode: str | None = None) -> BatchOutcome:
        model = self._model  # read once: a concurrent swap affects the next batch, not this one
        batch, rejected = self.validator.validate(records)
        if len(batch) == 0:
            return BatchOutcome([], [], rejected, None, model.calibrator.threshold, model.version)
        X = model.scaler.transform(self.windower.transform(batch.X, batch.keys))
        result = model.scorer.score_many(X)
        cal = model.calibrator
        flagged = cal.predict(result.score)
        p = cal.p_value(result.score[flagged])
        p_all = np.ones(len(batch))
        p_all[flagged] = p
        alerts = self.alerts.build(
            batch, result, flagged, p_all,
            threshold=cal.threshold, calibration_id=model.calibration_id, drift_episode=drift_episode,
        )
        return BatchOutcome(batch.records, alerts, rejected, result, cal.threshold, model.version, flagged, batch=batch)
