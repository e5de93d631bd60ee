"""The scoring hot path: our own aiokafka consumer, batches of thousands, at-least-once.

Why not a faust agent: faust's per-event path costs ~140 µs of Python per message (measured,
see BENCHMARKS.md); this loop reads ``getmany`` batches, scores each batch with one torch call,
publishes alerts and dead letters, awaits their acks, and only then commits the batch's
offsets. On partition revocation it waits for the batch in flight and commits it, so a
rebalance neither loses nor re-scores records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from stream_vae import metrics
from stream_vae.config import Settings
from stream_vae.exceptions import REDIS_DOWN
from stream_vae.monitor import Emission, Message, alert_messages, dlq_message
from stream_vae.pipeline import Pipeline
from stream_vae.records import RawRecord
from stream_vae.topology import Topology

log = structlog.get_logger("stream_vae.hotpath")

# Redis unreachable (a failover, a restart): the batch is read again and retried, the worker lives on.
# (Not OSError: a Kafka timeout is one, and is no Redis outage.)
_RETRY_S = (0.5, 1.0, 2.0, 5.0)  # back-off between attempts, the last one repeated

BatchHook = Callable[[Emission], Awaitable[None] | None]


class Processor(Protocol):
    """Turns a batch of records into an emission (``StreamMonitor`` in workers)."""

    def process(self, records: list[RawRecord]) -> Emission: ...


class PlainProcessor:
    """Pipeline only: alerts and dead letters, no closed loop (benchmarks of the bare data path)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def process(self, records: list[RawRecord]) -> Emission:
        out = self.pipeline.process_batch(records)
        topo = self.pipeline.topology
        msgs = alert_messages(topo, out.alerts, out.resolved)
        return Emission(out, msgs + [dlq_message(r, topo) for r in out.rejections], alerts=out.alerts)


@dataclass
class LoopStats:
    batches: int = 0
    scored: int = 0
    rejected: int = 0
    alerts: int = 0
    alerts_published: int = 0
    committed: int = 0
    first_batch_at: float = 0.0  # perf_counter when the first non-empty batch arrived


async def _housekeeping(fn: Callable[..., Any], *args: Any, failed: str) -> Any:
    """Run a housekeeping callback (state hand-over, checkpoint) in a thread; a failure is logged as
    ``failed`` and returns None, never raised: it must not break a rebalance or stop the consumer."""
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        log.error(failed, error=f"{type(exc).__name__}: {exc}")
        return None


class _Revoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: HotLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Wait for the batch in flight (it commits itself when done), so the next owner starts after it.
        async with self.loop.batch_lock:
            if self.loop.on_revoked is not None and revoked:
                # hand the partitions' entity state to their next owner before it starts reading them;
                # under the lock, so no batch runs meanwhile (if it fails, the next owner starts afresh)
                await _housekeeping(self.loop.on_revoked, {tp.partition for tp in revoked},
                                    failed="partitions_release_failed")
        log.info("partitions_revoked", partitions=[f"{tp.topic}:{tp.partition}" for tp in revoked])

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.loop.assigned = set(assigned)
        self.loop.in_group = True  # a member, even with no partition (more replicas than partitions)
        if self.loop.on_assigned is not None and assigned:
            async with self.loop.batch_lock:  # if it fails, those entities resume when they send
                await _housekeeping(self.loop.on_assigned, {tp.partition for tp in assigned},
                                    failed="partitions_adopt_failed")
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


