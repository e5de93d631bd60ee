"""The worker's closed loop (StreamMonitor) on batches, against a real Redis (no broker needed)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import river.drift  # noqa: F401  (stream_vae.drift imports it at first use, which can take seconds on a busy

# machine: the tests below with an idle time of 1-2 s would count that as the key's quiet time)
from stream_vae.model.train import train_model
from stream_vae.monitor import StreamMonitor
from stream_vae.pipeline import Pipeline
from stream_vae.state import redis_client, split_entities
from stream_vae.testing import iid_stream, iid_topology, keyed_records, loaded
from stream_vae.topology import Topology

from .helpers import FlakyRedis, settings

pytestmark = pytest.mark.integration


def _monitor(topo: Topology, redis_url: str, redis_prefix: str, *,
             checkpoint_s: float) -> tuple[Pipeline, StreamMonitor]:
    """A pipeline on a quickly trained model of ``iid_stream``, and a StreamMonitor on it against Redis."""
    pipeline = Pipeline(topo, loaded(train_model(iid_stream(1500, 0), topo)))
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=checkpoint_s)
    return pipeline, monitor


def _incident_monitor(name: str, idle_s: float, redis_url: str, redis_prefix: str) -> tuple[Topology, StreamMonitor]:
    """A monitor with ``alerts.group: incident``, no cool-down, ``incident_idle_s`` and the periodic work
    after every batch."""
    base = iid_topology(fpr=0.002)
    topo = base.model_copy(update={"name": name, "alerts": base.alerts.model_copy(
        update={"group": "incident", "cooldown_s": 0.0, "incident_idle_s": idle_s})})
    return topo, _monitor(topo, redis_url, redis_prefix, checkpoint_s=0.0)[1]


def test_an_incident_whose_every_alert_was_held_back_ends_without_a_resolve(
        redis_url: str, redis_prefix: str) -> None:
    """alerts.group: incident with a one-hour cool-down. The first incident of host-a opens (published)
    and its resolve is published. The second one, a few records later, is held back by the
    cool-down, and so is its resolve: a pager must not hear of an end it never heard begin. A third,
    held back too, goes quiet: its idle end is dropped as well. (Every end was published before.)"""
    base = iid_topology()
    topo = base.model_copy(update={"name": "mon", "alerts": base.alerts.model_copy(
        update={"group": "incident", "cooldown_s": 3600.0, "incident_idle_s": 1.0})})
    pipeline, monitor = _monitor(topo, redis_url, redis_prefix, checkpoint_s=3600)
    X = iid_stream(60, 1)
    for lo in (10, 30, 57):  # three runs of wild records, the last one still going at the end
        X[lo : lo + 3] += 40.0
    recs = keyed_records(X, ["host-a"] * len(X))
    # the records through a pipeline alone (no alert gate): which incidents open, which end
    alone = Pipeline(topo, pipeline.model)
    outs = [alone.process_batch(recs[lo : lo + 20]) for lo in range(0, len(X), 20)]
    opened = [a.incident for o in outs for a in o.alerts if a.incident_event == "open"]
    ended = [e.incident for o in outs for e in o.resolved]
    assert opened[0] == "t:0:10" and "t:0:30" in ended and opened[-1] == "t:0:57" and "t:0:57" not in ended
    events = []
    for lo in range(0, len(X), 20):
        em = monitor.process(recs[lo : lo + 20])
        events += [json.loads(m.value)["data"]["incident"] for m in em.messages if m.topic == topo.alerts.anomaly_topic]
    assert [(e["event"], e["id"]) for e in events] == [("open", "t:0:10"), ("resolve", "t:0:10")], events
    time.sleep(1.2)  # > incident_idle_s: the key went quiet mid-incident
    monitor.checkpoint_s = 0.0  # tick() does the periodic work now
    assert [m for m in monitor.tick() if m.topic == topo.alerts.anomaly_topic] == []
    assert pipeline.incidents.snapshot()["open"] == {}, "the held-back incident ended all the same"
    assert [e.incident for e in alone.expire_incidents(now=time.time() + 2)] == ["t:0:57"], "alone, it would end"


def test_a_backlog_is_judged_idle_by_its_own_timestamps_not_by_the_clock(
        redis_url: str, redis_prefix: str) -> None:
    """alerts.incident_idle_s 1 s. A worker scores host-a's wild records from a minute-old backlog,
    stalls for longer than the idle time, then reads on: the next records (of host-b, then host-a's
    recovery) are less than a second of Kafka time later, so the incident ends as recovered, not as
    idle (on the worker's clock it had been idle). Read further, records 5 s of Kafka time later end a
    second incident of host-a as idle at once, though hardly any time passed on the clock."""
    _, monitor = _incident_monitor("lag", 1.0, redis_url, redis_prefix)
    t0 = int(time.time() * 1000) - 60_000
    X = iid_stream(80, 2)
    keys = ["host-a"] * 13 + ["host-b"] * 20 + ["host-a"] * 4 + ["host-a"] * 3 + ["host-b"] * 40
    X[10:13] += 40.0
    X[37:40] += 40.0
    ts = [t0 + 10 * i for i in range(37)] + [t0 + 400 + i for i in range(3)] + [t0 + 5000 + i for i in range(40)]
    recs = [dataclasses.replace(r, timestamp_ms=t) for r, t in zip(keyed_records(X, keys), ts, strict=True)]

    def ends(batch: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
        out = []
        for m in monitor.process(batch).messages:
            e = json.loads(m.value)
            if e["type"] == "io.stream-vae.incident.resolved":
                out.append((e["data"]["incident"]["id"], e["data"]["incident"]["reason"]))
        return out

    assert not [e for e in ends(recs[:13]) if e[0] == "t:0:10"]  # host-a's wild records open an incident
    time.sleep(1.3)  # the worker stalls: on its clock host-a is now idle
    mid = ends(recs[13:37])
    assert ("t:0:10", "recovered") in mid and not [e for e in mid if e[1] == "idle"], "host-a's next record ended it"
    assert ("t:0:37", "idle") in ends(recs[37:40]) + ends(recs[40:]), "5 s of Kafka time later: idle"


def test_idle_time_is_measured_per_partition_in_the_producers_clock(redis_url: str, redis_prefix: str) -> None:
    """alerts.incident_idle_s 2 s; the producers' clock runs 30 s behind the worker's. host-a
    (partition 1, a backlog a minute old) opens an incident; then batches bring only partition 0, a
    minute of Kafka time further on: partition 1 has not been read further, so host-a is not idle
    (judged by the batch's partitions, as before, it was). host-b (partition 0) opens an incident with
    the last record: once the consumer has caught up, the 30 s between the clocks do not make it idle
    at once (judged by the worker's clock, they did), but two seconds of quiet do, host-a's too."""
    topo, monitor = _incident_monitor("skew", 2.0, redis_url, redis_prefix)
    t0 = int(time.time() * 1000) - 90_000
    X = iid_stream(60, 3)
    X[7:10] += 40.0
    X[57:60] += 40.0
    recs = keyed_records(X, ["host-a"] * 10 + ["host-c"] * 47 + ["host-b"] * 3)
    recs = [dataclasses.replace(r, partition=int(i < 10), offset=i, timestamp_ms=t0 + (i >= 10) * 60_000 + i)
            for i, r in enumerate(recs)]

    def incidents(messages: list, event: str) -> list[str]:  # type: ignore[type-arg]
        """The ids of the incidents the messages open (``open``) or end as idle (``idle``)."""
        data = [json.loads(m.value)["data"] for m in messages if m.topic == topo.alerts.anomaly_topic]
        return [d["incident"]["id"] for d in data
                if d["incident"]["event"] == event or d["incident"].get("reason") == event]

    assert "t:1:7" in incidents(monitor.process(recs[:10]).messages, "open"), "host-a's wild records open one"
    assert incidents(monitor.process(recs[10:40]).messages + monitor.process(recs[40:57]).messages, "idle") == [], \
        "partition 1 was not read further: host-a is not idle"
    assert "t:0:57" in incidents(monitor.process(recs[57:]).messages, "open")
    assert incidents(monitor.tick(), "idle") == [], "caught up, the producers' clock 30 s behind: nobody is idle yet"
    time.sleep(2.2)
    assert sorted(incidents(monitor.tick(), "idle")) == ["t:0:57", "t:1:7"], "two seconds of quiet: both are"


def test_a_record_stamped_far_in_the_future_does_not_make_its_partition_idle(
        redis_url: str, redis_prefix: str) -> None:
    """alerts.incident_idle_s 2 s. host-a (partition 0, a backlog an hour old) opens an incident; then
    host-b, on the same partition, sends one record stamped a year ahead (a producer with a broken clock).
    host-a has not been quiet for 2 s of the backlog's time: its incident stays open (its partition's
    time had jumped a year; clamped to the clock, it still jumped the hour to now). host-c (partition 1)
    opens an incident with records stamped a year ahead: 2 s of quiet end it as idle, as they end
    host-a's (its last-seen time had been a year ahead, so it never ended)."""
    topo, monitor = _incident_monitor("future", 2.0, redis_url, redis_prefix)
    now, year = int(time.time() * 1000), 365 * 86400 * 1000
    X = iid_stream(21, 4)
    X[7:10] += 40.0
    X[18:21] += 40.0
    recs = keyed_records(X, ["host-a"] * 10 + ["host-b"] + ["host-c"] * 10)
    recs = [dataclasses.replace(r, partition=int(i > 10), offset=i,
                                timestamp_ms=now - 3_600_000 + i if i < 10 else now + year + i)
            for i, r in enumerate(recs)]

    def incidents(messages: list, event: str) -> list[str]:  # type: ignore[type-arg]
        data = [json.loads(m.value)["data"] for m in messages if m.topic == topo.alerts.anomaly_topic]
        return [d["incident"]["id"] for d in data
                if d["incident"]["event"] == event or d["incident"].get("reason") == event]

    assert "t:0:7" in incidents(monitor.process(recs[:10]).messages, "open")
    assert incidents(monitor.process(recs[10:11]).messages + monitor.tick(), "idle") == [], \
        "host-b's future stamp does not make host-a idle"
    assert "t:1:18" in incidents(monitor.process(recs[11:]).messages, "open")
    time.sleep(2.2)
    assert sorted(incidents(monitor.tick(), "idle")) == ["t:0:7", "t:1:18"], "two seconds of quiet end both"


@pytest.mark.parametrize("window", [2, 1])
def test_the_reservoir_keeps_sampled_entities_whole_and_marks_what_the_model_flagged(
        redis_url: str, redis_prefix: str, window: int) -> None:
    """With ``retrain.sample_every: 3`` and a window of 2 records, the worker keeps every record of one
    entity in three (the same ones on any worker), flagged ones included and marked, so a retrain
    windows them as the pipeline did. (It kept every third record, flagged ones left out: each
    window a retrain built joined records that were never neighbours.) With a window of 1 it still
    keeps every third record: one record is all the model reads."""
    from stream_vae.reservoir import sampled_entity

    base = iid_topology()
    topo = base.model_copy(update={"name": f"res{window}", "window": window,
                                   "retrain": base.retrain.model_copy(update={"sample_every": 3})})
    _, monitor = _monitor(topo, redis_url, redis_prefix, checkpoint_s=3600)
    hosts = [f"host-{i}" for i in range(12)]
    X = iid_stream(1200, 1)
    X[::37] += 40.0  # wild records: the model flags them
    keys = [hosts[i % len(hosts)] for i in range(len(X))]
    flagged = []
    for lo in range(0, len(X), 100):
        flagged.append(monitor.process(keyed_records(X[lo : lo + 100], keys[lo : lo + 100])).outcome.is_anomaly)
    flags = np.concatenate(flagged)
    assert flags.sum() >= len(X) // 37 - 1
    got = monitor.reservoir.read()
    if window == 1:
        np.testing.assert_allclose(got.X, X[::3], rtol=1e-6)
        assert got.normal.tolist() == (~flags[::3]).tolist()
        return
    kept = [h for h in hosts if sampled_entity(h, 3)]
    assert 0 < len(kept) < len(hosts) and sorted(set(got.keys)) == sorted(kept)
    for h in kept:
        mine = np.flatnonzero(np.asarray(keys) == h)
        theirs = np.flatnonzero(np.asarray(got.keys) == h)
        np.testing.assert_allclose(got.X[theirs], X[mine], rtol=1e-6)  # every record, in order
        assert got.normal[theirs].tolist() == (~flags[mine]).tolist()
    assert not got.normal.all(), "some kept records were flagged, and are marked"


def test_an_alert_lost_to_a_crash_before_publishing_goes_out_on_the_replay(redis_url: str, redis_prefix: str) -> None:
    """Default alerts (one per key per 60 s cool-down). A worker takes host-a's cool-down slot for its
    alert and dies before publishing (so before committing); the restarted worker scores the same
    records again and must publish that alert (at-least-once): the slot names the record that took
    it. A later alert of host-a stays cooled down."""
    topo = iid_topology().model_copy(update={"name": "crash"})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    X = iid_stream(40, 1)
    X[20] += 40.0
    X[35] += 40.0
    recs = keyed_records(X, ["host-a"] * 40)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    def worker() -> StreamMonitor:
        pipeline = Pipeline(topo, model)
        return StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)

    first = worker().process(recs[:30])
    (alert,) = first.alerts  # the strongest of host-a's flagged records around row 20
    assert recs[20].offset <= alert.offset < recs[30].offset
    replayed = worker().process(recs)  # the restart polls a bigger batch: the same records and the next ones
    assert [a.offset for a in replayed.alerts] == [alert.offset] and replayed.suppressed >= 1


def test_state_is_checkpointed_only_after_the_batch_it_covers(redis_url: str, redis_prefix: str) -> None:
    """The periodic checkpoint ran inside the batch, before its alerts were published and its offsets
    committed: a worker that died in between left a saved state (windows, histograms, an incident
    marked announced) that already counted records its successor then scored again. It is saved when
    the hot loop next calls the monitor, after the commit."""
    _, monitor = _incident_monitor("ckpt", 3600.0, redis_url, redis_prefix)
    recs = keyed_records(iid_stream(40, 4), ["host-a"] * 40)
    key = f"{redis_prefix}:ckpt:entity:host-a"
    monitor.process(recs[:20])
    assert monitor.client.get(key) is None, "nothing saved while the batch is not committed"
    monitor.tick()  # the batch was committed; the loop polls again
    saved = json.loads(monitor.client.get(key))
    held = split_entities(monitor.pipeline_of().snapshot(["host-a"]))["host-a"]
    assert saved == json.loads(json.dumps(held)), "the state after the first batch"
    monitor.process(recs[20:])
    assert json.loads(monitor.client.get(key)) == saved, "the second batch is not in Redis before its commit"


def test_a_drift_episode_lost_to_a_crash_before_publishing_goes_out_on_the_replay(
        redis_url: str, redis_prefix: str) -> None:
    """A worker declares drift, claims the episode in Redis and dies before publishing its drift alerts and
    recalibration request (so before committing). Its successor reads the batch again, with another
    batching: the episode is taken, but the replay must publish them (same episode id), once."""
    base = iid_topology()
    topo = base.model_copy(update={"name": "dcrash", "drift": base.drift.model_copy(update={"block_size": 20})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    X = iid_stream(2000, 7)
    X[1000:] += np.array([6.0, 3.0, 6.0, 4.0])
    recs = keyed_records(X, [f"host-{i % 5}" for i in range(len(X))])
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    wanted = (topo.alerts.drift_topic, topo.control.recalibrate_topic)

    def worker() -> StreamMonitor:
        pipeline = Pipeline(topo, model)
        return StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=0.0)

    first, committed = worker(), 0
    while not (lost := [m for m in first.process(recs[committed : committed + 150]).messages if m.topic in wanted]):
        committed += 150
    assert {m.topic for m in lost} == set(wanted)
    second, events = worker(), []
    for lo in range(committed, len(recs), 400):
        events += [json.loads(m.value) for m in second.process(recs[lo : lo + 400]).messages if m.topic in wanted]
    requests = [e["data"] for e in events if e["type"] == "io.stream-vae.recalibrate"]
    assert len(requests) == 1 and any(e["type"] == "io.stream-vae.drift" for e in events), events
    assert {e["data"]["episode"] for e in events} == {json.loads(lost[-1].value)["data"]["episode"]}
def test_a_redis_error_at_a_swap_neither_unguards_the_new_model_nor_keeps_the_old_episode(
        redis_url: str, redis_prefix: str) -> None:
    """The swap is made (one reference assignment) before on_swap runs, and on_swap runs once: a Redis
    error closing the old model's drift episode left the new version unguarded (no automatic rollback)
    and the old episode holding back its alerts. The guard starts all the same; the episode closes at
    the next batch."""

    topo = iid_topology().model_copy(update={"name": "swapfail"})
    v1 = loaded(train_model(iid_stream(1500, 0), topo), "v1")
    v2 = loaded(train_model(iid_stream(1500, 1), topo), "v2")
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    failing = FlakyRedis(client)
    failing.fail_next("get")
    pipeline = Pipeline(topo, v1)
    monitor = StreamMonitor(topo, lambda: pipeline, client=failing, prefix=redis_prefix, checkpoint_s=3600)
    episode = f"{redis_prefix}:swapfail:drift:episode"
    client.set(episode, "drift-of-v1", px=900_000)
    monitor.on_swap(pipeline.swap(v2), v2)
    monitor.after_swap()
    assert monitor.guard.active and monitor.guard.version == "v2"
    monitor.process(keyed_records(iid_stream(20, 3), ["host-a"] * 20))
    assert client.get(episode) is None and failing.failures == 1

    # again, and before the deferred close another worker, already on v2, sees v2 drift and opens an
    # episode: the close is the old model's, it leaves v2's episode open (it deleted whatever was there)
    failing.fail_next("get")
    v3 = loaded(train_model(iid_stream(1500, 2), topo), "v3")
    client.set(episode, "drift-of-v2", px=900_000)
    monitor.on_swap(pipeline.swap(v3), v3)
    monitor.after_swap()
    v3_claim = json.dumps({"id": "drift-of-v3", "at": None, "request": {"model_version": "v3"}})
    client.set(episode, v3_claim, px=900_000)
    monitor.process(keyed_records(iid_stream(20, 4), ["host-a"] * 20))
    assert client.get(episode) == v3_claim.encode() and failing.failures == 2


def test_a_batch_that_fails_after_scoring_is_read_again_on_the_state_it_found(
        redis_url: str, redis_prefix: str) -> None:
    """alerts.group: incident. host-a's second batch opens an incident; Redis fails once after scoring
    (the reservoir push), so the hot loop reads the batch again. The second pass finds the state the
    first one found: the incident's opening alert is published (it was taken for one already open and
    lost), and the records score as they do without the error (not against windows holding themselves)."""
    import redis as redis_py

    base = iid_topology(fpr=0.002)
    topo = base.model_copy(update={"name": "undo", "alerts": base.alerts.model_copy(
        update={"group": "incident", "cooldown_s": 0.0})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    X = iid_stream(40, 1)
    X[20:] += 40.0
    recs = keyed_records(X, ["host-a"] * 40)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    def run(name: str, fail: bool) -> tuple[list[tuple[int, str | None]], list[float]]:
        pipeline = Pipeline(topo, model)
        monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=f"{redis_prefix}-{name}",
                                checkpoint_s=3600)
        add, calls = monitor.reservoir.add, []

        def flaky(*args: object, **kwargs: object) -> None:
            calls.append(1)
            if fail and len(calls) == 2:
                raise redis_py.ConnectionError("Redis restarting")
            add(*args, **kwargs)  # type: ignore[arg-type]

        monitor.reservoir.add = flaky  # type: ignore[method-assign]
        alerts, scores = [], []
        for lo in (0, 20):
            while True:  # what the hot loop does with a Redis error: read the batch again
                try:
                    emitted = monitor.process(recs[lo:lo + 20])
                    break
                except redis_py.ConnectionError:
                    assert fail
            alerts += [(a.offset, a.incident_event) for a in emitted.alerts]
            assert emitted.outcome.result is not None
            scores += emitted.outcome.result.score.tolist()
        return alerts, scores

    clean, failed = run("clean", False), run("failed", True)
    assert (20, "open") in clean[0] and failed[0] == clean[0]
    assert failed[1] == clean[1]


def test_a_drift_found_by_a_batch_that_failed_is_reported_when_it_is_read_again(
        redis_url: str, redis_prefix: str) -> None:
    """The drift monitors fired on a batch, then Redis failed at the episode claim; the batch was read
    again and fed to them a second time, where the detector (reset when it fired) stayed quiet: the drift
    was never reported. The re-read feeds them only what they have not seen and reports what they found."""
    import redis as redis_py

    base = iid_topology(fpr=0.002)
    topo = base.model_copy(update={"name": "driftfail", "drift": base.drift.model_copy(
        update={"block_size": 10, "tests": ("score",)})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    X = iid_stream(400, 1)
    X[200:] += np.array([3.0, 1.5, 0.0, 6.0])
    recs = keyed_records(X, [f"h{i % 4}" for i in range(400)])
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    def run(name: str, fail: bool) -> list[str]:
        pipeline = Pipeline(topo, model)
        monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=f"{redis_prefix}-{name}",
                                checkpoint_s=3600)
        claim, failed = monitor.policy.on_signals, []

        def flaky(signals: list, **kwargs: object) -> object:  # type: ignore[type-arg]
            if fail and signals and not failed:
                failed.append(1)
                raise redis_py.ConnectionError("Redis restarting")
            return claim(signals, **kwargs)  # type: ignore[arg-type]

        monitor.policy.on_signals = flaky  # type: ignore[method-assign]
        tests = []
        for lo in range(0, 400, 50):
            while True:
                try:
                    emitted = monitor.process(recs[lo:lo + 50])
                    break
                except redis_py.ConnectionError:
                    assert fail
            tests += [json.loads(m.value)["data"]["test"] for m in emitted.messages
                      if m.topic == topo.alerts.drift_topic]
        assert monitor.policy.episode is not None and failed == [1] * fail
        return tests

    assert run("clean", False) == run("failed", True) == ["score"]


def test_idle_incidents_end_on_a_quiet_stream_while_redis_is_down(redis_url: str, redis_prefix: str) -> None:
    """Ending an idle incident needs Kafka only. The drift gauge's read of the episode (Redis) came first
    in tick(), and while Redis was down it raised: a quiet stream's idle ends were never published."""

    topo, _ = _incident_monitor("tickdown", 1.0, redis_url, redis_prefix)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    down = FlakyRedis(client)
    pipeline = Pipeline(topo, loaded(train_model(iid_stream(1500, 0), topo)))
    monitor = StreamMonitor(topo, lambda: pipeline, client=down, prefix=redis_prefix, checkpoint_s=0.5)
    X = iid_stream(20, 3)
    X[15:] += 40.0
    now = int(time.time() * 1000)
    recs = [dataclasses.replace(r, timestamp_ms=now + i) for i, r in enumerate(keyed_records(X, ["host-a"] * 20))]
    assert "t:0:15" in [a.incident for a in monitor.process(recs).alerts if a.incident_event == "open"]
    monitor.checkpoint()
    time.sleep(1.5)
    down.down = True
    ends = [json.loads(m.value)["data"]["incident"] for m in monitor.tick()]
    assert ("t:0:15", "idle") in [(e["id"], e["reason"]) for e in ends] and down.failures > 0


def test_a_redis_error_while_resuming_an_entity_is_retried_not_taken_for_no_saved_state(
        redis_url: str, redis_prefix: str) -> None:
    """Worker A saves host-a with an incident open; worker B is given it and its first read of the saved
    state fails (Redis restarting). The batch fails and is read again, and B resumes host-a: no second
    opening alert under a new id, and B's save keeps the incident A opened (the error had been swallowed,
    host-a started afresh for good, and B's save overwrote A's state)."""
    import redis as redis_py

    from stream_vae.state import EntityCheckpoints

    topo = iid_topology(fpr=0.002)
    topo = topo.model_copy(update={"name": "resume", "alerts": topo.alerts.model_copy(update={"group": "incident"})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    X = iid_stream(60, 1)
    X[20:] += 40.0
    recs = keyed_records(X, ["host-a"] * 60)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    flaky = FlakyRedis(client)
    flaky.fail_next("mget")
    a, saved_a = Pipeline(topo, model), EntityCheckpoints(client, prefix=redis_prefix, stream=topo.name)
    out = a.process_batch(recs[:40], resume=saved_a.resume)
    saved_a.touched(["host-a"] * 40, [0] * 40)
    saved_a.save(a)
    b, saved_b = Pipeline(topo, model), EntityCheckpoints(flaky, prefix=redis_prefix, stream=topo.name)
    with pytest.raises(redis_py.ConnectionError):
        b.process_batch(recs[40:], resume=saved_b.resume)
    again = b.process_batch(recs[40:], resume=saved_b.resume)
    assert out.alerts[-1].offset == 20 and again.alerts == []
    saved_b.touched(["host-a"] * 20, [0] * 20)
    saved_b.save(b)
    state = json.loads(client.get(f"{redis_prefix}:{topo.name}:entity:host-a"))
    assert state["incidents"]["open"]["host-a"][:3] == [out.alerts[-1].incident, False, 40]


def test_the_drift_gauge_follows_the_streams_episode_on_every_worker(redis_url: str, redis_prefix: str) -> None:
    """stream_vae_drift_open was set to 1 only by the worker that opened the episode and back to 0 only
    by a swap: an episode that timed out (a refused candidate) left it at 1 for good, and the stream's
    other workers never showed 1. Each batch now reports the stream's episode, whoever opened it; a new
    stream's series starts at 0, the model_loaded series too (a rule '== 0' had no data before the first model)."""
    from prometheus_client import REGISTRY

    from stream_vae import metrics
    from stream_vae.drift import DriftSignal

    base = iid_topology()
    topo = base.model_copy(update={"name": "gauge", "drift": base.drift.model_copy(update={"episode_timeout_s": 1.0})})
    metrics.init_stream(topo.name)

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"stream": topo.name})

    assert gauge("stream_vae_model_loaded") == 0.0 and gauge("stream_vae_drift_open") == 0.0
    pipeline, a = _monitor(topo, redis_url, redis_prefix, checkpoint_s=3600)
    b = StreamMonitor(topo, lambda: pipeline, client=a.client, prefix=redis_prefix)
    signals = [[DriftSignal(topo.name, topo.name, "score", "page_hinkley", 3.0, 0.5, 800, partition=0)]]

    class Drifts:
        def update(self, **_: object) -> list[DriftSignal]:
            return signals.pop() if signals else []

    a._monitor = b._monitor = lambda *_: Drifts()  # type: ignore[method-assign]
    recs = keyed_records(iid_stream(400, 1), ["host-a"] * 400)
    a.process(recs[:100])
    assert a.policy.episode is not None and gauge("stream_vae_drift_open") == 1.0
    metrics.DRIFT_STATE.labels(topo.name).set(0)  # as worker B's own process would show it
    b.process(recs[100:200])
    assert gauge("stream_vae_drift_open") == 1.0, "worker B sees the stream's episode"
    time.sleep(1.2)  # episode_timeout_s: the episode ends without a swap
    a.process(recs[200:300])
    assert a.policy.episode is None and gauge("stream_vae_drift_open") == 0.0


def test_entities_beyond_the_bound_are_saved_before_they_are_forgotten(redis_url: str, redis_prefix: str) -> None:
    """A worker holds at most max_entities entities (100,000; 2 here). host-a has an incident open when
    b and c arrive and push it out; it comes back still anomalous. Its state was forgotten unsaved (the
    pipeline's own bound), so it came back from the checkpoint before and paged again under a new id;
    now the least recently seen entities are saved, then forgotten, and host-a resumes where it was."""
    import redis as redis_py

    from stream_vae.exceptions import StateStoreError
    from stream_vae.state import EntityCheckpoints

    base = iid_topology(fpr=0.002)
    topo = base.model_copy(update={"name": "bound", "alerts": base.alerts.model_copy(update={"group": "incident"})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    X = iid_stream(40, 3)
    X[10:20] += 40.0
    X[30:40] += 40.0
    recs = keyed_records(X, ["a"] * 20 + ["b"] * 5 + ["c"] * 5 + ["a"] * 10)

    def run(bound: int, fail: bool = False) -> list[tuple[int, str | None, str]]:
        pipeline = Pipeline(topo, model)
        act = pipeline._active
        for table in (pipeline.seasonal, pipeline.windower, pipeline.incidents, act.smoother, act.tracker, act.ranges):
            table.max_entities = bound  # type: ignore[attr-defined]
        saved = EntityCheckpoints(client, prefix=f"{redis_prefix}-{bound}-{fail}", stream=topo.name,
                                  max_entities=bound)
        queue, writes = saved._queue, []

        def flaky(*args: object) -> int:
            writes.append(1)
            if fail and len(writes) == 2:  # the save that makes room: Redis restarting
                raise redis_py.ConnectionError("Redis restarting")
            return queue(*args)  # type: ignore[arg-type]

        saved._queue = flaky  # type: ignore[method-assign]
        alerts = []
        for n, lo in enumerate(range(0, 40, 10)):
            try:
                out = pipeline.process_batch(recs[lo:lo + 10], resume=lambda k: saved.resume(k, pipeline=pipeline))
            except StateStoreError:  # nothing changed: the batch is read again
                assert fail
                out = pipeline.process_batch(recs[lo:lo + 10], resume=lambda k: saved.resume(k, pipeline=pipeline))
            assert out.batch is not None
            saved.touched(out.batch.keys, [0] * 10)
            alerts += [(a.offset, a.incident, a.incident_event) for a in out.alerts]
            if n == 0:
                saved.save(pipeline)  # a checkpoint after the first batch only
        return alerts

    unbounded = run(100_000)
    assert [a for a in unbounded if a[0] >= 10][:1] == [(10, "t:0:10", "open")]
    assert run(2) == unbounded
    assert run(2, fail=True) == unbounded  # a failed save does not forget them unsaved


def test_a_rollback_keeps_the_episode_its_version_opened_since(redis_url: str, redis_prefix: str) -> None:
    """Worker A rolled back to v1 first, and v1 drifted (an episode opened by v1); worker B's rollback
    then deleted that episode. The v1 episode that led away from v1 was closed at the forward swap, so
    one v1 opened since is kept; one v2 opened is closed."""
    topo = iid_topology().model_copy(update={"name": "rollback"})
    v1 = loaded(train_model(iid_stream(1500, 0), topo), "v1")
    v2 = loaded(train_model(iid_stream(1500, 1), topo), "v2")
    pipeline = Pipeline(topo, v2)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)
    episode = f"{redis_prefix}:rollback:drift:episode"
    for opened_by, kept in (("v1", True), ("v2", False)):
        claim = json.dumps({"id": f"drift-of-{opened_by}", "at": None, "request": {"model_version": opened_by}})
        client.set(episode, claim, px=900_000)
        monitor.on_swap(v2, v1, rollback=True)
        monitor.after_swap()
        assert (client.get(episode) is not None) is kept, opened_by


def test_an_incident_survives_a_crash_between_checkpoints(redis_url: str, redis_prefix: str) -> None:
    """(Chaos test.) Worker A opens host-a's incident, publishes and commits, and is SIGKILLed before its
    next checkpoint (every 10 s); worker B, given the partition, read an older state: it opened the same
    run again under a new id and left A's open for good. After a resolve, B ended it a second time. The
    hot loop now saves the keys whose incident changed right after each commit (save_incidents)."""
    base = iid_topology(fpr=0.002)
    topo = base.model_copy(update={"name": "crash", "alerts": base.alerts.model_copy(
        update={"group": "incident", "cooldown_s": 0.0})})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    X = iid_stream(90, 5)
    X[20:60] += 40.0
    recs = keyed_records(X, ["host-a"] * 90)

    def worker() -> StreamMonitor:
        pipeline = Pipeline(topo, model)
        monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)
        monitor.adopt([0])
        return monitor

    def events(monitor: StreamMonitor, lo: int, hi: int) -> list[tuple[str, str]]:
        out = []
        for m in monitor.process(recs[lo:hi]).messages:
            if m.topic == topo.alerts.anomaly_topic:
                inc = json.loads(m.value)["data"]["incident"]
                out.append((inc["event"], inc["id"]))
        monitor.save_incidents()  # what the hot loop does once the batch is committed
        return out

    a = worker()
    assert ("open", "t:0:20") in events(a, 0, 30)  # ... and A dies here, long before its checkpoint
    b = worker()
    assert [e for e in events(b, 30, 50) if e[1] != "t:0:20"] == [], "B carries A's incident on"
    assert ("resolve", "t:0:20") in events(b, 50, 70)  # ... and B dies here
    c = worker()
    assert not [e for e in events(c, 70, 90) if e[1] == "t:0:20"], "C does not end it again"


def test_a_worker_that_starts_on_a_freshly_swapped_version_guards_it(redis_url: str, redis_prefix: str) -> None:
    """(Chaos test.) Worker A swapped to v2 and was SIGKILLed at once; its successor loaded v2 as the active
    version (no swap), so no guard ran, and a v2 that flagged everything served for good. A successor now
    resumes the guard from Redis and judges v2; once a guard passed a version, a later worker does not."""
    base = iid_topology(fpr=0.01)
    topo = base.model_copy(update={"name": "guard", "guard": base.guard.model_copy(update={"records": 200})})
    v1 = loaded(train_model(iid_stream(1500, 0), topo), "v1")
    v2 = loaded(train_model(iid_stream(1500, 1), topo), "v2")
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)

    def worker(model: object) -> StreamMonitor:
        pipeline = Pipeline(topo, model)  # type: ignore[arg-type]
        return StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)

    a = worker(v1)
    a.on_swap(v1, v2)
    a.after_swap()
    assert a.guard.active  # ... and A dies here
    b = worker(v2)
    b.resume_guard()
    assert b.guard.active and (b.guard.version, b.guard.previous) == ("v2", "v1")
    X = iid_stream(400, 2)
    X[::2] += 40.0  # v2 flags half of what it sees (as a bad version would)
    verdicts = [b.process(keyed_records(X[i:i + 100], ["host-a"] * 100)).rollback for i in range(0, 400, 100)]
    assert [v.rollback for v in verdicts if v is not None] == [True]
    c = worker(v2)
    c.resume_guard()
    assert c.guard.active  # judged bad, not yet rolled back: still guarded by a successor
    good = worker(v2)
    good.resume_guard()
    for i in range(0, 400, 100):
        good.process(keyed_records(iid_stream(100, 10 + i), ["host-b"] * 100))
    assert not good.guard.active
    late = worker(v2)
    late.resume_guard()
    assert not late.guard.active  # a guard passed v2: no one guards it again
    client.set(f"{redis_prefix}:guard:guard:v2", "not json")
    odd = worker(v2)
    odd.resume_guard()  # an unreadable record does not stop the worker
    assert not odd.guard.active


def test_a_worker_expelled_from_the_group_does_not_save_over_its_successor(redis_url: str, redis_prefix: str) -> None:
    """Worker A scores host-a and stalls past the session timeout before its checkpoint; the group gives
    the partition to B, which scores on and saves. A learns it was expelled only when it wakes up, and
    aiokafka then revokes the partition: A's release (or checkpoint) must not write its stale state over B's."""
    topo = iid_topology().model_copy(update={"name": "fence"})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    recs = keyed_records(iid_stream(40, 5), ["host-a"] * 40)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    key = f"{redis_prefix}:fence:entity:host-a"

    def worker() -> StreamMonitor:
        pipeline = Pipeline(topo, model)
        return StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)

    a, b = worker(), worker()
    a.adopt({0})
    a.process(recs[:20])  # committed, not checkpointed yet; then A stalls
    b.adopt({0})  # the rebalance without A
    b.process(recs[20:])
    b.checkpoint()
    newest = client.get(key)
    a.checkpoint()  # A wakes up: its periodic checkpoint ...
    a.release({0})  # ... and the revocation aiokafka calls once it learns it was expelled
    assert client.get(key) == newest


def test_the_owner_of_a_partition_keeps_saving_when_redis_lost_its_ownership_number(
        redis_url: str, redis_prefix: str) -> None:
    """Redis restarted from a snapshot older than this worker's INCR (or failed over to a replica that
    missed it): the owner number went back. Only a newer number is another owner's; the rightful owner
    was fenced out of its own partition until the next rebalance, its saves silently dropped."""
    topo = iid_topology().model_copy(update={"name": "fenceback"})
    model = loaded(train_model(iid_stream(1500, 0), topo))
    recs = keyed_records(iid_stream(40, 5), ["host-a"] * 40)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    key, owner = f"{redis_prefix}:fenceback:entity:host-a", f"{redis_prefix}:fenceback:owner:0"
    pipeline = Pipeline(topo, model)
    monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)
    client.set(owner, 6)
    monitor.adopt({0})  # epoch 7
    monitor.process(recs[:20])
    monitor.checkpoint()
    first = client.get(key)
    client.set(owner, 6)  # the INCR is lost
    monitor.process(recs[20:])
    monitor.checkpoint()
    assert client.get(key) != first and int(client.get(owner)) == 7


