"""Versioned model artifacts in Redis: safetensors weights + JSON manifest + active pointer per stream.

Nothing is ever unpickled. The manifest carries the sha256 of the weights (checked before any
load) and, when a signing key is configured, an HMAC over the manifest (checked too).

Keys (prefix ``P``, stream ``S``)::

    P:S:model:V:weights    bytes (safetensors)
    P:S:model:V:manifest   JSON
    P:S:versions           sorted set of versions by creation time
    P:S:seq                version counter
    P:S:active             active version
    P:S:history            list of previously active versions (newest first), for rollback
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stream_vae.calibrate import Calibrator
from stream_vae.exceptions import ModelLoadError, StateStoreError
from stream_vae.model.scorer import VAEScorer
from stream_vae.model.train import TrainedModel
from stream_vae.model.vae import members
from stream_vae.preprocess import Scaler
from stream_vae.topology import Topology

FORMAT = "stream-vae/1"


@dataclass(frozen=True)
class Artifact:
    """Serialised model: what the registry stores and what a worker loads."""

    manifest: dict[str, Any]
    weights: bytes

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


@dataclass(frozen=True)
class LoadedModel:
    """Everything a scorer needs from one model version, swapped as a unit."""

    version: str
    scorer: VAEScorer
    scaler: Scaler
    calibrator: Calibrator
    calibration_id: str
    window: int
    reference: dict[str, Any]
    digest: str
    seasonal_period: int = 0  # records; the pipeline appends each feature's change since then (0 = off)

    @property
    def row_width(self) -> int:
        """Columns of one featurized (windowed, seasonal) row: what the scorer takes."""
        return max(v.n_in for v in self.scorer.members)


def _sign(manifest: dict[str, Any], key: bytes) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def to_artifact(model: TrainedModel, version: str, *, signing_key: bytes | None = None) -> Artifact:
    from safetensors.torch import save

    weights = save({k: v.contiguous() for k, v in model.vae.state_dict().items()})
    topo = model.topology
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "stream": topo.name,
        "created": time.time(),
        "features": list(topo.feature_names),
        "window": topo.window,
        "seasonal_period": model.seasonal_period,
        "architecture": {
            "n_in": model.vae.n_in,
            "hidden": list(model.vae.hidden),
            "latent_dim": model.vae.latent_dim,
            "members": len(members(model.vae)),
            "member_n_in": [v.n_in for v in members(model.vae)],  # members may see different windows
        },
        "scaler": model.scaler.to_dict(),
        "calibration": model.calibrator.to_dict(),
        "reference": model.reference,
        "n_train": model.n_train,
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    if signing_key:
        manifest["signature"] = _sign(manifest, signing_key)
    return Artifact(manifest, weights)


def load_artifact(art: Artifact, *, signing_key: bytes | None = None, topology: Topology | None = None) -> LoadedModel:
    """Verify and instantiate an artifact. Raises ``ModelLoadError`` on any mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from stream_vae.model.vae import VAE, AnyVAE, VAEEnsemble

    m = art.manifest
    if m.get("format") != FORMAT:
        raise ModelLoadError(f"model {m.get('version')}: unknown artifact format {m.get('format')!r}")
    digest = hashlib.sha256(art.weights).hexdigest()
    if digest != m.get("sha256"):
        raise ModelLoadError(
            f"model {art.version}: weights digest {digest[:12]} != manifest {str(m.get('sha256'))[:12]}; "
            "refusing a corrupt artifact"
        )
    if signing_key and not hmac.compare_digest(str(m.get("signature", "")), _sign(m, signing_key)):
        raise ModelLoadError(f"model {art.version}: manifest signature does not verify with the configured signing key")
    if topology is not None and list(topology.feature_names) != m["features"]:
        raise ModelLoadError(
            f"model {art.version} was trained on features {m['features']}, topology '{topology.name}' has "
            f"{list(topology.feature_names)}; retrain with `stream-vae train`"
        )
    a = m["architecture"]
    hidden, latent = tuple(a["hidden"]), int(a["latent_dim"])
    # artifacts before ensembles have one member; before member windows, every member has n_in inputs
    n_ins = a.get("member_n_in") or [a["n_in"]] * int(a.get("members", 1))
    vaes = [VAE(int(n), hidden=hidden, latent_dim=latent, n_features=len(m["features"])) for n in n_ins]
    vae: AnyVAE = vaes[0] if len(vaes) == 1 else VAEEnsemble(vaes)
    try:
        vae.load_state_dict(load(art.weights))
    except (SafetensorError, RuntimeError) as exc:
        raise ModelLoadError(f"model {art.version}: weights do not match the manifest's architecture: {exc}") from None
    cal = Calibrator.from_dict(m["calibration"])
    scorer = VAEScorer(vae, n_features=len(m["features"]), model_version=art.version)
    return LoadedModel(
        version=art.version,
        scorer=scorer,
        scaler=Scaler.from_dict(m["scaler"]),
        calibrator=cal,
        calibration_id=cal.calibration_id(art.version),
        window=int(m["window"]),
        reference=m.get("reference", {}),
        digest=digest,
        seasonal_period=int(m.get("seasonal_period", 0)),  # artifacts before seasonal differences: none
    )


