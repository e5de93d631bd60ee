"""The trainer and the reservoir against a real Redis (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from stream_vae.model.registry import RedisModelRegistry
from stream_vae.reservoir import Reservoir
from stream_vae.state import redis_client
from stream_vae.synth import generate
from stream_vae.testing import quick_model, synth_topology
from stream_vae.trainer import Trainer

from .helpers import FlakyRedis, settings

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    topo = synth_topology("tr", epochs=6, retrain={"min_records": 2000, "buffer_size": 5000})
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    registry = RedisModelRegistry(client, prefix=redis_prefix)
    registry.register(quick_model(topo, steps=1000), activate=True)
    res = Reservoir(client, prefix=redis_prefix, stream="tr", n_features=8, buffer_size=5000)
    return topo, registry, res, Trainer({"tr": topo}, registry=registry, poll_s=0.1)


def _event(res: Trainer, data: dict[str, object]) -> dict[str, object]:
    msgs = res.handle(data)
    assert len(msgs) == 1
    return dict(json.loads(msgs[0][1])["data"])


def test_reservoir_round_trip_since_and_cap(setup) -> None:  # type: ignore[no-untyped-def]
    """Records come back in arrival order with their keys, filtered by time and capped in size."""
    _, _, res, _ = setup
    X = np.arange(24.0).reshape(3, 8)
    res.add(X, ["a", "b", "a"], [1000, 2000, 2500], [True, True, False])
    got = res.read()
    np.testing.assert_allclose(got.X, X)
    assert got.keys == ["a", "b", "a"] and got.ts_ms.tolist() == [1000, 2000, 2500]
    assert got.normal.tolist() == [True, True, False]
    assert res.count_since(1500) == 1, "only normal records count towards a retrain"
    assert res.read(since_ms=1500).keys == ["b", "a"]
    res.add(np.zeros((6000, 8)), ["z"] * 6000, [3000] * 6000, [True] * 6000)
    assert len(res) == 5000


def test_a_stretch_pushed_again_after_a_crash_is_read_once(setup) -> None:  # type: ignore[no-untyped-def]
    """A worker that restarts from its last committed offset pushes the uncommitted records again
    (at-least-once), perhaps judged differently; the reservoir reads each record once, where it came
    first, so a retrain's windows do not repeat a stretch of the entity's history."""
    _, _, res, _ = setup
    X = np.arange(48.0).reshape(6, 8)
    keys, ts = ["a", "b", "a", "b", "a", "b"], [1000, 1000, 2000, 2000, 3000, 3000]
    res.add(X[:4], keys[:4], ts[:4], [True, True, True, False])
    res.add(X[2:], keys[2:], ts[2:], [False, True, True, True])  # records 2 and 3 again, then new ones
    assert len(res) == 8, "both copies are stored"
    got = res.read()
    np.testing.assert_allclose(got.X, X)
    assert got.keys == keys and got.ts_ms.tolist() == ts
    assert got.normal.tolist() == [True, True, True, False, True, True], "the first copy's judgement"
    assert res.count_since(2000) == 3
    # the same key and time with other features is another record, not a copy
    res.add(X[:1] + 0.5, ["a"], [1000], [True])
    assert len(res.read()) == 7


def test_identical_readings_are_distinct_records_and_a_replay_is_still_read_once(setup) -> None:  # type: ignore[no-untyped-def]
    """A flat metric produced as a backlog: an entity's identical readings in one millisecond were merged
    into one record (2000 pushed, 40 read back), so retrains waited and were refused. Records now carry
    where they were read from (input partition and offset): equal content is not a copy, a replay is."""
    _, _, res, _ = setup
    X = np.ones((2000, 8))
    keys = [f"host-{i % 40}" for i in range(2000)]
    origins = [(i % 4, i // 4) for i in range(2000)]
    res.add(X, keys, [5000] * 2000, [True] * 2000, origins)
    res.add(X[:500], keys[:500], [5000] * 500, [True] * 500, origins[:500])  # a worker's replay after a crash
    assert len(res) == 2500 and len(res.read()) == 2000 and res.count_since(5000) == 2000


def test_threshold_recalibration_keeps_weights_moves_threshold(setup) -> None:  # type: ignore[no-untyped-def]
    """A threshold request registers a new version with the same weights and a threshold from recent records."""
    _, registry, res, trainer = setup
    before = registry.load("tr", "v1")
    s = generate(n_steps=500, t0=1000, seed=3, drift_at=1000)  # shifted regime: scores rise
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    ev = _event(trainer, {"stream": "tr", "kind": "threshold", "since_ms": now, "episode": "e-thr"})
    assert ev["action"] == "activate" and ev["previous"] == "v1"
    after = registry.load("tr", str(ev["version"]))
    assert after.calibrator.threshold > before.calibrator.threshold
    a, b = registry.get("tr", "v1"), registry.get("tr", str(ev["version"]))
    assert a.manifest["sha256"] == b.manifest["sha256"], "same weights"


def test_refuses_without_enough_post_drift_records(setup) -> None:  # type: ignore[no-untyped-def]
    """A retrain with too few records after the drift is refused with the reason, nothing activated; when the
    reservoir samples entities (a windowed model, sample_every > 1) the reason says so."""
    topo, registry, res, trainer = setup
    s = generate(n_steps=50, t0=1000, seed=4)
    res.add(s.X, s.entities, [int(time.time() * 1000)] * len(s.X), [True] * len(s.X))
    assert not trainer.has_records({"stream": "tr", "kind": "retrain", "since_ms": 0})
    ev = _event(trainer, {"stream": "tr", "kind": "retrain", "since_ms": 0, "episode": "e-few"})
    assert ev["action"] == "refuse" and "fewer than 2000" in str(ev["reason"])
    assert registry.active_version("tr") == "v1"
    sampled = Trainer({"tr": topo.model_copy(update={"window": 3, "retrain": topo.retrain.model_copy(
        update={"sample_every": 4})})}, registry=registry, poll_s=0.1)
    ev = _event(sampled, {"stream": "tr", "kind": "threshold", "since_ms": 0, "episode": "e-few-sampled"})
    assert ev["action"] == "refuse" and "sample_every 4 keeps one entity in 4" in str(ev["reason"]), ev


def test_retrain_on_post_drift_records_is_activated_and_duplicates_ignored(setup) -> None:  # type: ignore[no-untyped-def]
    """Enough post-drift records give a validated candidate; the same episode is not handled twice."""
    _, registry, res, trainer = setup
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    data = {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-ok", "baseline_alert_rate": 0.01}
    assert trainer.has_records(data)
    ev = _event(trainer, data)
    assert ev["action"] == "activate", ev
    assert registry.active_version("tr") == ev["version"]
    assert trainer.handle(data) == []  # the same episode again: ignored


def test_unknown_stream_is_ignored(setup) -> None:  # type: ignore[no-untyped-def]
    """Requests for streams this trainer does not own produce nothing."""
    *_, trainer = setup
    assert trainer.handle({"stream": "other", "kind": "retrain"}) == []


def test_a_candidate_with_another_seasonal_period_is_not_judged_by_a_likelihood_it_does_not_share(
        setup) -> None:  # type: ignore[no-untyped-def]
    """The topology now asks for seasonal differences: the candidate sees each feature and its change
    since a period ago, so its likelihood is of twice the inputs and always looks worse than the
    active model's. The flag-rate gate alone decides (before the fix it was refused on NLL 39.8 > 22.6)."""
    _, registry, res, _ = setup
    seasonal = synth_topology("tr", epochs=6, retrain={"min_records": 2000, "buffer_size": 5000},
                              model={"latent_dim": 3, "hidden": [32, 16], "epochs": 6, "kl_warmup_epochs": 3,
                                     "learning_rate": 0.003, "seasonal_period": 24})
    trainer = Trainer({"tr": seasonal}, registry=registry, poll_s=0.1)
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    ev = _event(trainer, {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-p",
                          "baseline_alert_rate": 0.01})
    assert ev["action"] == "activate", ev
    assert registry.load("tr", str(ev["version"])).seasonal_period == 24



