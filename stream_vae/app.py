"""Faust glue: the worker app hosts the hot path as a service, timers and HTTP endpoints.

The app owns what faust is good at (lifecycle, signals, web views, control agents); the
scoring hot path is ``HotLoop`` (own aiokafka consumer, batches) run as a faust service.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
import structlog
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_vae import metrics
from stream_vae.config import Settings
from stream_vae.exceptions import REDIS_DOWN, ModelLoadError, RollbackConflictError
from stream_vae.hotpath import HotLoop
from stream_vae.hotswap import ModelSlot, model_event, supervise_control
from stream_vae.model import set_torch_threads
from stream_vae.model.registry import RedisModelRegistry, version_sequence
from stream_vae.monitor import Emission, Message, StreamMonitor
from stream_vae.state import redis_client
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.app")
_T = TypeVar("_T")


@dataclass
class WorkerState:
    """What the health endpoints report."""

    topology: Topology
    started: float = field(default_factory=time.time)
    slot: ModelSlot | None = None
    loop: HotLoop | None = None
    fatal: str | None = None

    def ready(self) -> tuple[bool, dict[str, Any]]:
        model = self.slot.pipeline.model.version if self.slot and self.slot.pipeline else None
        joined = bool(self.loop and self.loop.joined)
        info = {"stream": self.topology.name, "model_version": model, "consumer_joined": joined}
        return (model is not None and joined and self.fatal is None), info


class Rollbacks:
    """Acts on the post-swap guard's verdict: one worker rolls the stream back and announces it."""

    def __init__(self, registry: RedisModelRegistry, slot: ModelSlot, topology: Topology) -> None:
        self.registry = registry
        self.slot = slot
        self.topology = topology
        self.loop: HotLoop | None = None
        self._unannounced: dict[str, str] = {}  # judged version -> the version this worker rolled back to

    async def after_batch(self, emission: Emission) -> None:
        verdict = emission.rollback
        if verdict is None:
            return
        pipeline = self.slot.pipeline
        # the version judged, not the one serving now: a retry of this step (after a Redis error) may come
        # after a swap, and must not roll back the version the first attempt rolled back to
        bad = verdict.version or (pipeline.model.version if pipeline else None)
        if not verdict.rollback or bad is None:
            log.info("swap_guard_passed", version=bad, reason=verdict.reason)
            return
        log.warning("swap_guard_failed", version=bad, reason=verdict.reason)
        name = self.topology.name
        prev: str | None
        try:  # atomic in Redis: of the workers that judged `bad`, the first rolls back, the others follow
            _, to = await asyncio.to_thread(self.registry.rollback, name, expected=bad)
            self._unannounced[bad] = prev = to
        except RollbackConflictError:
            prev = self._unannounced.get(bad)  # this worker's own rollback, if Redis failed before it was announced
        except ModelLoadError as exc:  # nothing to go back to: keep serving, say so
            log.error("rollback_impossible", version=bad, reason=verdict.reason, error=str(exc))
            return
        if prev is not None:
            digest = (await asyncio.to_thread(self.registry.get, name, prev)).manifest["sha256"]
            if self.loop is not None:
                await self.loop.publish([Message(
                    self.topology.control.model_topic, name.encode(),
                    model_event(name, version=prev, digest=digest, action="rollback", previous=bad,
                                reason=verdict.reason),
                )])
            log.warning("model_rolled_back", version=prev, previous=bad)
            self._unannounced.pop(bad, None)
            self.slot.request(prev, rollback=True)
            return
        # another worker rolled back already (or a trainer activated a newer version): follow the pointer
        active, by_rollback = await asyncio.to_thread(self.registry.active_intent, name)
        if active and active != bad:  # an activation is a fresh candidate, to be guarded like any other
            if by_rollback is None:  # a registry that does not say how the pointer moved
                by_rollback = version_sequence(active) < version_sequence(bad)
            self.slot.request(active, rollback=by_rollback)


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    k = settings.kafka
    kw: dict[str, Any] = {
        "broker": ";".join(f"kafka://{h}" for h in k.bootstrap_servers.split(",")),
        "broker_session_timeout": k.session_timeout_ms / 1000,
        "broker_rebalance_timeout": k.rebalance_timeout_ms / 1000,
        "broker_heartbeat_interval": max(0.5, k.session_timeout_ms / 4000),
    }
    ctx = k.ssl_context()
    if k.sasl_mechanism:
        kw["broker_credentials"] = faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            mechanism=k.sasl_mechanism,
            ssl_context=ctx,
        )
    elif ctx is not None:
        kw["broker_credentials"] = faust.SSLCredentials(ctx)
    return kw


