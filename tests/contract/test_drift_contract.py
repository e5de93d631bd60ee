"""One contract suite for every change/drift detector: each class's ``_test_params()`` runs all checks."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import numpy as np
import pytest

from stream_vae.changepoint import BOCPD, MultiSeriesDetector, RiverDetector

DETECTOR_CLASSES: list[type[Any]] = [BOCPD, RiverDetector, MultiSeriesDetector]

CASES = [
    pytest.param(cls, params, id=f"{cls.__name__}-{i}")
    for cls in DETECTOR_CLASSES
    for i, params in enumerate(cls._test_params())
]


def make_stream(det: Any, n: int, *, seed: int = 0, shift_at: int | None = None) -> list[Any]:
    """A stream of floats (vectors for multivariate detectors) with an optional mean shift."""
    rng = np.random.default_rng(seed)
    dims = getattr(det, "n_dims", None)
    X = rng.normal(size=(n, dims or 1))
    if shift_at is not None:
        X[shift_at:] += 6.0
    return [row for row in X] if dims else [float(v) for v in X[:, 0]]


def run(det: Any, stream: list[Any]) -> list[tuple[bool, int | None]]:
    """Feed ``stream``; return (drift_detected, change_point) after every step."""
    out = []
    for x in stream:
        det.update(x)
        out.append((det.drift_detected, det.change_point))
    return out


def n_scalars(obj: Any) -> int:
    """Number of leaves in a JSON-like structure (a measure of state size that ignores digits)."""
    if isinstance(obj, dict):
        return sum(n_scalars(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(n_scalars(v) for v in obj)
    return 1


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_verbs_and_read_only_flag(cls: type[Any], params: dict[str, Any]) -> None:
    """update/snapshot/restore/_reset exist; drift_detected and change_point are read-only properties."""
    det = cls(**params)
    for verb in ("update", "snapshot", "restore", "_reset"):
        assert callable(getattr(det, verb))
    for prop in ("drift_detected", "change_point", "n_seen"):
        assert isinstance(inspect.getattr_static(cls, prop), property)
        with pytest.raises(AttributeError):
            setattr(det, prop, True)
    assert det.drift_detected is False and det.change_point is None and det.n_seen == 0
    for x in make_stream(det, 50):
        det.update(x)
        assert type(det.drift_detected) is bool


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_hyper_parameters_are_stored_unchanged(cls: type[Any], params: dict[str, Any]) -> None:
    """Public attributes are exactly the constructor arguments, unchanged; learning touches only _private ones."""
    det = cls(**params)
    public = {k: v for k, v in vars(det).items() if not k.startswith("_")}
    assert set(public) == set(inspect.signature(cls).parameters)
    for key, value in params.items():
        assert public[key] == value if key in public else det.params[key] == value
    frozen = json.dumps(public, default=repr, sort_keys=True)
    run(det, make_stream(det, 60, shift_at=30))
    after = {k: v for k, v in vars(det).items() if not k.startswith("_")}
    assert json.dumps(after, default=repr, sort_keys=True) == frozen
    assert isinstance(cls.state_keys, tuple) and set(det.snapshot()) == set(cls.state_keys)


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_snapshot_is_json_and_restore_round_trips(cls: type[Any], params: dict[str, Any]) -> None:
    """A JSON round trip of the snapshot restores a detector that makes the same decisions afterwards."""
    det = cls(**params)
    stream = make_stream(det, 260, shift_at=150)
    run(det, stream[:120])
    text = json.dumps(det.snapshot(), allow_nan=False)
    twin = cls(**params)
    twin.restore(json.loads(text))
    assert json.dumps(twin.snapshot(), allow_nan=False) == text
    assert run(twin, stream[120:]) == run(det, stream[120:])
    assert twin.n_seen == det.n_seen


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_restore_rejects_a_foreign_dict(cls: type[Any], params: dict[str, Any]) -> None:
    """restore({}) is a ValueError that names the method to call."""
    with pytest.raises(ValueError, match="snapshot"):
        cls(**params).restore({})


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_deterministic(cls: type[Any], params: dict[str, Any]) -> None:
    """Two detectors built alike give identical decisions on the same stream; _reset() starts over."""
    a, b = cls(**params), cls(**params)
    stream = make_stream(a, 300, seed=3, shift_at=200)
    first = run(a, stream)
    assert first == run(b, stream)
    a._reset()
    assert a.n_seen == 0 and run(a, stream) == first


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_constant_and_missing_input(cls: type[Any], params: dict[str, Any]) -> None:
    """A constant stream neither crashes nor fires; NaN is skipped without changing the state."""
    det = cls(**params)
    dims = getattr(det, "n_dims", None)
    value: Any = [3.0] * dims if dims else 3.0
    fired = [flag for flag, _ in run(det, [value] * 400)]
    assert not any(fired)
    before = json.dumps(det.snapshot())
    det.update([math.nan] * dims if dims else math.nan)
    assert det.drift_detected is False and json.dumps(det.snapshot()) == before
    json.dumps(det.snapshot(), allow_nan=False)


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_state_is_bounded(cls: type[Any], params: dict[str, Any]) -> None:
    """The snapshot does not grow with the length of the stream once the detector's bounds are reached."""
    det = cls(**params)
    stream = make_stream(det, 4000, seed=5)
    run(det, stream[:1000])
    size_early = n_scalars(det.snapshot())
    run(det, stream[1000:])
    assert n_scalars(det.snapshot()) <= size_early + 8  # pending firings may add a few numbers, not 3000
