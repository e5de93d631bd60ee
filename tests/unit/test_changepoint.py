"""Online change detectors: detection delay, false alarms, scale invariance, checkpoints, bounded state."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from stream_vae.changepoint import BOCPD, MultiSeriesDetector, RiverDetector, make_detector


def feed(det: Any, xs: Any) -> list[tuple[int, int | None]]:
    """Feed ``xs``; return (step, change_point) for every step with a declaration."""
    out = []
    for i, x in enumerate(xs):
        det.update(x if np.ndim(x) else float(x))
        if det.drift_detected:
            out.append((i, det.change_point))
    return out


def shift_series(seed: int, *, n: int = 400, at: int = 200, size: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[at:] += size
    return x


# ----------------------------------------------------------------------------------------------
# BOCPD
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["constant", "linear", "ar1", "linear-ar1"])
def test_bocpd_finds_a_clear_mean_shift_within_a_bounded_delay(model: str) -> None:
    """A 3-sd shift is declared within 10 steps and placed within 5 (TCPD's margin), in 20 of 20 seeds."""
    for seed in range(20):
        hits = [(i, cp) for i, cp in feed(BOCPD(model=model), shift_series(seed)) if i >= 200]
        assert hits, f"seed {seed}: shift not detected"
        step, cp = hits[0]
        assert step - 200 <= 10 and cp is not None and abs(cp - 200) <= 5, (seed, step, cp)


def test_bocpd_variance_shift_is_a_change() -> None:
    """Quadrupling the noise sd (same mean) is declared close to where it happened."""
    rng = np.random.default_rng(4)
    x = np.r_[rng.normal(0, 1, 300), rng.normal(0, 4, 300)]
    cps = [cp for _, cp in feed(BOCPD(), x)]
    assert cps and any(cp is not None and abs(cp - 300) <= 5 for cp in cps)


@pytest.mark.parametrize("model", ["constant", "linear", "ar1", "linear-ar1"])
def test_bocpd_few_false_alarms_on_a_long_stationary_series(model: str) -> None:
    """10 000 i.i.d. normal points give at most 10 declarations (the prior expects a change per 250)."""
    x = np.random.default_rng(11).normal(size=10_000)
    assert len(feed(BOCPD(model=model), x)) <= 10


def test_bocpd_models_absorb_their_own_nuisance() -> None:
    """'linear' does not fire along a straight line; 'ar1' does not fire on AR(1) noise; 'constant' does."""
    rng = np.random.default_rng(2)
    trend = 0.05 * np.arange(3000) + rng.normal(size=3000)
    e = rng.normal(size=3000)
    ar = np.zeros(3000)
    for i in range(1, 3000):
        ar[i] = 0.7 * ar[i - 1] + e[i]
    assert len(feed(BOCPD(model="linear"), trend)) <= 3
    assert len(feed(BOCPD(model="ar1"), ar)) <= 3
    assert len(feed(BOCPD(model="constant"), ar)) > 10


@pytest.mark.parametrize("model", ["constant", "ar1", "linear-ar1"])
def test_bocpd_is_scale_and_offset_free(model: str) -> None:
    """a * x + b gives the same declarations as x (the prior is scaled from the data)."""
    x = shift_series(7)
    base = feed(BOCPD(model=model), x)
    assert base and feed(BOCPD(model=model), 1e6 * x + 3e9) == base
    assert feed(BOCPD(model=model), 1e-4 * x - 7.0) == base


def test_bocpd_snapshot_mid_stream_gives_identical_decisions() -> None:
    """Checkpoint after 250 points, restore into a new detector: the next 350 steps agree exactly."""
    x = np.r_[shift_series(3, n=400, at=300), np.random.default_rng(9).normal(-2, 2, 200)]
    a = BOCPD(model="linear")
    feed(a, x[:250])
    b = BOCPD(model="linear")
    b.restore(json.loads(json.dumps(a.snapshot())))
    tail_a, tail_b = feed(a, x[250:]), feed(b, x[250:])
    assert tail_a == tail_b and len(tail_a) >= 1
    assert a.snapshot() == b.snapshot()


def test_bocpd_memory_does_not_grow_with_the_stream() -> None:
    """After max_run_length steps the number of hypotheses stays at most max_run_length."""
    det = BOCPD(max_run_length=50)
    sizes = []
    for i, v in enumerate(np.random.default_rng(0).normal(size=3000)):
        det.update(float(v))
        if i % 500 == 499:
            sizes.append(len(det.snapshot()["log_r"]))
    assert max(sizes) <= 50 and len(det.snapshot()["diffs"]) <= det.scale_window


def test_bocpd_nan_is_skipped_and_reports_come_in_observation_counts() -> None:
    """NaN does not count as an observation; change_point indexes the finite observations."""
    x = shift_series(1).tolist()
    with_nan = x[:100] + [math.nan] * 7 + x[100:]
    assert feed(BOCPD(), x) == [(i if i < 100 else i - 7, cp) for i, cp in feed(BOCPD(), with_nan)]


def test_bocpd_map_rule_and_change_probability() -> None:
    """The MAP rule finds the shift too; change_probability is a probability; run_length restarts."""
    det = BOCPD(rule="map")
    hits = feed(det, shift_series(5))
    assert any(cp is not None and abs(cp - 200) <= 3 for _, cp in hits)
    assert 0.0 <= det.change_probability <= 1.0
    assert det.run_length <= 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_run_length": 1.0},
        {"model": "quadratic"},
        {"rule": "vote"},
        {"threshold": 0.0},
        {"kappa0": 0.0},
        {"window": 0},
        {"max_run_length": 10, "window": 10},
        {"grace_period": 0},
    ],
)
def test_bocpd_rejects_bad_hyper_parameters(kwargs: dict[str, Any]) -> None:
    """Out-of-range hyper-parameters are a ValueError naming BOCPD."""
    with pytest.raises(ValueError, match="BOCPD"):
        BOCPD(**kwargs)