def test_a_threshold_recalibration_keeps_the_seasonal_period(setup) -> None:  # type: ignore[no-untyped-def]
    """A threshold-only version of a seasonal model must still difference its inputs: it was registered
    with seasonal_period 0, and every worker that swapped to it failed on its first batch (rows of
    8 features for a scaler of 16)."""
    from stream_vae.hotswap import warm_up
    from stream_vae.pipeline import Pipeline
    from stream_vae.testing import raw_records

    _, registry, res, _ = setup
    seasonal = synth_topology("tr", epochs=3, retrain={"min_records": 2000, "buffer_size": 5000},
                              model={"latent_dim": 3, "hidden": [32, 16], "epochs": 3, "kl_warmup_epochs": 1,
                                     "learning_rate": 0.003, "seasonal_period": 24})
    registry.register(quick_model(seasonal, steps=1000), activate=True)
    s = generate(n_steps=500, t0=1000, seed=3, drift_at=1000)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    ev = _event(Trainer({"tr": seasonal}, registry=registry), {"stream": "tr", "kind": "threshold",
                                                               "since_ms": now, "episode": "e-st"})
    assert ev["action"] == "activate", ev
    new = registry.load("tr", str(ev["version"]), topology=seasonal)
    assert new.seasonal_period == 24
    warm_up(new)
    rows = [{"entity": e, "ts": 0, **dict(zip(seasonal.feature_names, map(float, x), strict=True))}
            for x, e in zip(s.X[:50], s.entities[:50], strict=True)]
    assert len(Pipeline(seasonal, new).process_batch(raw_records(rows)).scored) == 50