def test_a_swap_leaves_redis_to_after_swap(redis_url: str, redis_prefix: str) -> None:
    """(Chaos test) A swap while Redis hung froze the worker's event loop for 20 s in on_swap's Redis writes:
    no heartbeat, the worker was expelled from its group, and another scored its batch again. on_swap now
    changes memory only; after_swap (which the worker runs in a thread) shares the guard and closes the old
    episode, and while Redis is down it logs and leaves the close for the next batch."""
    topo = iid_topology().model_copy(update={"name": "swapio"})
    v1 = loaded(train_model(iid_stream(1500, 0), topo), "v1")
    v2 = loaded(train_model(iid_stream(1500, 1), topo), "v2")
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    flaky = FlakyRedis(client)
    pipeline = Pipeline(topo, v1)
    monitor = StreamMonitor(topo, lambda: pipeline, client=flaky, prefix=redis_prefix, checkpoint_s=3600)
    episode = f"{redis_prefix}:swapio:drift:episode"
    client.set(episode, "drift-of-v1", px=900_000)
    flaky.down = True
    monitor.on_swap(pipeline.swap(v2), v2)
    assert flaky.failures == 0 and monitor.guard.active and monitor.guard.version == "v2"
    monitor.after_swap()  # Redis down: logged, not raised
    assert flaky.failures > 0 and client.get(episode) is not None
    flaky.down = False
    monitor.process(keyed_records(iid_stream(20, 3), ["host-a"] * 20))
    assert client.get(episode) is None
    assert client.get(f"{redis_prefix}:swapio:guard:v2") is None  # a failed share is dropped, not retried
    monitor.on_swap(pipeline.swap(v1), v1)
    monitor.after_swap()
    assert json.loads(client.get(f"{redis_prefix}:swapio:guard:v1"))["previous"] == "v2"


