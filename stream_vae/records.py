"""Typed, versioned results that flow along the data path (frozen dataclasses, never dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka message as it arrived: original bytes plus where it came from."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that failed validation; it goes to the dead-letter topic with this reason."""

    record: RawRecord
    reason: str  # short machine-readable code, e.g. "invalid_json", "missing_field"
    detail: str  # human-readable explanation naming the field


@dataclass(frozen=True, slots=True)
class ValidBatch:
    """Records that passed validation, as one feature matrix in arrival order."""

    records: list[RawRecord]
    X: FloatArray  # [N, D] raw feature values in topology order
    keys: list[str]
    event_times: list[Any]

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Batched model output. Higher ``score`` means more anomalous."""

    score: FloatArray  # [N] reconstruction negative log-likelihood
    kl: FloatArray  # [N] KL(q(z|x) || p(z))
    contributions: FloatArray  # [N, D] per-feature share of the NLL (summed over the window's records)
    # [N, D] per feature, its largest share of the NLL at any one record of the window: the features
    # an alert names (top_features)
    attributions: FloatArray
    latent_mu: FloatArray  # [N, L]
    latent_logvar: FloatArray  # [N, L]
    model_version: str


@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly alert; ``to_event`` renders the CloudEvents-style JSON envelope."""

    stream: str
    topology_id: str
    key: str
    topic: str
    partition: int
    offset: int
    event_time: Any
    score: float
    threshold: float
    p_value: float
    severity: str
    top_features: list[dict[str, Any]]
    latent_mu: list[float]
    model_version: str
    calibration_id: str
    drift_episode: str | None = None
    beyond_range: list[str] = field(default_factory=list)  # features that left the entity's range (if any)
    incident: str | None = None  # topic:partition:offset of the record that opened the run of flags
    incident_event: str = "open"  # open | escalate (alerts.group = incident); open for every record otherwise
    id: str = ""
    time: str = ""

    def data(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "topology_id": self.topology_id,
            "key": self.key,
            "record": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "event_time": self.event_time,
            "score": round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "p_value": self.p_value,
            "severity": self.severity,
            "top_features": self.top_features,
            "latent": {"mu": self.latent_mu},
            "model_version": self.model_version,
            "calibration_id": self.calibration_id,
            "drift_episode": self.drift_episode,
            "beyond_range": self.beyond_range,
            "incident": {"id": self.incident, "event": self.incident_event},
        }

    def to_event(self) -> dict[str, Any]:
        return envelope(
            "io.stream-vae.anomaly", source=f"stream-vae/{self.stream}", data=self.data(), id=self.id, time=self.time
        )


@dataclass
class IncidentEnd:
    """An incident is over (``alerts.group: incident``): its entity's first record that was not flagged
    (``reason="recovered"``), or no record of the entity for ``alerts.incident_idle_s`` (``"idle"``:
    no record closed it, so ``topic``/``partition``/``offset``/``event_time`` are None).

    Published on the anomaly topic as ``io.stream-vae.incident.resolved``, keyed by the entity, so an
    alert consumer (a pager) can close what the incident's ``open`` alert opened.
    """

    stream: str
    key: str
    incident: str  # the id its open alert carried
    records: int  # flagged records in the incident
    topic: str | None
    partition: int | None
    offset: int | None
    event_time: Any
    model_version: str
    reason: str = "recovered"
    # whether an alert of the incident got past the worker's alert gate (a worker publishes only those ends)
    announced: bool = True

    def data(self) -> dict[str, Any]:
        record = None if self.topic is None else {"topic": self.topic, "partition": self.partition,
                                                  "offset": self.offset}
        return {
            "stream": self.stream,
            "topology_id": self.stream,
            "key": self.key,
            "record": record,
            "event_time": self.event_time,
            "model_version": self.model_version,
            "incident": {"id": self.incident, "event": "resolve", "records": self.records, "reason": self.reason},
        }

    def to_event(self) -> dict[str, Any]:
        return envelope("io.stream-vae.incident.resolved", source=f"stream-vae/{self.stream}", data=self.data())


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one call of ``Pipeline.process_batch`` produced."""

    scored: list[RawRecord]
    alerts: list[Alert]
    rejections: list[Rejection]
    result: ScoreResult | None
    threshold: float
    model_version: str
    is_anomaly: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    batch: ValidBatch | None = None  # the validated input (raw features, keys): the reservoir keeps it
    # records flagged because a feature left the entity's range (calibration.range_tolerance), whatever the score
    beyond_range: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # the threshold each scored record was compared with (it can move inside a batch: calibration.track_every)
    thresholds: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    resolved: list[IncidentEnd] = field(default_factory=list)  # incidents that ended (alerts.group: incident)


def envelope(type_: str, *, source: str, data: dict[str, Any], id: str = "", time: str = "") -> dict[str, Any]:
    """Wrap ``data`` in a CloudEvents 1.0 structured-mode envelope."""
    import uuid
    from datetime import UTC, datetime

    return {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": type_,
        "time": time or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
