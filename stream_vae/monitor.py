"""The worker's closed loop around the pipeline: drift per partition, episodes, alert hygiene,
reservoir, post-swap guard and audit, for one batch at a time. No Kafka here: it returns the
messages to publish and the hot loop publishes them before committing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from redis import RedisError

from stream_vae import metrics
from stream_vae.drift import DriftMonitor, DriftSignal
from stream_vae.hygiene import AlertGate
from stream_vae.lifecycle import DriftPolicy, GuardVerdict, PolicyDecision, RedisEpisodeStore, SwapGuard
from stream_vae.model.registry import LoadedModel
from stream_vae.records import Alert, BatchOutcome, IncidentEnd, RawRecord, Rejection, envelope
from stream_vae.reservoir import Reservoir, sampled_entity
from stream_vae.state import EntityCheckpoints, load_snapshot
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.monitor")

Headers = list[tuple[str, bytes]]
WORKER_ID = f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass
class Emission:
    """What one batch produced: the pipeline outcome and every message to publish before the commit."""

    outcome: BatchOutcome
    messages: list[Message]
    alerts: list[Alert] = field(default_factory=list)  # the anomaly alerts published (after hygiene)
    suppressed: int = 0
    drift_signals: list[DriftSignal] = field(default_factory=list)
    rollback: GuardVerdict | None = None


def alert_messages(topo: Topology, alerts: Sequence[Alert], resolved: Sequence[IncidentEnd]) -> list[Message]:
    """Alerts and incident ends for the anomaly topic, keyed by entity, in the order of their records
    (an idle end has no record: it comes first)."""
    events: list[Alert | IncidentEnd] = sorted(
        [*alerts, *resolved], key=lambda e: (-1, -1) if e.offset is None else (e.partition, e.offset))
    return [Message(topo.alerts.anomaly_topic, e.key.encode(), json.dumps(e.to_event()).encode()) for e in events]


def dlq_message(rej: Rejection, topology: Topology) -> Message:
    """Dead letter in the Kafka Connect convention: original key and bytes, the why in headers."""
    r = rej.record
    return Message(topology.alerts.dlq_topic, r.key, r.value, [
        ("stream-vae.stream", topology.name.encode()),
        ("stream-vae.reason", rej.reason.encode()),
        ("stream-vae.detail", rej.detail.encode()[:1000]),
        ("stream-vae.source.topic", r.topic.encode()),
        ("stream-vae.source.partition", str(r.partition).encode()),
        ("stream-vae.source.offset", str(r.offset).encode()),
    ])


def offset_ranges(records: list[RawRecord]) -> dict[str, list[list[int]]]:
    """Scored offsets per partition as inclusive ranges of consecutive offsets (compact audit)."""
    by_p: dict[int, list[int]] = {}
    for r in records:
        by_p.setdefault(r.partition, []).append(r.offset)
    out: dict[str, list[list[int]]] = {}
    for p, offs in by_p.items():
        offs.sort()
        ranges = [[offs[0], offs[0]]]
        for o in offs[1:]:
            if o == ranges[-1][1] + 1:
                ranges[-1][1] = o
            else:
                ranges.append([o, o])
        out[str(p)] = ranges
    return out


def _event(type_: str, topology: Topology, data: dict[str, Any]) -> bytes:
    return json.dumps(envelope(type_, source=f"stream-vae/{topology.name}", data=data)).encode()


_GUARD_TTL_S = 3600  # how long a swapped-in version waits for a guard's verdict across worker restarts
_AHEAD_S = 60.0  # a Kafka timestamp further ahead of the worker's clock than this is a broken producer clock


def _newest(records: Sequence[RawRecord], *, before_ms: float) -> dict[int, float]:
    """Each partition's newest Kafka timestamp in ``records`` up to ``before_ms``, in seconds (partitions
    without one left out)."""
    newest: dict[int, int] = {}
    for r in records:
        if before_ms >= r.timestamp_ms > newest.get(r.partition, 0):
            newest[r.partition] = r.timestamp_ms
    return {p: t / 1000 for p, t in newest.items()}


class _Undo:
    """The state of a batch's entities as it was before the batch, to put back if the batch fails after
    scoring (Redis down while gating alerts or filling the reservoir): the hot loop then reads the batch
    again, and a second pass over state that already held it would score each record against a window
    holding itself, count it twice in the thresholds, and take an incident the first pass opened for one
    already announced, so its alert was never published. Taken where the pipeline resumes the batch's
    entities, just before it changes them (a snapshot of those entities only: about 1 % of a batch of
    1000 records, 3 % of 100)."""

    def __init__(self, pipeline: Any, resume: Callable[[Sequence[str]], list[dict[str, Any]]]) -> None:
        self.pipeline = pipeline
        self._resume = resume
        self._keys: set[str] = set()
        self._before: dict[str, Any] | None = None
        self._resumed: list[dict[str, Any]] = []

    def resume(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        self._resumed = self._resume(keys)
        self._keys = set(keys)
        self._before = self.pipeline.snapshot(self._keys)
        return self._resumed

    def apply(self) -> None:
        if self._before is None:  # the pipeline changed nothing (no valid record, or resuming failed)
            return
        self.pipeline.forget(self._keys)
        self.pipeline.restore(self._before, merge=True)
        for saved in self._resumed:  # what was resumed for the batch: held now, so it is not asked for again
            self.pipeline.restore(saved, merge=True)


class StreamClock:
    """How far the worker has read each partition, in its producers' clock: the newest Kafka timestamp
    read from it, plus the time since, on the worker's monotonic clock.

    Idle incidents are judged on it, so a worker working through a backlog does not end a sparse
    key's incident whose next record is still unread, whichever partitions a batch touched, and a
    producer whose clock runs behind the worker's does not have its keys' idle time shortened (the
    difference of the two clocks cancels). A partition not read since this worker started is judged
    on the batch's least advanced partition while records come, and on the clock once the consumer
    has caught up (the two rules before per-partition time). Its one assumption: a partition with a
    backlog is read at least once every ``alerts.incident_idle_s``.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._read: dict[int, tuple[float, float]] = {}  # partition -> (newest timestamp, s; when read)

    def advance(self, records: Sequence[RawRecord]) -> float | None:
        """Note what ``records`` read; return their least advanced partition's time (None: no timestamps).
        A timestamp ahead of the worker's clock counts as the clock, and one more than a minute ahead is
        not read at all: one record from a producer whose clock is broken (a year ahead) would make every
        other key of its partition look idle at once, and while a backlog is read, a record stamped now
        would too."""
        wall = self._wall()
        newest = {p: min(t, wall) for p, t in _newest(records, before_ms=(wall + _AHEAD_S) * 1000).items()}
        at = self._monotonic()
        for p, t in newest.items():
            if t > self._read.get(p, (0.0, 0.0))[0]:
                self._read[p] = (t, at)
        return min(newest.values()) if newest else None

    def reached(self) -> dict[int, float]:
        """Each partition read so far: how far the stream has reached in it now."""
        at = self._monotonic()
        return {p: t + (at - read_at) for p, (t, read_at) in self._read.items()}


