"""The drift monitor: no alarms on a stationary stream, prompt detection of a shift, resumable state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_vae.drift import DriftMonitor, Watch
from stream_vae.synth import generate
from stream_vae.testing import quick_model, synth_topology


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return quick_model(synth_topology(epochs=15), steps=2000)


def _run(mon: DriftMonitor, model, X: np.ndarray, batch: int = 1000) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    r = model.scorer().score_many(model.scaler.transform(X))
    out = []
    for i in range(0, len(X), batch):
        sl = slice(i, i + batch)
        for sig in mon.update(score=r.score[sl], latent_mu=r.latent_mu[sl], contributions=r.contributions[sl]):
            out.append((i, sig.test))
    return out


def test_stationary_stream_raises_no_drift(model) -> None:  # type: ignore[no-untyped-def]
    """30k records from the training distribution (with anomalies) raise no drift signal."""
    s = generate(n_steps=5000, t0=2000, anomaly_rate=0.004, seed=31)
    assert _run(DriftMonitor(model.topology, model.reference), model, s.X) == []


def test_shift_is_detected_within_bounded_delay(model) -> None:  # type: ignore[no-untyped-def]
    """A workload shift is detected within 2000 records and implicates shifted features."""
    s = generate(n_steps=5000, t0=2000, anomaly_rate=0.004, seed=32, drift_at=4500)
    at = int(np.flatnonzero(s.steps >= 4500)[0])
    mon = DriftMonitor(model.topology, model.reference)
    sig = _run(mon, model, s.X)
    assert sig, "the shift must be detected"
    first = sig[0][0]
    assert at - 1000 <= first <= at + 2000
    assert {t for _, t in sig} & {"multivariate", "latent"}, "the latent space moved"


def test_snapshot_restore_gives_same_decisions(model) -> None:  # type: ignore[no-untyped-def]
    """A monitor restored from a JSON snapshot mid-stream declares the same drifts as the original."""
    s = generate(n_steps=4000, t0=2000, seed=33, drift_at=5000)
    a = DriftMonitor(model.topology, model.reference, model_version="v1")
    _run(a, model, s.X[:9000])
    b = DriftMonitor(model.topology, model.reference, model_version="v1")
    b.restore(json.loads(json.dumps(a.snapshot())))
    assert _run(a, model, s.X[9000:]) == _run(b, model, s.X[9000:])


def test_snapshot_of_another_model_version_is_ignored(model) -> None:  # type: ignore[no-untyped-def]
    """State from another model's latent space is not restored."""
    a = DriftMonitor(model.topology, model.reference, model_version="v1")
    _run(a, model, generate(n_steps=500, seed=1).X)
    b = DriftMonitor(model.topology, model.reference, model_version="v2")
    b.restore(a.snapshot())
    assert b.snapshot()["blocks"] == 0


def test_state_is_bounded() -> None:
    """The replay history of a watch never grows past its bound."""
    w = Watch("adwin")
    for v in np.random.default_rng(0).normal(size=5000):
        w.update(float(v))
    assert len(w.snapshot()["history"]) <= 256


def test_small_shift_below_min_shift_is_ignored() -> None:
    """ADWIN may notice a tiny shift, but below min_shift no drift is declared."""
    w = Watch("adwin", min_shift=0.5)
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 0.05, 300), rng.normal(0.2, 0.05, 300)])
    assert not any(w.update(float(v)) for v in values)
