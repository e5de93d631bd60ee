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


@pytest.mark.parametrize("shift", [0.6, 0.8, -0.8, 1.0])
def test_a_moderate_lasting_shift_is_reported_and_measured(shift: float) -> None:
    """Page-Hinkley fires some blocks after a moderate shift; the level was measured around the newest
    values only, so the shift measured ~0 and was dropped (and never reported, PH having reset)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 600)
    x[300:] += shift
    w = Watch("page_hinkley", threshold=8.0, min_shift=0.5)
    fired = [i for i, v in enumerate(x) if w.update(float(v))]
    assert len(fired) == 1 and 300 <= fired[0] < 340
    assert abs(w.last_shift - shift) < 0.15
    assert w.last_width == fired[0] + 1  # the values since the previous change, reported as the window


def test_no_shift_is_reported_on_stationary_block_values() -> None:
    w = Watch("page_hinkley", threshold=8.0, min_shift=0.5)
    assert not any(w.update(float(v)) for v in np.random.default_rng(3).normal(0, 0.2, 20_000))


def test_a_restore_keeps_the_block_not_closed_yet(model) -> None:  # type: ignore[no-untyped-def]
    """Restored after every batch of 150 records (blocks of 200), the monitor declares what one that
    never stopped declares; dropping the open block closed no block at all."""
    s = generate(n_steps=4000, t0=2000, seed=34, drift_at=4500)
    r = model.scorer().score_many(model.scaler.transform(s.X))
    a = DriftMonitor(model.topology, model.reference, model_version="v1")
    b = DriftMonitor(model.topology, model.reference, model_version="v1")
    got_a, got_b = [], []
    for i in range(0, len(s.X), 150):
        sl = slice(i, i + 150)
        got_a += [(i, x.test, x.window) for x in a.update(score=r.score[sl], latent_mu=r.latent_mu[sl],
                                                          contributions=r.contributions[sl])]
        got_b += [(i, x.test, x.window) for x in b.update(score=r.score[sl], latent_mu=r.latent_mu[sl],
                                                          contributions=r.contributions[sl])]
        restored = DriftMonitor(model.topology, model.reference, model_version="v1")
        restored.restore(json.loads(json.dumps(b.snapshot())))
        b = restored
    assert got_a and got_b == got_a
    assert b.snapshot()["blocks"] == a.snapshot()["blocks"] == len(s.X) // model.topology.drift.block_size
    assert any(w > model.topology.drift.block_size for _, _, w in got_a)  # not always one block
