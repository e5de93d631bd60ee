"""Model artifacts: safetensors + manifest, verified by digest (and signature) before any load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from stream_vae.exceptions import ModelLoadError
from stream_vae.model.registry import export_artifact, import_artifact, load_artifact, to_artifact
from stream_vae.testing import quick_model, synth_topology


@pytest.fixture(scope="module")
def trained():  # type: ignore[no-untyped-def]
    return quick_model(synth_topology(epochs=3), steps=400)


def test_round_trip_scores_identically(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Export + import + load reproduces the trained model's scores exactly."""
    art = to_artifact(trained, "v7")
    path = export_artifact(art, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]
    lm = load_artifact(import_artifact(path), topology=trained.topology)
    X = trained.scaler.transform(np.random.default_rng(0).normal(50, 10, size=(20, 8)))
    np.testing.assert_allclose(lm.scorer.score_many(X).score, trained.scorer().score_many(X).score, rtol=1e-6)
    assert lm.version == "v7" and lm.calibration_id.startswith("v7/")
    assert json.loads((path / "manifest.json").read_text())["sha256"] == lm.digest


def test_no_pickle_in_artifact(trained) -> None:  # type: ignore[no-untyped-def]
    """The weights are safetensors (JSON header), not a pickle."""
    art = to_artifact(trained, "v1")
    header_len = int.from_bytes(art.weights[:8], "little")
    assert json.loads(art.weights[8 : 8 + header_len])  # a safetensors header is JSON
    assert b"\x80\x04" not in art.weights[:2]


def test_tampered_weights_refused(trained) -> None:  # type: ignore[no-untyped-def]
    """Changing one byte of the weights makes the load fail on the digest."""
    art = to_artifact(trained, "v1")
    w = bytearray(art.weights)
    w[-1] ^= 0xFF
    with pytest.raises(ModelLoadError, match="digest"):
        load_artifact(dataclasses.replace(art, weights=bytes(w)))


def test_signature_checked_when_key_configured(trained) -> None:  # type: ignore[no-untyped-def]
    """With a signing key a modified manifest (e.g. a lowered threshold) is refused."""
    art = to_artifact(trained, "v1", signing_key=b"k")
    load_artifact(art, signing_key=b"k")
    forged = {**art.manifest, "calibration": {**art.manifest["calibration"], "threshold": -1e9}}
    with pytest.raises(ModelLoadError, match="signature"):
        load_artifact(dataclasses.replace(art, manifest=forged), signing_key=b"k")
    with pytest.raises(ModelLoadError, match="signature"):
        load_artifact(art, signing_key=b"other")


def test_feature_mismatch_refused(trained) -> None:  # type: ignore[no-untyped-def]
    """A model trained on other features is refused for this topology, with the fix named."""
    other = synth_topology().model_copy(update={"features": synth_topology().features[::-1]})
    with pytest.raises(ModelLoadError, match="retrain"):
        load_artifact(to_artifact(trained, "v1"), topology=other)


def test_import_of_non_model_directory(tmp_path: Path) -> None:
    """Importing a directory without the two files says what it needs."""
    with pytest.raises(ModelLoadError, match=r"manifest\.json"):
        import_artifact(tmp_path)