def test_bool_features_and_values_on_a_bound_replay(setup) -> None:  # type: ignore[no-untyped-def]
    """The reservoir keeps float32 rows; the trainer's replay validated them again as JSON, so a bool
    feature (1.0 is not a boolean) rejected every record and a value on a bound (0.3 stored as
    0.30000001, max 0.3) rejected some, misaligning the rest: recalibration always failed."""
    from stream_vae.model.train import train_model
    from stream_vae.topology import parse_topology

    _, registry, res, _ = setup
    topo = parse_topology({
        "name": "tr", "input_topic": "in", "key_field": "entity",
        "features": [{"name": "f0"}, {"name": "ratio", "min": 0, "max": 0.3}, {"name": "up", "type": "bool"}],
        "model": {"epochs": 2, "kl_warmup_epochs": 1, "hidden": [16, 8], "latent_dim": 2, "ensemble": 1},
        "calibration": {"fpr": 0.02}, "retrain": {"min_records": 600, "buffer_size": 5000}})
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=1500), np.where(rng.random(1500) < 0.2, 0.3, rng.uniform(0, 0.3, 1500)),
                         (rng.random(1500) > 0.5).astype(float)])
    registry.register(train_model(X, topo, entities=["a"] * 1500), activate=True)
    res = Reservoir(registry.client, prefix=registry.prefix, stream="tr", n_features=3, buffer_size=5000)
    now = int(time.time() * 1000)
    res.add(X[:1000], ["a"] * 1000, [now] * 1000, [True] * 1000)
    trainer = Trainer({"tr": topo}, registry=registry)
    ev = _event(trainer, {"stream": "tr", "kind": "threshold", "since_ms": now, "episode": "e-thr"})
    assert ev["action"] == "activate", ev
    ev = _event(trainer, {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-re",
                          "baseline_alert_rate": 0.02})
    # same regime as the active model: the gates may well keep it; what matters is that they judged
    assert ev["action"] == "activate" or str(ev["reason"]).startswith("candidate "), ev


def test_a_window_changed_since_the_active_model_is_not_judged_by_likelihood(setup) -> None:  # type: ignore[no-untyped-def]
    """The density of a window of 4 records is not comparable with that of 1: the topology moved to
    window 4 and the candidate was refused on NLL (81.4 > 22.6) though it fits each record better."""
    topo, registry, res, _ = setup
    windowed = topo.model_copy(update={"window": 4})
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    ev = _event(Trainer({"tr": windowed}, registry=registry), {"stream": "tr", "kind": "retrain", "since_ms": now,
                                                               "episode": "e-w", "baseline_alert_rate": 0.01})
    assert ev["action"] == "activate", ev


