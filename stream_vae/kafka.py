"""Small Kafka helpers shared by the CLI, the demo and the benches: topics, replay, tailing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from stream_vae.config import KafkaSettings
from stream_vae.exceptions import BrokerError


def unreachable(kafka: KafkaSettings, exc: Exception) -> BrokerError:
    return BrokerError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}. Set KAFKA_BOOTSTRAP_SERVERS")


async def ensure_topics(kafka: KafkaSettings, topics: dict[str, int]) -> None:
    """Create the topics that do not exist yet (name -> partitions)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise unreachable(kafka, exc) from None
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
                await admin.create_topics(new)
    finally:
        await admin.close()


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
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=10, max_batch_size=1 << 20, acks="all")
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise unreachable(kafka, exc) from None
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
    """Yield messages of ``topics`` without joining a group; without ``follow`` stop after ``idle_s`` of silence."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        raise unreachable(kafka, exc) from None
    try:
        tps: list[TopicPartition] = []
        while True:
            await consumer.topics()  # a metadata request for every topic: partitions_for_topic needs it
            tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
            if tps and {tp.topic for tp in tps} == set(topics):
                break
            if not follow or (stop is not None and stop.is_set()):
                if not tps:
                    return
                break
            await asyncio.sleep(0.5)  # following a topic nobody created yet: wait for it
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        quiet_since = time.monotonic()
        while stop is None or not stop.is_set():
            got = await consumer.getmany(timeout_ms=200)
            if got:
                quiet_since = time.monotonic()
                for msgs in got.values():
                    for m in msgs:
                        yield m
            elif not follow and time.monotonic() - quiet_since > idle_s:
                return
    except KafkaError as exc:
        raise BrokerError(f"reading {list(topics)}: {exc}") from None
    finally:
        await consumer.stop()
