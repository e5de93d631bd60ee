"""TCPD runner on a tiny hand-made TCPD folder, the synthetic suite, the CLI, and a smoke run on real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_vae.evaluation import tcpd as T
from stream_vae.evaluation.metrics import tcpd_cover, tcpd_f1

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("STREAM_VAE_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))
TCPD_DIR = DATA_DIR / "drift" / "tcpd"


def _doc(name: str, columns: list[list[float | None]]) -> dict[str, object]:
    n = len(columns[0])
    return {
        "name": name,
        "longname": name.title(),
        "n_obs": n,
        "n_dim": len(columns),
        "time": {"index": list(range(n))},
        "series": [{"label": f"V{j + 1}", "type": "float", "raw": col} for j, col in enumerate(columns)],
    }


def make_tcpd(root: Path) -> Path:
    """Three series: a clear level shift at 60 (with two nulls), a flat one, and a bivariate shift at 50."""
    rng = np.random.default_rng(0)
    step: list[float | None] = [float(v) for v in np.r_[rng.normal(10, 1, 60), rng.normal(20, 1, 60)]]
    step[10] = step[70] = None
    flat = [float(v) for v in rng.normal(0, 1, 80)]
    a = np.r_[rng.normal(0, 1, 50), rng.normal(6, 1, 50)]
    b = rng.normal(100, 5, 100)
    docs = [_doc("step", [step]), _doc("flat", [flat]), _doc("bivar", [a.tolist(), b.tolist()])]
    annotations = {
        "step": {"1": [60], "2": [60], "3": [59], "4": [61], "5": [60]},
        "flat": {str(u): [] for u in range(1, 6)},
        "bivar": {"1": [50], "2": [50], "3": [], "4": [50], "5": [49]},
    }
    for doc in docs:
        folder = root / "datasets" / str(doc["name"])
        folder.mkdir(parents=True)
        (folder / f"{doc['name']}.json").write_text(json.dumps(doc))
    (root / "annotations.json").write_text(json.dumps(annotations))
    return root


def test_run_tcpd_result_shape_and_scores(tmp_path: Path) -> None:
    """The result is JSON-able with the agreed keys; means are means of the per-series scores."""
    result = T.run_tcpd(make_tcpd(tmp_path / "tcpd"))
    json.dumps(result, allow_nan=False)
    assert result["dataset"] == "tcpd" and result["n_series"] == 3 and result["margin"] == 5
    assert set(result["per_series"]) == {"step", "flat", "bivar"}
    for row in result["per_series"].values():
        assert set(row) == {"f1", "cover", "n_cp", "detected"} and row["n_cp"] == len(row["detected"])
    assert result["f1"] == pytest.approx(np.mean([r["f1"] for r in result["per_series"].values()]))
    assert result["cover"] == pytest.approx(np.mean([r["cover"] for r in result["per_series"].values()]))
    assert set(result["baselines"]) == {"adwin", "page_hinkley", "zero"}
    assert all(set(b) == {"f1", "cover"} for b in result["baselines"].values())
    assert result["published"] == {"binseg": 0.680, "pelt": 0.653, "bocpd": 0.611, "bocpd_oracle": 0.831}


def test_run_tcpd_finds_the_planted_changes(tmp_path: Path) -> None:
    """The default detector finds 60 (despite the nulls) and 50 (bivariate), and nothing in the flat series."""
    result = T.run_tcpd(make_tcpd(tmp_path))
    per = result["per_series"]
    assert any(abs(cp - 60) <= 2 for cp in per["step"]["detected"])
    assert any(abs(cp - 50) <= 2 for cp in per["bivar"]["detected"])
    assert per["flat"]["detected"] == [] and per["flat"]["f1"] == 1.0
    assert result["f1"] > result["baselines"]["zero"]["f1"]


def test_zero_baseline_matches_the_metrics(tmp_path: Path) -> None:
    """The 'zero' baseline is exactly tcpd_f1/tcpd_cover of an empty prediction."""
    root = make_tcpd(tmp_path)
    result = T.run_tcpd(root, detector="zero", names=["step"])
    ann = json.loads((root / "annotations.json").read_text())["step"]
    assert result["f1"] == pytest.approx(tcpd_f1([], ann, 120))
    assert result["cover"] == pytest.approx(tcpd_cover([], ann, 120))
    assert result["baselines"]["zero"] == {"f1": result["f1"], "cover": result["cover"]}
    assert result["per_series"]["step"]["detected"] == []


def test_missing_values_are_skipped_and_indices_mapped_back() -> None:
    """A change after some NaN is reported at its index in the series, not in the detector's count."""
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, 80), rng.normal(5, 1, 80)]
    x[[5, 20, 40, 41, 42]] = np.nan
    cps = T.detect_change_points(x, T.DETECTORS["default"])
    assert any(abs(cp - 80) <= 1 for cp in cps)


