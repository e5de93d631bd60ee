"""Helpers for integration tests on the real broker and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream_vae.config import KafkaSettings, RedisSettings, Settings, WorkerSettings


def settings(bootstrap: str, redis_url: str, prefix: str, **worker: Any) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000, rebalance_timeout_ms=3000),
        redis=RedisSettings(url=redis_url, prefix=prefix),
        worker=WorkerSettings(**{"max_batch": 2000, "model_poll_s": 0.5, **worker}),
    )


async def read_all(ks: KafkaSettings, topic: str, *, idle_s: float = 2.0) -> list[Any]:
    from stream_vae.kafka import tail

    return [m async for m in tail(ks, [topic], idle_s=idle_s)]


def read_all_sync(ks: KafkaSettings, topic: str, *, idle_s: float = 2.0) -> list[Any]:
    return asyncio.run(read_all(ks, topic, idle_s=idle_s))


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_vae.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, check=False,
    )


class FlakyRedis:
    """A real Redis client whose commands fail the way they do while Redis restarts.

    ``fail_next(command, when=..., times=1)``: the next ``times`` calls of ``command`` whose arguments
    satisfy ``when`` raise ``redis.ConnectionError``; with ``after`` they run first (a command that timed
    out while Redis hung still runs once it resumes). With ``down`` set every command fails. Everything
    else goes to ``client``. ``failures`` counts the errors raised.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = False
        self.failures = 0
        self._plans: dict[str, list[Any]] = {}

    def fail_next(self, command: str, *, when: Callable[..., bool] | None = None, times: int = 1,
                  after: bool = False) -> None:
        self._plans[command] = [times, when, after]

    def _fail(self, why: str) -> None:
        import redis

        self.failures += 1
        raise redis.ConnectionError(why)

    def __getattr__(self, name: str) -> Any:
        if self.down:
            self._fail("Redis down")
        attr = getattr(self.client, name)
        plan = self._plans.get(name)
        if plan is None:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if plan[0] > 0 and (plan[1] is None or plan[1](*args, **kwargs)):
                plan[0] -= 1
                if plan[2]:
                    attr(*args, **kwargs)
                self._fail(f"Redis restarting ({name})")
            return attr(*args, **kwargs)

        return call


def write_topology(path: Path, topology: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(topology.model_dump_json())))
    return path
