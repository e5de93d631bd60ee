"""Drift policy and swap guard: pure state machines with injected time and storage."""

from __future__ import annotations

import dataclasses

from stream_vae.drift import DriftSignal
from stream_vae.hygiene import AlertGate
from stream_vae.lifecycle import DriftPolicy, MemoryEpisodeStore, SwapGuard
from stream_vae.monitor import offset_ranges
from stream_vae.records import Alert, RawRecord
from stream_vae.testing import synth_topology


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _sig(test: str) -> DriftSignal:
    return DriftSignal("synth", "synth", test, "adwin", 1.0, 0.5, 1000)


def _policy(**drift: object) -> tuple[DriftPolicy, Clock]:
    clock = Clock()
    topo = synth_topology(drift=drift)
    return DriftPolicy(topo, MemoryEpisodeStore(clock), prefix="p", clock=clock), clock


def test_score_only_drift_asks_for_threshold_latent_for_retrain() -> None:
    """Score-only drift requests a threshold recalibration; latent drift a full retrain."""
    pol, clock = _policy(cooldown_s=0.001, episode_timeout_s=1)
    assert pol.on_signals([_sig("score")], model_version="v1").recalibrate.kind == "threshold"  # type: ignore[union-attr]
    clock.t += 2
    assert pol.on_signals([_sig("score"), _sig("latent")], model_version="v1").recalibrate.kind == "retrain"  # type: ignore[union-attr]


def test_one_episode_one_request_until_timeout() -> None:
    """While an episode is open further signals publish nothing; after its timeout a new one opens."""
    pol, clock = _policy(cooldown_s=10, episode_timeout_s=100)
    first = pol.on_signals([_sig("latent")], model_version="v1")
    assert first.opened and first.recalibrate and first.drift_alerts
    again = pol.on_signals([_sig("latent")], model_version="v1")
    assert again.opened is None and again.recalibrate is None and not again.drift_alerts
    assert pol.episode == first.opened
    clock.t += 101
    assert pol.episode is None
    later = pol.on_signals([_sig("latent")], model_version="v1")
    assert later.opened and later.recalibrate is not None and later.recalibrate.since_ms == int(clock.t * 1000)


def test_a_request_starts_at_the_kafka_time_the_worker_reached() -> None:
    """A worker reading a two-hour backlog detects the drift in records two hours old: the request's
    since_ms must be their Kafka time, which the reservoir's timestamps are compared with, not the
    worker's clock (then no record it had still to read counted, and the retrain was refused)."""
    pol, clock = _policy()
    backlog_ms = int(clock.t * 1000) - 7_200_000
    d = pol.on_signals([_sig("latent")], model_version="v1", stream_ms=backlog_ms)
    assert d.recalibrate is not None and d.recalibrate.since_ms == backlog_ms


def test_cooldown_limits_recalibration_requests() -> None:
    """A new episode inside the cool-down raises drift alerts but no second recalibration request."""
    pol, clock = _policy(cooldown_s=500, episode_timeout_s=10)
    assert pol.on_signals([_sig("latent")], model_version="v1").recalibrate is not None
    clock.t += 20
    d = pol.on_signals([_sig("latent")], model_version="v1")
    assert d.opened and d.recalibrate is None


def test_close_episode_after_swap() -> None:
    """Closing the episode (new model active) lets the next drift open a fresh one."""
    pol, _ = _policy()
    pol.on_signals([_sig("latent")], model_version="v1")
    pol.close_episode()
    assert pol.episode is None


def test_a_swap_closes_the_old_models_episode_and_keeps_the_new_ones() -> None:
    """Closing for a swap to v2: an episode v1 opened closes; one v2 opened (another worker swapped
    first and saw v2 drift) is about the new model and stays open."""
    pol, _ = _policy()
    pol.on_signals([_sig("latent")], model_version="v2")
    pol.close_episode(keep_version="v2")
    assert pol.episode is not None
    pol.close_episode(keep_version="v3")
    assert pol.episode is None


def test_guard_passes_a_good_model_and_fails_a_bad_one() -> None:
    """The guard accepts a flag rate near the healthy baseline and rejects one far above it."""
    topo = synth_topology(calibration={"fpr": 0.002}, guard={"records": 1000, "min_alerts": 5})
    g = SwapGuard(topo)
    g.start("v2", previous="v1", baseline_rate=0.02)
    assert g.update(600, 12) is None
    ok = g.update(600, 10)
    assert ok is not None and not ok.rollback
    assert not g.active
    g.start("v3", previous="v2", baseline_rate=0.02)
    bad = g.update(1000, 300)
    assert bad is not None and bad.rollback and "limit" in bad.reason


def test_guard_idle_after_rollback_start() -> None:
    """A rollback target (previous=None) is not guarded again."""
    g = SwapGuard(synth_topology())
    g.start("v1", previous=None)
    assert not g.active and g.update(10_000, 10_000) is None


