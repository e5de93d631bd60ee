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


def test_sigterm_stops_what_the_demo_started() -> None:
    """`stream-vae demo` (and the throughput bench) killed with SIGTERM (kill, timeout, a CI runner) left
    the broker, Redis and worker it had started running: they are in sessions of their own, and without a
    handler no `finally` ran. Under `exits_on_sigterm` a SIGTERM unwinds, and the embedded broker stops."""
    import os
    import signal
    import subprocess
    import sys

    script = ("import time\nfrom stream_vae.services import exits_on_sigterm, kafka_service\n"
              "with exits_on_sigterm(), kafka_service() as svc:\n"
              "    print(svc.process.pid, flush=True)\n    time.sleep(120)\n")
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        broker = int(proc.stdout.readline())
        os.kill(broker, 0)  # running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            os.kill(broker, 0)
    finally:
        proc.kill()