def test_a_request_aborted_by_a_shutdown_is_handled_by_the_next_trainer(setup) -> None:  # type: ignore[no-untyped-def]
    """The trainer stops mid-training (SIGTERM): the request is not committed, and the next trainer
    that gets it must train, not take it for a duplicate of the aborted attempt."""
    topo, registry, res, _ = setup
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    data = {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-abort", "baseline_alert_rate": 0.01}
    first = Trainer({"tr": topo}, registry=registry)
    first.stopping.set()
    assert first.handle(data) == []
    ev = _event(Trainer({"tr": topo}, registry=registry), data)
    assert ev["action"] == "activate", ev


def test_a_rollback_seen_by_polling_is_not_guarded_and_an_impossible_one_keeps_the_worker(setup) -> None:  # type: ignore[no-untyped-def]
    """Worker B serves v2 when worker A rolls the stream back to v1. If B sees the registry's pointer
    before A's rollback event, it swapped to v1 as to a new model: its guard then watched v1 with v2
    (the bad version) as the one to return to. It is a rollback. And a guard that fails with no
    version left to roll back to logs it and keeps the worker serving (it raised out of the hot loop)."""

    from stream_vae.app import Rollbacks
    from stream_vae.hotswap import ModelSlot
    from stream_vae.lifecycle import GuardVerdict
    from stream_vae.monitor import Emission

    topo, registry, _, _ = setup
    registry.register(quick_model(topo, steps=1000), activate=True)  # v2
    swaps: list[tuple[str, str, bool]] = []

    async def run() -> None:
        slot = ModelSlot(registry, topo, poll_s=0.0)
        await slot.wait_for_model()
        slot.on_swap = lambda old, new, rollback: swaps.append((old.version, new.version, rollback))
        assert registry.rollback("tr") == ("v2", "v1")  # worker A's rollback; its event is still on the way
        while not swaps:
            await slot.check(force=True)
            await asyncio.sleep(0.05)
        assert slot.pipeline is not None
        # v1 fails its guard too, and the registry has no earlier version
        verdict = GuardVerdict(rollback=True, reason="flags 10x the budget", alert_rate=0.05, records=3000)
        await Rollbacks(registry, slot, topo).after_batch(Emission(slot.pipeline.process_batch([]), [],
                                                                   rollback=verdict))
        assert slot.pipeline.model.version == "v1"

    asyncio.run(run())
    assert swaps == [("v2", "v1", True)]


def test_an_older_version_activated_by_hand_is_guarded_even_when_the_poll_sees_it_first(setup) -> None:  # type: ignore[no-untyped-def]
    """An operator activates v1 while workers serve v2. A worker whose registry poll saw the pointer before
    the control event took it for a rollback (v1 < v2) and did not guard it, so a bad v1 was never rolled
    back. The registry now records how the pointer moved."""
    from stream_vae.hotswap import ModelSlot

    topo, registry, _, _ = setup
    registry.register(quick_model(topo, steps=1000), activate=True)  # v2
    swaps: list[tuple[str, str, bool]] = []

    async def until_swapped(slot: ModelSlot, n: int) -> None:
        while len(swaps) < n:
            await slot.check(force=True)
            await asyncio.sleep(0.05)

    async def run() -> None:
        slot = ModelSlot(registry, topo, poll_s=0.0)
        await slot.wait_for_model()
        slot.on_swap = lambda old, new, rollback: swaps.append((old.version, new.version, rollback))
        registry.activate("tr", "v1")  # `stream-vae models activate v1`; its event is still on the way
        await until_swapped(slot, 1)
        assert registry.rollback("tr") == ("v1", "v2")  # and a rollback by the pointer is still one
        await until_swapped(slot, 2)

    asyncio.run(run())
    assert swaps == [("v2", "v1", False), ("v1", "v2", True)]


def test_a_threshold_recalibration_keeps_the_training_range_and_the_models_window(setup) -> None:  # type: ignore[no-untyped-def]
    """The new version keeps the active model's weights, so it must keep its window (the topology's had
    been edited from 3 to 1: the manifest named 1, and every worker failed on its first batch) and its
    training range (dropped, it made the range rule flag normal records)."""
    from stream_vae.pipeline import Pipeline
    from stream_vae.testing import raw_records

    _, registry, res, _ = setup
    opts = {"retrain": {"min_records": 2000, "buffer_size": 5000}, "calibration": {"range_tolerance": 0.05}}
    registry.register(quick_model(synth_topology("tr", epochs=3, window=3, **opts), steps=1000), activate=True)
    edited = synth_topology("tr", epochs=3, window=1, **opts)
    s = generate(n_steps=500, t0=1000, seed=3)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now + i for i in range(len(s.X))], [True] * len(s.X))
    before = registry.load("tr", str(registry.active_version("tr")), topology=edited)
    ev = _event(Trainer({"tr": edited}, registry=registry), {"stream": "tr", "kind": "threshold",
                                                             "since_ms": now, "episode": "e-win"})
    assert ev["action"] == "activate", ev
    new = registry.load("tr", str(ev["version"]), topology=edited)
    assert new.window == before.window == 3
    assert new.calibrator.range_lo is not None
    np.testing.assert_array_equal(new.calibrator.range_lo, before.calibrator.range_lo)
    rows = [{"entity": e, "ts": 0, **dict(zip(edited.feature_names, map(float, x), strict=True))}
            for x, e in zip(s.X[:50], s.entities[:50], strict=True)]
    assert len(Pipeline(edited, new).process_batch(raw_records(rows)).scored) == 50


