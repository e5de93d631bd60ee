"""Topology files are validated strictly and errors name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_vae.exceptions import TopologyError
from stream_vae.topology import load_all, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "s", "input_topic": "in", "features": [{"name": "a"}]}


def test_every_shipped_topology_loads() -> None:
    """Each file in topologies/ parses into a valid topology."""
    topos = load_all(ROOT / "topologies")
    assert "demo" in topos
    assert topos["demo"].feature_names[0] == "cpu"


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    """An unknown key fails with the file path and the offending field."""
    p = tmp_path / "bad.yaml"
    p.write_text("name: s\ninput_topic: in\nfeatures: [{name: a}]\nmodel: {latent: 3}\n")
    with pytest.raises(TopologyError, match=r"bad\.yaml: field 'model\.latent'"):
        load_topology(p)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"features": []}, "features"),
        ({"calibration": {"fpr": 0.9}}, "calibration.fpr"),
        ({"features": [{"name": "a"}, {"name": "a"}]}, "<root>"),
        ({"features": [{"name": "a", "min": 2, "max": 1}]}, "features.0"),
        ({"window": 0}, "window"),
        ({"model": {"ensemble": 3, "member_windows": [1, 5]}}, "model"),
        ({"window": 5, "model": {"ensemble": 2, "member_windows": [1, 10]}}, "<root>"),
        ({"model": {"seasonal_period": -1}}, "model.seasonal_period"),
        ({"model": {"seasonal_period": "daily"}}, "model.seasonal_period"),
        ({"model": {"seasonal_min_correlation": 1.0}}, "model.seasonal_min_correlation"),
        # 100 records, 50 held out: too few left to train on (every retrain failed at run time)
        ({"retrain": {"min_records": 100}}, "retrain"),
        ({"retrain": {"min_records": 500, "holdout_fraction": 0.89}}, "retrain"),
        # a reservoir smaller than what a retrain waits for: every retrain was refused after wait_timeout_s
        ({"retrain": {"buffer_size": 1000}}, "retrain"),
        # (review) each of these was accepted and failed later, or silently did the wrong thing:
        # fewer records than a threshold recalibration waits for (500): every one refused
        ({"retrain": {"buffer_size": 400, "min_records": 400, "holdout_fraction": 0.1}}, "<root>"),
        ({"model": {"hidden": []}}, "model.hidden"),  # an IndexError at training
        ({"model": {"hidden": [-4]}}, "model.hidden.0"),  # a tensor of negative size
        ({"alerts": {"severity_high": 0.01, "severity_critical": 0.1}}, "alerts"),  # 'high' unreachable
        ({"alerts": {"redact": ["A"]}}, "<root>"),  # a typo: the value it meant to hide went out
        ({"alerts": {"dlq_topic": "in"}}, "<root>"),  # dead letters read back and rejected again, without end
        ({"alerts": {"anomaly_topic": "in"}}, "<root>"),
        ({"input_topic": ""}, "<root>"),
        ({"input_topic": "my topic"}, "<root>"),
        # the other topics too: Kafka refused them only when the worker first wrote one (an alert lost)
        ({"alerts": {"anomaly_topic": "alerts anomaly"}}, "<root>"),
        ({"alerts": {"dlq_topic": "dead/letters"}}, "<root>"),
        ({"alerts": {"audit_topic": "audit:x"}}, "<root>"),
        ({"control": {"model_topic": "control model"}}, "<root>"),
        ({"key_field": "t", "timestamp_field": "t"}, "<root>"),
        ({"features": [{"name": ""}]}, "features.0.name"),
        ({"drift": {"tests": []}}, "drift.tests"),
    ],
)
def test_bad_values_are_rejected(patch: dict[str, object], field: str) -> None:
    """Bad values are refused with the field path in the message."""
    with pytest.raises(TopologyError, match=f"field '{field}"):
        parse_topology({**BASE, **patch}, source="x.yaml")


def test_duplicate_stream_names_rejected(tmp_path: Path) -> None:
    """Two files may not monitor the same stream name."""
    for n in ("a", "b"):
        (tmp_path / f"{n}.yaml").write_text("name: s\ninput_topic: in\nfeatures: [{name: a}]\n")
    with pytest.raises(TopologyError, match="already used"):
        load_all(tmp_path)


def test_invalid_yaml_is_a_topology_error(tmp_path: Path) -> None:
    """Unparseable YAML is reported as such, with the file named."""
    p = tmp_path / "t.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(p)


def test_adapt_off_unquoted_in_yaml_is_off(tmp_path: Path) -> None:
    """YAML 1.1 reads an unquoted ``off`` as false: ``calibration: {adapt: off}``, as documented, was
    refused with "Input should be 'off' or 'track'"."""
    p = tmp_path / "t.yaml"
    p.write_text("name: s\ninput_topic: in\nfeatures: [{name: a}]\ncalibration: {adapt: off}\n")
    assert load_topology(p).calibration.adapt == "off"


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """In a directory of topologies, a Latin-1 file raised a bare UnicodeDecodeError naming no file."""
    p = tmp_path / "latin.yaml"
    p.write_bytes("name: s\ninput_topic: in\ndescription: caf\u00e9\nfeatures: [{name: a}]\n".encode("latin-1"))
    with pytest.raises(TopologyError, match=r"latin\.yaml: not UTF-8"):
        load_all(tmp_path)


def test_rules_that_only_bind_where_they_apply() -> None:
    """A small reservoir is refused only where a threshold recalibration can be asked for (drift on, a
    test not in retrain_on); redacting the key (which alerts cannot hide) is accepted with a warning, as
    before the check, so a deploy made from the old production example keeps starting."""
    small = {"buffer_size": 400, "min_records": 400, "holdout_fraction": 0.1}
    parse_topology({**BASE, "retrain": small, "drift": {"enabled": False}})
    parse_topology({**BASE, "retrain": small, "drift": {"retrain_on": ["score", "latent", "multivariate"]}})
    topo = parse_topology({**BASE, "key_field": "k", "alerts": {"redact": ["k"]}})
    assert topo.alerts.redact == ("k",)
