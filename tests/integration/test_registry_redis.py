"""The model registry against a real Redis: the pointer moves atomically, manifests stay bound to their key,
old versions are pruned."""

from __future__ import annotations

import json

import pytest

from stream_vae.exceptions import ModelLoadError, RollbackConflictError
from stream_vae.model.registry import RedisModelRegistry
from stream_vae.state import redis_client
from stream_vae.testing import quick_model, synth_topology

from .helpers import settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return quick_model(synth_topology("rg", epochs=2), steps=300)


@pytest.fixture
def registry(redis_url: str, redis_prefix: str) -> RedisModelRegistry:
    return RedisModelRegistry(redis_client(settings("unused:1", redis_url, redis_prefix).redis), prefix=redis_prefix,
                              keep_versions=3)


def test_a_rollback_of_a_version_no_longer_active_changes_nothing(registry, model) -> None:  # type: ignore[no-untyped-def]
    """A guard judged v2; meanwhile the trainer activated v3. Rolling back 'v2' must not re-activate v2."""
    for _ in range(3):
        registry.register(model, activate=True)
    with pytest.raises(RollbackConflictError, match="active is v3"):
        registry.rollback("rg", expected="v2")
    assert registry.active_version("rg") == "v3"
    assert registry.rollback("rg", expected="v3") == ("v3", "v2")  # history intact: the next rollback works


def test_two_rollbacks_of_the_same_version_move_the_pointer_once(registry, model) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        registry.register(model, activate=True)
    assert registry.rollback("rg", expected="v3") == ("v3", "v2")
    with pytest.raises(RollbackConflictError):
        registry.rollback("rg", expected="v3")  # the second worker that judged v3
    assert registry.active_version("rg") == "v2"
    assert registry.rollback("rg") == ("v2", "v1")


def test_a_rollback_with_nothing_to_go_back_to_says_so(registry, model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="no previous version"):
        registry.rollback("rg")  # no active version at all
    registry.register(model, activate=True)
    with pytest.raises(ModelLoadError, match="no previous version"):
        registry.rollback("rg", expected="v1")
    assert registry.active_version("rg") == "v1"


def test_a_manifest_stored_under_another_version_is_refused(registry, model) -> None:  # type: ignore[no-untyped-def]
    registry.register(model, activate=True)
    registry.register(model)
    c, p = registry.client, registry.prefix
    c.set(f"{p}:rg:model:v2:manifest", c.get(f"{p}:rg:model:v1:manifest"))  # an old, validly signed manifest
    c.set(f"{p}:rg:model:v2:weights", c.get(f"{p}:rg:model:v1:weights"))
    with pytest.raises(ModelLoadError, match=r"describes \('rg', 'v1'\)"):
        registry.load("rg", "v2")
    c.set(f"{p}:rg:model:v2:manifest", b"{not json")
    with pytest.raises(ModelLoadError, match="not JSON"):
        registry.load("rg", "v2")
    c.set(f"{p}:rg:model:v2:manifest", json.dumps([1, 2]))
    with pytest.raises(ModelLoadError, match="describes"):
        registry.load("rg", "v2")


def test_old_versions_are_pruned_but_rollback_targets_are_kept(registry, model) -> None:  # type: ignore[no-untyped-def]
    registry.register(model, activate=True)  # v1, then v2..v6 registered without activation (e.g. refused)
    for _ in range(5):
        registry.register(model)
    kept = [v["version"] for v in registry.list_versions("rg")]
    assert kept == ["v1", "v4", "v5", "v6"]  # the active one and the newest 3
    registry.activate("rg", "v6")
    for _ in range(3):
        registry.register(model)  # v7..v9
    assert [v["version"] for v in registry.list_versions("rg")] == ["v1", "v6", "v7", "v8", "v9"]
    assert registry.rollback("rg") == ("v6", "v1")  # the history's versions survive pruning
    keys = {k.decode() for k in registry.client.scan_iter(f"{registry.prefix}:rg:model:*")}
    assert {k.split(":")[-2] for k in keys} == {"v1", "v6", "v7", "v8", "v9"}  # pruned weights are gone too