def test_a_request_whose_trainer_died_is_handled_by_the_next_one(setup) -> None:  # type: ignore[no-untyped-def]
    """(Chaos test.) A trainer SIGKILLed mid-training left its claim for as long as the work might take (36
    minutes with the defaults), and the redelivery to the next trainer was dropped as a duplicate: no retrain.
    The claim is now a lease its attempt renews while it works: the next trainer waits for a dead one's lease
    to lapse, then handles the request; once handled, it is a duplicate for a day."""
    topo, registry, _, _ = setup
    claim = f"{registry.prefix}:tr:trainer:episode:e-dead"
    data = {"stream": "tr", "kind": "threshold", "since_ms": 0, "episode": "e-dead"}
    seen: list[int] = []

    class Observed(Trainer):
        def _threshold(self, topo, data):  # type: ignore[no-untyped-def]
            seen.append(int(registry.client.pttl(claim)))  # what a trainer killed here would leave behind
            return super()._threshold(topo, data)

    registry.client.set(claim, "a-dead-attempt", px=1500)  # the lease of a trainer killed mid-work
    trainer = Observed({"tr": topo}, registry=registry, poll_s=0.1, lease_s=1.5)
    t0 = time.monotonic()
    msgs = trainer.handle(data)
    assert time.monotonic() - t0 > 1.0 and len(msgs) == 1  # waited for the lease, then handled (refused: no records)
    assert seen and 0 < seen[0] <= 1500
    assert registry.client.ttl(claim) > 86_400 - 60
    assert trainer.handle(data) == []  # handled: a duplicate


def test_a_long_training_renews_its_lease(setup) -> None:  # type: ignore[no-untyped-def]
    """Training longer than the lease keeps the request: each epoch renews it, so another trainer that gets
    the request meanwhile waits instead of training it a second time."""
    topo, registry, res, _ = setup
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    claim = f"{registry.prefix}:tr:trainer:episode:e-long"
    left: list[int] = []

    class Slow(Trainer):
        def _check_stop(self, *args: float) -> None:
            time.sleep(0.3)  # an epoch; 6 of them outlast the 1 s lease
            super()._check_stop(*args)
            left.append(int(registry.client.pttl(claim)))

    ev = _event(Slow({"tr": topo}, registry=registry, lease_s=1.0),
                {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-long", "baseline_alert_rate": 0.01})
    assert ev["action"] in ("activate", "refuse") and len(left) >= 4 and min(left) > 0


def test_a_change_of_the_members_windows_is_not_judged_by_likelihood(setup) -> None:  # type: ignore[no-untyped-def]
    """An ensemble's likelihood sums each member's window: with a member of 1 record the active model's
    NLL is far lower than that of a candidate whose members all see 4, and the candidate was refused
    whatever it was worth (only the window and the seasonal period were compared)."""
    topo, registry, res, _ = setup
    model = topo.model.model_copy(update={"ensemble": 2, "epochs": 3})
    mixed = topo.model_copy(update={"window": 4, "model": model.model_copy(update={"member_windows": (4, 1)})})
    registry.register(quick_model(mixed, steps=1000), activate=True)
    same = topo.model_copy(update={"window": 4, "model": model})  # the topology's members now all see 4
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now + i for i in range(len(s.X))], [True] * len(s.X))
    ev = _event(Trainer({"tr": same}, registry=registry), {"stream": "tr", "kind": "retrain", "since_ms": now,
                                                           "episode": "e-mw", "baseline_alert_rate": 0.01})
    assert ev["action"] == "activate", ev


