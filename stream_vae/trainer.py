"""trainer: answers ``control.recalibrate`` with a validated candidate, or a refusal with a reason.

- ``threshold``: same weights, a new threshold calibrated on recent records (the scores moved,
  the latent space did not);
- ``retrain``: a new model trained on records that arrived after the drift, validated on the
  newest of them against the active model (replay), then registered, activated and announced
  on ``control.model``.

``Trainer.handle`` is blocking and framework-free; the faust app runs it in a thread.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import structlog

from stream_vae import metrics
from stream_vae.calibrate import Calibrator
from stream_vae.exceptions import REDIS_DOWN, ModelLoadError
from stream_vae.hotswap import model_event
from stream_vae.lifecycle import RedisEpisodeStore
from stream_vae.lru import put
from stream_vae.model.registry import LoadedModel, RedisModelRegistry, load_artifact, to_artifact
from stream_vae.model.train import TrainedModel, train_model
from stream_vae.pipeline import Pipeline
from stream_vae.records import BatchOutcome, FloatArray, RawRecord
from stream_vae.reservoir import Recent, Reservoir
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.trainer")


@dataclass(frozen=True)
class Validation:
    """How a model does on held-out recent records."""

    alert_rate: float
    nll_raw: float  # mean negative log-likelihood in the raw feature space (comparable across scalers)

    def as_dict(self) -> dict[str, float]:
        return {"alert_rate": round(self.alert_rate, 6), "nll_raw": round(self.nll_raw, 4)}


def _as_fields(topology: Topology, row: list[float]) -> dict[str, Any]:
    """A reservoir row (float32) as the record fields it came from: booleans as booleans, and values
    back inside the feature's bounds (0.3 comes back as 0.30000001, past a ``max`` of 0.3)."""
    out: dict[str, Any] = {}
    for f, v in zip(topology.features, row, strict=True):
        if f.type == "bool":
            out[f.name] = v >= 0.5
            continue
        x = min(max(v, -math.inf if f.min is None else f.min), math.inf if f.max is None else f.max)
        out[f.name] = round(x) if f.type == "int" else x
    return out


def replay(topology: Topology, model: LoadedModel, X: FloatArray, keys: list[str]) -> BatchOutcome:
    """Run rows through a fresh ``Pipeline`` on ``model`` exactly as a worker would (validation,
    windows, scaling, smoothing, per-entity thresholds), in arrival order.

    Raises
    ------
    ValueError
        A row failed validation (every row must score, to stay aligned with its ``normal`` mark).
    """
    kf = topology.key_field
    records = [
        RawRecord(json.dumps({**({kf: k} if kf else {}), **_as_fields(topology, row)}).encode(),
                  k.encode(), "replay", 0, i)
        for i, (row, k) in enumerate(zip(X.tolist(), keys, strict=True))
    ]
    out = Pipeline(topology, model).process_batch(records)
    if out.rejections:
        r = out.rejections[0]
        raise ValueError(f"{len(out.rejections)} reservoir records failed validation on replay, e.g. {r.reason}: "
                         f"{r.detail} (was the topology's feature list changed?)")
    return out


def evaluate(topology: Topology, model: LoadedModel, recent: Recent) -> Validation:
    """Replay recent records; over the normal ones, the flag rate and the log-likelihood corrected to
    raw units so that models with different scalers compare. (The others are replayed for the
    windows and differences of their neighbours.)"""
    out = replay(topology, model, recent.X, recent.keys)
    if out.result is None or not recent.normal.any():
        raise ValueError("no valid record to validate on")
    normal = recent.normal
    log_std = np.log(np.asarray(model.scaler.to_dict()["std"]))
    # Gaussian NLL of the model input = data term (the contributions) + 0.5 * sum(log 2 pi + log var),
    # plus the log-Jacobian of the scaling: the density of the raw values. The contributions are the
    # members' mean, so the constant is too (members may see windows of different lengths).
    consts = []
    for vae in model.scorer.members:
        lv = vae.out_log_variance().detach().double().numpy()
        records = vae.n_in // len(log_std)
        consts.append(0.5 * float(np.sum(np.log(2 * np.pi) + lv)) + records * float(log_std.sum()))
    const = float(np.mean(consts))
    nll_raw = float(out.result.contributions[normal].sum(axis=1).mean()) + const
    return Validation(float(out.is_anomaly[normal].mean()), nll_raw)


