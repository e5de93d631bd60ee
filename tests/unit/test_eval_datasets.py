"""Dataset loaders on tiny hand-made folders in each layout, plus smoke tests on the real data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from stream_vae.evaluation import datasets as D
from stream_vae.evaluation.metrics import NabProfile

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("STREAM_VAE_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))

# test label of 12 rows with segments [2, 5) and [8, 10)
LABEL = [0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0]


def make_smd_like(
    root: Path,
    entity: str = "machine-9-9",
    interp: str | None = "2-5:1,3\n8-10:2\n",
    types: str | None = None,
    label: list[int] | None = None,
) -> Path:
    """Write a minimal SMD-layout folder (train 6x3, test 12x3) and return it."""
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(root / "train" / f"{entity}.npy", rng.random((6, 3)).astype(np.float32))
    np.save(root / "test" / f"{entity}.npy", rng.random((12, 3)).astype(np.float32))
    (root / "test_label" / f"{entity}.txt").write_text("\n".join(str(v) for v in (label or LABEL)) + "\n")
    if interp is not None:
        (root / "interpretation_label" / f"{entity}.txt").write_text(interp)
    if types is not None:
        (root / "anomaly_type.csv").write_text(types)
    return root


# ----------------------------------------------------------------------------------------------
# SMD / ASD
# ----------------------------------------------------------------------------------------------


def test_smd_layout_loads_arrays_and_exclusive_ranges(tmp_path: Path) -> None:
    """SMD ranges (end exclusive) stay as they are; 1-based dims become 0-based."""
    entity = D.load_smd_like(make_smd_like(tmp_path), "machine-9-9")
    assert entity.train.shape == (6, 3) and entity.train.dtype == np.float32
    assert entity.test.shape == (12, 3) and entity.test.dtype == np.float32
    assert entity.label.tolist() == LABEL and entity.label.dtype == np.int64
    assert entity.interpretation == [(2, 5, [0, 2]), (8, 10, [1])]
    assert entity.anomaly_types is None
    assert entity.n_dims == 3


def test_asd_layout_inclusive_ranges_and_anomaly_types(tmp_path: Path) -> None:
    """ASD ranges (end inclusive) become half-open, and anomaly types attach to the same ranges."""
    types = "dataset,anomaly_segment,anomaly_type\nomi-1,2-4,metric\nomi-1,8-9,temporal\nomi-2,1-1,metric\n"
    root = make_smd_like(tmp_path, "omi-1", interp="2-4:1,2,3\n8-9:3\n", types=types)
    entity = D.load_smd_like(root, "omi-1")
    assert entity.interpretation == [(2, 5, [0, 1, 2]), (8, 10, [2])]
    assert entity.anomaly_types == [(2, 5, "metric"), (8, 10, "temporal")]


def test_interpretation_end_can_be_forced(tmp_path: Path) -> None:
    """interpretation_end='inclusive' adds one to every end regardless of the labels."""
    entity = D.load_smd_like(make_smd_like(tmp_path), "machine-9-9", interpretation_end="inclusive")
    assert [(s, e) for s, e, _ in entity.interpretation] == [(2, 6), (8, 11)]


def test_ranges_matching_no_segment_warn(tmp_path: Path) -> None:
    """A range that is not a label segment under either convention triggers a warning."""
    root = make_smd_like(tmp_path, interp="2-5:1\n6-7:1\n")
    with pytest.warns(UserWarning, match="1 of 2"):
        entity = D.load_smd_like(root, "machine-9-9")
    assert entity.interpretation[0] == (2, 5, [0])


def test_entity_without_interpretation_file(tmp_path: Path) -> None:
    """A missing interpretation_label file gives an empty interpretation list (and a warning)."""
    with pytest.warns(UserWarning, match="no HitRate"):
        entity = D.load_smd_like(make_smd_like(tmp_path, interp=None), "machine-9-9")
    assert entity.interpretation == []


def test_list_entities_in_natural_order(tmp_path: Path) -> None:
    """Entities come from test/*.npy, sorted so that omi-2 precedes omi-10."""
    for name in ("omi-10", "omi-2", "omi-1"):
        make_smd_like(tmp_path, name)
    assert D.list_entities(tmp_path) == ["omi-1", "omi-2", "omi-10"]


def test_wrong_folder_raises_layout_error(tmp_path: Path) -> None:
    """A folder without the SMD layout raises DatasetLayoutError, a FileNotFoundError naming the layout."""
    with pytest.raises(D.DatasetLayoutError, match="test_label"):
        D.list_entities(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected layout"):
        D.load_smd_like(tmp_path, "machine-1-1")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        D.load_smd_like(tmp_path / "missing", "machine-1-1")
    make_smd_like(tmp_path)
    with pytest.raises(D.DatasetLayoutError, match=r"train/machine-0-0\.npy"):
        D.load_smd_like(tmp_path, "machine-0-0")


def test_label_length_mismatch_raises(tmp_path: Path) -> None:
    """A test_label with a different row count than test is a ValueError."""
    root = make_smd_like(tmp_path, label=[*LABEL, 0])
    with pytest.raises(ValueError, match="13 rows"):
        D.load_smd_like(root, "machine-9-9")


def test_label_must_be_binary(tmp_path: Path) -> None:
    """A label value other than 0/1 is a ValueError."""
    root = make_smd_like(tmp_path, label=[2, *LABEL[1:]])
    with pytest.raises(ValueError, match="0/1"):
        D.load_smd_like(root, "machine-9-9")


def test_interpretation_dimension_beyond_d_raises(tmp_path: Path) -> None:
    """A 1-based dimension larger than D is a ValueError."""
    root = make_smd_like(tmp_path, interp="2-5:4\n")
    with pytest.raises(ValueError, match="dimension 4"):
        D.load_smd_like(root, "machine-9-9")


def test_parse_interpretation_label() -> None:
    """Lines parse to (start, end, 0-based dims); blank lines are skipped; junk raises."""
    assert D.parse_interpretation_label("1-3:1, 2\n\n5-6:10\n") == [(1, 3, [0, 1]), (5, 6, [9])]
    with pytest.raises(ValueError, match="line 1"):
        D.parse_interpretation_label("1-3\n")
    with pytest.raises(ValueError, match="1-based"):
        D.parse_interpretation_label("1-3:0\n")


# ----------------------------------------------------------------------------------------------
# NAB
# ----------------------------------------------------------------------------------------------


def make_nab(root: Path, labels: dict[str, list[list[str]]] | None = None) -> Path:
    """Write a two-file NAB folder: 10 five-minute rows each, one with a repeated timestamp."""
    stamps = [f"2020-01-01 00:{5 * i:02d}:00" for i in range(10)]
    files = {
        "realX/a.csv": stamps,
        "artificialY/b.csv": [*stamps[:5], stamps[4], *stamps[6:]],
    }
    for name, ts in files.items():
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "".join(f"{t},{i}.5\n" for i, t in enumerate(ts)))
    if labels is None:
        labels = {
            "realX/a.csv": [["2020-01-01 00:20:00.000000", "2020-01-01 00:30:00.000000"]],
            "artificialY/b.csv": [],
            "realKnownCause/held_out.csv": [["2020-01-01 00:00:00.000000", "2020-01-01 00:05:00.000000"]],
        }
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


def test_load_nab_reads_series_and_windows(tmp_path: Path) -> None:
    """Series are sorted by name, with datetime64 times, float values and inclusive windows."""
    series = D.load_nab(make_nab(tmp_path))
    assert [s.name for s in series] == ["artificialY/b.csv", "realX/a.csv"]
    a = series[1]
    assert a.category == "realX"
    assert a.timestamps.dtype == np.dtype("datetime64[s]")
    assert a.timestamps[0] == np.datetime64("2020-01-01T00:00:00")
    assert a.values.tolist() == [i + 0.5 for i in range(10)]
    assert a.windows == [(np.datetime64("2020-01-01T00:20:00"), np.datetime64("2020-01-01T00:30:00"))]
    assert a.window_indices == [(4, 6)]
    assert series[0].windows == []


def test_load_nab_requires_a_label_entry_per_file(tmp_path: Path) -> None:
    """A data file with no entry in combined_windows.json is a ValueError."""
    make_nab(tmp_path, labels={"realX/a.csv": []})
    with pytest.raises(ValueError, match=r"artificialY/b\.csv"):
        D.load_nab(tmp_path)


def test_load_nab_wrong_folder(tmp_path: Path) -> None:
    """A folder without data/ and labels/ raises DatasetLayoutError naming the layout."""
    with pytest.raises(D.DatasetLayoutError, match=r"combined_windows\.json"):
        D.load_nab(tmp_path)


def test_load_nab_profiles(tmp_path: Path) -> None:
    """profiles.json CostMatrix entries become NabProfile objects."""
    config = tmp_path / "config"
    config.mkdir()
    spec = {"p": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 3.0, "fpWeight": 0.5, "tnWeight": 1.0}}}
    (config / "profiles.json").write_text(json.dumps(spec))
    assert D.load_nab_profiles(tmp_path) == {"p": NabProfile(tp_weight=1.0, fp_weight=0.5, fn_weight=3.0)}


# ----------------------------------------------------------------------------------------------
# TCPD
# ----------------------------------------------------------------------------------------------


def _tcpd_doc(name: str, columns: list[list[float | None]]) -> dict[str, object]:
    n = len(columns[0])
    return {
        "name": name,
        "longname": name.title(),
        "n_obs": n,
        "n_dim": len(columns),
        "time": {"format": "%Y", "index": list(range(n)), "raw": [str(2000 + i) for i in range(n)]},
        "series": [{"label": f"V{j + 1}", "type": "float", "raw": col} for j, col in enumerate(columns)],
    }


def make_tcpd(root: Path, docs: list[dict[str, object]], annotations: dict[str, dict[str, list[int]]]) -> Path:
    """Write a TCPD folder (datasets/<name>/<name>.json plus annotations.json)."""
    for doc in docs:
        folder = root / "datasets" / str(doc["name"])
        folder.mkdir(parents=True)
        (folder / f"{doc['name']}.json").write_text(json.dumps(doc))
    (root / "annotations.json").write_text(json.dumps(annotations))
    return root


def test_load_tcpd_univariate_multivariate_and_missing(tmp_path: Path) -> None:
    """null becomes NaN, multivariate series are [n_obs, n_dim], annotations are attached."""
    docs = [
        _tcpd_doc("uni", [[1.0, None, 3.0, 4.0]]),
        _tcpd_doc("multi", [[1.0, 2.0, 3.0], [4, 5, 6]]),
    ]
    ann = {"uni": {"1": [2], "2": []}, "multi": {"1": [1]}, "other": {"1": [5]}}
    series = D.load_tcpd(make_tcpd(tmp_path / "tcpd", docs, ann))
    assert [s.name for s in series] == ["multi", "uni"]
    multi, uni = series
    assert multi.values.shape == (3, 2) and multi.n_dim == 2 and multi.labels == ["V1", "V2"]
    assert multi.values[:, 1].tolist() == [4.0, 5.0, 6.0]
    assert uni.values.shape == (4, 1) and math.isnan(uni.values[1, 0])
    assert uni.annotations == {"1": [2], "2": []} and uni.n_obs == 4
    assert [s.name for s in D.load_tcpd(tmp_path, names=["uni"])] == ["uni"]  # parent folder accepted


def test_load_tcpd_checks_the_schema(tmp_path: Path) -> None:
    """A series whose length disagrees with n_obs is a ValueError."""
    doc = _tcpd_doc("bad", [[1.0, 2.0, 3.0]])
    doc["n_obs"] = 4
    make_tcpd(tmp_path, [doc], {"bad": {"1": []}})
    with pytest.raises(ValueError, match="n_obs=4"):
        D.load_tcpd(tmp_path)


def test_load_tcpd_rejects_annotations_out_of_range(tmp_path: Path) -> None:
    """An annotated change point at or beyond n_obs is a ValueError."""
    make_tcpd(tmp_path, [_tcpd_doc("s", [[1.0, 2.0]])], {"s": {"1": [2]}})
    with pytest.raises(ValueError, match="outside"):
        D.load_tcpd(tmp_path)


def test_load_tcpd_wrong_folder_and_unknown_name(tmp_path: Path) -> None:
    """No annotations.json raises DatasetLayoutError; unknown requested names too."""
    with pytest.raises(D.DatasetLayoutError, match=r"annotations\.json"):
        D.load_tcpd(tmp_path)
    make_tcpd(tmp_path, [_tcpd_doc("s", [[1.0, 2.0]])], {"s": {"1": []}})
    with pytest.raises(D.DatasetLayoutError, match="nope"):
        D.load_tcpd(tmp_path, names=["nope"])


# ----------------------------------------------------------------------------------------------
# real data (skipped when shared/data is absent)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA_DIR / "smd").is_dir(), reason="SMD data not found")
def test_real_smd_ranges_are_label_segments() -> None:
    """machine-1-6: 38 dims, and every interpretation range is exactly a run of 1s in test_label."""
    entity = D.load_smd_like(DATA_DIR / "smd", "machine-1-6")
    assert entity.n_dims == 38 and entity.label.shape[0] == entity.test.shape[0]
    padded = np.concatenate(([0], entity.label, [0]))
    edges = np.diff(padded)
    segments = list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
    assert [(s, e) for s, e, _ in entity.interpretation] == segments


@pytest.mark.skipif(not (DATA_DIR / "asd").is_dir(), reason="ASD data not found")
def test_real_asd_inclusive_ends_are_converted() -> None:
    """omi-1's '760-765' becomes [760, 766), and its anomaly types line up with the segments."""
    entity = D.load_smd_like(DATA_DIR / "asd", "omi-1")
    assert entity.n_dims == 19
    assert entity.interpretation[0][:2] == (760, 766)
    assert entity.label[760:766].all() and entity.label[766] == 0
    assert entity.anomaly_types is not None
    assert [t[:2] for t in entity.anomaly_types] == [i[:2] for i in entity.interpretation]
    assert {t[2] for t in entity.anomaly_types} <= {"metric", "temporal", "metric-temporal"}


@pytest.mark.skipif(not (DATA_DIR / "nab").is_dir(), reason="NAB data not found")
def test_real_nab_corpus_loads() -> None:
    """The shared NAB corpus has 51 series and 97 windows, all mapped to rows."""
    series = D.load_nab(DATA_DIR / "nab")
    assert len(series) == 51
    assert sum(len(s.window_indices) for s in series) == 97


@pytest.mark.skipif(not (DATA_DIR / "drift" / "tcpd").is_dir(), reason="TCPD data not found")
def test_real_tcpd_series_load() -> None:
    """32 series; run_log is bivariate; uk_coal_employ has two missing values; 5 annotators each."""
    series = {s.name: s for s in D.load_tcpd(DATA_DIR / "drift" / "tcpd")}
    assert len(series) == 32
    assert series["run_log"].values.shape == (376, 2)
    assert int(np.isnan(series["uk_coal_employ"].values).sum()) == 2
    assert all(len(s.annotations) == 5 for s in series.values())


def test_missing_or_malformed_files_are_named_not_skipped(tmp_path: Path) -> None:
    """(Review.) A TCPD series folder without its JSON was skipped without a word (the means moved), a series
    without 'raw' raised KeyError, a NAB row without a value IndexError; an SMD entity whose interpretation
    file is missing while the others have theirs drops out of the HitRate mean: it says so."""
    root = make_tcpd(tmp_path / "tcpd", [_tcpd_doc("a", [[1.0, 2.0]]), _tcpd_doc("b", [[1.0, 2.0]])],
                     {"a": {"1": []}, "b": {"1": []}})
    (root / "datasets" / "b" / "b.json").unlink()
    with pytest.raises(D.DatasetLayoutError, match=r"without their <name>\.json.*'b'"):
        D.load_tcpd(root)
    doc = _tcpd_doc("c", [[1.0, 2.0]])
    doc["series"][0].pop("raw")
    make_tcpd(tmp_path / "tcpd2", [doc], {"c": {"1": []}})
    with pytest.raises(ValueError, match="no 'raw' list"):
        D.load_tcpd(tmp_path / "tcpd2")
    from stream_vae.evaluation.toy import write_toy_nab

    nab = write_toy_nab(tmp_path / "nab", n_files=1)
    csv_path = next((nab / "data").rglob("*.csv"))
    csv_path.write_text(csv_path.read_text() + "2015-01-01 00:00:00\n")
    with pytest.raises(ValueError, match=r"expected 'timestamp,value'"):
        D.load_nab(nab)
    with pytest.warns(UserWarning, match="no HitRate"):
        D.load_smd_like(make_smd_like(tmp_path / "smd", interp=None), "machine-9-9")
