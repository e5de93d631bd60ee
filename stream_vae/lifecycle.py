"""lifecycle: what a drift signal leads to. Pure state machines; time and storage are injected.

- ``DriftPolicy``: opens one drift episode per stream (shared by every worker through an
  ``EpisodeStore``), decides threshold-only recalibration vs full retrain, and enforces the
  recalibration cooldown.
- ``SwapGuard``: after a swap, watches the new version's alert rate and asks for a rollback when it
  is far beyond the false-positive budget.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from stream_vae.drift import DriftSignal
from stream_vae.topology import Topology

RecalKind = Literal["threshold", "retrain"]
log = structlog.get_logger(__name__)


class EpisodeStore(Protocol):
    """Shared per-stream flags with expiry (Redis ``SET NX PX`` in production)."""

    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool: ...
    def claim_many(self, keys: Sequence[str], values: Sequence[str], ttl_s: float) -> list[str]: ...
    def get(self, key: str) -> str | None: ...
    def delete(self, key: str, *, if_value: str | None = None) -> None:
        """Delete ``key`` (only while it holds ``if_value``, when given)."""


class MemoryEpisodeStore:
    """In-process ``EpisodeStore`` for tests and single-process evaluation."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._d: dict[str, tuple[str, float]] = {}
        self._clock = clock

    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        if self.get(key) is not None:
            return False
        self._d[key] = (value, self._clock() + ttl_s)
        return True

    def claim_many(self, keys: Sequence[str], values: Sequence[str], ttl_s: float) -> list[str]:
        """Set each free key to its value; return each key's holder (its value, where it was free)."""
        return [v if self.set_if_absent(k, v, ttl_s) else str(self.get(k)) for k, v in zip(keys, values, strict=True)]

    def get(self, key: str) -> str | None:
        v = self._d.get(key)
        if v is None or v[1] <= self._clock():
            self._d.pop(key, None)
            return None
        return v[0]

    def delete(self, key: str, *, if_value: str | None = None) -> None:
        if if_value is None or self.get(key) == if_value:
            self._d.pop(key, None)


# delete a key only while it holds a value (one step: another worker may have replaced it since it was read)
DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisEpisodeStore:
    """``EpisodeStore`` on a redis client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def set_if_absent(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(self.client.set(key, value, nx=True, px=max(1, int(ttl_s * 1000))))

    def claim_many(self, keys: Sequence[str], values: Sequence[str], ttl_s: float) -> list[str]:
        """Set each free key to its value; return each key's holder (its value, where it was free). One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for k, v in zip(keys, values, strict=True):
            pipe.set(k, v, nx=True, px=max(1, int(ttl_s * 1000)))
            pipe.get(k)
        held = pipe.execute()[1::2]
        return [h.decode() if isinstance(h, bytes) else str(h) for h in held]

    def get(self, key: str) -> str | None:
        v = self.client.get(key)
        return v.decode() if isinstance(v, bytes) else v

    def delete(self, key: str, *, if_value: str | None = None) -> None:
        if if_value is None:
            self.client.delete(key)
        else:  # compare and delete in one step: another worker may have replaced the value since it was read
            self.client.eval(DELETE_IF, 1, key, if_value)


@dataclass(frozen=True)
class RecalibrateRequest:
    """Body of a ``control.recalibrate`` event."""

    stream: str
    reason: str
    kind: RecalKind
    episode: str
    since_ms: int  # records from this time on reflect the new regime
    model_version: str
    baseline_alert_rate: float  # what the healthy model flagged before the drift (true anomalies included)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        return {
            "stream": self.stream, "reason": self.reason, "kind": self.kind, "episode": self.episode,
            "since_ms": self.since_ms, "model_version": self.model_version,
            "baseline_alert_rate": self.baseline_alert_rate, "evidence": self.evidence,
        }


