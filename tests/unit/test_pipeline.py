"""process_batch: the framework-free data path, one batch at a time."""

from __future__ import annotations

import numpy as np

from stream_vae.pipeline import Pipeline
from stream_vae.synth import generate
from stream_vae.testing import loaded, quick_model, raw_records, synth_topology


def test_batch_outcome_accounts_for_every_record() -> None:
    """Every input record is either scored or rejected, and alerts carry version and calibration."""
    topo = synth_topology(epochs=6)
    p = Pipeline(topo, loaded(quick_model(topo), "v3"))
    s = generate(n_steps=300, t0=1200, anomaly_rate=0.02, seed=8)
    recs = raw_records([*s.rows, b"garbage", b'{"entity": "x"}'])
    out = p.process_batch(recs)
    assert len(out.scored) + len(out.rejections) == len(recs)
    assert {r.reason for r in out.rejections} == {"invalid_json", "missing_field"}
    assert out.alerts, "injected anomalies should raise alerts"
    a = out.alerts[0].to_event()
    assert a["specversion"] == "1.0" and a["type"] == "io.stream-vae.anomaly"
    d = a["data"]
    assert d["model_version"] == "v3" and d["calibration_id"].startswith("v3/")
    assert d["score"] > d["threshold"] and 0 < d["p_value"] <= 1
    assert {"feature", "contribution", "value"} <= set(d["top_features"][0])
    flagged = np.flatnonzero(out.is_anomaly)
    assert s.anomalous[flagged].mean() > 0.5  # most alerts are on injected anomalies


def test_swap_changes_version_for_next_batch_only() -> None:
    """After swap() the next batch is scored by the new version."""
    topo = synth_topology(epochs=2)
    m = quick_model(topo, steps=300)
    p = Pipeline(topo, loaded(m, "v1"))
    s = generate(n_steps=20, t0=300, seed=1)
    assert p.process_batch(raw_records(s.rows)).model_version == "v1"
    old = p.swap(loaded(m, "v2"))
    assert old.version == "v1"
    assert p.process_batch(raw_records(s.rows)).model_version == "v2"


def test_redacted_features_have_no_value() -> None:
    """Fields listed under alerts.redact appear without their value in alerts."""
    topo = synth_topology(epochs=4, alerts={"redact": ["cpu", "load", "mem", "net_in", "net_out", "latency_ms",
                                                       "errors", "disk_io"], "top_features": 8})
    p = Pipeline(topo, loaded(quick_model(topo)))
    s = generate(n_steps=400, t0=1200, anomaly_rate=0.03, seed=2)
    out = p.process_batch(raw_records(s.rows))
    assert out.alerts
    assert all("value" not in f for a in out.alerts for f in a.top_features)


def test_all_invalid_batch() -> None:
    """A batch of only bad records returns rejections and no result."""
    topo = synth_topology(epochs=2)
    p = Pipeline(topo, loaded(quick_model(topo, steps=300)))
    out = p.process_batch(raw_records([b"x", b"y"]))
    assert out.result is None and len(out.rejections) == 2 and not out.alerts
