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


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(["not", "an", "object"], id="a JSON list"),
        pytest.param("a string", id="a JSON string"),
    ],
)
def test_a_manifest_that_is_not_an_object_is_refused(trained, manifest) -> None:  # type: ignore[no-untyped-def]
    art = to_artifact(trained, "v1")
    with pytest.raises(ModelLoadError, match="not an object"):
        load_artifact(dataclasses.replace(art, manifest=manifest))


@pytest.mark.parametrize("drop", ["architecture", "scaler", "calibration", "window", "features"])
def test_a_manifest_missing_a_field_is_refused_not_a_crash(trained, drop: str) -> None:  # type: ignore[no-untyped-def]
    """A worker catches ModelLoadError and keeps serving its model; a KeyError would stop it."""
    art = to_artifact(trained, "v1")
    broken = {k: v for k, v in art.manifest.items() if k != drop}
    with pytest.raises(ModelLoadError, match="malformed manifest"):
        load_artifact(dataclasses.replace(art, manifest=broken))


def test_a_non_ascii_signature_is_refused_not_a_type_error(trained) -> None:  # type: ignore[no-untyped-def]
    art = to_artifact(trained, "v1", signing_key=b"k")
    forged = {**art.manifest, "signature": "é" * 64}
    with pytest.raises(ModelLoadError, match="signature"):
        load_artifact(dataclasses.replace(art, manifest=forged), signing_key=b"k")


def test_exporting_a_version_again_replaces_it(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = export_artifact(to_artifact(trained, "v3"), tmp_path)
    (first / "stale").write_text("left from an earlier export")
    again = export_artifact(to_artifact(trained, "v3"), tmp_path)
    assert again == first and sorted(p.name for p in again.iterdir()) == ["manifest.json", "model.safetensors"]
    assert again.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["v3"]  # no temporary or replaced directory left behind


def test_concurrent_exports_of_one_version_both_succeed(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two exports of v3 at once (two operators, a retried job) shared one 'replaced' directory: one moved the
    other's aside or found the target back in place, and failed. 8 threads x 5 exports, all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    art = to_artifact(trained, "v3")
    export_artifact(art, tmp_path)
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: export_artifact(art, tmp_path), range(40)))
    assert done == [tmp_path / "v3"] * 40 and [p.name for p in tmp_path.iterdir()] == ["v3"]
    assert import_artifact(tmp_path / "v3").weights == art.weights


@pytest.mark.parametrize("version", ["../escape", ".hidden", "a/b", ""])
def test_export_refuses_a_version_that_is_not_a_plain_name(trained, tmp_path: Path, version: str) -> None:  # type: ignore[no-untyped-def]
    art = to_artifact(trained, "v1")
    with pytest.raises(ModelLoadError, match="plain name"):
        export_artifact(dataclasses.replace(art, manifest={**art.manifest, "version": version}), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_a_registry_timeout_does_not_send_the_user_to_check_the_url() -> None:
    """(Chaos test) Redis hung: 'TimeoutError ... Check REDIS_URL' sent the reader after a wrong address."""
    import redis

    from stream_vae.model.registry import _store_error

    assert str(_store_error(redis.TimeoutError("Timeout reading from socket"))).endswith("Redis did not answer in time")
    assert "Check REDIS_URL" in str(_store_error(redis.ConnectionError("Error 111 connecting")))