class ModelRegistry(Protocol):
    """Where versioned artifacts live. Redis in production; any store with these verbs works."""

    def register(self, model: TrainedModel, *, activate: bool = False) -> Artifact: ...
    def get(self, stream: str, version: str) -> Artifact: ...
    def active_version(self, stream: str) -> str | None: ...
    def activate(self, stream: str, version: str) -> str | None: ...
    def rollback(self, stream: str) -> tuple[str, str]: ...
    def list_versions(self, stream: str) -> list[dict[str, Any]]: ...


class RedisModelRegistry:
    """Model registry on a ``redis.Redis`` client (bytes responses)."""

    def __init__(self, client: Any, *, prefix: str = "stream-vae", signing_key: bytes | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.signing_key = signing_key

    def _k(self, stream: str, *parts: str) -> str:
        return ":".join((self.prefix, stream, *parts))

    def register(self, model: TrainedModel, *, activate: bool = False) -> Artifact:
        stream = model.topology.name
        try:
            version = f"v{int(self.client.incr(self._k(stream, 'seq')))}"
            art = to_artifact(model, version, signing_key=self.signing_key)
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._k(stream, "model", version, "weights"), art.weights)
            pipe.set(self._k(stream, "model", version, "manifest"), json.dumps(art.manifest))
            pipe.zadd(self._k(stream, "versions"), {version: art.manifest["created"]})
            pipe.execute()
        except Exception as exc:  # redis.RedisError and connection errors
            raise _store_error(exc) from None
        if activate:
            self.activate(stream, version)
        return art

    def get(self, stream: str, version: str) -> Artifact:
        try:
            w, m = self.client.mget(
                self._k(stream, "model", version, "weights"), self._k(stream, "model", version, "manifest")
            )
        except Exception as exc:
            raise _store_error(exc) from None
        if w is None or m is None:
            raise ModelLoadError(f"model {version} of stream '{stream}' not found in the registry")
        return Artifact(json.loads(m), bytes(w))

    def load(self, stream: str, version: str, *, topology: Topology | None = None) -> LoadedModel:
        return load_artifact(self.get(stream, version), signing_key=self.signing_key, topology=topology)

    def active_version(self, stream: str) -> str | None:
        try:
            v = self.client.get(self._k(stream, "active"))
        except Exception as exc:
            raise _store_error(exc) from None
        return v.decode() if isinstance(v, bytes) else v

    def activate(self, stream: str, version: str) -> str | None:
        """Point the stream at ``version``; returns the previously active version."""
        self.get(stream, version)  # must exist
        prev = self.active_version(stream)
        if prev == version:
            return prev
        pipe = self.client.pipeline(transaction=True)
        if prev:
            pipe.lpush(self._k(stream, "history"), prev)
            pipe.ltrim(self._k(stream, "history"), 0, 99)
        pipe.set(self._k(stream, "active"), version)
        pipe.execute()
        return prev

    def rollback(self, stream: str) -> tuple[str, str]:
        """Re-activate the previously active version; returns (from, to)."""
        cur = self.active_version(stream)
        prev = self.client.lpop(self._k(stream, "history"))
        if cur is None or prev is None:
            raise ModelLoadError(f"stream '{stream}' has no previous version to roll back to")
        prev_s = prev.decode() if isinstance(prev, bytes) else str(prev)
        self.client.set(self._k(stream, "active"), prev_s)
        return cur, prev_s

    def list_versions(self, stream: str) -> list[dict[str, Any]]:
        active = self.active_version(stream)
        out = []
        for v in self.client.zrange(self._k(stream, "versions"), 0, -1):
            version = v.decode() if isinstance(v, bytes) else v
            raw = self.client.get(self._k(stream, "model", version, "manifest"))
            if raw is None:
                continue
            m = json.loads(raw)
            out.append(
                {
                    "version": version,
                    "active": version == active,
                    "created": m["created"],
                    "threshold": m["calibration"]["threshold"],
                    "calibration": f"{m['calibration']['method']} fpr={m['calibration']['fpr']}",
                    "n_train": m.get("n_train"),
                    "sha256": m["sha256"][:12],
                }
            )
        return out

    def streams(self) -> list[str]:
        return sorted({k.decode().split(":")[-2] for k in self.client.scan_iter(f"{self.prefix}:*:versions")})


def _store_error(exc: Exception) -> StateStoreError:
    return StateStoreError(
        f"Redis model registry: {type(exc).__name__}: {exc}. Check REDIS_URL / STREAM_VAE_REDIS__URL"
    )


def export_artifact(art: Artifact, directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``manifest.json`` atomically (temp dir, then ``os.replace``)."""
    target = Path(directory) / art.version
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{art.version}.", dir=target.parent))
    try:
        (tmp / "model.safetensors").write_bytes(art.weights)
        (tmp / "manifest.json").write_text(json.dumps(art.manifest, indent=2))
        os.replace(tmp, target)
    except BaseException:
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
        raise
    return target


def import_artifact(directory: str | Path) -> Artifact:
    d = Path(directory)
    try:
        return Artifact(json.loads((d / "manifest.json").read_text()), (d / "model.safetensors").read_bytes())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{d}: not a model directory (needs manifest.json and model.safetensors): {exc}") from None
