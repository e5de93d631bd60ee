"""Label-free calibration: thresholds for a false-positive budget, p-values, lifecycle."""

from __future__ import annotations

import numpy as np
import pytest

from stream_vae.calibrate import Calibrator
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
