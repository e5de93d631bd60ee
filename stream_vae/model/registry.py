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
    P:S:active_by          how the pointer last moved: VERSION:activate | VERSION:rollback
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from stream_vae.calibrate import Calibrator
from stream_vae.config import Settings
from stream_vae.exceptions import ModelLoadError, RollbackConflictError, StateStoreError
from stream_vae.model.scorer import VAEScorer
from stream_vae.model.train import TrainedModel
from stream_vae.model.vae import members
from stream_vae.preprocess import Scaler
from stream_vae.topology import Topology

FORMAT = "stream-vae/1"
log = structlog.get_logger(__name__)


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
        **({"origin": model.origin} if model.origin else {}),
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    if signing_key:
        manifest["signature"] = _sign(manifest, signing_key)
    return Artifact(manifest, weights)


def load_artifact(art: Artifact, *, signing_key: bytes | None = None, topology: Topology | None = None) -> LoadedModel:
    """Verify and instantiate an artifact. Raises ``ModelLoadError`` on any mismatch or malformed manifest."""
    m = art.manifest
    if not isinstance(m, dict):
        raise ModelLoadError(f"model manifest is a JSON {type(m).__name__}, not an object; refusing it")
    if m.get("format") != FORMAT:
        raise ModelLoadError(f"model {m.get('version')}: unknown artifact format {m.get('format')!r}")
    try:
        return _instantiate(art, signing_key=signing_key, topology=topology)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a manifest missing or mistyping a field
        raise ModelLoadError(
            f"model {m.get('version')}: malformed manifest ({type(exc).__name__}: {exc}); refusing it"
        ) from None


