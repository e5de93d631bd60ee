"""Label-free calibration: thresholds for a false-positive budget, p-values, lifecycle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_vae.calibrate import Calibrator, ScoreSmoother, ThresholdTracker
from stream_vae.exceptions import NotCalibratedError


@pytest.mark.parametrize("method", ["quantile", "pot"])
@pytest.mark.parametrize("fpr", [0.01, 0.002])
def test_observed_fpr_matches_budget_on_fresh_normal_data(method: str, fpr: float) -> None:
    """On new data from the reference distribution the false-positive rate is within ±25 % of the budget."""
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, size=50_000)
    cal = Calibrator(method=method, fpr=fpr).infer_threshold(ref)  # type: ignore[arg-type]
    fresh = rng.gamma(2.0, size=400_000)
    observed = cal.predict(fresh).mean()
    assert abs(observed - fpr) / fpr < 0.25


def test_predict_before_calibration_raises_with_fix() -> None:
    """Predicting before infer_threshold raises NotCalibratedError naming the fix."""
    with pytest.raises(NotCalibratedError, match="infer_threshold"):
        Calibrator().predict(np.zeros(3))


def test_too_few_reference_scores_refused() -> None:
    """Calibrating on a handful of scores is refused."""
    with pytest.raises(NotCalibratedError, match="at least 20"):
        Calibrator().infer_threshold(np.arange(5.0))


@pytest.mark.parametrize("method", ["quantile", "pot"])
def test_p_values_are_monotone_and_bounded(method: str) -> None:
    """Higher scores get smaller p-values, all within (0, 1]."""
    ref = np.random.default_rng(1).exponential(size=5000)
    cal = Calibrator(method=method, fpr=0.001).infer_threshold(ref)  # type: ignore[arg-type]
    s = np.linspace(0, 15, 50)
    p = cal.p_value(s)
    assert np.all(np.diff(p) <= 1e-12) and np.all((p > 0) & (p <= 1))
    assert cal.p_value(np.array([cal.threshold]))[0] == pytest.approx(0.001, rel=0.5)


def test_pot_extrapolates_beyond_the_sample() -> None:
    """With a budget smaller than 1/n, POT still gives a threshold above the sample quantile."""
    ref = np.random.default_rng(2).exponential(size=2000)
    pot = Calibrator(method="pot", fpr=1e-5).infer_threshold(ref)
    # the true exponential quantile is -ln(1e-5) = 11.5; the sample's maximum is ~8
    assert pot.threshold > ref.max()
    assert pot.threshold == pytest.approx(11.5, rel=0.25)


def test_round_trip_and_calibration_id() -> None:
    """A restored calibrator predicts identically and keeps its calibration id."""
    ref = np.random.default_rng(3).normal(size=3000)
    cal = Calibrator(method="pot", fpr=0.001).infer_threshold(ref)
    again = Calibrator.from_dict(cal.to_dict())
    x = np.linspace(-4, 6, 100)
    np.testing.assert_array_equal(cal.predict(x), again.predict(x))
    np.testing.assert_allclose(cal.p_value(x), again.p_value(x))
    assert cal.calibration_id("v1") == again.calibration_id("v1")
    assert cal.calibration_id("v1").startswith("v1/pot-0.001-")


def test_calibrator_round_trip_keeps_online_settings_and_reads_old_manifests() -> None:
    """smoothing/adapt/half_life survive to_dict/from_dict; a manifest without them means the old behaviour."""
    ref = np.random.default_rng(4).normal(size=1000)
    cal = Calibrator(fpr=0.01, smoothing=3, adapt="track", half_life=500).infer_threshold(ref)
    again = Calibrator.from_dict(cal.to_dict())
    assert (again.smoothing, again.adapt, again.half_life) == (3, "track", 500)
    old = {k: v for k, v in cal.to_dict().items() if k not in ("smoothing", "adapt", "half_life", "rate_cap")}
    legacy = Calibrator.from_dict(old)
    assert (legacy.smoothing, legacy.adapt, legacy.rate_cap) == (1, "off", 0.0)
    capped = Calibrator(fpr=0.01, adapt="track", rate_cap=5.0).infer_threshold(ref)
    assert Calibrator.from_dict(capped.to_dict()).rate_cap == 5.0
    from stream_vae.topology import CalibrationSpec

    assert Calibrator.from_spec(CalibrationSpec(rate_cap=5.0)).rate_cap == 5.0  # the topology's setting reaches it


# --- ScoreSmoother ------------------------------------------------------------------------------


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    return np.array([x[max(0, i - n + 1) : i + 1].mean() for i in range(len(x))])


def test_smoother_is_a_per_entity_moving_average_across_batches() -> None:
    """Batched, interleaved smoothing equals the offline moving average of each entity's scores."""
    rng = np.random.default_rng(5)
    s = rng.exponential(size=300)
    keys = [rng.choice(["a", "b", "c"]) for _ in range(300)]
    sm = ScoreSmoother(4)
    out = np.concatenate([sm.transform(s[i : i + 37], keys[i : i + 37]) for i in range(0, 300, 37)])
    for k in "abc":
        m = np.array(keys) == k
        np.testing.assert_allclose(out[m], _moving_average(s[m], 4))