def test_a_rebalance_while_redis_is_down_says_the_state_it_could_not_save(redis_url: str, redis_prefix: str) -> None:
    """(Chaos test) A rebalance during a Redis hang released partitions whose entities could not be saved:
    they were forgotten without a word (the next owner resumes their last saved state, as after a crash)."""
    from structlog.testing import capture_logs

    from stream_vae.state import EntityCheckpoints

    topo = iid_topology().model_copy(update={"name": "relunsaved"})
    pipeline = Pipeline(topo, loaded(train_model(iid_stream(1500, 0), topo)))
    flaky = FlakyRedis(redis_client(settings("unused:1", redis_url, redis_prefix).redis))
    saved = EntityCheckpoints(flaky, prefix=redis_prefix, stream=topo.name)
    pipeline.process_batch(keyed_records(iid_stream(20, 1), ["host-a"] * 20), resume=saved.resume)
    saved.touched(["host-a"] * 20, [3] * 20)
    flaky.down = True
    with capture_logs() as logs:
        assert saved.release(pipeline, {3}) == 0
    assert [(e["event"], e["entities"]) for e in logs if e["event"] == "entity_state_released_unsaved"] == [
        ("entity_state_released_unsaved", 1)]
    assert pipeline.snapshot({"host-a"}) == pipeline.snapshot(set())  # forgotten here all the same