def test_bocpd_restore_rejects_other_sizes() -> None:
    """A snapshot from a detector with a larger max_run_length is refused."""
    big = BOCPD(max_run_length=400)
    feed(big, np.random.default_rng(0).normal(size=300))
    with pytest.raises(ValueError, match="max_run_length"):
        BOCPD(max_run_length=100).restore(big.snapshot())


# ----------------------------------------------------------------------------------------------
# river wrapper
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adwin", "page_hinkley", "kswin"])
def test_river_detector_matches_river(name: str) -> None:
    """The wrapper declares exactly where the bare river detector does."""
    from river import drift

    params: dict[str, Any] = {"seed": 3} if name == "kswin" else {}
    bare = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[name](**params)
    x = shift_series(2, n=600, at=300, size=4.0)
    expected = []
    for i, v in enumerate(x):
        bare.update(float(v))
        if bare.drift_detected:
            expected.append((i, i))
    assert expected and feed(RiverDetector(name, **params), x) == expected  # type: ignore[arg-type]


def test_river_detector_restore_replays_recent_inputs() -> None:
    """Within max_replay the restored detector is exact; the snapshot never exceeds max_replay inputs."""
    x = shift_series(8, n=700, at=450, size=4.0)
    a = RiverDetector("adwin", max_replay=400)
    feed(a, x[:300])
    b = RiverDetector("adwin", max_replay=400)
    b.restore(json.loads(json.dumps(a.snapshot())))
    assert feed(a, x[300:]) == feed(b, x[300:])
    assert len(a.snapshot()["recent"]) == 400 and a.n_seen == 700


def test_river_detector_refuses_a_foreign_snapshot_and_unknown_names() -> None:
    """Restoring an ADWIN snapshot into PageHinkley, or naming an unknown detector, is a ValueError."""
    snap = RiverDetector("adwin").snapshot()
    with pytest.raises(ValueError, match="adwin"):
        RiverDetector("page_hinkley").restore(snap)
    with pytest.raises(ValueError, match="name"):
        RiverDetector("ddm")  # type: ignore[arg-type]


def test_make_detector_builds_by_name() -> None:
    """'bocpd' builds BOCPD with its arguments; river names build RiverDetector."""
    det = make_detector("bocpd", model="ar1")
    assert isinstance(det, BOCPD) and det.model == "ar1"
    assert isinstance(make_detector("kswin", seed=1), RiverDetector)