class _Proxy:
    """The real client, with one hook before the first ``eval`` of a script containing ``marker``."""

    def __init__(self, client, marker: str, hook) -> None:  # type: ignore[no-untyped-def]
        self.client, self.marker, self.hook = client, marker, hook

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)

    def eval(self, script: str, *args: object) -> object:
        if self.marker in script and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return self.client.eval(script, *args)


def test_an_activation_never_points_at_a_version_deleted_meanwhile(registry, model) -> None:  # type: ignore[no-untyped-def]
    """`models activate v1` checks that v1 exists, then moves the pointer; a trainer's prune deleted v1 in
    between, and the pointer was left on a model that no longer exists."""
    for _ in range(2):
        registry.register(model, activate=True)  # v1, v2 (active)
    c, p = registry.client, registry.prefix
    racing = RedisModelRegistry(_Proxy(c, "EXISTS", lambda: c.delete(f"{p}:rg:model:v1:manifest",
                                                                    f"{p}:rg:model:v1:weights")),
                                prefix=p, keep_versions=3)
    with pytest.raises(ModelLoadError, match="deleted"):
        racing.activate("rg", "v1")
    assert registry.active_version("rg") == "v2"


def test_a_failed_prune_does_not_fail_the_registration(registry, model) -> None:  # type: ignore[no-untyped-def]
    """The version is stored and active when the clean-up runs: a Redis error there made `train` exit 2
    and the trainer publish a refusal for a model that was live."""
    import redis as redis_py

    def fail() -> None:
        raise redis_py.ConnectionError("Redis failing over")

    class NoPrune(_Proxy):
        def zrange(self, *args: object) -> object:  # what a prune reads (in a script, or before it)
            fail()
            return None

    flaky = RedisModelRegistry(NoPrune(registry.client, "ZRANGE", fail), prefix=registry.prefix, keep_versions=3)
    art = flaky.register(model, activate=True)
    assert art.version == "v1" and registry.active_version("rg") == "v1"


def test_a_retried_guard_rollback_is_announced_and_rolls_back_once(registry, model) -> None:  # type: ignore[no-untyped-def]
    """The guard judged v3; the rollback went through (v3 -> v2), then Redis failed before it was announced.
    The hot loop retries the step after its model check swapped the worker to v2: the retry rolled v2
    back to v1, and the first rollback was never announced on control.model."""
    import asyncio
    from types import SimpleNamespace

    from stream_vae.app import Rollbacks
    from stream_vae.exceptions import StateStoreError
    from stream_vae.lifecycle import GuardVerdict

    for _ in range(3):
        registry.register(model, activate=True)  # v3 active, history v2, v1

    class FailsOnce(RedisModelRegistry):
        fail = 1

        def get(self, stream: str, version: str):  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail -= 1
                raise StateStoreError("Redis model registry: TimeoutError")
            return super().get(stream, version)

    flaky = FailsOnce(registry.client, prefix=registry.prefix, keep_versions=3)
    requested: list[tuple[str, bool]] = []
    slot = SimpleNamespace(pipeline=SimpleNamespace(model=SimpleNamespace(version="v3")),
                           request=lambda v, rollback=False: requested.append((v, rollback)))
    published: list[object] = []
    rollbacks = Rollbacks(flaky, slot, model.topology)  # type: ignore[arg-type]
    rollbacks.loop = SimpleNamespace(publish=lambda msgs: _async(published.extend(msgs)))  # type: ignore[assignment]
    emission = SimpleNamespace(rollback=GuardVerdict(True, "flag rate 0.3 > limit 0.05", 0.3, 1000, "v3"))

    async def main() -> None:
        with pytest.raises(StateStoreError):
            await rollbacks.after_batch(emission)  # type: ignore[arg-type]
        slot.pipeline.model.version = "v2"  # the model check between the attempts swapped the worker
        await rollbacks.after_batch(emission)  # type: ignore[arg-type]

    asyncio.run(main())
    assert registry.active_version("rg") == "v2"
    assert requested == [("v2", True)] and len(published) == 1


