"""Small Kafka helpers shared by the CLI, the demo and the benches: topics, replay, tailing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from stream_vae.config import KafkaSettings
from stream_vae.exceptions import BrokerError


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """aiokafka logs a failed first connection as an ERROR before raising it; the caller says it in one line."""
    # counted: two of these overlapping (clients starting together) each restored the level the other had
    # set, in the wrong order, and left aiokafka (and its module loggers) silenced for good
    logger = logging.getLogger("aiokafka")
    if _quieted[0] == 0:
        _quieted[1] = logger.level
        logger.setLevel(logging.CRITICAL)
    _quieted[0] += 1
    try:
        yield
    finally:
        _quieted[0] -= 1
        if _quieted[0] == 0:
            logger.setLevel(_quieted[1])


_quieted = [0, logging.NOTSET]  # open _quiet() contexts, and the level to restore when the last one ends


def unreachable(kafka: KafkaSettings, exc: Exception) -> BrokerError:
    return BrokerError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}. Set KAFKA_BOOTSTRAP_SERVERS")


async def _start(
    kafka: KafkaSettings, start: Callable[[], Awaitable[Any]], close: Callable[[], Awaitable[Any]]
) -> None:
    """Start an aiokafka client; if the broker does not answer, close it (or asyncio reports it unclosed)
    and raise one clear error."""
    try:
        with _quiet():
            await start()
    except KafkaConnectionError as exc:
        await close()
        raise unreachable(kafka, exc) from None


async def ensure_topics(kafka: KafkaSettings, topics: dict[str, int]) -> None:
    """Create the topics that do not exist yet (name -> partitions), with ``kafka.replication_factor``."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await _start(kafka, admin.start, admin.close)
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, n, kafka.replication_factor) for t, n in topics.items() if t not in existing]
        if new:
            # the broker answers per topic instead of raising: a policy, an ACL or a replication factor
            # the cluster cannot place would otherwise pass unnoticed until the first publish times out
            failed = creation_failures((await admin.create_topics(new)).topic_errors)
            if failed:
                raise BrokerError(f"could not create topics: {failed}")
    except KafkaError as exc:
        raise BrokerError(f"creating topics {sorted(topics)}: {exc}") from None
    finally:
        await admin.close()


def creation_failures(topic_errors: Sequence[tuple[Any, ...]]) -> str:
    """The per-topic errors of a CreateTopics answer, as one line ('' when every topic was created or
    already existed, e.g. made by a concurrent creator).

    >>> creation_failures([("a", 0, None), ("b", 36, "Topic with this name already exists.")])
    ''
    >>> creation_failures([("c", 38, "Replication factor: 3 larger than available brokers: 1.")])
    'c: Replication factor: 3 larger than available brokers: 1.'
    >>> creation_failures([("d", 29)])  # CreateTopics v0 answers carry no message
    'd: TopicAuthorizationFailedError'
    """
    return "; ".join(
        f"{t}: {rest[0] if rest and rest[0] else for_code(code).__name__}"
        for t, code, *rest in topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    )


async def produce_rows(
    kafka: KafkaSettings,
    topic: str,
    rows: Sequence[dict[str, Any] | bytes],
    *,
    key_field: str | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
    on_ack: Callable[[int, int, int], None] | None = None,
) -> int:
    """Publish rows as JSON (or raw bytes) to ``topic``; ``rate`` caps records/s. Returns records sent.

    ``on_ack(row_index, partition, offset)`` is called for every acknowledged record.
    """
    if rate is not None and rate <= 0:
        rate = None  # no limit, as the CLI documents (not one record per round trip)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=10, max_batch_size=1 << 20, acks="all")
    await _start(kafka, producer.start, producer.stop)
    t0 = time.monotonic()
    sent = 0
    chunk = 500 if rate is None else max(1, min(500, int(rate // 10) or 1))
    try:
        for start in range(0, len(rows), chunk):
            futs = []
            for i in range(start, min(len(rows), start + chunk)):
                r = rows[i]
                if isinstance(r, bytes):
                    value, key = r, None
                else:
                    value = json.dumps(r).encode()
                    key = str(r[key_field]).encode() if key_field and key_field in r else None
                futs.append((i, await producer.send(topic, value, key=key)))
            for i, f in futs:
                md = await f
                if on_ack is not None:
                    on_ack(i, md.partition, md.offset)
            sent += len(futs)
            if progress is not None:
                progress(sent)
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent


async def tail(
    kafka: KafkaSettings,
    topics: Sequence[str],
    *,
    from_beginning: bool = True,
    follow: bool = False,
    idle_s: float = 2.0,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Any]:
    """Yield messages of ``topics`` without joining a group.

    Without ``follow``: what the topics hold now, then return (at the end offsets read at the start, or
    after ``idle_s`` of silence, whichever comes first). With ``follow``: keep reading, and start reading a
    topic as soon as it is created.
    """
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await _start(kafka, consumer.start, consumer.stop)
    try:
        assigned: list[TopicPartition] = []
        end: dict[TopicPartition, int] = {}
        checked, first = -float("inf"), True
        quiet_since, started_ms = time.monotonic(), time.time() * 1000
        while stop is None or not stop.is_set():
            missing = [t for t in dict.fromkeys(topics) if t not in {tp.topic for tp in assigned}]
            if missing and time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                fresh = await _partitions(consumer, missing)
                if fresh:  # a topic created since (or at the start): read it from its first or next record
                    at = {tp: await consumer.position(tp) for tp in assigned}  # assign() forgets positions
                    assigned += fresh
                    consumer.assign(assigned)
                    for tp, offset in at.items():
                        consumer.seek(tp, offset)
                    if from_beginning or not first:  # a topic created while we follow: all of it is new
                        await consumer.seek_to_beginning(*fresh)
                    else:
                        await consumer.seek_to_end(*fresh)
                    if not follow:
                        end.update(await consumer.end_offsets(fresh))
                first = False
            if not assigned:
                if not follow:
                    return
                await asyncio.sleep(0.5)  # following topics nobody created yet: wait for them
                continue
            got = await consumer.getmany(timeout_ms=200)
            if got:
                quiet_since = time.monotonic()
                for msgs in got.values():
                    for m in msgs:
                        yield m
            if not follow and (
                # caught up with what the topics held at the start: nothing more, or only records written since
                # (both, since some brokers, e.g. Tansu, understate end offsets), or silent for idle_s
                (await _read_to(consumer, end) and all(m.timestamp >= started_ms for ms in got.values() for m in ms))
                or time.monotonic() - quiet_since > idle_s
            ):
                return
    except KafkaError as exc:
        raise BrokerError(f"reading {list(topics)}: {exc}") from None
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    # fresh metadata for every topic, as consumer.topics() fetches it: the consumer's own metadata only
    # follows the assigned topics, so it would never see a topic created after the first assign()
    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]


async def _read_to(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """Whether every partition was read up to the end offset it had when the tail started."""
    for tp, n in end.items():
        if await consumer.position(tp) < n:
            return False
    return True
