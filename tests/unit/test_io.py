"""Training and replay files: rows typed as the topology's features, so a replayed file validates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_vae.exceptions import ConfigError
from stream_vae.io import read_rows, rows_to_matrix
from stream_vae.records import RawRecord
from stream_vae.topology import parse_topology
from stream_vae.validate import Validator

TOPO = parse_topology({
    "name": "t", "input_topic": "in", "key_field": "svc",
    "features": [{"name": "p99"}, {"name": "retries", "type": "int"}, {"name": "degraded", "type": "bool"}],
})


def _validates(rows: list[dict[str, object]]) -> int:
    ok, bad = Validator(TOPO).validate([RawRecord(json.dumps(r).encode()) for r in rows])
    assert [b.detail for b in bad] == []
    return len(ok.X)


def test_a_csv_with_bool_and_int_features_is_replayed_as_records_a_worker_accepts(tmp_path: Path) -> None:
    """Every bool feature went out as 0.0 and was dead-lettered (a worker wants true/false), and a CSV
    of true/false could not be trained on. Both spellings now read as booleans, ints as ints, and the
    training matrix is the same."""
    csv = tmp_path / "t.csv"
    csv.write_text("svc,p99,retries,degraded\napi,12.5,0,0\napi,13.0,2,1\nweb,11.0,1.0,true\nweb,9.5,0,False\n")
    rows = read_rows(csv, TOPO)
    assert [(r["retries"], r["degraded"]) for r in rows] == [(0, False), (2, True), (1, True), (0, False)]
    assert all(type(r["retries"]) is int and type(r["degraded"]) is bool for r in rows)
    assert _validates(rows) == 4
    X, ents = rows_to_matrix(rows, TOPO)
    assert X.tolist() == [[12.5, 0, 0], [13.0, 2, 1], [11.0, 1, 1], [9.5, 0, 0]]
    assert ents == ["api", "api", "web", "web"]


def test_a_npy_file_is_typed_too(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.array([[1.5, 3.0, 1.0], [2.5, 0.0, 0.0]]))
    rows = read_rows(path, TOPO)
    assert [(r["retries"], r["degraded"]) for r in rows] == [(3, True), (0, False)] and _validates(rows) == 2


@pytest.mark.parametrize(("line", "message"), [
    ("api,1.0,0,maybe", "column 'degraded' is a bool feature: expected true/false or 1/0, got 'maybe'"),
    ("api,1.0,0,2", "column 'degraded' is a bool feature"),
    ("api,1.0,1.5,0", "column 'retries' is an int feature, got '1.5'"),
    ("api,x,0,0", "column 'p99' is not a number: 'x'"),
])
def test_a_cell_that_does_not_fit_its_feature_is_named_with_its_line(tmp_path: Path, line: str, message: str) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(f"svc,p99,retries,degraded\napi,1.0,0,0\n{line}\n")
    with pytest.raises(ConfigError, match=f"t.csv:3: {message}"):
        read_rows(csv, TOPO)


def test_rows_left_out_for_nan_are_counted_in_a_note(tmp_path: Path) -> None:
    """Up to 5 % of rows with NaN or infinity were dropped without a word."""
    csv = tmp_path / "t.csv"
    csv.write_text("svc,p99,retries,degraded\n" + "api,1.0,0,0\n" * 39 + "api,nan,0,0\n")
    notes: list[str] = []
    X, _ = rows_to_matrix(read_rows(csv, TOPO), TOPO, note=notes.append)
    assert len(X) == 39 and notes == ["1 of 40 rows have NaN or infinite values and are left out"]


def test_a_file_that_is_not_utf8_or_not_a_plain_array_is_named(tmp_path: Path) -> None:
    """A Latin-1 CSV gave "'utf-8' codec can't decode byte 0xe9" and an object array numpy's own words,
    neither naming the file."""
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("svc,p99,retries,degraded\ncaf\u00e9,1.0,0,0\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.csv: not UTF-8 text"):
        read_rows(csv, TOPO)
    npy = tmp_path / "objects.npy"
    np.save(npy, np.array([[1, "a", None]], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"objects\.npy: Object arrays cannot be loaded"):
        read_rows(npy, TOPO)
