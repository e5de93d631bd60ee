"""Prometheus metrics of a worker. Names are a contract: the Helm chart's dashboard reads them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

RECORDS_SCORED = Counter("stream_vae_records_scored_total", "Records scored", ["stream"])
RECORDS_REJECTED = Counter(
    "stream_vae_records_rejected_total", "Records sent to the dead-letter topic", ["stream", "reason"]
)
ALERTS = Counter("stream_vae_alerts_total", "Anomaly alerts published", ["stream", "severity"])
ALERTS_SUPPRESSED = Counter(
    "stream_vae_alerts_suppressed_total", "Anomaly alerts held back by cool-down or during a drift episode", ["stream"]
)
INCIDENTS_RESOLVED = Counter(
    "stream_vae_incidents_resolved_total", "Incident ends published (alerts.group: incident)", ["stream", "reason"]
)
DRIFT_ALERTS = Counter("stream_vae_drift_alerts_total", "Drift alerts published", ["stream", "test"])
BATCH_LATENCY = Histogram(
    "stream_vae_batch_seconds",
    "Time to validate, score and publish one batch",
    ["stream"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "stream_vae_batch_records", "Records per batch", ["stream"], buckets=(1, 10, 100, 500, 1000, 5000, 20000)
)
E2E_LAG = Gauge(
    "stream_vae_end_to_end_lag_seconds", "Now minus the Kafka timestamp of the newest scored record", ["stream"]
)
ACTIVE_MODEL = Info("stream_vae_active_model", "Model version the worker scores with")
MODEL_VERSION = Gauge("stream_vae_model_loaded", "1 while a model is loaded", ["stream"])
DRIFT_STATE = Gauge("stream_vae_drift_open", "1 while a drift episode is open", ["stream"])
SWAPS = Counter("stream_vae_model_swaps_total", "Hot swaps to a new model version", ["stream"])
ROLLBACKS = Counter("stream_vae_model_rollbacks_total", "Automatic or manual rollbacks", ["stream"])
REDIS_ERRORS = Counter(
    "stream_vae_redis_errors_total", "Batches (or model checks) retried because Redis did not answer", ["stream"]
)
RECALIBRATIONS = Counter(
    "stream_vae_recalibrations_total", "Recalibration requests handled by the trainer", ["stream", "kind", "outcome"]
)
SWAP_PAUSE_MAX = Gauge(
    "stream_vae_swap_pause_max_seconds", "Longest pause of the hot loop for a model swap", ["stream"]
)


def init_stream(stream: str) -> None:
    """Create a worker's per-stream series at 0, so that alert rules (``== 0``, ``rate()``) and dashboard
    panels have data before the first event of each kind (a labelled series exists only once touched)."""
    for metric in (RECORDS_SCORED, ALERTS_SUPPRESSED, SWAPS, ROLLBACKS, REDIS_ERRORS):
        metric.labels(stream)
    for severity in ("medium", "high", "critical"):
        ALERTS.labels(stream, severity)
    # not the lag: 0 would claim a record was just scored
    for gauge in (MODEL_VERSION, DRIFT_STATE, SWAP_PAUSE_MAX):
        gauge.labels(stream).set(0)