def _instantiate(art: Artifact, *, signing_key: bytes | None, topology: Topology | None) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load

    from stream_vae.model.vae import VAE, AnyVAE, VAEEnsemble

    m = art.manifest
    digest = hashlib.sha256(art.weights).hexdigest()
    if digest != m.get("sha256"):
        raise ModelLoadError(
            f"model {art.version}: weights digest {digest[:12]} != manifest {str(m.get('sha256'))[:12]}; "
            "refusing a corrupt artifact"
        )
    # compared as bytes: compare_digest refuses a str with non-ASCII characters (a TypeError, not a refusal)
    if signing_key and not hmac.compare_digest(str(m.get("signature", "")).encode(), _sign(m, signing_key).encode()):
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

    def __init__(
        self, client: Any, *, prefix: str = "stream-vae", signing_key: bytes | None = None, keep_versions: int = 20
    ) -> None:
        if keep_versions < 2:
            raise ValueError(f"keep_versions must be >= 2 (the active one and one to go back to), not {keep_versions}")
        self.client = client
        self.prefix = prefix
        self.signing_key = signing_key
        self.keep_versions = keep_versions

    @classmethod
    def for_settings(cls, client: Any, settings: Settings, *, signing_key: bytes | None) -> RedisModelRegistry:
        """The registry as workers, the trainer and the CLI configure it."""
        return cls(client, prefix=settings.redis.prefix, signing_key=signing_key,
                   keep_versions=settings.model_keep_versions)

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
        try:  # housekeeping: the version is stored (and active) whatever happens here
            self.prune(stream)
        except StateStoreError as exc:
            log.warning("model_prune_failed", stream=stream, error=str(exc))
        return art

    def prune(self, stream: str) -> list[str]:
        """Delete versions beyond the newest ``keep_versions`` that are neither active nor in the rollback
        history (every retrain and recalibration registers one; without this Redis grows for ever). One
        script: an activation in between cannot point at a version deleted meanwhile."""
        try:
            dropped = self.client.eval(_PRUNE, 3, self._k(stream, "active"), self._k(stream, "history"),
                                       self._k(stream, "versions"), self._k(stream, "model", ""),
                                       str(self.keep_versions))
        except Exception as exc:
            raise _store_error(exc) from None
        return [_text(v) for v in dropped]

    def get(self, stream: str, version: str) -> Artifact:
        try:
            w, m = self.client.mget(
                self._k(stream, "model", version, "weights"), self._k(stream, "model", version, "manifest")
            )
        except Exception as exc:
            raise _store_error(exc) from None
        if w is None or m is None:
            hint = f" (versions are named like v{version})" if version.isdigit() else ""
            try:
                if not self.client.exists(self._k(stream, "versions")):  # a typo in the stream's name?
                    hint += f"; no model of stream '{stream}' at all (streams with models: {self.streams()[:10]})"
            except Exception:  # the hint only
                pass
            raise ModelLoadError(f"model {version} of stream '{stream}' not found in the registry{hint}")
        try:
            manifest = json.loads(m)
        except ValueError:
            raise ModelLoadError(f"model {version} of stream '{stream}': manifest is not JSON; refusing it") from None
        # the manifest names its own stream and version (and the signature covers them): a manifest copied
        # under another key would otherwise load as the wrong version, and a worker would swap forever
        if not isinstance(manifest, dict) or (manifest.get("stream"), manifest.get("version")) != (stream, version):
            found = (manifest.get("stream"), manifest.get("version")) if isinstance(manifest, dict) else manifest
            raise ModelLoadError(
                f"model {version} of stream '{stream}': the manifest stored there describes {found!r}; refusing it"
            )
        return Artifact(manifest, bytes(w))

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
        self.get(stream, version)  # must exist and verify
        # one script, so two activations (or an activation and a rollback, or a prune) cannot interleave
        found, prev = self._script(_ACTIVATE, stream, version, str(self.keep_versions),
                                   self._k(stream, "model", version, "manifest"))
        if not found:
            raise ModelLoadError(f"model {version} of stream '{stream}' was deleted (pruned) meanwhile")
        return _text(prev) if prev else None

    def rollback(self, stream: str, *, expected: str | None = None) -> tuple[str, str]:
        """Re-activate the previously active version; returns (from, to).

        With ``expected``, only if that version is still the active one (else ``RollbackConflictError``):
        a guard that judged version X must not roll back the version a trainer activated since.
        """
        status, *rest = self._script(_ROLLBACK, stream, expected or "")
        if status == 0:
            raise ModelLoadError(f"stream '{stream}' has no previous version to roll back to")
        if status == 1:
            raise RollbackConflictError(f"stream '{stream}': active is {_text(rest[0])}, not {expected}; no rollback")
        return _text(rest[0]), _text(rest[1])

    def active_intent(self, stream: str) -> tuple[str | None, bool | None]:
        """The active version, and whether it got there by a rollback (None: not recorded, a registry older
        than this). A worker that sees the pointer move before the event that says why must not guess it
        from the version numbers: an operator may activate an older version on purpose, to be guarded."""
        try:
            v, how = self.client.mget(self._k(stream, "active"), self._k(stream, "active_by"))
        except Exception as exc:
            raise _store_error(exc) from None
        if v is None:
            return None, None
        version, _, action = _text(how or b"").rpartition(":")  # "v3:rollback"
        # only if it names the active version: a release that does not write it may have moved the pointer since
        return _text(v), (action == "rollback" if version == _text(v) else None)

    def _script(self, script: str, stream: str, *args: str) -> Any:
        try:
            return self.client.eval(script, 3, self._k(stream, "active"), self._k(stream, "history"),
                                    self._k(stream, "active_by"), *args)
        except Exception as exc:
            raise _store_error(exc) from None

    def list_versions(self, stream: str) -> list[dict[str, Any]]:
        active = self.active_version(stream)
        out = []
        versions = (_text(v) for v in self.client.zrange(self._k(stream, "versions"), 0, -1))
        for version in sorted(versions, key=version_sequence):
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

    def find_origin(self, stream: str, origin: str) -> str | None:
        """The version whose manifest says ``origin`` made it (the newest; None: none kept)."""
        try:
            versions = sorted((_text(v) for v in self.client.zrange(self._k(stream, "versions"), 0, -1)),
                              key=version_sequence, reverse=True)
            for version in versions:
                raw = self.client.get(self._k(stream, "model", version, "manifest"))
                if raw is not None and json.loads(raw).get("origin") == origin:
                    return version
        except Exception as exc:
            raise _store_error(exc) from None
        return None

    def streams(self) -> list[str]:
        return sorted({k.decode().split(":")[-2] for k in self.client.scan_iter(f"{self.prefix}:*:versions")})


