"""hot-swap: load, verify and warm a model version, then swap it in between batches."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import structlog

from stream_vae import metrics
from stream_vae.exceptions import ModelLoadError
from stream_vae.model.registry import LoadedModel, RedisModelRegistry
from stream_vae.pipeline import Pipeline
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.hotswap")


def warm_up(model: LoadedModel, n_features: int) -> None:
    """Score a small batch once (allocations, lazy init) and refuse a model that returns non-finite scores."""
    x = np.zeros((8, n_features * model.window))
    res = model.scorer.score_many(x)
    if not np.all(np.isfinite(res.score)):
        raise ModelLoadError(f"model {model.version}: warm-up produced non-finite scores; refusing to swap")


class ModelSlot:
    """Tracks the stream's active version in the registry and swaps the pipeline's model when it changes."""

    def __init__(self, registry: RedisModelRegistry, topology: Topology, *, poll_s: float = 5.0) -> None:
        self.registry = registry
        self.topology = topology
        self.poll_s = poll_s
        self.pipeline: Pipeline | None = None
        self.swaps = 0
        self.last_swap_pause_ms = 0.0
        self._last_check = 0.0
        self._refused: set[str] = set()

    def load(self, version: str) -> LoadedModel:
        model = self.registry.load(self.topology.name, version, topology=self.topology)
        warm_up(model, len(self.topology.features))
        return model

    async def wait_for_model(self, *, stop: asyncio.Event | None = None) -> Pipeline:
        """Block until the stream has an active, loadable model; build the pipeline on it."""
        waited = False
        while True:
            version = await asyncio.to_thread(self.registry.active_version, self.topology.name)
            if version and version not in self._refused:
                try:
                    model = await asyncio.to_thread(self.load, version)
                except ModelLoadError as exc:
                    self._refused.add(version)
                    log.error("model_refused", version=version, error=str(exc))
                else:
                    self.pipeline = Pipeline(self.topology, model)
                    self._publish_metrics(model)
                    log.info("model_loaded", version=version, threshold=model.calibrator.threshold)
                    return self.pipeline
            if not waited:
                log.warning(
                    "waiting_for_model", stream=self.topology.name,
                    hint="train one: stream-vae train --topology <file> --input <csv|npy>",
                )
                waited = True
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError
            await asyncio.sleep(min(self.poll_s, 1.0))

    async def check(self, *, force: bool = False) -> bool:
        """Between batches: if the active pointer moved, load + warm the new version and swap. True if swapped."""
        now = time.monotonic()
        if self.pipeline is None or (not force and now - self._last_check < self.poll_s):
            return False
        self._last_check = now
        version = await asyncio.to_thread(self.registry.active_version, self.topology.name)
        if not version or version == self.pipeline.model.version or version in self._refused:
            return False
        return await self.swap_to(version)

    async def swap_to(self, version: str) -> bool:
        assert self.pipeline is not None
        try:
            model = await asyncio.to_thread(self.load, version)  # verify digest + warm up off the loop
        except ModelLoadError as exc:
            self._refused.add(version)
            log.error("model_refused", version=version, error=str(exc))
            return False
        t0 = time.perf_counter()
        old = self.pipeline.swap(model)  # one reference assignment, between batches
        self.last_swap_pause_ms = (time.perf_counter() - t0) * 1000
        self.swaps += 1
        metrics.SWAPS.labels(self.topology.name).inc()
        self._publish_metrics(model)
        log.info("model_swapped", previous=old.version, version=model.version, pause_ms=self.last_swap_pause_ms)
        return True

    def _publish_metrics(self, model: LoadedModel) -> None:
        metrics.ACTIVE_MODEL.info(
            {"stream": self.topology.name, "version": model.version, "calibration_id": model.calibration_id}
        )
        metrics.MODEL_VERSION.labels(self.topology.name).set(1)
