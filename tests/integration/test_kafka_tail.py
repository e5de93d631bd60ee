"""`tail` (what `stream-vae alerts` reads with) on a real broker: it ends on a busy topic without
--follow, and with --follow it picks up a topic created after it started."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stream_vae.config import KafkaSettings
from stream_vae.kafka import ensure_topics, produce_rows, tail

pytestmark = pytest.mark.integration


def test_without_follow_it_ends_although_records_keep_arriving(kafka_bootstrap: str) -> None:
    k = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = f"busy.{uuid.uuid4().hex[:6]}"

    async def run() -> tuple[int, bool]:
        await ensure_topics(k, {topic: 2})
        await produce_rows(k, topic, [{"i": i, "e": str(i % 7)} for i in range(600)], key_field="e")
        stop = asyncio.Event()

        async def keep_writing() -> None:  # an alert every 50 ms: never 2 s of silence
            while not stop.is_set():
                await produce_rows(k, topic, [{"late": True}])
                await asyncio.sleep(0.05)

        writer = asyncio.create_task(keep_writing())
        try:
            seen = await asyncio.wait_for(_count(tail(k, [topic])), timeout=30)
            return seen, True
        finally:
            stop.set()
            await writer

    seen, ended = asyncio.run(run())
    assert ended and seen >= 600  # everything there at the start, and it returned


async def _count(messages) -> int:  # type: ignore[no-untyped-def]
    return len([m async for m in messages])


def test_follow_reads_a_topic_created_after_it_started(kafka_bootstrap: str) -> None:
    k = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    have, later = f"have.{uuid.uuid4().hex[:6]}", f"later.{uuid.uuid4().hex[:6]}"

    async def run() -> list[str]:
        await ensure_topics(k, {have: 1})
        await produce_rows(k, have, [{"i": 1}])
        got: list[str] = []
        stop = asyncio.Event()

        async def follow() -> None:
            async for m in tail(k, [have, later], follow=True, stop=stop):
                got.append(m.topic)

        reader = asyncio.create_task(follow())
        for _ in range(100):  # the existing topic is read although the other does not exist yet
            if got:
                break
            await asyncio.sleep(0.1)
        await ensure_topics(k, {later: 1})
        await produce_rows(k, later, [{"i": 2}, {"i": 3}])
        for _ in range(100):
            if got.count(later) == 2:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(reader, timeout=10)
        return got

    assert sorted(asyncio.run(run())) == sorted([have, later, later])
