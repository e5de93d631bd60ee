"""alert: turn flagged records into typed ``Alert``s (severity, top features, redaction)."""

from __future__ import annotations

import numpy as np

from stream_vae.records import Alert, FloatArray, ScoreResult, ValidBatch
from stream_vae.topology import Topology


def severity(p_value: float, *, fpr: float, high: float, critical: float) -> str:
    """Severity from how far below the false-positive budget the p-value is.

    Examples
    --------
    >>> severity(0.004, fpr=0.005, high=0.1, critical=0.01), severity(1e-6, fpr=0.005, high=0.1, critical=0.01)
    ('medium', 'critical')
    """
    if p_value <= fpr * critical:
        return "critical"
    if p_value <= fpr * high:
        return "high"
    return "medium"


class AlertBuilder:
    """Builds alerts for the rows a calibrator flagged."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._names = topology.feature_names
        self._redact = set(topology.alerts.redact)

    def build(
        self,
        batch: ValidBatch,
        result: ScoreResult,
        flagged: np.ndarray,  # type: ignore[type-arg]
        p_values: FloatArray,
        *,
        threshold: float,
        calibration_id: str,
        drift_episode: str | None = None,
        outside: np.ndarray | None = None,  # type: ignore[type-arg]
    ) -> list[Alert]:
        """One alert per flagged row; ``outside[i, j]``: feature j of row i left its range (RangeTracker)."""
        spec = self.topology.alerts
        fpr = self.topology.calibration.fpr
        k = min(spec.top_features, len(self._names))
        out: list[Alert] = []
        for i in np.flatnonzero(flagged):
            contrib = result.contributions[i]
            top = np.argsort(-contrib)[:k]
            total = float(np.abs(contrib).sum()) or 1.0
            feats = []
            for j in top:
                name = self._names[j]
                item: dict[str, object] = {"feature": name, "contribution": round(float(contrib[j]) / total, 4)}
                if name not in self._redact:
                    item["value"] = float(batch.X[i, j])
                feats.append(item)
            rec = batch.records[i]
            p = float(p_values[i])
            out.append(
                Alert(
                    stream=self.topology.name,
                    topology_id=self.topology.name,
                    key=batch.keys[i],
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    event_time=batch.event_times[i],
                    score=float(result.score[i]),
                    threshold=threshold,
                    p_value=p,
                    severity=severity(p, fpr=fpr, high=spec.severity_high, critical=spec.severity_critical),
                    top_features=feats,
                    latent_mu=[round(float(v), 4) for v in result.latent_mu[i]],
                    model_version=result.model_version,
                    calibration_id=calibration_id,
                    drift_episode=drift_episode,
                    beyond_range=[] if outside is None else [self._names[j] for j in np.flatnonzero(outside[i])],
                )
            )
        return out