def faust_logging() -> dict[str, Any]:
    """faust.App settings that keep our log handler (and the root level configure_logging set): a faust
    worker replaces the root logger's handlers with its own plain-text one, whose lines broke
    one-JSON-object-per-line logs (see logging.py)."""
    from stream_vae.logging import library_handler

    handler = library_handler()
    return {} if handler is None else {
        "logging_config": {"version": 1, "disable_existing_loggers": False}, "loghandlers": [handler]}


def create_app(settings: Settings, topology: Topology, *, signing_key: bytes | None = None) -> faust.App:
    """A faust app that scores ``topology``'s input topic with the stream's active model."""
    w = settings.worker
    set_torch_threads(w.torch_threads)
    app = faust.App(
        f"stream-vae-{topology.name}-{socket.gethostname()}",
        **faust_broker_kwargs(settings), **faust_logging(),
        store="memory://",
        # faust keeps a data directory; under the temp dir it works on a read-only root filesystem
        datadir=os.path.join(tempfile.gettempdir(), "stream-vae-{conf.name}-data"),
        web_enabled=True,
        web_bind=w.http_host,
        web_port=w.http_port,
        web_host=socket.gethostname(),
        topic_replication_factor=settings.kafka.replication_factor,
        producer_acks=-1,
    )
    # faust serves the probes and metrics and runs the hot loop; the hot loop has its own consumer. A faust
    # consumer would join a group of its own (the app id names the pod) on a `<id>-__assignor-__leader`
    # topic that every pod would leave behind on the cluster
    app.producer_only = True
    state = WorkerState(topology)
    metrics.init_stream(topology.name)
    app.stream_vae_state = state  # type: ignore[attr-defined]

    @app.service
    class HotPath(Service):  # type: ignore[misc]
        """Waits for a model, then runs the batch loop until the worker stops."""

        async def on_start(self) -> None:
            self._stop = asyncio.Event()
            self._task = asyncio.ensure_future(self._run())

        async def _run(self) -> None:
            try:
                client = redis_client(settings.redis, check=False)  # wait_for_model retries while Redis is down
                registry = RedisModelRegistry.for_settings(client, settings, signing_key=signing_key)
                slot = ModelSlot(registry, topology, poll_s=w.model_poll_s)
                state.slot = slot
                await slot.wait_for_model(stop=self._stop)
                monitor = StreamMonitor(topology, lambda: slot.pipeline, client=client, prefix=settings.redis.prefix,
                                        checkpoint_s=w.checkpoint_s, entity_ttl_s=w.entity_ttl_s)
                slot.on_swap = lambda old, new, rb: monitor.on_swap(old, new, rollback=rb)
                slot.after_swap = monitor.after_swap
                await asyncio.to_thread(monitor.resume_guard)  # (Redis: off the event loop)
                guard = Rollbacks(registry, slot, topology)
                async def after_batch(emission: Emission) -> None:  # committed: record its incidents, then judge
                    await asyncio.to_thread(monitor.save_incidents)
                    await guard.after_batch(emission)

                loop = HotLoop(monitor, settings=settings, topology=topology, before_batch=slot.check,
                               after_batch=after_batch, on_revoked=monitor.release,
                               on_tick=monitor.tick, on_assigned=monitor.adopt)
                guard.loop = loop
                state.loop = loop
                await loop.start()
                self._control = asyncio.ensure_future(supervise_control(settings.kafka, topology, slot, self._stop))
                log.info("worker_started", stream=topology.name, topic=topology.input_topic, group=loop.group_id)
                if self._stop.is_set():
                    await loop.stop()
                await loop.run()
                monitor.checkpoint()
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # surfaced on /readyz and in the log; the process keeps serving probes
                state.fatal = f"{type(exc).__name__}: {exc}"
                log.error("worker_failed", error=state.fatal)

        async def on_stop(self) -> None:
            self._stop.set()
            if getattr(self, "_control", None) is not None:
                self._control.cancel()
            if state.loop is not None:
                await state.loop.stop()
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            log.info("worker_stopped", scored=state.loop.stats.scored if state.loop else 0)

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        return self.json({"status": "ok" if state.fatal is None else "failed", "error": state.fatal},
                         status=200 if state.fatal is None else 500)

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ok, info = state.ready()
        return self.json({"ready": ok, **info}, status=200 if ok else 503)

    @app.page("/metrics")
    async def prom(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def run_app(app: faust.App, *, loglevel: str = "warning") -> None:
    """Run the worker until SIGTERM/SIGINT (graceful: the batch in flight is committed)."""
    worker = faust.Worker(app, loglevel=loglevel.upper(), quiet=True, redirect_stdouts=False)
    worker.spinner = None  # its cursor escape codes broke one-JSON-object-per-line logs
    worker.execute_from_commandline()


async def _redis_retried(call: Callable[[dict[str, Any]], _T], data: dict[str, Any]) -> _T:
    """``call(data)`` in a thread; a Redis error waits and tries again (the request in hand is not lost)."""
    pause = 1.0
    while True:
        try:
            return await asyncio.to_thread(call, data)
        except REDIS_DOWN as exc:
            log.warning("trainer_redis_unavailable", error=f"{type(exc).__name__}: {exc}"[:200], retry_in_s=pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, 30.0)


def create_trainer_app(settings: Settings, topologies: dict[str, Topology], *,
                       signing_key: bytes | None = None) -> faust.App:
    """A faust app whose agent answers ``control.recalibrate`` events with the ``Trainer`` (in a thread)."""
    from stream_vae.trainer import Trainer, parse_request

    w = settings.worker
    set_torch_threads(w.torch_threads)
    app = faust.App(
        settings.kafka.trainer_group_id,  # one consumer group: each request is handled by one trainer replica
        **faust_broker_kwargs(settings), **faust_logging(),
        store="memory://",
        datadir=os.path.join(tempfile.gettempdir(), "stream-vae-{conf.name}-data"),
        web_enabled=True, web_bind=w.http_host, web_port=w.http_port, web_host=socket.gethostname(),
        topic_replication_factor=settings.kafka.replication_factor, producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # on shutdown do not wait for a request in progress (it may wait minutes for records): it stays
        # uncommitted and the next trainer handles it again
        stream_wait_empty=False,
    )
    registry = RedisModelRegistry.for_settings(redis_client(settings.redis), settings, signing_key=signing_key)
    trainer = Trainer(topologies, registry=registry)
    topics = sorted({t.control.recalibrate_topic for t in topologies.values()})
    source = app.topic(*topics, value_serializer="raw", key_serializer="raw")
    status: dict[str, Any] = {"started": False, "handled": 0, "busy": None}

    @app.agent(source)
    async def recalibrate(stream: Any) -> None:
        status["started"] = True  # the agent runs once the consumer is up
        log.info("trainer_started", streams=sorted(topologies), topics=topics)
        async for value in stream:
            data = parse_request(value)
            if isinstance(data, str):
                log.warning("recalibrate_event_ignored", reason=data)
                continue
            status["busy"] = data.get("stream")
            attempt = uuid.uuid4().hex
            try:
                # wait here, not in the thread: a shutdown cancels this sleep at once
                deadline = time.monotonic() + trainer.wait_timeout(data)
                while time.monotonic() < deadline and not await _redis_retried(trainer.has_records, data):
                    await asyncio.sleep(trainer.poll_s)
                for topic, body in await _redis_retried(functools.partial(trainer.handle, attempt=attempt), data):
                    await app.topic(topic, value_serializer="raw").send(key=str(data.get("stream")).encode(),
                                                                        value=body)
            except asyncio.CancelledError:
                trainer.stopping.set()  # shutting down: the training thread stops after its current epoch
                raise
            except Exception as exc:  # raised out of here, it ends the agent: faust restarts it at the next event
                log.error("recalibrate_failed", stream=data.get("stream"), error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                status["busy"] = None
                status["handled"] += 1

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        return self.json({"ready": status["started"], **status}, status=200 if status["started"] else 503)

    @app.page("/metrics")
    async def prom(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app