def _alert(key: str, severity: str = "high", score: float = 10.0, offset: int = 1) -> Alert:
    return Alert("synth", "synth", key, "t", 0, offset, None, score, 5.0, 1e-5, severity, [], [], "v1", "c")


def test_alert_gate_cooldown_and_drift_marking() -> None:
    """One alert per key per cool-down (the strongest wins, and wins again when its batch is replayed);
    drift episodes mark and thin alerts."""
    clock = Clock()
    store = MemoryEpisodeStore(clock)
    gate = AlertGate(synth_topology(alerts={"cooldown_s": 60}), store, prefix="p")
    a7, a9, b = _alert("a", score=7), dataclasses.replace(_alert("a", score=9), offset=2), _alert("b", offset=3)
    kept, dropped = gate.filter([a7, a9, b], episode=None)
    assert sorted((a.key, a.score) for a in kept) == [("a", 9), ("b", 10)] and dropped == 1
    assert gate.filter([_alert("a", offset=4)], episode=None) == ([], 1)
    # a worker that crashed before publishing replays the batch, perhaps batched otherwise: the alert that
    # took the slot goes out again (at-least-once), the others of its key stay cooled down
    assert gate.filter([dataclasses.replace(_alert("a", score=99), offset=5), a9], episode=None) == ([a9], 1)
    clock.t += 61
    kept, _ = gate.filter([_alert("a", offset=6), _alert("c", severity="medium", offset=7)], episode="drift-x")
    assert [(a.key, a.drift_episode) for a in kept] == [("a", "drift-x")]


def test_offset_ranges_compacts_consecutive_offsets() -> None:
    """Audit ranges cover exactly the scored offsets per partition."""
    recs = [RawRecord(b"", None, "t", p, o) for p, o in [(0, 5), (0, 6), (0, 7), (0, 9), (1, 3)]]
    assert offset_ranges(recs) == {"0": [[5, 7], [9, 9]], "1": [[3, 3]]}


def test_alert_gate_lets_an_escalating_incident_through_its_cool_down() -> None:
    """alerts.group: incident — the alert that opens an incident takes the key's cool-down slot; an
    escalation of it inside the cool-down still goes out, and a new incident does not."""
    import dataclasses

    gate = AlertGate(synth_topology(alerts={"cooldown_s": 60, "group": "incident"}), MemoryEpisodeStore(Clock()),
                     prefix="p")
    opened = dataclasses.replace(_alert("a"), incident="t:0:1")
    worse = dataclasses.replace(_alert("a", score=20), offset=5, incident="t:0:1", incident_event="escalate")
    assert gate.filter([opened], episode=None) == ([opened], 0)
    assert gate.filter([worse, dataclasses.replace(_alert("a"), offset=9)], episode=None) == ([worse], 1)


def test_alerts_and_incident_ends_go_out_keyed_by_entity_in_the_order_of_their_records() -> None:
    """On the anomaly topic an incident's end follows its alerts, and precedes the next incident's open."""
    import json

    from stream_vae.monitor import alert_messages
    from stream_vae.records import IncidentEnd

    topo = synth_topology(alerts={"group": "incident"})
    first = dataclasses.replace(_alert("a"), offset=1, incident="t:0:1")
    second = dataclasses.replace(_alert("a"), offset=9, incident="t:0:9")
    end = IncidentEnd(topo.name, "a", "t:0:1", 4, "t", 0, 5, None, "v1")
    msgs = alert_messages(topo, [first, second], [end])
    assert [m.topic for m in msgs] == [topo.alerts.anomaly_topic] * 3 and {m.key for m in msgs} == {b"a"}
    events = [json.loads(m.value) for m in msgs]
    assert [(e["type"], e["data"]["incident"]["id"], e["data"]["incident"]["event"]) for e in events] == [
        ("io.stream-vae.anomaly", "t:0:1", "open"),
        ("io.stream-vae.incident.resolved", "t:0:1", "resolve"),
        ("io.stream-vae.anomaly", "t:0:9", "open"),
    ]
    assert events[1]["data"]["incident"]["records"] == 4 and events[1]["data"]["record"]["offset"] == 5


def test_likelihoods_compare_when_the_members_see_the_same_mix_of_widths() -> None:
    """An ensemble's likelihood is its members' average: one member of width 8 or two compare; a mix
    with a narrower member does not (its average is lower whatever the fit)."""
    from types import SimpleNamespace

    from stream_vae.trainer import _width_mix

    def model(*widths: int) -> SimpleNamespace:
        return SimpleNamespace(scorer=SimpleNamespace(members=[SimpleNamespace(n_in=w) for w in widths]))

    assert _width_mix(model(8, 8)) == _width_mix(model(8))  # type: ignore[arg-type]
    assert _width_mix(model(8, 2)) == _width_mix(model(2, 8, 8, 2))  # type: ignore[arg-type]
    assert _width_mix(model(8, 2)) != _width_mix(model(8, 8, 2))  # type: ignore[arg-type]
    assert _width_mix(model(8, 8)) != _width_mix(model(8, 2))  # type: ignore[arg-type]