class StreamMonitor:
    """Runs one batch through the pipeline and the closed loop. Thread-safe for one caller at a time.

    Parameters
    ----------
    model_of
        Returns the pipeline currently in use (the hot-swap slot owns it).
    client
        A redis client: episodes, alert cool-downs, drift snapshots and the reservoir are shared
        by every worker of the stream through it.
    """

    def __init__(self, topology: Topology, pipeline_of: Callable[[], Any], *, client: Any, prefix: str,
                 checkpoint_s: float = 10.0, entity_ttl_s: float = 7 * 86400) -> None:
        self.topology = topology
        self.pipeline_of = pipeline_of
        self.client = client
        self.prefix = prefix
        self.checkpoint_s = checkpoint_s
        self.entities = EntityCheckpoints(client, prefix=prefix, stream=topology.name, ttl_s=entity_ttl_s)
        store = RedisEpisodeStore(client)
        self.policy = DriftPolicy(topology, store, prefix=prefix)
        self.gate = AlertGate(topology, store, prefix=prefix)
        self.reservoir = Reservoir(client, prefix=prefix, stream=topology.name, n_features=len(topology.features),
                                   buffer_size=topology.retrain.buffer_size)
        self.guard = SwapGuard(topology)
        self._drift: dict[int, DriftMonitor] = {}
        self._last_ckpt = time.monotonic()
        self._checkpoint_due = False
        # a swap could not close the old model's drift episode: close it first thing, keeping one opened by
        # this version (the new model's)
        self._close_episode: str | None = None  # on_swap's Redis writes (after_swap: a failed close is tried
        # again before the next batch or tick)
        self._share_guard: tuple[str, dict[str, Any]] | None = None
        # what the drift monitors were fed in this pass (partition -> last offset), and the signals they raised
        # that no episode claim holds yet: if the pass fails, the batch read again feeds them only the records
        # they have not seen (fed twice, a detector that fired and reset would not fire again) and raises those
        self._fed: dict[int, int] = {}
        self._skip: dict[int, int] = {}
        # keys whose incident opened, escalated or ended in what was published: saved as soon as it is committed,
        # not at the next checkpoint (a successor after a crash would open the incident again, or end it twice)
        self._incidents: set[str] = set()
        self._unclaimed: list[DriftSignal] = []
        self.clock = StreamClock()
        self._seen = 0
        # the healthy model's flag rate (true anomalies included), tracked while no drift/swap is in progress:
        # a running mean over the first 20k such records, then an exponential average over ~20k
        self.baseline_rate = topology.calibration.fpr
        self._baseline_n = 0

    # -- model changes -------------------------------------------------------------------------
    def on_swap(self, old: LoadedModel, new: LoadedModel, *, rollback: bool = False) -> None:
        """A new version is active: fresh drift reference, guard it (unless this is a rollback).

        The model is already swapped when this runs, and runs once, on the event loop: it changes only the
        worker's memory. Its Redis writes (share the guard, close the old model's episode) are
        :meth:`after_swap`'s, which the worker runs next in a thread: a swap while Redis hung froze the event
        loop for 20 s here (no heartbeat: the worker was expelled from its group and its batch scored again
        by another)."""
        self._drift.clear()
        self._skip, self._unclaimed = {}, []  # the new model's monitors have seen nothing
        metrics.DRIFT_STATE.labels(self.topology.name).set(0)
        self.guard.start(new.version, previous=None if rollback else old.version, baseline_rate=self.baseline_rate)
        # a worker that starts on this version (this one crashed) guards it too
        self._share_guard = (new.version, {"previous": old.version, "baseline_rate": self.baseline_rate}) \
            if self.guard.active else None
        # an episode the new version opened stays: another worker swapped first and saw it drift (after a
        # rollback too: what the version opened before was closed when it was swapped out)
        self._close_episode = new.version

    def after_swap(self) -> None:
        """The Redis half of :meth:`on_swap`: a close that fails is tried again before the next batch."""
        try:
            self._after_swap()
        except RedisError as exc:
            log.warning("drift_episode_not_closed", stream=self.topology.name, error=type(exc).__name__)

    def _after_swap(self) -> None:
        """A failed share is logged and dropped (the guard runs here all the same); a failed close raises
        (before a batch: the batch is read again)."""
        if self._share_guard is not None:
            version, guard = self._share_guard
            self._share_guard = None
            try:
                self.client.set(self._guard_key(version), json.dumps(guard), ex=_GUARD_TTL_S)
            except RedisError as exc:
                log.warning("swap_guard_not_shared", stream=self.topology.name, error=type(exc).__name__)
        if self._close_episode is not None:
            self.policy.close_episode(keep_version=self._close_episode)
            self._close_episode = None

    def _guard_key(self, version: str) -> str:
        return f"{self.prefix}:{self.topology.name}:guard:{version}"

    def resume_guard(self) -> None:
        """At start-up: guard the serving version if a worker swapped to it and no guard has passed it yet.
        The guard lived only in the worker that swapped: one killed right after a swap left the new version
        unguarded (its successor loads it as the active version, with no swap), and a bad one stayed."""
        pipeline = self.pipeline_of()
        if pipeline is None or self.guard.active:
            return
        version = pipeline.model.version
        try:
            raw = self.client.get(self._guard_key(version))
        except RedisError as exc:
            log.warning("swap_guard_unavailable", stream=self.topology.name, error=type(exc).__name__)
            return
        if raw is None:
            return
        try:
            held = json.loads(raw)
            previous, baseline = str(held["previous"]), float(held["baseline_rate"])
        except (ValueError, KeyError, TypeError):  # not what on_swap writes: no guard, but the worker starts
            log.warning("swap_guard_unreadable", stream=self.topology.name, version=version)
            return
        self.guard.start(version, previous=previous, baseline_rate=baseline)
        log.info("swap_guard_resumed", stream=self.topology.name, version=version, previous=previous)

    def _monitor(self, partition: int, model: LoadedModel) -> DriftMonitor:
        mon = self._drift.get(partition)
        if mon is None or mon.model_version != model.version:
            mon = DriftMonitor(self.topology, model.reference, model_version=model.version, partition=partition)
            load_snapshot(self.client, self._snap_key(partition), mon)  # a rebalanced/restarted worker resumes
            self._drift[partition] = mon
        return mon

    def _snap_key(self, partition: int) -> str:
        return f"{self.prefix}:{self.topology.name}:drift:snapshot:{partition}"

    def _save_drift(self, monitors: dict[int, DriftMonitor]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for p, mon in monitors.items():
            pipe.set(self._snap_key(p), json.dumps(mon.snapshot()))
        pipe.execute()

    def checkpoint(self) -> None:
        """Save the drift detectors and the state of every entity touched since the last checkpoint."""
        self._save_drift(self._drift)
        pipeline = self.pipeline_of()
        if pipeline is not None:
            self.entities.save(pipeline)
        self._last_ckpt = time.monotonic()
        self._checkpoint_due = False

    def _save_if_due(self) -> None:
        """The checkpoint :meth:`_periodic` asked for, once what it covers is committed: the hot loop calls
        ``process`` and ``tick`` one at a time, each after the previous batch's messages were acknowledged
        and its offsets committed."""
        if self._checkpoint_due:
            self.checkpoint()

    def save_incidents(self) -> None:
        """Save the entities whose incident changed in what the hot loop published and committed (it calls
        this after the commit, and each batch and tick begin with it). Kept for the next call if Redis fails."""
        if not self._incidents:
            return
        pipeline = self.pipeline_of()
        if pipeline is not None:
            self.entities.save(pipeline, self._incidents)
            self._incidents = self.entities.unsaved(self._incidents)

    def tick(self) -> list[Message]:
        """Between batches (the hot loop calls it when a poll brings nothing): the periodic work is due
        on the clock even when no record arrives, so a stream that went quiet is checkpointed and its
        idle incidents resolved."""
        self._save_if_due()
        self.save_incidents()
        self.after_swap()  # (a close that failed; the idle ends below need Kafka only)
        if time.monotonic() - self._last_ckpt <= self.checkpoint_s:
            return []
        messages = self._periodic()
        try:  # a quiet stream's episode times out too (and Redis down must not hold back the idle ends)
            metrics.DRIFT_STATE.labels(self.topology.name).set(int(self.policy.episode is not None))
        except RedisError as exc:
            log.warning("drift_state_unavailable", stream=self.topology.name, error=type(exc).__name__)
        return messages

    def _periodic(self, *, now: float | None = None) -> list[Message]:
        """Every ``checkpoint_s``: resolve incidents of entities gone quiet (judged by :class:`StreamClock`;
        ``now`` for partitions it has not read, default the clock), and ask for a checkpoint. It is saved
        at the next batch or tick, after this one's messages and offsets are committed: saved before, a
        worker that died in between left state (an incident marked announced, histograms) that already
        counted records its successor then read again."""
        pipeline = self.pipeline_of()
        ends = pipeline.expire_incidents(now=now, partition_now=self.clock.reached()) if pipeline is not None else []
        self.entities.changed(e.key for e in ends)
        self._incidents.update(e.key for e in ends)
        for e in ends:
            log.info("incident_resolved_idle", stream=self.topology.name, key=e.key, incident=e.incident)
        ends = self._announced(pipeline, [], ends)
        self._checkpoint_due, self._last_ckpt = True, time.monotonic()
        return alert_messages(self.topology, [], ends)

    def _announced(self, pipeline: Any, published: Sequence[Alert], ends: Sequence[IncidentEnd]) -> list[IncidentEnd]:
        """Mark the incidents whose alerts were published; keep the ends of incidents that were announced
        (before, or by an alert published with this batch): a pager never hears the resolve of an
        incident whose every alert the cool-down or a drift episode held back."""
        told = {(a.key, a.incident) for a in published if a.incident is not None}
        if told:
            pipeline.incidents.announce(told)
        out = [e for e in ends if e.announced or (e.key, e.incident) in told]
        for e in out:
            metrics.INCIDENTS_RESOLVED.labels(self.topology.name, e.reason).inc()
        return out

    def adopt(self, partitions: Collection[int]) -> None:
        """A rebalance gave this worker ``partitions``: take over their entities with an open incident now
        (the others are resumed when they next send), so quiet keys' incidents can still end as idle."""
        pipeline = self.pipeline_of()
        if pipeline is None:
            return
        states = self.entities.adopt(partitions)
        for state in states:
            pipeline.restore(state, merge=True)
        if states:
            log.info("open_incidents_adopted", stream=self.topology.name, entities=len(states))

    def release(self, partitions: Collection[int]) -> None:
        """A rebalance took ``partitions`` away: checkpoint their state for the next owner, forget it here."""
        pipeline = self.pipeline_of()
        saved = self.entities.release(pipeline, partitions) if pipeline is not None else 0
        self._save_drift({p: m for p in partitions if (m := self._drift.pop(p, None)) is not None})
        log.info("partitions_released", stream=self.topology.name, partitions=sorted(partitions), entities=saved)

    def drop(self, partitions: Collection[int]) -> None:
        """A batch of ``partitions`` was scored but its offsets could not be committed (the worker lost its
        group membership, or the broker refused the commit): forget their entities and drift monitors
        unsaved, as a crash would, so the batch is read again on the last saved state, here or by the next
        owner, never on state that already holds it."""
        pipeline = self.pipeline_of()
        gone = self.entities.drop(pipeline, partitions) if pipeline is not None else []
        self._incidents.difference_update(gone)
        for p in partitions:
            self._drift.pop(p, None)
        log.warning("partitions_dropped_unsaved", stream=self.topology.name, partitions=sorted(partitions),
                    entities=len(gone))

    # -- the batch -----------------------------------------------------------------------------
    def process(self, records: list[RawRecord]) -> Emission:
        self._save_if_due()
        self.save_incidents()
        self._after_swap()  # (a Redis error here: the hot loop reads the batch again: retried)
        pipeline = self.pipeline_of()
        episode, replayed = self.policy.current(records)
        undo = _Undo(pipeline, functools.partial(self.entities.resume, pipeline=pipeline))
        self._fed = {}
        try:
            return self._process(records, pipeline, episode, replayed, undo.resume)
        except BaseException:
            undo.apply()  # the hot loop reads the batch again (a Redis error): it must find the state as it was
            self._skip = self._fed
            raise

    def _process(self, records: list[RawRecord], pipeline: Any, episode: str | None,
                 replayed: PolicyDecision | None, resume: Callable[[Sequence[str]], list[dict[str, Any]]]) -> Emission:
        topo = self.topology
        out: BatchOutcome = pipeline.process_batch(records, drift_episode=episode, resume=resume)
        batch_time = self.clock.advance(records)
        if out.batch is not None:
            self.entities.touched(out.batch.keys, (r.partition for r in out.scored))
        msgs: list[Message] = []
        signals: list[DriftSignal] = []
        verdict = None
        alerts = out.alerts
        suppressed = 0
        if out.result is not None:
            res = out.result
            model = pipeline.model
            parts = np.fromiter((r.partition for r in out.scored), dtype=np.int64, count=len(out.scored))
            offsets = np.fromiter((r.offset for r in out.scored), dtype=np.int64, count=len(out.scored))
            skip, self._skip = self._skip, {}
            signals = self._unclaimed
            for p in np.unique(parts).tolist():
                idx = np.flatnonzero(parts == p)
                if p in skip:  # this batch failed after feeding them: only what they have not seen
                    idx = idx[offsets[idx] > skip[p]]
                if not len(idx):
                    continue
                found = self._monitor(p, model).update(
                    score=res.score[idx], latent_mu=res.latent_mu[idx], contributions=res.contributions[idx]
                )
                self._fed[p] = int(offsets[idx[-1]])
                signals = [*signals, *(dataclasses.replace(g, offset=int(offsets[idx[-1]])) for g in found)]
            self._unclaimed = signals
            decision = self.policy.on_signals(signals, model_version=model.version,
                                              baseline_alert_rate=round(self.baseline_rate, 6),
                                              stream_ms=None if batch_time is None else int(batch_time * 1000))
            self._unclaimed = []
            if decision.opened is None and replayed is not None:  # its first publication died with a worker
                decision = replayed
                log.warning("drift_republished", stream=topo.name, episode=replayed.opened)
            if decision.opened:
                episode = decision.opened
                log.warning("drift_detected", stream=topo.name, episode=episode,
                            tests=[s.test for s in decision.drift_alerts], model_version=model.version)
            for sig in decision.drift_alerts:
                metrics.DRIFT_ALERTS.labels(topo.name, sig.test).inc()
                msgs.append(Message(topo.alerts.drift_topic, topo.name.encode(),
                                    _event("io.stream-vae.drift", topo, {**sig.data(), "episode": episode})))
            if decision.recalibrate is not None:
                msgs.append(Message(topo.control.recalibrate_topic, topo.name.encode(),
                                    _event("io.stream-vae.recalibrate", topo, decision.recalibrate.data())))
            # the stream's episode, whoever opened it (and 0 once it timed out, not only at a swap)
            metrics.DRIFT_STATE.labels(topo.name).set(int(episode is not None))
            alerts, suppressed = self.gate.filter(out.alerts, episode=episode)
            self._keep_recent(out, drifting=episode is not None)
            n, k = len(out.scored), int(out.is_anomaly.sum())
            if episode is None and not self.guard.active and n:
                self._baseline_n = min(self._baseline_n + n, 20_000)
                w = n / self._baseline_n
                self.baseline_rate = (1 - w) * self.baseline_rate + w * (k / n)
            verdict = self.guard.update(n, k)
            if verdict is not None and not verdict.rollback:  # passed: a worker starting on it need not guard it
                try:
                    self.client.delete(self._guard_key(verdict.version))
                except RedisError as exc:  # (it expires; a successor guards a good version once more)
                    log.warning("swap_guard_not_cleared", stream=topo.name, error=type(exc).__name__)
        resolved = self._announced(pipeline, alerts, out.resolved)
        msgs += alert_messages(topo, alerts, resolved)
        if topo.alerts.group == "incident":
            self._incidents.update(a.key for a in alerts)
            self._incidents.update(e.key for e in out.resolved)
        msgs += [dlq_message(r, topo) for r in out.rejections]
        if topo.alerts.audit_topic and (out.scored or out.rejections):
            flagged = [out.scored[i] for i in np.flatnonzero(out.is_anomaly)]
            audit = {"stream": topo.name, "worker": WORKER_ID, "model_version": out.model_version,
                     "scored": offset_ranges(out.scored),
                     "flagged": offset_ranges(flagged), "rejected": len(out.rejections), "alerts": len(alerts),
                     "suppressed": suppressed}
            msgs.append(Message(topo.alerts.audit_topic, None, json.dumps(audit).encode()))
        if time.monotonic() - self._last_ckpt > self.checkpoint_s:
            msgs += self._periodic(now=batch_time)
        return Emission(out, msgs, alerts, suppressed, signals, verdict)

    def _keep_recent(self, out: BatchOutcome, *, drifting: bool) -> None:
        """Reservoir: every record of the sampled entities, marked normal where the model did not flag it.
        During a drift episode the model flags the new regime itself, so all but the outliers of the
        batch's own score distribution count as normal."""
        if out.batch is None or out.result is None:
            return
        if drifting:
            s = out.result.score
            med = float(np.median(s))
            mad = float(np.median(np.abs(s - med))) or 1e-9
            normal = s <= med + 6 * 1.4826 * mad
        else:
            normal = ~out.is_anomaly
        every, keys = self.topology.retrain.sample_every, out.batch.keys
        if every == 1:
            idx = np.arange(len(keys))
        elif self.topology.consecutive:  # windows and seasonal differences need each entity's records unbroken
            idx = np.flatnonzero([sampled_entity(k, every) for k in keys])
        else:
            idx = np.flatnonzero((np.arange(len(keys)) + self._seen) % every == 0)
        self._seen += len(out.scored)
        ts = [out.scored[i].timestamp_ms or int(time.time() * 1000) for i in idx]
        self.reservoir.add(out.batch.X[idx], [keys[i] for i in idx], ts, normal[idx],
                           [(out.scored[i].partition, out.scored[i].offset) for i in idx])