def test_smoother_of_one_is_identity_and_state_is_bounded_and_restorable() -> None:
    """n=1 returns the scores unchanged; the state is bounded in entities and resumes from a snapshot."""
    x = np.arange(5.0)
    assert ScoreSmoother(1).transform(x, ["a"] * 5) is x
    sm = ScoreSmoother(3, max_entities=2)
    for k in "abc":
        sm.transform(np.ones(2), [k, k])
    assert list(sm.snapshot()["buffers"]) == ["b", "c"]
    s1 = ScoreSmoother(3)
    s1.transform(np.array([1.0, 2.0, 3.0]), ["k"] * 3)
    s2 = ScoreSmoother(3)
    s2.restore(s1.snapshot())
    np.testing.assert_allclose(s1.transform(np.array([9.0]), ["k"]), s2.transform(np.array([9.0]), ["k"]))


# --- ThresholdTracker -----------------------------------------------------------------------------


def _stream(tracker: ThresholdTracker, scores: np.ndarray, key: str = "e", batch: int = 500) -> np.ndarray:
    flags = np.zeros(len(scores), dtype=bool)
    for i in range(0, len(scores), batch):
        s = scores[i : i + batch]
        keys = [key] * len(s)
        flags[i : i + batch] = s > tracker.thresholds(keys)
        tracker.update(s, keys)
    return flags


def test_tracker_off_is_the_calibrated_threshold() -> None:
    """With adapt='off' thresholds and p-values are the calibrator's, whatever the stream does."""
    ref = np.random.default_rng(6).gamma(2.0, size=5000)
    cal = Calibrator(fpr=0.01, adapt="off").infer_threshold(ref)
    tr = ThresholdTracker(cal)
    tr.update(np.full(5000, 100.0), ["a"] * 5000)
    assert not tr.adaptive
    assert np.all(tr.thresholds(["a", "b"]) == cal.threshold)
    np.testing.assert_allclose(tr.p_values(np.array([3.0, 9.0]), ["a", "a"]), cal.p_value(np.array([3.0, 9.0])))


@pytest.mark.parametrize("track_every", [0, 500])
@pytest.mark.parametrize("fpr", [0.01, 0.002])
def test_tracked_threshold_keeps_the_budget_on_a_long_stationary_stream(fpr: float, track_every: int) -> None:
    """On 400k fresh records from the reference distribution the tracked FPR is within ±25 % of the budget."""
    rng = np.random.default_rng(7)
    cal = Calibrator(fpr=fpr, adapt="track", half_life=2000, track_every=track_every).infer_threshold(
        rng.gamma(2.0, size=50_000))
    flags = _stream(ThresholdTracker(cal), rng.gamma(2.0, size=400_000), batch=300)
    assert abs(flags.mean() - fpr) / fpr < 0.25


def test_tracked_threshold_follows_a_shift_of_normal_behaviour() -> None:
    """An entity whose normal scores move up and spread out is soon flagged at about the budget again."""
    rng = np.random.default_rng(8)
    cal = Calibrator(fpr=0.01, adapt="track", half_life=1000).infer_threshold(rng.normal(size=20_000))
    tr = ThresholdTracker(cal)
    shifted = 4.0 + 1.5 * rng.normal(size=30_000)
    fixed = (shifted > cal.threshold).mean()
    flags = _stream(tr, shifted)
    assert fixed > 0.5  # the training threshold would flag most of the new normal
    assert flags[-10_000:].mean() < 0.02
    assert tr.thresholds(["other"])[0] == pytest.approx(cal.threshold)  # other entities are unaffected