def test_unknown_detector_is_a_value_error(tmp_path: Path) -> None:
    """An unknown detector name lists the known ones."""
    with pytest.raises(ValueError, match="default"):
        T.run_tcpd(make_tcpd(tmp_path), detector="nope")


def test_synthetic_suite_is_reproducible_and_labelled() -> None:
    """make_synthetic is deterministic; change points are sorted, inside the series, 25 apart."""
    a, b = T.make_synthetic(3), T.make_synthetic(3)
    assert [s.kind for s in a] == [k for k in T.SYNTHETIC_KINDS for _ in range(3)]
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(s.values, t.values) and s.cps == t.cps
        n = s.values.shape[0]
        assert all(c2 - c1 >= 25 for c1, c2 in zip([0, *s.cps], [*s.cps, n], strict=True))
    assert all(s.cps == [] for s in a if s.kind == "none")


def test_run_synthetic_scores_variants() -> None:
    """run_synthetic returns F1/cover per variant and kind; the zero detector scores 1.0 on change-free series."""
    out = T.run_synthetic(["zero", "constant"], n_per_kind=2)
    assert set(out) == {"zero", "constant"}
    assert out["zero"]["by_kind"]["none"]["f1"] == 1.0
    assert set(out["constant"]["by_kind"]) == set(T.SYNTHETIC_KINDS)
    assert 0.0 <= out["constant"]["f1"] <= 1.0


def test_cli_json_and_table(tmp_path: Path) -> None:
    """`tcpd --json` prints the result document; without --json a table with the means."""
    root = make_tcpd(tmp_path)
    runner = CliRunner()
    res = runner.invoke(T.tcpd_app, ["tcpd", "--data-dir", str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_series"] == 3
    res = runner.invoke(T.tcpd_app, ["tcpd", "--data-dir", str(root), "--detector", "adwin"])
    assert res.exit_code == 0, res.output
    assert "step" in res.output and "MEAN adwin" in res.output and "page_hinkley" in res.output


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    """An unknown detector or a folder that is not TCPD exits with 2 and a message."""
    runner = CliRunner()
    res = runner.invoke(T.tcpd_app, ["tcpd", "--data-dir", str(tmp_path), "--detector", "nope"])
    assert res.exit_code == 2 and "unknown detector" in res.output
    res = runner.invoke(T.tcpd_app, ["tcpd", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "TCPD" in res.output


@pytest.mark.skipif(not TCPD_DIR.is_dir(), reason="TCPD data not found")
def test_real_tcpd_run() -> None:
    """All 32 series run; scores are in [0, 1]; detections are valid indices; zero baseline F1 < 1."""
    result = T.run_tcpd(TCPD_DIR)
    assert result["n_series"] == 32 and len(result["per_series"]) == 32
    assert 0.0 <= result["f1"] <= 1.0 and 0.0 <= result["cover"] <= 1.0
    for row in result["per_series"].values():
        assert row["detected"] == sorted(set(row["detected"])) and all(cp >= 0 for cp in row["detected"])
    assert 0.0 < result["baselines"]["zero"]["f1"] < 1.0
    json.dumps(result, allow_nan=False)
