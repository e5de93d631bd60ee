"""Scaling and per-entity windows."""

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.exceptions import NotFittedError
from stream_vae.preprocess import Scaler, Windower, make_windows


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