def test_tracked_threshold_is_not_pulled_up_by_a_short_burst() -> None:
    """A burst of anomalies under ~5 % of the forgetting window stays flagged and barely moves the threshold."""
    rng = np.random.default_rng(9)
    cal = Calibrator(fpr=0.005, adapt="track", half_life=2000).infer_threshold(rng.normal(size=20_000))
    tr = ThresholdTracker(cal)
    _stream(tr, rng.normal(size=5000))
    before = tr.thresholds(["e"])[0]
    burst = _stream(tr, 6.0 + rng.normal(size=100), batch=20)
    assert burst.mean() > 0.9
    assert tr.thresholds(["e"])[0] - before < 0.5
    # a burst as long as a tenth of the window lifts the threshold, but the spread bound keeps it
    # below the burst's level, so the burst stays flagged
    longer = _stream(tr, 6.0 + rng.normal(size=300), batch=50)
    assert longer.mean() > 0.8 and tr.thresholds(["e"])[0] < 6.0


def test_rate_cap_keeps_a_heavier_live_tail_near_its_multiple_of_the_budget() -> None:
    """Live scores with the reference's median and q90 but a Cauchy tail: m + k*s extrapolates the
    reference's Gaussian tail and flags ~10x the budget; rate_cap=5 floors the threshold at the
    recent 97.5 % quantile, so ~5x at most. On a stationary stream the floor does not bind."""
    rng = np.random.default_rng(11)
    fpr = 0.005
    ref = rng.normal(size=20_000)
    live = rng.standard_cauchy(size=60_000) * (1.2816 / 3.0777)  # same median and q90 as N(0, 1)
    rates = {}
    for cap in (0.0, 5.0):
        cal = Calibrator(fpr=fpr, adapt="track", half_life=2000, rate_cap=cap).infer_threshold(ref)
        rates[cap] = _stream(ThresholdTracker(cal), live)[-40_000:].mean()
    assert rates[0.0] > 8 * fpr
    assert 2 * fpr < rates[5.0] < 6 * fpr
    cal = Calibrator(fpr=fpr, adapt="track", half_life=2000, rate_cap=5.0).infer_threshold(ref)
    assert abs(_stream(ThresholdTracker(cal), rng.normal(size=200_000)).mean() - fpr) / fpr < 0.25


def test_tracker_p_values_follow_the_entity_and_state_round_trips() -> None:
    """p-values are judged against the entity's current distribution; snapshot/restore resumes exactly."""
    rng = np.random.default_rng(10)
    cal = Calibrator(fpr=0.01, adapt="track", half_life=500).infer_threshold(rng.normal(size=10_000))
    tr = ThresholdTracker(cal)
    _stream(tr, 5.0 + rng.normal(size=5000))
    p_shifted, p_fresh = tr.p_values(np.array([5.0, 5.0]), ["e", "new"])
    assert p_shifted > 0.1 and p_fresh < 1e-3
    again = ThresholdTracker(cal)
    again.restore(tr.snapshot())
    np.testing.assert_allclose(again.thresholds(["e", "new"]), tr.thresholds(["e", "new"]))
    small = ThresholdTracker(cal, max_entities=2)
    for k in "xyz":
        small.update(np.zeros(3), [k] * 3)
    assert list(small.snapshot()["hist"]) == ["y", "z"]


def _assess_in_batches(cal: Calibrator, scores: np.ndarray, keys: list[str], batch: int,
                       tracker: ThresholdTracker | None = None) -> tuple[np.ndarray, np.ndarray]:
    tr = tracker or ThresholdTracker(cal)
    parts = [tr.assess(scores[i : i + batch], keys[i : i + batch]) for i in range(0, len(scores), batch)]
    return np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts])


def _three_entities(seed: int, n: int = 6000) -> tuple[np.ndarray, list[str]]:
    """Interleaved entities a, b, c; b's normal scores sit 3 above the reference."""
    rng = np.random.default_rng(seed)
    keys = [str(k) for k in rng.choice(["a", "b", "c"], size=n)]
    return rng.normal(size=n) + 3.0 * (np.array(keys) == "b"), keys


