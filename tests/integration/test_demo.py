"""`stream-vae demo --json`: the README's first command, end to end."""

from __future__ import annotations

import json

import pytest

from .helpers import cli

pytestmark = pytest.mark.integration


def test_demo_summary(kafka_bootstrap: str, redis_url: str) -> None:
    """The demo scores every valid record, sends every invalid one to the DLQ and catches most anomalies."""
    r = cli("demo", "--seconds", "90", "--json", "--rate", "600",
            env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url}, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("records_sent", "records_scored", "alerts", "dlq", "injected_anomalies", "injected_detected",
                "model_version", "broker", "redis"):
        assert key in s
    assert s["records_scored"] == s["records_sent"] - s["invalid_sent"]
    assert s["dlq"] == s["invalid_sent"] > 0
    assert s["injected_anomalies"] > 0
    assert s["injected_detected"] >= 0.8 * s["injected_anomalies"]
    assert s["false_alert_rate"] < 0.02
    assert s["model_version"] == "v1"
