"""Redis connections and small state helpers (snapshots of online components)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from stream_vae.config import RedisSettings
from stream_vae.exceptions import StateStoreError


class Snapshottable(Protocol):
    """An online component whose learned state can be checkpointed and restored."""

    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


def redis_client(settings: RedisSettings, *, check: bool = True) -> Any:
    """A ``redis.Redis`` client (bytes responses); with ``check`` it pings and fails with a clear message."""
    import redis

    pw = settings.password.get_secret_value() if settings.password else None
    try:
        client = redis.Redis.from_url(settings.url, password=pw, socket_connect_timeout=3, socket_timeout=10)
        if check:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise StateStoreError(
            f"cannot reach Redis at {settings.redacted_url()}: {exc}. Set REDIS_URL or STREAM_VAE_REDIS__URL"
        ) from None
    return client


def load_snapshot(client: Any, key: str, component: Snapshottable) -> bool:
    raw = client.get(key)
    if raw is None:
        return False
    component.restore(json.loads(raw))
    return True