def _width_mix(model: LoadedModel) -> dict[int, Fraction]:
    """The share of an ensemble's members that see each input width: the likelihood is their average,
    so models with the same mix (one member or three, all of a window of 5) are comparable."""
    widths = Counter(v.n_in for v in model.scorer.members)
    return {w: Fraction(c, len(model.scorer.members)) for w, c in widths.items()}


def _sampling(topo: Topology) -> str:
    """What a refusal for want of records should add when the reservoir samples entities."""
    n = topo.retrain.sample_every
    if n > 1 and topo.consecutive:
        return (f" (retrain.sample_every {n} keeps one entity in {n}, all of its records: with few keys, "
                "set it to 1)")
    return ""


_RENEW_IF = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
             "return 0")


class TrainingAborted(Exception):  # noqa: N818 - it is an outcome, not an error
    """The trainer is shutting down; the candidate in training is dropped."""


def parse_request(value: bytes | None) -> dict[str, Any] | str:
    """A ``control.recalibrate`` event's data, or why it is not one to handle (it is skipped: anything a
    handler raised on would end the trainer's agent, and the request it held with it)."""
    try:
        data = json.loads(value or b"")["data"]
    except (ValueError, KeyError, TypeError):
        return "not a stream-vae event"
    if not isinstance(data, dict):
        return "its data is not an object"
    since = data.get("since_ms")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)
                              or not math.isfinite(since)):
        return f"since_ms {since!r:.40} is not a number"
    return data