def test_a_redis_error_mid_request_is_retried_by_the_same_attempt_not_lost(setup) -> None:  # type: ignore[no-untyped-def]
    """Redis fails while the trainer reads the reservoir: the request used to end as a refusal (or, in the
    wait, ended the trainer's agent with the request in hand). The error is raised; the same attempt
    tries again once Redis is back and trains (its own claim is not a duplicate's), through the agent's
    retry helper; another attempt at the same episode is a duplicate."""
    import redis as redis_py

    from stream_vae.app import _redis_retried

    _, _, res, trainer = setup
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    data = {"stream": "tr", "kind": "retrain", "since_ms": now, "episode": "e-blip", "baseline_alert_rate": 0.01}
    read, calls = Reservoir.read, []

    def blip(self: Reservoir, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise redis_py.ConnectionError("Redis restarting")
        return read(self, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Reservoir, "read", blip)
        mp.setattr(asyncio, "sleep", _no_sleep)
        with pytest.raises(redis_py.ConnectionError):
            trainer.handle(data, attempt="a1")
        calls.clear()
        msgs = asyncio.run(_redis_retried(lambda d: trainer.handle(d, attempt="a1"), data))
    assert len(calls) == 2 and json.loads(msgs[0][1])["data"]["action"] == "activate"
    assert trainer.handle(data, attempt="a2") == []


async def _no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize(("value", "why"), [
    (b"{", "not a stream-vae event"),
    (b'{"data": "retrain"}', "its data is not an object"),
    (b'{"data": {"stream": "tr", "since_ms": "yesterday"}}', "since_ms 'yesterday' is not a number"),
    (b'{"data": {"stream": "tr", "since_ms": true}}', "since_ms True is not a number"),
])
def test_a_request_the_trainer_cannot_read_is_skipped_with_a_reason(value: bytes, why: str) -> None:
    """Data that is not an object or a since_ms that is not a number ended the trainer's agent (an
    AttributeError, a ValueError in the wait): skipped with a reason now; a request of ours reads."""
    from stream_vae.trainer import parse_request

    assert parse_request(value) == why
    assert parse_request(b'{"data": {"stream": "tr", "since_ms": 5}}') == {"stream": "tr", "since_ms": 5}


@pytest.mark.parametrize("fails", ["the claim marked handled", "the active version's read",
                                   "the activation, which runs late"])
def test_a_retried_attempt_publishes_its_own_outcome_once(setup, fails: str) -> None:  # type: ignore[no-untyped-def]
    """Redis fails once (1) where the request is marked handled, after the candidate was activated: the
    retry trained and activated a second one, and the first's event was never published; (2) where the
    registry reads the active version: reported as StateStoreError, it refused the request; (3) (chaos
    test) at the activation, which times out and runs once Redis resumes: the retry recalibrated again
    and registered a second version (or, judged against the first, refused it while the first was active
    unannounced). Each is retried now: one version added, one activation published."""
    import functools

    from stream_vae.app import _redis_retried

    topo, registry, res, _ = setup
    flaky = FlakyRedis(registry.client)
    if fails.startswith("the claim"):
        flaky.fail_next("set", when=lambda *args, **kwargs: kwargs.get("ex") == 86_400)
    elif fails.startswith("the active"):
        flaky.fail_next("get", when=lambda key: str(key).endswith(":active"))
    else:
        flaky.fail_next("eval", when=lambda script, *args: "LPUSH" in script, after=True)
    trainer = Trainer({"tr": topo}, registry=RedisModelRegistry(flaky, prefix=registry.prefix), poll_s=0.1)
    s = generate(n_steps=600, t0=1000, seed=5, drift_at=1000, anomaly_rate=0.0)
    now = int(time.time() * 1000)
    res.add(s.X, s.entities, [now] * len(s.X), [True] * len(s.X))
    data = {"stream": "tr", "kind": "threshold", "since_ms": now, "episode": "e-retry", "baseline_alert_rate": 0.01}
    before = {v["version"] for v in registry.list_versions("tr")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncio, "sleep", _no_sleep)
        msgs = asyncio.run(_redis_retried(functools.partial(trainer.handle, attempt="a1"), data))
    events = [json.loads(body)["data"] for _, body in msgs]
    added = {v["version"] for v in registry.list_versions("tr")} - before
    assert flaky.failures == 1 and [e["action"] for e in events] == ["activate"] and added == {events[0]["version"]}
    assert registry.active_version("tr") == events[0]["version"]