def test_block_published_thresholds_do_not_depend_on_the_batching() -> None:
    """track_every=N: a record is judged by the threshold its entity published at its last multiple of N
    records, so thresholds and p-values are the same one by one, in odd batches or all at once, and they
    move only at the entity's block boundaries. With track_every=0 (the old rule: the state before the
    batch) the same records get other thresholds when the batching changes."""
    rng = np.random.default_rng(12)
    ref = rng.normal(size=10_000)
    cal = Calibrator(fpr=0.01, adapt="track", half_life=300, track_every=250).infer_threshold(ref)
    scores, keys = _three_entities(13)
    thr, p = _assess_in_batches(cal, scores, keys, len(scores))
    for batch in (1, 37, 1000):
        t, pv = _assess_in_batches(cal, scores, keys, batch)
        np.testing.assert_allclose(t, thr, rtol=1e-9)
        np.testing.assert_allclose(pv, p, rtol=1e-9)
    tb = thr[np.array(keys) == "b"]
    moved_at = np.flatnonzero(np.diff(tb)) + 1
    assert len(moved_at) > 5 and np.all(moved_at % 250 == 0)
    assert np.all(tb[:250] == cal.threshold) and tb[-1] > cal.threshold + 2  # b's threshold followed its level
    legacy = Calibrator(fpr=0.01, adapt="track", half_life=300).infer_threshold(ref)
    assert not np.allclose(_assess_in_batches(legacy, scores, keys, 1)[0],
                           _assess_in_batches(legacy, scores, keys, 1000)[0])
    # calibrations saved before the setting load with the old rule, and keep their calibration ids
    assert Calibrator.from_dict(legacy.to_dict()).track_every == 0 and "track_every" not in legacy.to_dict()
    assert Calibrator.from_dict(cal.to_dict()).track_every == 250


def test_block_state_resumes_exactly_from_a_snapshot_taken_mid_block() -> None:
    """A worker restarted mid-block (snapshot through JSON, as in Redis) judges the rest as if never stopped."""
    rng = np.random.default_rng(14)
    cal = Calibrator(fpr=0.01, adapt="track", half_life=300, track_every=250).infer_threshold(rng.normal(size=5000))
    scores, keys = _three_entities(15, n=3000)
    whole = _assess_in_batches(cal, scores, keys, 100)
    first = ThresholdTracker(cal)
    _assess_in_batches(cal, scores[:1111], keys[:1111], 100, first)
    resumed = ThresholdTracker(cal)
    resumed.restore(json.loads(json.dumps(first.snapshot())))
    rest = _assess_in_batches(cal, scores[1111:], keys[1111:], 100, resumed)
    np.testing.assert_allclose(rest[0], whole[0][1111:], rtol=1e-9)
    np.testing.assert_allclose(rest[1], whole[1][1111:], rtol=1e-9)


def test_range_rule_fires_once_per_new_extreme_per_entity_and_feature() -> None:
    """A value beyond the range so far by more than tol x range is outside; the range then includes it,
    so a new level fires once. It starts at the training range; entities and features are separate."""
    from stream_vae.calibrate import RangeTracker

    cal = Calibrator(range_tolerance=0.1).set_range(np.array([[0.0, 0.0], [10.0, 1.0]]))
    tr = RangeTracker(cal)
    X = np.array([[10.9, 0.5], [12.5, 0.5], [12.5, 0.5], [-2.0, 0.5], [5.0, 2.0]])
    out = tr.outside(X, ["a"] * 5)
    # 10.9 <= 10 + 0.1*10; 12.5 > 10.9 + 0.1*10.9; the same 12.5 again is not new; -2 < 0 - 0.1*12.5;
    # feature 2: 2.0 > 1 + 0.1*1
    assert out.tolist() == [[False, False], [True, False], [False, False], [True, False], [False, True]]
    assert tr.outside(np.array([[11.5, 0.5]]), ["b"]).tolist() == [[True, False]]  # b: from the training range
    state = tr.snapshot()
    again = RangeTracker(cal)
    again.restore(state)
    probe = np.array([[14.5, 0.5]])  # beyond a's range (max 12.5, span 14.5 -> bound 13.95)
    assert again.outside(probe, ["a"]).tolist() == tr.outside(probe, ["a"]).tolist() == [[True, False]]


