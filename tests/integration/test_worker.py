"""The hot path on a real broker and Redis: alerts out, dead letters out, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections import Counter

import numpy as np
import pytest

from stream_vae.hotpath import HotLoop
from stream_vae.hotswap import ModelSlot
from stream_vae.kafka import ensure_topics, produce_rows
from stream_vae.model.registry import RedisModelRegistry
from stream_vae.state import redis_client
from stream_vae.synth import generate
from stream_vae.testing import quick_model, synth_topology

from .helpers import read_all, settings

pytestmark = pytest.mark.integration

BAD = [b"{oops", b'{"entity": "h", "cpu": 1}', b'{"entity": "h", "cpu": NaN}', b"x" * 70_000]


async def _run_worker_until(loop: HotLoop, total: int, timeout: float) -> None:
    async def stopper() -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while loop.stats.scored + loop.stats.rejected < total:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        loop.request_stop()

    await loop.start()
    await asyncio.gather(loop.run(), stopper())


def test_records_in_alerts_and_dead_letters_out(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """Injected anomalies come out as alerts with the contract fields, bad records land in the DLQ,
    and every valid record is scored exactly once."""
    name = f"it{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=8, alerts={"anomaly_topic": f"{name}.alerts", "dlq_topic": f"{name}.dlq"})
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    registry = RedisModelRegistry(redis_client(s.redis), prefix=redis_prefix)
    art = registry.register(quick_model(topo), activate=True)

    stream = generate(n_steps=600, t0=1200, anomaly_rate=0.01, seed=21)
    payloads: list[dict[str, object] | bytes] = list(stream.rows)
    for i, b in enumerate(BAD):
        payloads.insert(100 * (i + 1), b)
    produced: dict[tuple[int, int], int] = {}

    async def scenario() -> list[tuple[int, int]]:
        await ensure_topics(s.kafka, {topo.input_topic: 4})
        await produce_rows(s.kafka, topo.input_topic, payloads, key_field="entity",
                           on_ack=lambda i, p, o: produced.__setitem__((p, o), i))
        slot = ModelSlot(registry, topo, poll_s=0.5)
        pipeline = await slot.wait_for_model()
        scored: list[tuple[int, int]] = []
        loop = HotLoop(pipeline, settings=s, topology=topo,
                       after_batch=lambda em: scored.extend((r.partition, r.offset) for r in em.outcome.scored))
        await _run_worker_until(loop, len(payloads), timeout=90)
        return scored

    scored = asyncio.run(scenario())
    valid = {po for po, i in produced.items() if not isinstance(payloads[i], bytes)}
    counts = Counter(scored)
    assert set(counts) == valid, "every valid record is scored"
    assert max(counts.values()) == 1, "no record is scored twice"

    dlq = asyncio.run(read_all(s.kafka, topo.alerts.dlq_topic))
    assert sorted(m.value for m in dlq) == sorted(BAD)
    reasons = {dict(m.headers)["stream-vae.reason"].decode() for m in dlq}
    assert reasons == {"invalid_json", "missing_field", "non_finite", "oversize"}
    assert all(dict(m.headers)["stream-vae.source.topic"].decode() == topo.input_topic for m in dlq)

    alerts = [json.loads(m.value) for m in asyncio.run(read_all(s.kafka, topo.alerts.anomaly_topic))]
    assert alerts
    ev = alerts[0]
    assert {"specversion", "id", "source", "type", "time", "data"} <= set(ev)
    d = ev["data"]
    assert {"stream", "key", "record", "score", "threshold", "p_value", "severity", "top_features",
            "model_version", "calibration_id", "incident"} <= set(d)
    assert d["model_version"] == art.version and d["stream"] == name
    rec = d["record"]  # alerts.group: record (default): every alert is its own incident
    assert d["incident"] == {"id": f"{topo.input_topic}:{rec['partition']}:{rec['offset']}", "event": "open"}
    # the alerts point at the injected anomalies
    valid_rows = {p: k for k, p in enumerate(i for i, x in enumerate(payloads) if not isinstance(x, bytes))}
    hit = {valid_rows[produced[(a["data"]["record"]["partition"], a["data"]["record"]["offset"])]] for a in alerts}
    assert stream.anomalous[sorted(hit)].mean() > 0.6, "most alerts are on injected anomalies"
    assert stream.count_detected(hit) >= 0.8 * len(stream.injected)


def _resume_case(name: str, kafka_bootstrap: str, redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    """A topology whose thresholds move within a few hundred records, its model, and a stream."""
    topo = synth_topology(name, epochs=6, alerts={"group": "incident"},
                          calibration={"fpr": 0.01, "half_life": 200, "track_every": 40, "smoothing": 3})
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    client = redis_client(s.redis)
    registry = RedisModelRegistry(client, prefix=redis_prefix)
    art = registry.register(quick_model(topo), activate=True)
    return topo, s, client, registry, art, generate(n_steps=400, t0=1200, anomaly_rate=0.02, seed=5).rows


class _Decisions:
    """What the workers decided, per record, and the incident alerts and ends they built (before the gate)."""

    def __init__(self) -> None:
        self.where: dict[int, tuple[int, int]] = {}  # row index -> (partition, offset)
        self.seen: dict[tuple[int, int], tuple[float, bool]] = {}
        self.incidents: list[tuple[int, int, str | None, str | None]] = []

    def collect(self, em) -> None:  # type: ignore[no-untyped-def]
        out = em.outcome
        for r, thr, flag in zip(out.scored, out.thresholds, out.is_anomaly, strict=True):
            self.seen[(r.partition, r.offset)] = (float(thr), bool(flag))
        self.incidents.extend((a.partition, a.offset, a.incident, a.incident_event) for a in out.alerts)
        self.incidents.extend((e.partition, e.offset, e.incident, f"resolve {e.records}") for e in out.resolved)

    def check_against_one_pipeline(self, topo, registry, art, rows, late_from: int) -> None:  # type: ignore[no-untyped-def]
        """The same as one pipeline that saw every record of each entity in its partition's order."""
        from stream_vae.pipeline import Pipeline
        from stream_vae.records import RawRecord

        assert len(self.seen) == len(rows), "every record scored once"
        order = sorted(range(len(rows)), key=lambda i: self.where[i])
        recs = [RawRecord(json.dumps(rows[i]).encode(), None, topo.input_topic, *self.where[i], 0) for i in order]
        ref = Pipeline(topo, registry.load(topo.name, art.version, topology=topo)).process_batch(recs)
        want = {(r.partition, r.offset): (float(t), bool(f))
                for r, t, f in zip(ref.scored, ref.thresholds, ref.is_anomaly, strict=True)}
        late = [po for i, po in self.where.items() if i >= late_from]
        assert len({want[po][0] for po in late}) > 3, "thresholds moved in the second half"
        np.testing.assert_allclose([self.seen[po][0] for po in late], [want[po][0] for po in late], rtol=1e-9)
        assert [self.seen[po][1] for po in late] == [want[po][1] for po in late]
        want_incidents = [(a.partition, a.offset, a.incident, a.incident_event) for a in ref.alerts]
        want_incidents += [(e.partition, e.offset, e.incident, f"resolve {e.records}") for e in ref.resolved]
        assert any(x[3].startswith("resolve") for x in want_incidents)
        assert sorted(self.incidents) == sorted(want_incidents)


