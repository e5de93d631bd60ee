"""Scaling and per-entity windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_vae.exceptions import NotFittedError
from stream_vae.preprocess import (
    Scaler,
    SeasonalDiffer,
    Windower,
    detect_period,
    lag_correlations,
    make_windows,
    seasonal_differences,
)


def test_scaler_round_trips_through_dict() -> None:
    """A scaler restored from its manifest dict transforms identically."""
    X = np.random.default_rng(0).normal(5, 2, size=(100, 3))
    s = Scaler().fit(X)
    s2 = Scaler.from_dict(s.to_dict())
    np.testing.assert_allclose(s.transform(X), s2.transform(X))
    np.testing.assert_allclose(s.transform(X).mean(0), 0, atol=1e-9)


def test_scaler_constant_feature_is_finite() -> None:
    """A feature constant in training does not produce infinite scaled values."""
    X = np.column_stack([np.ones(50), np.arange(50.0)])
    out = Scaler().fit(X).transform(np.array([[2.0, 3.0]]))
    assert np.all(np.isfinite(out))


def test_scaler_before_fit_raises() -> None:
    """Using an unfitted scaler says what to do."""
    with pytest.raises(NotFittedError, match="before fit"):
        Scaler().transform(np.zeros((1, 2)))


def test_scaler_tiles_over_windows() -> None:
    """A windowed row is scaled feature by feature."""
    s = Scaler().fit(np.array([[0.0, 0.0], [2.0, 4.0]]))
    np.testing.assert_allclose(s.transform(np.array([[1.0, 2.0, 3.0, 6.0]])), [[0.0, 0.0, 2.0, 2.0]])


def test_windower_matches_offline_windows_per_entity() -> None:
    """Streaming windows per entity equal the offline windows built per entity."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2))
    keys = ["a", "b"] * 20
    w = Windower(3)
    online = np.vstack([w.transform(X[i : i + 7], keys[i : i + 7]) for i in range(0, 40, 7)])
    ka = np.array(keys) == "a"
    np.testing.assert_allclose(online[ka], make_windows(X[ka], 3))
    np.testing.assert_allclose(online[~ka], make_windows(X[~ka], 3))


def test_windower_snapshot_restore_resumes() -> None:
    """A restored windower continues exactly where the snapshot left off."""
    X = np.arange(20.0).reshape(10, 2)
    w1 = Windower(3)
    w1.transform(X[:5], ["k"] * 5)
    w2 = Windower(3)
    w2.restore(w1.snapshot())
    np.testing.assert_allclose(w1.transform(X[5:], ["k"] * 5), w2.transform(X[5:], ["k"] * 5))


def test_windower_is_bounded() -> None:
    """The least recently seen entity is evicted beyond max_entities."""
    w = Windower(2, max_entities=3)
    for k in "abcd":
        w.transform(np.zeros((1, 1)), [k])
    assert list(w.snapshot()["buffers"]) == ["b", "c", "d"]


def test_centered_windows_remove_the_level_and_round_trip() -> None:
    """center_windows subtracts each feature's window mean; the flag travels in the manifest dict."""
    X = np.column_stack([np.arange(10.0), 5 + np.arange(10.0)])
    s = Scaler(center_windows=True).fit(X)
    W = s.transform(make_windows(X, 4))
    per = W.reshape(len(W), 4, 2)
    np.testing.assert_allclose(per.mean(axis=1), 0.0, atol=1e-12)
    shifted = s.transform(make_windows(X + 100.0, 4))
    np.testing.assert_allclose(shifted[4:], W[4:], atol=1e-9)  # a constant level shift is invisible
    s2 = Scaler.from_dict(s.to_dict())
    assert s2.center_windows
    np.testing.assert_allclose(s2.transform(make_windows(X, 4)), W)
    assert not Scaler.from_dict({"mean": [0.0], "std": [1.0]}).center_windows


def test_seasonal_differ_matches_offline_differences_per_entity_in_any_batching() -> None:
    """Streaming seasonal differences per entity equal the offline ones, whatever the batch sizes."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 2))
    keys = ["a", "b", "a"] * 30
    ka = np.array(keys) == "a"
    for step in (1, 7, 90):
        s = SeasonalDiffer(5)
        online = np.vstack([s.transform(X[i : i + step], keys[i : i + step]) for i in range(0, 90, step)])
        np.testing.assert_allclose(online[ka], seasonal_differences(X[ka], 5))
        np.testing.assert_allclose(online[~ka], seasonal_differences(X[~ka], 5))
    assert SeasonalDiffer(0).transform(X, keys) is X


def test_seasonal_differ_snapshot_restore_resumes_and_is_bounded() -> None:
    """A restored differ continues exactly (through JSON); the least recently seen entity is evicted."""
    X = np.arange(40.0).reshape(20, 2)
    s1 = SeasonalDiffer(4)
    s1.transform(X[:6], ["k"] * 6)
    s2 = SeasonalDiffer(4)
    s2.restore(json.loads(json.dumps(s1.snapshot())))
    np.testing.assert_allclose(s1.transform(X[6:], ["k"] * 14), s2.transform(X[6:], ["k"] * 14))
    s3 = SeasonalDiffer(2, max_entities=2)
    for k in "abc":
        s3.transform(np.zeros((1, 1)), [k])
    assert list(s3.snapshot()["history"]) == ["b", "c"]


def test_detect_period_finds_the_cycle_of_all_entities_and_features_or_none() -> None:
    """The shared period of several noisy entities and features is found, not one of its multiples;
    noise, constants and data too short for two periods (plus 100 rows to train on) give 0."""
    rng = np.random.default_rng(4)
    t = np.arange(1500)
    cycle = (t % 60 < 15).astype(float)  # a daily-like bump, 15 of every 60 records
    ents = [np.column_stack([a * cycle + 0.2 * rng.normal(size=1500), rng.normal(size=1500) + 3 * cycle])
            for a in (1.0, 4.0)]
    assert detect_period(ents, min_lag=10) == 60
    assert detect_period([e[:150] for e in ents], min_lag=10) == 0  # a lag of 60 would leave < 100 rows
    assert detect_period([rng.normal(size=(1500, 3))], min_lag=10) == 0
    assert detect_period([np.ones((1500, 2))], min_lag=10) == 0
    assert detect_period(ents, min_lag=61) == 120  # a lag the window already covers is not a period
    r = lag_correlations(ents[0][:, 0], 120)
    assert r[0] == pytest.approx(1.0) and r[60] > 0.75 > r[30]


def test_windows_of_another_length_are_not_restored() -> None:
    """A checkpoint taken under another window length (a new model version) leaves the entity to start afresh."""
    old = Windower(2)
    old.transform(np.arange(6.0).reshape(3, 2), ["a"] * 3)
    new = Windower(3)
    new.restore(old.snapshot(), merge=True)
    assert new.snapshot() == {"buffers": {}}
    same = Windower(2)
    same.restore(old.snapshot())
    assert same.snapshot() == old.snapshot()


def test_buffered_rows_do_not_keep_their_batch_alive() -> None:
    """An entity that goes quiet keeps its last rows; as views they kept the whole batch matrix (5000
    rows here) in memory, for every quiet entity's last batch."""
    X = np.random.default_rng(0).normal(size=(5000, 4))
    w, s = Windower(3), SeasonalDiffer(2)
    w.transform(X, ["a"] * 5000)
    s.transform(X, ["a"] * 5000)
    assert all(r.base is None for r in w._buffers["a"]) and all(r.base is None for r in s._history["a"])