def test_range_rule_off_by_default_and_its_settings_round_trip_only_when_on() -> None:
    """tol 0 flags nothing and leaves the calibration (and its id) as before the rule existed; tol > 0
    keeps the tolerance and the training range through to_dict/from_dict."""
    from stream_vae.calibrate import RangeTracker

    ref = np.random.default_rng(0).normal(size=500)
    off = Calibrator().infer_threshold(ref).set_range(np.array([[0.0], [1.0]]))
    assert not RangeTracker(off).outside(np.array([[100.0]]), ["a"]).any()
    assert "range_tolerance" not in off.to_dict()
    on = Calibrator(range_tolerance=0.05).infer_threshold(ref).set_range(np.array([[0.0], [1.0]]))
    back = Calibrator.from_dict(on.to_dict())
    assert back.range_tolerance == 0.05 and back.range_hi is not None and back.range_hi.tolist() == [1.0]
    assert RangeTracker(back).outside(np.array([[1.2]]), ["a"]).tolist() == [[True]]
    assert back.calibration_id("v") == on.calibration_id("v") != off.calibration_id("v")


def test_quantile_p_values_go_below_the_reference_floor_so_every_severity_is_reachable() -> None:
    """With 4096 kept reference scores p stopped at 1/4097: at fpr 0.002 (the demo) `high` needs 2e-4 and
    `critical` 2e-5, so every alert was `medium`, and all were held back during a drift episode."""
    from stream_vae.alerts import severity

    ref = np.random.default_rng(0).gamma(2.0, 1.0, 50_000)
    cal = Calibrator(method="quantile", fpr=0.002).infer_threshold(ref)
    scores = np.array([cal.threshold, 12.0, 16.0, 20.0, 40.0])
    p = cal.p_value(scores)
    assert np.all(np.diff(p) <= 0) and p[0] == pytest.approx(0.002, rel=0.2)
    assert [severity(float(x), fpr=0.002, high=0.1, critical=0.01) for x in p][-2:] == ["critical", "critical"]
    true_tail = float(np.exp(-20.0) * 21.0)  # P(Gamma(2, 1) >= 20)
    assert true_tail <= p[3] <= 1e-4  # extrapolated, and not more extreme than the truth


def test_p_values_have_no_step_at_the_largest_kept_reference_score() -> None:
    """Of 40,960 reference scores 4096 are kept. At the largest, p was 10 / 40,961 (its one kept score counted
    as ten), and one float step past it 1 / 40,961: a severity could jump a level for a hair's more score.
    Now the count at a kept score is the reference's own at its rank (1 at the maximum), and the median's
    p stays about 0.5."""
    ref = np.random.default_rng(0).gamma(2.0, 1.0, 40_960)
    cal = Calibrator(method="quantile", fpr=0.002).infer_threshold(ref)
    top = float(ref.max())
    below, at, past = cal.p_value(np.array([np.nextafter(top, 0), top, np.nextafter(top, np.inf)]))
    assert at == pytest.approx(2 / 40_961) and past <= 1 / 40_961 and at / past < 2.5 and below >= at
    mid = cal.p_value(np.array([float(np.median(ref))]))[0]
    assert mid == pytest.approx(0.5, abs=0.01)
    small = Calibrator(method="quantile", fpr=0.002).infer_threshold(ref[:1000])  # all kept: counts as before
    assert small.p_value(np.array([float(ref[:1000].max())]))[0] == pytest.approx(2 / 1001)


@pytest.mark.parametrize("method", ["quantile", "pot"])
def test_a_bounded_tail_fit_does_not_make_a_score_just_past_the_reference_impossible(method: str) -> None:
    """The tail fit of a bounded reference has a negative shape, so a finite endpoint, often below the
    largest score: one float step past it got p 1e-12, a 'critical' alert (and one the drift hold-back
    let through)."""
    ref = np.random.default_rng(3).uniform(0, 1, 2000)
    cal = Calibrator(method=method, fpr=0.005).infer_threshold(ref)
    top = float(ref.max())
    p = cal.p_value(np.array([top, top + 1e-9, top + 0.1, np.nan]))
    assert p[1] > 1e-6 and p[0] >= p[1] >= p[2] > 1e-12
    assert p[3] == 1.0  # a NaN score is no evidence of anything


def test_pot_p_values_agree_with_its_threshold_for_a_bounded_tail() -> None:
    """With a negative fitted shape the fitted tail was once replaced by an exponential everywhere above
    u: p just past the POT threshold read 7.5x the budget, and 'high' was out of reach inside the sample."""
    ref = np.random.default_rng(3).uniform(0, 1, 20_000)
    cal = Calibrator(method="pot", fpr=0.001).infer_threshold(ref)
    p = cal.p_value(np.array([cal.threshold + 1e-9, float(ref.max())]))
    assert p[0] == pytest.approx(0.001, rel=0.05)
    assert p[1] <= 1e-4  # the sample's top is rare, not 'medium'