def _worker(topo, s, client, registry, d: _Decisions):  # type: ignore[no-untyped-def]
    from stream_vae.monitor import StreamMonitor

    slot = ModelSlot(registry, topo, poll_s=0.5)

    async def start() -> tuple[HotLoop, StreamMonitor]:
        await slot.wait_for_model()
        monitor = StreamMonitor(topo, lambda: slot.pipeline, client=client, prefix=s.redis.prefix,
                                checkpoint_s=3600)  # only the rebalance and the stop save state here
        loop = HotLoop(monitor, settings=s, topology=topo, after_batch=d.collect, on_revoked=monitor.release)
        await loop.start()
        return loop, monitor

    return start


async def _until(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)


def test_a_restarted_worker_resumes_each_entity_where_the_last_one_stopped(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """Worker 1 scores the first half of the stream and stops (a deploy); worker 2, with fresh memory,
    scores the rest. With each entity's state checkpointed in Redis the two give exactly the
    thresholds, flags and incident alerts of one pipeline that saw every record. The stopping worker
    saves before it leaves the group (it saved after, so a quick successor could read stale state)."""
    name = f"rs{uuid.uuid4().hex[:6]}"
    topo, s, client, registry, art, rows = _resume_case(name, kafka_bootstrap, redis_url, redis_prefix)
    half = len(rows) // 2
    d = _Decisions()

    async def run_one(part: list[dict[str, object]], start: int) -> None:
        await produce_rows(s.kafka, topo.input_topic, part, key_field="entity",  # type: ignore[arg-type]
                           on_ack=lambda i, p, o: d.where.__setitem__(start + i, (p, o)))
        loop, _ = await _worker(topo, s, client, registry, d)()
        target = len(d.seen) + len(part)

        async def stopper() -> None:
            await _until(lambda: len(d.seen) >= target, 90)
            loop.request_stop()

        await asyncio.gather(loop.run(), stopper())
        # no monitor.checkpoint() here: the loop saves its partitions' entities while it is still in the
        # group, before leaving it (which hands the partitions to the next worker at once)

    async def scenario() -> None:
        await ensure_topics(s.kafka, {topo.input_topic: 3})
        await run_one(rows[:half], 0)
        await run_one(rows[half:], half)

    asyncio.run(scenario())
    saved = sorted(k.decode() for k in client.scan_iter(f"{redis_prefix}:{name}:entity:*"))
    assert saved == sorted(f"{redis_prefix}:{name}:entity:{e}" for e in {r["entity"] for r in rows})
    assert 0 < client.ttl(saved[0]) <= 7 * 86400
    d.check_against_one_pipeline(topo, registry, art, rows, half)


def test_a_worker_joining_takes_over_entities_with_their_state(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """Scaling out: worker A owns every partition, worker B joins the group, the rebalance moves
    partitions (A saves and forgets their entities, B resumes them from Redis), and the second half
    of the stream is judged exactly as one pipeline would."""
    name = f"rb{uuid.uuid4().hex[:6]}"
    topo, s, client, registry, art, rows = _resume_case(name, kafka_bootstrap, redis_url, redis_prefix)
    half = len(rows) // 2
    d = _Decisions()

    async def scenario() -> set[int]:
        await ensure_topics(s.kafka, {topo.input_topic: 4})
        await produce_rows(s.kafka, topo.input_topic, rows[:half], key_field="entity",  # type: ignore[arg-type]
                           on_ack=lambda i, p, o: d.where.__setitem__(i, (p, o)))
        a, _ = await _worker(topo, s, client, registry, d)()
        run_a = asyncio.ensure_future(a.run())
        await _until(lambda: len(d.seen) >= half, 90)
        b, _ = await _worker(topo, s, client, registry, d)()
        run_b = asyncio.ensure_future(b.run())
        await _until(lambda: bool(a.assigned) and bool(b.assigned) and len(a.assigned | b.assigned) == 4, 60)
        moved = {tp.partition for tp in b.assigned}
        await produce_rows(s.kafka, topo.input_topic, rows[half:], key_field="entity",  # type: ignore[arg-type]
                           on_ack=lambda i, p, o: d.where.__setitem__(half + i, (p, o)))
        await _until(lambda: len(d.seen) >= len(rows), 90)
        a.request_stop()
        b.request_stop()
        await asyncio.gather(run_a, run_b)
        return moved

    moved = asyncio.run(scenario())
    assert moved, "the rebalance gave B partitions"
    assert any(p in moved for i, (p, _) in d.where.items() if i < half), "B took over entities A had scored"
    d.check_against_one_pipeline(topo, registry, art, rows, half)


def _quiet_host_case(name: str, host: str, *, wild: int, idle_s: float, kafka_bootstrap: str, redis_url: str,
                     redis_prefix: str):  # type: ignore[no-untyped-def]
    """An incident-grouped topology, its model, and a normal stream that ends with ``wild`` wild
    records of ``host`` (an incident it never sends a record to end)."""
    topo = synth_topology(name, epochs=6, alerts={"group": "incident", "incident_idle_s": idle_s,
                                                   "anomaly_topic": f"{name}.alerts"})
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    client = redis_client(s.redis)
    registry = RedisModelRegistry(client, prefix=redis_prefix)
    registry.register(quick_model(topo), activate=True)
    rows: list[dict[str, object]] = list(generate(n_steps=120, t0=1200, anomaly_rate=0.0, seed=8).rows)
    last = [r for r in rows if r["entity"] == host][-1]
    rows += [{k: (v * 40 if isinstance(v, float) else v) for k, v in last.items()} for _ in range(wild)]
    return topo, s, client, registry, rows


async def _produce_and_load(s, topo, rows, d: _Decisions, registry) -> ModelSlot:  # type: ignore[no-untyped-def]
    """Publish ``rows`` (recording where each landed) and load the active model into a slot."""
    await ensure_topics(s.kafka, {topo.input_topic: 2})
    await produce_rows(s.kafka, topo.input_topic, rows, key_field="entity",
                       on_ack=lambda i, p, o: d.where.__setitem__(i, (p, o)))
    slot = ModelSlot(registry, topo, poll_s=0.5)
    await slot.wait_for_model()
    return slot


def test_an_incident_of_a_key_that_goes_quiet_is_resolved_as_idle(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """alerts.group: incident. A host sends three wild records and then nothing: its incident is open
    with no next record to end it. On the worker's clock (the loop ticks when polls come back
    empty) it is resolved after alerts.incident_idle_s, with reason idle and no record, and the
    entity's checkpoint no longer holds it. Incidents that end with a normal record say recovered."""
    name = f"id{uuid.uuid4().hex[:6]}"
    services = {"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url, "redis_prefix": redis_prefix}
    topo, s, client, registry, rows = _quiet_host_case(name, "host-03", wild=3, idle_s=1.0, **services)
    d = _Decisions()

    async def scenario() -> None:
        from stream_vae.monitor import StreamMonitor

        slot = await _produce_and_load(s, topo, rows, d, registry)
        monitor = StreamMonitor(topo, lambda: slot.pipeline, client=client, prefix=s.redis.prefix, checkpoint_s=0.3)
        loop = HotLoop(monitor, settings=s, topology=topo, after_batch=d.collect, on_revoked=monitor.release,
                       on_tick=monitor.tick)
        await loop.start()
        run = asyncio.ensure_future(loop.run())
        await _until(lambda: len(d.seen) >= len(rows), 90)
        await asyncio.sleep(3.0)  # idle: > incident_idle_s plus a checkpoint interval
        loop.request_stop()
        await run

    asyncio.run(scenario())
    events = [json.loads(m.value) for m in asyncio.run(read_all(s.kafka, topo.alerts.anomaly_topic))]
    opened = [e["data"]["incident"]["id"] for e in events
              if e["data"]["key"] == "host-03" and e["data"]["incident"]["event"] == "open"]
    wild = f"{topo.input_topic}:{d.where[len(rows) - 3][0]}:{d.where[len(rows) - 3][1]}"
    assert wild in opened, "the wild records opened an incident"
    ends = [e["data"] for e in events if e["type"] == "io.stream-vae.incident.resolved"]
    idle = [x for x in ends if x["incident"]["reason"] == "idle"]
    assert [(x["key"], x["incident"]["id"], x["incident"]["records"], x["record"]) for x in idle] == [
        ("host-03", wild, 3, None)]
    assert all(x["record"] is not None for x in ends if x["incident"]["reason"] == "recovered")
    from stream_vae import metrics

    assert metrics.INCIDENTS_RESOLVED.labels(name, "idle")._value.get() == 1
    recovered = sum(x["incident"]["reason"] == "recovered" for x in ends)
    assert metrics.INCIDENTS_RESOLVED.labels(name, "recovered")._value.get() == recovered
    assert {x["incident"]["reason"] for x in ends} <= {"idle", "recovered"}
    saved = json.loads(client.get(f"{redis_prefix}:{name}:entity:host-03"))
    assert "tracker" in saved, "the entity was checkpointed"
    assert "host-03" not in saved.get("incidents", {}).get("open", {}), "... without the resolved incident"


def test_a_quiet_keys_incident_is_resolved_by_the_worker_that_takes_over_its_partition(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """A deploy in the middle of an incident whose host has gone quiet: worker A scores the wild
    records and stops; worker B, fresh, never sees a record of that host, yet adopts its open incident
    with the partition (on assignment, from Redis) and resolves it as idle."""
    name = f"ia{uuid.uuid4().hex[:6]}"
    services = {"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url, "redis_prefix": redis_prefix}
    topo, s, client, registry, rows = _quiet_host_case(name, "host-02", wild=2, idle_s=4.0, **services)
    d = _Decisions()

    async def scenario() -> None:
        from stream_vae.monitor import StreamMonitor

        slot = await _produce_and_load(s, topo, rows, d, registry)
        a_mon = StreamMonitor(topo, lambda: slot.pipeline, client=client, prefix=s.redis.prefix, checkpoint_s=3600)
        a = HotLoop(a_mon, settings=s, topology=topo, after_batch=d.collect)  # no tick: A resolves nothing
        await a.start()
        run_a = asyncio.ensure_future(a.run())
        await _until(lambda: len(d.seen) >= len(rows), 90)
        a.request_stop()
        await run_a
        a_mon.checkpoint()  # what the worker app does when its loop ends
        b_slot = ModelSlot(registry, topo, poll_s=0.5)
        await b_slot.wait_for_model()
        b_mon = StreamMonitor(topo, lambda: b_slot.pipeline, client=client, prefix=s.redis.prefix, checkpoint_s=0.3)
        b = HotLoop(b_mon, settings=s, topology=topo, on_tick=b_mon.tick, on_assigned=b_mon.adopt)
        await b.start()
        run_b = asyncio.ensure_future(b.run())
        await asyncio.sleep(7.0)  # > incident_idle_s after the wild records, nothing new to read
        b.request_stop()
        await run_b

    asyncio.run(scenario())
    wild = f"{topo.input_topic}:{d.where[len(rows) - 2][0]}:{d.where[len(rows) - 2][1]}"
    assert (d.where[len(rows) - 2][0], d.where[len(rows) - 2][1], wild, "open") in d.incidents
    events = [json.loads(m.value) for m in asyncio.run(read_all(s.kafka, topo.alerts.anomaly_topic))]
    idle = [e["data"] for e in events
            if e["type"] == "io.stream-vae.incident.resolved" and e["data"]["incident"]["reason"] == "idle"]
    assert [(x["key"], x["incident"]["id"], x["incident"]["records"]) for x in idle] == [("host-02", wild, 2)]
    open_lists = [client.hgetall(k) for k in client.scan_iter(f"{redis_prefix}:{name}:open:*")]
    assert not any(b"host-02" in h for h in open_lists), "the resolved incident left the partition's open list"


def test_a_redis_outage_pauses_the_worker_and_it_scores_on_when_redis_is_back(kafka_bootstrap: str) -> None:
    """The worker's Redis (a private redis-server here) goes away for two seconds between batches and
    comes back. The worker retries (batch read again, nothing committed meanwhile) and scores every
    record once Redis answers; before, the first failed call stopped the consumer for good."""
    from stream_vae.monitor import StreamMonitor
    from stream_vae.services import free_port, redis_server_binary, stop_process, wait_port

    port = free_port()

    def redis_up() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_port("127.0.0.1", port, 10, proc)
        return proc

    server = redis_up()
    try:
        name = f"blip{uuid.uuid4().hex[:6]}"
        topo = synth_topology(name, epochs=3)
        s = settings(kafka_bootstrap, f"redis://127.0.0.1:{port}/0", "blip", max_batch=200)
        client = redis_client(s.redis)
        registry = RedisModelRegistry(client, prefix="blip")
        registry.register(quick_model(topo, steps=600), activate=True)
        rows = generate(n_steps=200, t0=1200, anomaly_rate=0.0, seed=1).rows  # 1200 records

        async def main() -> HotLoop:
            nonlocal server
            await ensure_topics(s.kafka, {topo.input_topic: 1})
            slot = ModelSlot(registry, topo, poll_s=0.2)
            await slot.wait_for_model()
            monitor = StreamMonitor(topo, lambda: slot.pipeline, client=client, prefix="blip", checkpoint_s=1.0)
            loop = HotLoop(monitor, settings=s, topology=topo, before_batch=slot.check, on_tick=monitor.tick)
            await loop.start()
            task = asyncio.ensure_future(loop.run())
            await produce_rows(s.kafka, topo.input_topic, rows[:400], key_field="entity")
            await _until(lambda: loop.stats.scored >= 400, 30)
            stop_process(server)
            await produce_rows(s.kafka, topo.input_topic, rows[400:], key_field="entity")
            await asyncio.sleep(2.0)
            server = redis_up()
            await _until(lambda: loop.stats.scored >= len(rows) or task.done(), 60)
            assert not task.done(), task.exception()
            loop.request_stop()
            await task
            return loop

        loop = asyncio.run(main())
        assert loop.stats.scored >= len(rows), loop.stats
    finally:
        stop_process(server)


def test_a_worker_without_a_partition_is_ready(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """Two workers on a one-partition topic (a rolling update's surge pod): both are group members,
    one holds the partition, and both are joined, so /readyz passes. Readiness waited for a partition,
    so the surge pod never got ready and the rollout stalled."""
    from stream_vae.pipeline import Pipeline
    from stream_vae.testing import loaded

    topo = synth_topology(f"rd{uuid.uuid4().hex[:6]}", epochs=2)
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    pipeline = Pipeline(topo, loaded(quick_model(topo, steps=400)))

    async def main() -> list[tuple[bool, int]]:
        await ensure_topics(s.kafka, {topo.input_topic: 1})
        loops = [HotLoop(pipeline, settings=s, topology=topo) for _ in range(2)]  # type: ignore[arg-type]
        for loop in loops:
            await loop.start()
        tasks = [asyncio.ensure_future(loop.run()) for loop in loops]
        await _until(lambda: all(loop.joined for loop in loops) and sum(len(lp.assigned) for lp in loops) == 1, 30)
        out = [(loop.joined, len(loop.assigned)) for loop in loops]
        for loop in loops:
            loop.request_stop()
        await asyncio.gather(*tasks)
        return out

    assert sorted(asyncio.run(main())) == [(True, 0), (True, 1)]


def test_a_redis_error_after_the_commit_does_not_score_the_batch_again(kafka_bootstrap: str) -> None:
    """The after-batch step (the post-swap guard's rollback, in Redis) runs after the commit. A Redis
    error there seeked the committed batch back, so it was scored, and alerted, a second time. Now that
    step alone is retried."""
    import redis as redis_py

    from stream_vae.pipeline import Pipeline
    from stream_vae.testing import loaded

    name = f"after{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=3)
    s = settings(kafka_bootstrap, "redis://127.0.0.1:1/0", "unused", max_batch=5000)
    rows = generate(n_steps=50, t0=1200, anomaly_rate=0.0, seed=2).rows  # 300 records
    seen: list[int] = []

    def after(emission) -> None:  # type: ignore[no-untyped-def]
        seen.append(len(emission.outcome.scored))
        if len(seen) == 1:
            raise redis_py.ConnectionError("Redis failing over")

    async def main() -> HotLoop:
        await ensure_topics(s.kafka, {topo.input_topic: 1})
        await produce_rows(s.kafka, topo.input_topic, rows, key_field="entity")
        loop = HotLoop(Pipeline(topo, loaded(quick_model(topo, steps=600))), settings=s, topology=topo,
                       after_batch=after)
        await loop.start()
        task = asyncio.ensure_future(loop.run())
        await _until(lambda: loop.stats.scored >= len(rows) and len(seen) >= 2, 60)
        await asyncio.sleep(1.5)  # time enough to read a seeked-back batch again
        loop.request_stop()
        await task
        return loop

    loop = asyncio.run(main())
    assert loop.stats.scored == len(rows) and loop.stats.committed == len(rows), loop.stats
    assert sum(seen) == len(rows) + seen[0] and seen[0] == seen[1]  # the failed step was retried, alone


def test_a_batch_whose_commit_fails_is_read_again_and_the_worker_goes_on(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """(Chaos test) A worker frozen past its session timeout is expelled, and its next commit raises
    CommitFailedError: that ended the hot loop for good (alive, /healthz 500, never consuming again). Now
    the batch's partitions are dropped unsaved, as a crash would leave them, and the batch is read again;
    every record is scored and committed, the failed batch twice (at-least-once)."""
    from aiokafka.errors import CommitFailedError

    from stream_vae.monitor import StreamMonitor

    name = f"cf{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=4)
    s = settings(kafka_bootstrap, redis_url, redis_prefix, max_batch=200)
    client = redis_client(s.redis)
    registry = RedisModelRegistry(client, prefix=redis_prefix)
    registry.register(quick_model(topo), activate=True)
    rows = generate(n_steps=100, t0=1200, anomaly_rate=0.0, seed=3).rows
    processed: list[int] = []
    dropped: list[set[int]] = []

    async def scenario() -> list[tuple[int, int]]:
        await ensure_topics(s.kafka, {topo.input_topic: 1})
        await produce_rows(s.kafka, topo.input_topic, list(rows), key_field="entity")
        slot = ModelSlot(registry, topo, poll_s=0.5)
        await slot.wait_for_model()
        monitor = StreamMonitor(topo, lambda: slot.pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)
        process, drop = monitor.process, monitor.drop
        monitor.process = lambda recs: processed.append(len(recs)) or process(recs)  # type: ignore[method-assign]
        monitor.drop = lambda parts: dropped.append(set(parts)) or drop(parts)  # type: ignore[method-assign]
        scored: list[tuple[int, int]] = []
        loop = HotLoop(monitor, settings=s, topology=topo,
                       after_batch=lambda em: scored.extend((r.partition, r.offset) for r in em.outcome.scored))
        await loop.start()
        assert loop._consumer is not None
        commit, failed = loop._consumer.commit, []

        async def flaky_commit(offsets: object) -> None:
            if not failed:
                failed.append(1)
                raise CommitFailedError("expelled from the group")
            await commit(offsets)

        loop._consumer.commit = flaky_commit  # type: ignore[method-assign]

        async def stopper() -> None:
            await _until(lambda: loop.stats.scored >= len(rows), 60)
            loop.request_stop()

        await asyncio.gather(loop.run(), stopper())
        return scored

    scored = asyncio.run(scenario())
    assert Counter(scored) == Counter((0, i) for i in range(len(rows)))  # each committed once
    assert dropped == [{0}] and sum(processed) == len(rows) + processed[0]  # the first batch, twice


def test_a_new_group_can_start_at_the_next_record(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """A new worker read the topic from its oldest retained record, so a topology pointed at a busy
    production topic alerted on its whole retention; STREAM_VAE_WORKER__START_FROM=latest starts at the
    next record written (the default stays earliest: nothing missed)."""
    name = f"sf{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=4)
    s = settings(kafka_bootstrap, redis_url, redis_prefix, start_from="latest")
    registry = RedisModelRegistry(redis_client(s.redis), prefix=redis_prefix)
    registry.register(quick_model(topo), activate=True)
    rows = generate(n_steps=50, t0=1200, anomaly_rate=0.0, seed=4).rows

    async def scenario() -> list[int]:
        await ensure_topics(s.kafka, {topo.input_topic: 1})
        # before the worker; one record a batch: Tansu, the embedded broker, states a partition's end as the
        # number of batches, not records (a real Kafka does not), and 'latest' is that end
        await produce_rows(s.kafka, topo.input_topic, list(rows[:20]), key_field="entity", rate=10)
        slot = ModelSlot(registry, topo, poll_s=0.5)
        scored: list[int] = []
        loop = HotLoop(await slot.wait_for_model(), settings=s, topology=topo,
                       after_batch=lambda em: scored.extend(r.offset for r in em.outcome.scored))
        await loop.start()
        run = asyncio.ensure_future(loop.run())
        await _until(lambda: bool(loop.assigned), 30)
        await asyncio.sleep(1.0)  # the group's position is set when it first fetches
        await produce_rows(s.kafka, topo.input_topic, list(rows[20:80]), key_field="entity")
        await _until(lambda: len(scored) >= 60, 30)
        loop.request_stop()
        await run
        return scored

    assert sorted(asyncio.run(scenario())) == list(range(20, 80))