# KEYS: active pointer, history list, how the pointer got there. ARGV: version, history length, the
# version's manifest key. Returns {0, ''} (the version is gone) or {1, previous version or ''}.
_ACTIVATE = """
if redis.call('EXISTS', ARGV[3]) == 0 then return {0, ''} end
local prev = redis.call('GET', KEYS[1])
if prev == ARGV[1] then return {1, prev} end
if prev then
  redis.call('LPUSH', KEYS[2], prev)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1] .. ':activate')
return {1, prev or ''}
"""

# KEYS: active pointer, history list, versions (sorted set). ARGV: model key prefix ("P:S:model:"), how many
# of the newest versions (by number) to keep. Deletes the others unless active or in the history.
_PRUNE = """
local kept = {}
local active = redis.call('GET', KEYS[1])
if active then kept[active] = true end
for _, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do kept[v] = true end
local function seq(v) local n = string.match(v, '^v(%d+)$'); if n then return tonumber(n) end; return -1 end
local versions = redis.call('ZRANGE', KEYS[3], 0, -1)
table.sort(versions, function(a, b) return seq(a) > seq(b) end)
local dropped = {}
for i, v in ipairs(versions) do
  if i > tonumber(ARGV[2]) and not kept[v] then
    redis.call('DEL', ARGV[1] .. v .. ':weights', ARGV[1] .. v .. ':manifest')
    redis.call('ZREM', KEYS[3], v)
    table.insert(dropped, v)
  end
end
return dropped
"""

# KEYS: active pointer, history list, how the pointer got there. ARGV: the version expected to be active
# ('' = any). Returns {0} (nothing to go back to), {1, active} (not the expected one) or {2, from, to}.
_ROLLBACK = """
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return {1, cur} end
local prev = redis.call('LPOP', KEYS[2])
if not prev then return {0} end
redis.call('SET', KEYS[1], prev)
redis.call('SET', KEYS[3], prev .. ':rollback')
return {2, cur, prev}
"""


def version_sequence(version: str) -> int:
    """A registry version's place in registration order (``v7`` -> 7; -1 for another name). Versions are
    numbered by the registry; creation times come from the registering host's clock.

    >>> version_sequence("v12") > version_sequence("v9"), version_sequence("custom")
    (True, -1)
    """
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else -1


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _store_error(exc: Exception) -> StateStoreError:
    # a timeout is Redis reached but not answering (busy, paused, failing over), not a wrong address
    timeout = "Timeout" in type(exc).__name__
    hint = "Redis did not answer in time" if timeout else "Check REDIS_URL / STREAM_VAE_REDIS__URL"
    return StateStoreError(f"Redis model registry: {type(exc).__name__}: {exc}. {hint}")


def export_artifact(art: Artifact, directory: str | Path) -> Path:
    """Write ``DIR/VERSION/{model.safetensors,manifest.json}`` atomically (temp dir, then rename); an
    earlier export of the same version is replaced."""
    version = art.version
    if not version or version.startswith(".") or not all(c.isalnum() or c in "._-" for c in version):
        raise ModelLoadError(f"model version {version!r} is not a plain name; refusing to use it as a path")
    target = Path(directory) / version
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    aside = Path(tempfile.mkdtemp(prefix=f".{version}.replaced.", dir=target.parent))  # this export's own
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the export from the service that reads it
        (tmp / "model.safetensors").write_bytes(art.weights)
        (tmp / "manifest.json").write_text(json.dumps(art.manifest, indent=2))
        for attempt in range(100):  # a concurrent export of the same version may put one back in between
            # a directory cannot be renamed over a non-empty one: move the old one aside first
            with contextlib.suppress(FileNotFoundError):
                os.replace(target, aside / str(attempt))
            try:
                os.replace(tmp, target)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 99:
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def import_artifact(directory: str | Path) -> Artifact:
    d = Path(directory)
    try:
        return Artifact(json.loads((d / "manifest.json").read_text()), (d / "model.safetensors").read_bytes())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{d}: not a model directory (needs manifest.json and model.safetensors): {exc}") from None