@dataclass(frozen=True)
class PolicyDecision:
    """What to publish for one batch's drift signals."""

    opened: str | None  # episode id this worker opened (it publishes the drift alerts)
    drift_alerts: list[DriftSignal]
    recalibrate: RecalibrateRequest | None


class DriftPolicy:
    """Episodes, recalibration kind and cooldown for one stream, merged across workers.

    Examples
    --------
    >>> from stream_vae.topology import parse_topology
    >>> topo = parse_topology({"name": "s", "input_topic": "i", "features": [{"name": "a"}]})
    >>> pol = DriftPolicy(topo, MemoryEpisodeStore(), prefix="p")
    >>> sig = DriftSignal("s", "s", "latent", "adwin", 1.2, 0.5, 800)
    >>> d = pol.on_signals([sig], model_version="v1")
    >>> d.recalibrate.kind, pol.episode == d.opened
    ('retrain', True)
    >>> pol.on_signals([sig], model_version="v1").recalibrate is None  # same episode: no second event
    True
    """

    def __init__(self, topology: Topology, store: EpisodeStore, *, prefix: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.topology = topology
        self.store = store
        self.prefix = prefix
        self.clock = clock

    def _key(self, what: str) -> str:
        return f"{self.prefix}:{self.topology.name}:drift:{what}"

    @property
    def episode(self) -> str | None:
        """The stream's open drift episode, whoever opened it."""
        return self.current([])[0]

    def current(self, records: Sequence[Any]) -> tuple[str | None, PolicyDecision | None]:
        """The open episode, and the decision of the batch that opened it when ``records`` (a batch about to
        be processed) hold that batch's last record of the partition that drifted.

        The episode is claimed before its drift alerts and request are published. A worker that died in
        between never committed that batch, so whoever owns the partition reads the record again: it
        publishes what the claim holds (same episode id: the trainer handles one request per episode). A
        committed batch is never read again, so a published episode is not repeated (a crash after the
        publish and before the commit repeats it, like every message of that batch)."""
        raw = self.store.get(self._key("episode"))
        if raw is None:
            return None, None
        try:
            held = json.loads(raw)
        except ValueError:
            held = None
        if not isinstance(held, dict) or "id" not in held:
            return raw, None  # a plain id (claimed by an older worker)
        episode, at = str(held["id"]), held.get("at")
        if not at or not any(r.offset == at[1] and r.partition == at[0] for r in records):  # one input topic
            return episode, None
        try:  # the request's evidence is the signals' data
            request: RecalibrateRequest | None = RecalibrateRequest(**held["request"])
            signals = [DriftSignal(**d) for d in held["request"]["evidence"]]
        except (KeyError, TypeError) as exc:  # not what on_signals writes: keep the episode, publish nothing
            log.warning("drift_claim_unreadable", episode=episode, error=f"{type(exc).__name__}: {exc}")
            return episode, None
        if self.store.claim_many([self._key("cooldown")], [episode], self.topology.drift.cooldown_s)[0] != episode:
            request = None  # another worker's cool-down: the alerts go out again, the request does not
        return episode, PolicyDecision(episode, signals, request)

    def on_signals(self, signals: Sequence[DriftSignal], *, model_version: str,
                   baseline_alert_rate: float = 0.0, stream_ms: int | None = None) -> PolicyDecision:
        """``stream_ms``: the Kafka time the batch reached (default: the clock). The request's ``since_ms``
        is compared with the reservoir's Kafka timestamps, so a worker reading a backlog must not put
        it at its own clock, after every record it has still to read."""
        if not signals:
            return PolicyDecision(None, [], None)
        spec = self.topology.drift
        new_id = f"drift-{uuid.uuid4().hex[:12]}"
        kind: RecalKind = "retrain" if any(s.test in spec.retrain_on for s in signals) else "threshold"
        tests = sorted({s.test for s in signals})
        candidate = RecalibrateRequest(
            stream=self.topology.name,
            reason=f"drift in {', '.join(tests)}",
            kind=kind,
            episode=new_id,
            since_ms=int(self.clock() * 1000) if stream_ms is None else stream_ms,
            model_version=model_version,
            baseline_alert_rate=baseline_alert_rate,
            evidence=[s.data() for s in signals],
        )
        # the claim holds what this batch publishes and where the batch ends in the partition that drifted,
        # so a replay of the batch (its worker died before publishing) publishes it: see current()
        at = next(([s.partition, s.offset] for s in signals
                   if s.partition is not None and s.offset is not None), None)
        held = json.dumps({"id": new_id, "at": at, "request": candidate.data()})
        if not self.store.set_if_absent(self._key("episode"), held, spec.episode_timeout_s):
            return PolicyDecision(None, [], None)  # another worker (or an earlier batch) opened it already
        request = candidate if self.store.set_if_absent(self._key("cooldown"), new_id, spec.cooldown_s) else None
        return PolicyDecision(new_id, list(signals), request)

    def close_episode(self, *, keep_version: str | None = None) -> None:
        """A new model is active: its reference defines 'normal' again. ``keep_version`` (the new model):
        an episode that version opened is about its own drift and stays open (another worker swapped
        first and has seen it drift, or this worker's close was deferred past it)."""
        key = self._key("episode")
        if keep_version is None:
            self.store.delete(key)
            return
        raw = self.store.get(key)
        if raw is None:
            return
        try:
            opened_by = json.loads(raw)["request"]["model_version"]
        except (ValueError, KeyError, TypeError):
            opened_by = None  # a plain id (an older worker's claim) or unreadable: it is not the new model's
        if opened_by != keep_version:
            self.store.delete(key, if_value=raw)


@dataclass
class GuardVerdict:
    rollback: bool
    reason: str
    alert_rate: float
    records: int
    version: str = ""  # the version judged (the one serving may differ by the time the verdict is acted on)


class SwapGuard:
    """Watches the first ``records`` records after a swap; too many alerts means roll back.

    Examples
    --------
    >>> from stream_vae.topology import parse_topology
    >>> topo = parse_topology({"name": "s", "input_topic": "i", "features": [{"name": "a"}],
    ...                        "calibration": {"fpr": 0.01}, "guard": {"records": 1000}})
    >>> g = SwapGuard(topo)
    >>> g.start("v2", previous="v1", baseline_rate=0.02)
    >>> g.update(1000, 200).rollback  # 20 % flagged; limit max(5 x 1 %, 2 x 2 %)
    True
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._reset()

    def _reset(self) -> None:
        self.version: str | None = None
        self.previous: str | None = None
        self.baseline_rate = 0.0
        self._seen = 0
        self._flagged = 0

    @property
    def active(self) -> bool:
        return self.version is not None

    def start(self, version: str, *, previous: str | None, baseline_rate: float = 0.0) -> None:
        """Watch ``version``; ``baseline_rate`` is what a healthy model flagged on this stream (true anomalies
        make it exceed the FPR budget, and a good new model should flag about as much)."""
        self._reset()
        if self.topology.guard.enabled and previous is not None:
            self.version, self.previous, self.baseline_rate = version, previous, baseline_rate

    def update(self, scored: int, flagged: int) -> GuardVerdict | None:
        """Count one batch; returns a verdict once enough records were seen (then stops watching)."""
        if self.version is None:
            return None
        g = self.topology.guard
        self._seen += scored
        self._flagged += flagged
        if self._seen < g.records:
            return None
        rate = self._flagged / self._seen
        limit = max(g.max_alert_rate_factor * self.topology.calibration.fpr, g.baseline_factor * self.baseline_rate)
        bad = rate > limit and self._flagged >= g.min_alerts
        verdict = GuardVerdict(bad, f"flag rate {rate:.4f} {'>' if bad else '<='} limit {limit:.4f}", rate, self._seen,
                               self.version)
        self._reset()
        return verdict