async def _async(_: object) -> None:
    return None


def test_the_registry_says_how_the_pointer_moved_and_only_for_the_version_it_names(registry, model) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        registry.register(model, activate=True)
    assert registry.active_intent("rg") == ("v3", False)
    registry.activate("rg", "v1")  # an older version, on purpose: an activation
    assert registry.active_intent("rg") == ("v1", False)
    registry.rollback("rg")
    assert registry.active_intent("rg") == ("v3", True)
    registry.client.set(f"{registry.prefix}:rg:active", "v2")  # a release that does not record it moved the pointer
    assert registry.active_intent("rg") == ("v2", None)


def test_a_worker_that_follows_another_workers_rollback_does_not_guard_its_target(registry, model) -> None:  # type: ignore[no-untyped-def]
    """An operator activated older v1 over v2 and every worker guarded it. Worker A rolled v1 back to v2;
    worker B, which judged v1 too, followed the pointer but took v2 (newer than v1) for a fresh candidate
    and guarded it, with the bad v1 as its fallback."""
    import asyncio
    from types import SimpleNamespace

    from stream_vae.app import Rollbacks
    from stream_vae.lifecycle import GuardVerdict

    for _ in range(2):
        registry.register(model, activate=True)
    registry.activate("rg", "v1")
    slots = [SimpleNamespace(pipeline=SimpleNamespace(model=SimpleNamespace(version="v1")), requests=[])
             for _ in range(2)]
    for s in slots:
        s.request = lambda v, rollback=False, s=s: s.requests.append((v, rollback))
    verdict = SimpleNamespace(rollback=GuardVerdict(True, "flag rate too high", 0.5, 1000, "v1"))
    for s in slots:
        asyncio.run(Rollbacks(registry, s, model.topology).after_batch(verdict))  # type: ignore[arg-type]
    assert [s.requests for s in slots] == [[("v2", True)], [("v2", True)]]


def test_a_worker_whose_registry_was_wiped_says_so_once_and_keeps_serving(registry, model) -> None:  # type: ignore[no-untyped-def]
    """(Chaos test.) Redis restarted empty (no persistence): the active pointer is gone. The worker kept
    serving its version without a word; it now logs `model_registry_empty` once (not at every poll) and
    goes on serving."""
    import asyncio

    from structlog.testing import capture_logs

    from stream_vae.hotswap import ModelSlot

    registry.register(model, activate=True)
    slot = ModelSlot(registry, model.topology, poll_s=0.0)
    asyncio.run(slot.wait_for_model())
    for key in registry.client.scan_iter(f"{registry.prefix}:*"):
        registry.client.delete(key)
    with capture_logs() as logs:
        for _ in range(3):
            asyncio.run(slot.check(force=True))
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["model_registry_empty"]
    assert slot.pipeline is not None and slot.pipeline.model.version == "v1"


def test_a_worker_that_starts_while_redis_is_down_waits_for_it(redis_url: str, redis_prefix: str) -> None:
    """(Chaos test) A worker that started while Redis hung logged worker_failed on its first read of the
    active version and never tried again, alive with /healthz 500, even after Redis came back. It now
    retries with back-off and loads the model once Redis answers."""
    import asyncio

    from stream_vae.hotswap import ModelSlot

    from .helpers import FlakyRedis

    topo = synth_topology("late", epochs=2)
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    RedisModelRegistry(client, prefix=redis_prefix).register(quick_model(topo, steps=300), activate=True)
    flaky = FlakyRedis(client)
    flaky.down = True
    slot = ModelSlot(RedisModelRegistry(flaky, prefix=redis_prefix), topo, poll_s=0.1)

    async def scenario() -> str:
        task = asyncio.ensure_future(slot.wait_for_model())
        await asyncio.sleep(1.2)
        assert not task.done() and flaky.failures >= 2
        flaky.down = False
        return (await asyncio.wait_for(task, 10)).model.version

    assert asyncio.run(scenario()) == "v1"