class HotLoop:
    """Consume -> ``processor.process`` -> produce -> commit, until stopped.

    Parameters
    ----------
    processor
        ``StreamMonitor`` (workers) or ``PlainProcessor``; a ``Pipeline`` is wrapped in the latter.
    before_batch
        Awaited between batches (model hot-swap checks go here: never inside a batch).
    after_batch
        Called with each batch's emission after its messages were acknowledged and its offsets committed;
        after a Redis error in it, it alone is called again (the batch is not read again) before the next.
    on_revoked
        Called (in a thread) with the input partitions a rebalance takes away, after their last batch
        was committed (``StreamMonitor.release``: checkpoint their entities for the next owner).
    on_assigned
        Called (in a thread, under the batch lock) with the input partitions a rebalance gives this
        worker, before it reads them (``StreamMonitor.adopt``: take over their open incidents).
    on_tick
        Called (in a thread, under the batch lock) after a poll that brought nothing; the messages it
        returns are published (``StreamMonitor.tick``: checkpoints and idle incident ends of a quiet stream).
    """

    def __init__(
        self,
        processor: Processor | Pipeline,
        *,
        settings: Settings,
        topology: Topology,
        before_batch: Callable[[], Awaitable[object]] | None = None,
        after_batch: BatchHook | None = None,
        group_id: str | None = None,
        on_revoked: Callable[[set[int]], object] | None = None,
        on_tick: Callable[[], Sequence[Message]] | None = None,
        on_assigned: Callable[[set[int]], object] | None = None,
    ) -> None:
        self.processor: Processor = PlainProcessor(processor) if isinstance(processor, Pipeline) else processor
        self.settings = settings
        self.topology = topology
        self.before_batch = before_batch
        self.after_batch = after_batch
        self.on_revoked = on_revoked
        self.on_tick = on_tick
        self.on_assigned = on_assigned
        self.group_id = group_id or topology.consumer_group
        self.batch_lock = asyncio.Lock()
        self.assigned: set[TopicPartition] = set()
        self.in_group = False
        self.stats = LoopStats()
        self.last_batch_at = 0.0
        self._stopping = asyncio.Event()
        self._after_pending: Emission | None = None  # a committed batch whose after_batch has not run yet
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    @property
    def joined(self) -> bool:
        """In the consumer group: assigned its share of the partitions, which may be none. (Readiness
        waited for a partition, so a surge pod beyond the partition count never got ready and stalled a
        rolling update.)"""
        return self.in_group

    async def start(self) -> None:
        kw = self.settings.kafka.client_kwargs()
        w = self.settings.worker
        self._producer = AIOKafkaProducer(**kw, linger_ms=5, max_batch_size=1 << 20, acks="all")
        self._consumer = AIOKafkaConsumer(
            **kw,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=w.start_from,  # (a group with committed offsets goes on from them)
            max_poll_records=w.max_batch,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=8 << 20,
            session_timeout_ms=self.settings.kafka.session_timeout_ms,
            rebalance_timeout_ms=self.settings.kafka.rebalance_timeout_ms,
            heartbeat_interval_ms=max(500, self.settings.kafka.session_timeout_ms // 4),
        )
        await self._producer.start()
        try:
            self._consumer.subscribe([self.topology.input_topic], listener=_Revoke(self))
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        self.request_stop()

    def request_stop(self) -> None:
        """Finish the batch in flight, commit it, then leave the group."""
        self._stopping.set()

    async def close(self) -> None:
        # The loop has exited: everything it scored was committed. Hand the partitions' state over while
        # still in the group (leaving it assigns them at once, and aiokafka's stop() revokes nothing),
        # then leave it cleanly.
        if self.on_revoked is not None and self.assigned:
            async with self.batch_lock:  # not beside a revocation's release of the same partitions (a rebalance
                # that expelled this worker lands there too): one thread at a time on the monitor's state
                await _housekeeping(self.on_revoked, {tp.partition for tp in self.assigned},
                                    failed="partitions_release_failed")
                self.assigned = set()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def run(self) -> None:
        """Run until ``stop()``; then close the clients."""
        assert self._consumer is not None, "call start() first"
        consumer = self._consumer
        w = self.settings.worker
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if self.before_batch is not None:
                        await self.before_batch()
                    if self._after_pending is not None:  # Redis interrupted it after the commit: finish it first
                        async with self.batch_lock:
                            await self._finish_batch()
                    got = await consumer.getmany(timeout_ms=w.poll_timeout_ms, max_records=w.max_batch)
                    if not got:
                        await self._tick()
                        continue
                    async with self.batch_lock:
                        try:
                            self._after_pending = await self._process(got)
                        except REDIS_DOWN:
                            # not committed: read the batch again (at-least-once, as after a restart)
                            self._read_again(got)
                            raise
                        except KafkaError as exc:
                            # scored, perhaps published, not committed (a worker frozen past its session
                            # timeout is expelled: CommitFailedError): as after a crash, its partitions'
                            # state is dropped unsaved and the batch read again, here or by the next owner
                            log.error("batch_not_committed", error=f"{type(exc).__name__}: {exc}"[:300],
                                      partitions=sorted({tp.partition for tp in got}))
                            drop = getattr(self.processor, "drop", None)
                            if drop is not None:
                                await _housekeeping(drop, {tp.partition for tp in got}, failed="drop_failed")
                            self._read_again(got)
                            if failures >= 5:  # not a lost membership: a broker that refuses every commit
                                raise
                            await asyncio.sleep(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                            failures += 1
                            continue
                        # committed: a Redis error from here on retries this step alone, never the batch
                        # (reading a committed batch again would score and alert it twice)
                        await self._finish_batch()
                    failures = 0
                except REDIS_DOWN as exc:
                    pause = _RETRY_S[min(failures, len(_RETRY_S) - 1)]
                    failures += 1
                    metrics.REDIS_ERRORS.labels(self.topology.name).inc()
                    log.error("redis_unavailable_retrying", error=f"{type(exc).__name__}: {exc}"[:300],
                              attempt=failures, retry_in_s=pause)
                    await asyncio.sleep(pause)
        finally:
            await self.close()

    def _read_again(self, got: dict[TopicPartition, list[Any]]) -> None:
        assert self._consumer is not None
        for tp, msgs in got.items():
            if msgs and tp in self._consumer.assignment():
                self._consumer.seek(tp, msgs[0].offset)

    async def _tick(self) -> None:
        if self.on_tick is None:
            return
        async with self.batch_lock:
            messages = await _housekeeping(self.on_tick, failed="tick_failed")
            if messages:
                await self.publish(messages)

    async def _finish_batch(self) -> None:
        """The ``after_batch`` hook of the last committed batch (the post-swap guard's rollback)."""
        emission = self._after_pending
        if emission is not None and self.after_batch is not None:
            res = self.after_batch(emission)
            if res is not None:
                await res
        self._after_pending = None

    async def _process(self, got: dict[TopicPartition, list[Any]]) -> Emission:
        assert self._consumer is not None
        t0 = time.perf_counter()
        self.stats.first_batch_at = self.stats.first_batch_at or t0
        records = [
            RawRecord(m.value, m.key, m.topic, m.partition, m.offset, m.timestamp or 0)
            for msgs in got.values()
            for m in msgs
        ]
        # torch releases the GIL; a thread keeps heartbeats and the HTTP probes answering meanwhile
        emission = await asyncio.to_thread(self.processor.process, records)
        outcome = emission.outcome
        for rej in outcome.rejections:
            log.warning("record_rejected", reason=rej.reason, topic=rej.record.topic,
                        partition=rej.record.partition, offset=rej.record.offset)
        await self.publish(emission.messages)
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in got.items() if msgs}
        await self._consumer.commit(offsets)
        self.stats.batches += 1
        self.stats.scored += len(outcome.scored)
        self.stats.rejected += len(outcome.rejections)
        self.stats.alerts += len(outcome.alerts)
        self.stats.committed += len(records)
        self.last_batch_at = time.time()
        stream = self.topology.name
        metrics.RECORDS_SCORED.labels(stream).inc(len(outcome.scored))
        metrics.BATCH_LATENCY.labels(stream).observe(time.perf_counter() - t0)
        metrics.BATCH_SIZE.labels(stream).observe(len(records))
        newest = max(r.timestamp_ms for r in records)
        if newest:
            metrics.E2E_LAG.labels(stream).set(max(0.0, time.time() - newest / 1000))
        for rej in outcome.rejections:
            metrics.RECORDS_REJECTED.labels(stream, rej.reason).inc()
        self.stats.alerts_published += len(emission.alerts)
        for a in emission.alerts:
            metrics.ALERTS.labels(stream, a.severity).inc()
        if emission.suppressed:
            metrics.ALERTS_SUPPRESSED.labels(stream).inc(emission.suppressed)
        return emission

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send and await the acks of every message (before the commit: at-least-once)."""
        assert self._producer is not None
        futs = [await self._producer.send(m.topic, m.value, key=m.key, headers=m.headers or None) for m in messages]
        if futs:
            await asyncio.gather(*futs)
