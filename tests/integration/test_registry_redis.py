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