class Trainer:
    """Handles recalibration requests for the topologies it owns."""

    def __init__(self, topologies: dict[str, Topology], *, registry: RedisModelRegistry,
                 poll_s: float = 2.0, lease_s: float = 60.0) -> None:
        self.topologies = topologies
        self.registry = registry
        self.poll_s = poll_s
        # a request in progress is held by a lease its attempt renews while it works: a trainer that died
        # (OOM, a lost node) lets it lapse, and the redelivery waits that long, not for the whole work's length
        self.lease_s = lease_s
        self._lease: tuple[str, str, float] | None = None  # (claim key, attempt, when last renewed)
        self.stopping = threading.Event()  # set on shutdown: training stops after the current epoch
        self._finished: OrderedDict[str, list[tuple[str, bytes]]] = OrderedDict()  # attempt -> its messages
        # attempt -> the candidate it decided to activate, until registered: a Redis error while registering
        # retries the registration alone (it retrained, and registered a second version besides the first,
        # whose activation had run late, after Redis came back)
        self._pending: OrderedDict[str, tuple[Topology, TrainedModel, LoadedModel, dict[str, Any]]] = OrderedDict()
        self._attempt = ""

    def reservoir(self, topo: Topology) -> Reservoir:
        return Reservoir(self.registry.client, prefix=self.registry.prefix, stream=topo.name,
                         n_features=len(topo.features), buffer_size=topo.retrain.buffer_size)

    def _need(self, topo: Topology, data: dict[str, Any]) -> int:
        spec = topo.retrain
        return spec.threshold_records if data.get("kind") == "threshold" else spec.min_records

    def wait_timeout(self, data: dict[str, Any]) -> float:
        """How long a request may wait for post-drift records before it is refused."""
        topo = self.topologies.get(str(data.get("stream")))
        return topo.retrain.wait_timeout_s if topo else 0.0

    def has_records(self, data: dict[str, Any]) -> bool:
        """Whether the reservoir holds enough records from ``since_ms`` on for this request."""
        topo = self.topologies.get(str(data.get("stream")))
        if topo is None:
            return True
        return self.reservoir(topo).count_since(int(data.get("since_ms") or 0)) >= self._need(topo, data)

    def handle(self, data: dict[str, Any], *, attempt: str | None = None) -> list[tuple[str, bytes]]:
        """One ``control.recalibrate`` event -> ``(topic, value)`` messages to publish.

        A Redis error is raised, for the caller to try again with the same ``attempt`` (an id of the
        request in hand): the episode's claim is then this attempt's own, not a duplicate's."""
        topo = self.topologies.get(str(data.get("stream")))
        if topo is None:  # another installation's stream (same topic and group) or a topology not loaded here
            log.warning("recalibrate_unknown_stream", stream=data.get("stream"), known=sorted(self.topologies))
            return []
        episode = str(data.get("episode", ""))
        claim = f"{self.registry.prefix}:{topo.name}:trainer:episode:{episode}"
        attempt = attempt or uuid.uuid4().hex
        if attempt in self._finished:  # done, and Redis failed as it was marked handled: mark it, never redo it
            return self._handled(claim if episode else None, attempt)
        if episode and not self._claim(claim, attempt, topo.name, episode):
            return []
        kind = "threshold" if data.get("kind") == "threshold" else "retrain"
        log.info("recalibrate_started", stream=topo.name, kind=kind, episode=episode, reason=data.get("reason"))
        self._attempt = attempt
        try:
            if attempt in self._pending:
                msgs = [self._register(*self._pending[attempt])]
            else:
                msgs = self._threshold(topo, data) if kind == "threshold" else self._retrain(topo, data)
            outcome = "activated" if b'"activate"' in msgs[0][1] else "refused"
        except TrainingAborted:
            # the request is not committed: the trainer that gets it next must not wait for this lease
            if episode:
                RedisEpisodeStore(self.registry.client).delete(claim, if_value=attempt)
            log.info("recalibrate_aborted", stream=topo.name, episode=episode)
            return []
        except REDIS_DOWN:
            raise  # the caller tries again once Redis is back (a refusal would lose the request)
        except Exception as exc:  # a failed attempt is reported, the trainer keeps serving
            log.error("recalibrate_failed", stream=topo.name, error=f"{type(exc).__name__}: {exc}")
            msgs, outcome = [self._refuse(topo, f"{type(exc).__name__}: {exc}")], "failed"
        finally:
            self._lease = None
        metrics.RECALIBRATIONS.labels(topo.name, kind, outcome).inc()
        put(self._finished, attempt, msgs, 64)
        return self._handled(claim if episode else None, attempt)

    def _claim(self, claim: str, attempt: str, stream: str, episode: str) -> bool:
        """Take the request's lease (False: it was handled already). Held by another attempt, it is that
        attempt's while it renews it: wait until it is handled (a duplicate) or lapses (its trainer died)."""
        store, waited = RedisEpisodeStore(self.registry.client), False
        while True:
            if store.set_if_absent(claim, attempt, self.lease_s):
                break
            held = store.get(claim)
            if held == attempt:
                break
            if held == "1":
                log.info("recalibrate_duplicate", stream=stream, episode=episode)
                return False
            if held is not None:
                if self.stopping.wait(self.poll_s):
                    raise TrainingAborted
                if not waited:
                    log.info("recalibrate_waiting", stream=stream, episode=episode, why="another trainer holds it")
                    waited = True
        self._lease = (claim, attempt, time.monotonic())
        return True

    def _renew(self) -> None:
        """Extend the lease while the work goes on (a lease another attempt took over stays theirs)."""
        if self._lease is None or time.monotonic() - self._lease[2] < self.lease_s / 4:
            return
        claim, attempt, _ = self._lease
        self.registry.client.eval(_RENEW_IF, 1, claim, attempt, int(self.lease_s * 1000))
        self._lease = (claim, attempt, time.monotonic())

    def _handled(self, claim: str | None, attempt: str) -> list[tuple[str, bytes]]:
        """The attempt's messages, once its episode is marked handled: a redelivery of the request (or the
        same episode again) is a duplicate for a day."""
        if claim is not None:
            self.registry.client.set(claim, "1", ex=86_400)
        return self._finished.pop(attempt)

    def _refuse(self, topo: Topology, reason: str, active: str | None = None) -> tuple[str, bytes]:
        log.warning("candidate_refused", stream=topo.name, reason=reason)
        return topo.control.model_topic, model_event(topo.name, version="", digest="", action="refuse",
                                                     previous=active, reason=reason)

    def _recent(self, topo: Topology, since_ms: int | None, need: int) -> Recent | None:
        """The reservoir's records from ``since_ms`` on, if ``need`` of them are normal (callers wait first)."""
        recent = self.reservoir(topo).read(since_ms=since_ms)
        return recent if recent.normal.sum() >= need else None

    def _check_stop(self, *_: float) -> None:
        """Called after each epoch: stop on shutdown, else renew the request's lease."""
        if self.stopping.is_set():
            raise TrainingAborted
        self._renew()

    def _active(self, topo: Topology) -> LoadedModel:
        version = self.registry.active_version(topo.name)
        if version is None:
            raise ModelLoadError(f"stream '{topo.name}' has no active model to recalibrate")
        return self.registry.load(topo.name, version, topology=topo)

    def _threshold(self, topo: Topology, data: dict[str, Any]) -> list[tuple[str, bytes]]:
        active = self._active(topo)
        need = self._need(topo, data)
        got = self._recent(topo, data.get("since_ms"), need)
        if got is None:
            return [self._refuse(topo, f"fewer than {need} recent records arrived in time{_sampling(topo)}",
                                 active.version)]
        out = replay(topo, active, got.X, got.keys)
        assert out.result is not None
        scores = out.result.score[got.normal]  # smoothed per entity, as the pipeline thresholds them
        cal = Calibrator.from_spec(topo.calibration).infer_threshold(scores)
        cal.range_lo, cal.range_hi = active.calibrator.range_lo, active.calibrator.range_hi  # the training range
        # the active model's weights, so its window (the topology's may have been edited since: a manifest
        # naming it would crash every worker at its first batch)
        model = TrainedModel(topo.model_copy(update={"window": active.window}), active.scorer.vae, active.scaler, cal,
                             {**active.reference, "score_mean": float(scores.mean()), "score_std": float(scores.std())},
                             n_train=len(scores), seasonal_period=active.seasonal_period)
        return [self._register(topo, model, active, {"kind": "threshold", "records": len(scores)})]

    def _retrain(self, topo: Topology, data: dict[str, Any]) -> list[tuple[str, bytes]]:
        spec = topo.retrain
        active = self._active(topo)
        got = self._recent(topo, data.get("since_ms"), spec.min_records)
        if got is None:
            return [self._refuse(topo, f"fewer than {spec.min_records} post-drift records arrived within "
                                       f"{spec.wait_timeout_s:.0f}s{_sampling(topo)}", active.version)]
        n_hold = spec.holdout_size(len(got))
        fit, hold = got[:-n_hold], got[-n_hold:]
        cand_t = train_model(fit.X, topo, entities=fit.keys, normal=fit.normal, max_seconds=spec.max_train_seconds,
                             progress=self._check_stop)
        cand = load_artifact(to_artifact(cand_t, "candidate"), topology=topo)
        v_new, v_old = evaluate(topo, cand, hold), evaluate(topo, active, hold)
        # models that see different inputs (a seasonal period, a window or a member's window added, dropped or
        # changed) have
        # likelihoods of different things (a window's density grows with its length): only the flag-rate
        # gate, and the live swap guard, can judge between them
        comparable = (cand.seasonal_period == active.seasonal_period and cand.window == active.window
                      and _width_mix(cand) == _width_mix(active))
        evidence = {"kind": "retrain", "records": len(got), "normal": int(got.normal.sum()), "holdout": n_hold,
                    "candidate": v_new.as_dict(), "active": v_old.as_dict(), "nll_compared": comparable}
        baseline = float(data.get("baseline_alert_rate") or 0.0)
        limit = max(spec.max_alert_rate_factor * topo.calibration.fpr, spec.baseline_factor * baseline)
        if v_new.alert_rate > limit:
            return [self._refuse(topo, f"candidate flags {v_new.alert_rate:.4f} of held-out recent records "
                                       f"(limit {limit:.4f})", active.version)]
        if comparable and v_new.nll_raw > v_old.nll_raw:
            return [self._refuse(topo, f"candidate explains held-out recent records worse than {active.version} "
                                       f"(NLL {v_new.nll_raw:.3f} > {v_old.nll_raw:.3f})", active.version)]
        return [self._register(topo, cand_t, active, evidence)]

    def _register(self, topo: Topology, model: TrainedModel, active: LoadedModel,
                  evidence: dict[str, Any]) -> tuple[str, bytes]:
        attempt = self._attempt
        retry = attempt in self._pending
        put(self._pending, attempt, (topo, model, active, evidence), 16)
        model.origin = attempt
        # a try of this attempt that Redis interrupted may have stored (and activated) it: that one, not another
        version = self.registry.find_origin(topo.name, attempt) if retry else None
        if version is None:
            art = self.registry.register(model, activate=True)
        else:
            self.registry.activate(topo.name, version)  # (a no-op if it is active)
            art = self.registry.get(topo.name, version)
        self._pending.pop(attempt, None)
        log.info("candidate_activated", stream=topo.name, version=art.version, previous=active.version, **evidence)
        return topo.control.model_topic, model_event(topo.name, version=art.version, digest=art.manifest["sha256"],
                                                     action="activate", previous=active.version)
