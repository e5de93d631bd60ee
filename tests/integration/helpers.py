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


def write_topology(path: Path, topology: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(topology.model_dump_json())))
    return path