# ----------------------------------------------------------------------------------------------
# multivariate
# ----------------------------------------------------------------------------------------------


def test_multi_reports_the_implicated_dimension() -> None:
    """A shift in dimension 2 of 4 (arbitrary units per dimension) is reported with implicated == [2]."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 4)) * [1.0, 1e3, 1e-3, 50.0] + [0.0, 1e6, 5.0, -20.0]
    X[300:, 2] += 4e-3
    hits = []
    det = MultiSeriesDetector(4)
    for i, row in enumerate(X):
        det.update(row)
        if det.drift_detected:
            hits.append((i, det.change_point, det.implicated))
    after = [h for h in hits if h[0] >= 300]
    assert after and after[0][2] == [2] and after[0][1] is not None and abs(after[0][1] - 300) <= 3
    assert len(hits) - len(after) <= 1


def test_multi_k_of_d_needs_k_dimensions() -> None:
    """With k=2 a shift in one dimension is not declared; a shift in two is, with both implicated."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 3))
    X[200:, 0] += 5.0
    one = MultiSeriesDetector(3, k=2)
    assert not [i for i, _ in feed(one, X) if i >= 200]
    X[200:, 1] += 5.0
    two = MultiSeriesDetector(3, k=2)
    hits = []
    for i, row in enumerate(X):
        two.update(row)
        if two.drift_detected and i >= 200:
            hits.append(two.implicated)
    assert hits and hits[0] == [0, 1]


def test_multi_snapshot_round_trip_and_nan_entries() -> None:
    """NaN entries are skipped per dimension; a mid-stream checkpoint continues identically."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    X[150:, 1] += 5.0
    X[::17, 0] = np.nan
    a = MultiSeriesDetector(2, params={"model": "ar1"})
    feed(a, X[:100])
    b = MultiSeriesDetector(2, params={"model": "ar1"})
    b.restore(json.loads(json.dumps(a.snapshot(), allow_nan=False)))
    assert feed(a, X[100:]) == feed(b, X[100:])
    assert a.implicated == b.implicated


def test_multi_rejects_bad_shapes() -> None:
    """Wrong vector length and impossible k are ValueErrors."""
    with pytest.raises(ValueError, match="expected 3 values"):
        MultiSeriesDetector(3).update([1.0, 2.0])
    with pytest.raises(ValueError, match="k must be"):
        MultiSeriesDetector(2, k=3)


@pytest.mark.parametrize(("name", "limit"), [("bernoulli", 3), ("poisson", 40)])
def test_bocpd_on_stationary_counts_does_not_change_every_few_steps(name: str, limit: int) -> None:
    """On counts most differences are 0: the noise scale collapsed and a young run of identical values
    out-bid every longer run (167 and 219 "changes" in these 3000 stationary steps before)."""
    rng = np.random.default_rng(0)
    x = (rng.random(3000) < 0.1).astype(float) if name == "bernoulli" else rng.poisson(0.3, 3000).astype(float)
    d = BOCPD()
    fired = 0
    for v in x:
        d.update(float(v))
        fired += d.drift_detected
    assert fired <= limit


def test_bocpd_still_finds_a_step_in_counts() -> None:
    rng = np.random.default_rng(1)
    x = np.r_[rng.poisson(0.3, 1500), rng.poisson(3.0, 500)].astype(float)
    d = BOCPD()
    found = []
    for i, v in enumerate(x):
        d.update(float(v))
        if d.drift_detected:
            found.append(i)
    assert any(1500 <= i < 1550 for i in found)


def test_multiseries_standardisation_does_not_blind_adwin_on_the_second_value() -> None:
    """The second value of a dimension was divided by the 1e-9 floor (z about -2e9): ADWIN then never
    found even a 5-sigma step."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, 1000), rng.normal(5, 1, 1000)]
    m = MultiSeriesDetector(1, detector="adwin")
    found = []
    for i, v in enumerate(x):
        m.update([v])
        if m.drift_detected:
            found.append(i)
    assert found and 1000 <= found[0] < 1100
