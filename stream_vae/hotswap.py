"""hot-swap: load, verify and warm a model version in the background, then swap it in between batches.

The hot loop never waits for a load: ``check()`` (called between batches) only starts a
background load when the target version changes, and swaps — one reference assignment — once
the load has finished. A batch is always scored by exactly one version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from stream_vae import metrics
from stream_vae.exceptions import REDIS_DOWN, ModelLoadError
from stream_vae.model.registry import LoadedModel, RedisModelRegistry, version_sequence
from stream_vae.pipeline import Pipeline
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.hotswap")

SwapHook = Callable[[LoadedModel, LoadedModel, bool], None]


def warm_up(model: LoadedModel) -> None:
    """Score a small batch once (allocations, lazy init) and refuse a model that returns non-finite scores."""
    x = np.zeros((8, model.row_width))
    res = model.scorer.score_many(x)
    if not np.all(np.isfinite(res.score)):
        raise ModelLoadError(f"model {model.version}: warm-up produced non-finite scores; refusing to swap")


class ModelSlot:
    """Tracks the stream's target version and swaps the pipeline's model when it changes.

    The target comes from ``control.model`` events (``request``) and, as a fallback, from the
    registry's active pointer, re-read every ``poll_s`` seconds.
    """

    def __init__(self, registry: RedisModelRegistry, topology: Topology, *, poll_s: float = 5.0) -> None:
        self.registry = registry
        self.topology = topology
        self.poll_s = poll_s
        self.pipeline: Pipeline | None = None
        self.on_swap: SwapHook | None = None  # right after a swap, on the event loop: memory only
        self.after_swap: Callable[[], None] | None = None  # then, in a thread: its I/O
        self.swaps = 0
        self.swap_pauses_ms: list[float] = []
        self._last_check = 0.0
        self._refused: set[str] = set()
        self._pointer_lost = False  # the registry had no active version at the last poll (logged once)
        self._requested: tuple[str, bool] | None = None  # (version, is_rollback)
        self._loading: tuple[str, bool, asyncio.Future[LoadedModel]] | None = None

    def load(self, version: str) -> LoadedModel:
        model = self.registry.load(self.topology.name, version, topology=self.topology)
        warm_up(model)
        return model

    async def wait_for_model(self, *, stop: asyncio.Event | None = None) -> Pipeline:
        """Block until the stream has an active, loadable model; build the pipeline on it."""
        waited, pause = False, 0.5
        while True:
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            version = None
            try:
                version = await asyncio.to_thread(self.registry.active_version, self.topology.name)
                if version and version not in self._refused:
                    model = await asyncio.to_thread(self.load, version)
                    self.pipeline = Pipeline(self.topology, model)
                    self._publish_metrics(model)
                    log.info("model_loaded", version=version, threshold=model.calibrator.threshold)
                    return self.pipeline
            except ModelLoadError as exc:
                self._refused.add(str(version))
                log.error("model_refused", version=version, error=str(exc))
            except REDIS_DOWN as exc:  # a worker that started while Redis hung had failed for good
                log.warning("redis_unavailable_retrying", stream=self.topology.name,
                            error=f"{type(exc).__name__}: {exc}"[:300], retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 5.0)
                continue
            if not waited:
                log.warning("waiting_for_model", stream=self.topology.name,
                            hint="train one: stream-vae train --topology <file> --input <csv|npy>")
                waited = True
            await asyncio.sleep(min(self.poll_s, 1.0))

    def request(self, version: str, *, rollback: bool = False) -> None:
        """Ask for ``version`` (from a control.model event); it is loaded in the background."""
        self._requested = (version, rollback)
        if rollback:
            self._refused.discard(version)

    async def check(self, *, force: bool = False) -> bool:
        """Between batches: swap if a background load finished; start one if the target moved."""
        if self.pipeline is None:
            return False
        if self._loading is not None:
            version, rollback, fut = self._loading
            if not fut.done():
                return False
            self._loading = None
            try:
                model = fut.result()
            except ModelLoadError as exc:
                self._refused.add(version)
                log.error("model_refused", version=version, error=str(exc))
                return False
            swapped = self._swap(model, rollback=rollback)
            if self.after_swap is not None:  # its Redis writes, in a thread: the event loop keeps heartbeats
                await asyncio.to_thread(self.after_swap)
            return swapped
        target: tuple[str, bool] | None = self._requested
        self._requested = None
        now = time.monotonic()
        if target is None and (force or now - self._last_check >= self.poll_s):
            self._last_check = now
            active, by_rollback = await asyncio.to_thread(self.registry.active_intent, self.topology.name)
            if not active and not self._pointer_lost:  # Redis lost its data (a restart without persistence)
                log.error("model_registry_empty", stream=self.topology.name, serving=self.pipeline.model.version,
                          hint="the worker keeps serving this version; register a model again (stream-vae train) "
                               "or restore Redis' data")
            self._pointer_lost = not active
            if active:
                # a rollback whose event has not come yet (another worker rolled back) is not guarded:
                # guarding it would name the bad version as the one to return to. The registry says how the
                # pointer moved; before it did, an earlier version was taken for a rollback.
                if by_rollback is None:
                    by_rollback = version_sequence(active) < version_sequence(self.pipeline.model.version)
                target = (active, by_rollback)
        if target is None or target[0] == self.pipeline.model.version or target[0] in self._refused:
            return False
        version, rollback = target
        self._loading = (version, rollback, asyncio.ensure_future(asyncio.to_thread(self.load, version)))
        return False

    def _swap(self, model: LoadedModel, *, rollback: bool) -> bool:
        assert self.pipeline is not None
        t0 = time.perf_counter()
        old = self.pipeline.swap(model)  # one reference assignment, between batches
        pause = (time.perf_counter() - t0) * 1000
        self.swap_pauses_ms.append(pause)
        metrics.SWAP_PAUSE_MAX.labels(self.topology.name).set(max(self.swap_pauses_ms) / 1000)
        self.swaps += 1
        (metrics.ROLLBACKS if rollback else metrics.SWAPS).labels(self.topology.name).inc()
        self._publish_metrics(model)
        log.info("model_swapped", previous=old.version, version=model.version, pause_ms=round(pause, 3),
                 rollback=rollback)
        if self.on_swap is not None:
            self.on_swap(old, model, rollback)
        return True

    def _publish_metrics(self, model: LoadedModel) -> None:
        metrics.ACTIVE_MODEL.info(
            {"stream": self.topology.name, "version": model.version, "calibration_id": model.calibration_id}
        )
        metrics.MODEL_VERSION.labels(self.topology.name).set(1)


def model_event(stream: str, *, version: str, digest: str, action: str, previous: str | None,
                reason: str = "") -> bytes:
    """A ``control.model`` event (activate | rollback | refuse)."""
    from stream_vae.records import envelope

    data: dict[str, Any] = {"stream": stream, "version": version, "digest": digest, "action": action,
                            "previous": previous}
    if reason:
        data["reason"] = reason
    return json.dumps(envelope(f"io.stream-vae.model.{action}", source=f"stream-vae/{stream}", data=data)).encode()


async def listen_control(settings_kafka: Any, topology: Topology, slot: ModelSlot, stop: asyncio.Event) -> None:
    """Every worker reads every ``control.model`` event (no consumer group: a broadcast)."""
    from stream_vae.kafka import tail

    async for m in tail(settings_kafka, [topology.control.model_topic], from_beginning=False, follow=True,
                        stop=stop):
        try:
            data = json.loads(m.value)["data"]
            if not isinstance(data, dict):
                raise TypeError("data is not an object")
        except (ValueError, KeyError, TypeError):
            log.warning("control_event_ignored", topic=m.topic, offset=m.offset)
            continue
        if data.get("stream") != topology.name or data.get("action") not in ("activate", "rollback"):
            continue
        log.info("control_model", action=data["action"], version=data.get("version"))
        slot.request(str(data["version"]), rollback=data["action"] == "rollback")


async def supervise_control(settings_kafka: Any, topology: Topology, slot: ModelSlot, stop: asyncio.Event, *,
                            backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0)) -> None:
    """:func:`listen_control` until ``stop``, started again (after a pause) whenever it fails, and said so: a
    listener that died silently left the worker on the registry poll alone (``model_poll_s`` later)."""
    failures = 0
    while not stop.is_set():
        try:
            await listen_control(settings_kafka, topology, slot, stop)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pause = backoff_s[min(failures, len(backoff_s) - 1)]
            failures += 1
            log.error("control_listener_failed", stream=topology.name, error=f"{type(exc).__name__}: {exc}"[:300],
                      attempt=failures, retry_in_s=pause)
            with contextlib.suppress(TimeoutError):  # stopped during the pause: leave at once
                await asyncio.wait_for(stop.wait(), timeout=pause)
        else:
            if not stop.is_set():  # the tail ended without a stop: read again
                await asyncio.sleep(backoff_s[0])
