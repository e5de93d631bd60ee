"""The hot path on a real broker and Redis: alerts out, dead letters out, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest

from stream_vae.hotpath import HotLoop
from stream_vae.hotswap import ModelSlot
from stream_vae.kafka import ensure_topics, produce_rows
from stream_vae.model.registry import RedisModelRegistry
from stream_vae.state import redis_client
from stream_vae.synth import generate
from stream_vae.testing import quick_model, synth_topology

from .helpers import read_all, settings

pytestmark = pytest.mark.integration

BAD = [b"{oops", b'{"entity": "h", "cpu": 1}', b'{"entity": "h", "cpu": NaN}', b"x" * 70_000]


async def _run_worker_until(loop: HotLoop, total: int, timeout: float) -> None:
    async def stopper() -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while loop.stats.scored + loop.stats.rejected < total:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        loop.request_stop()

    await loop.start()
    await asyncio.gather(loop.run(), stopper())


def test_records_in_alerts_and_dead_letters_out(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> None:
    """Injected anomalies come out as alerts with the contract fields, bad records land in the DLQ,
    and every valid record is scored exactly once."""
    name = f"it{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=8, alerts={"anomaly_topic": f"{name}.alerts", "dlq_topic": f"{name}.dlq"})
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    registry = RedisModelRegistry(redis_client(s.redis), prefix=redis_prefix)
    art = registry.register(quick_model(topo), activate=True)

    stream = generate(n_steps=600, t0=1200, anomaly_rate=0.01, seed=21)
    payloads: list[dict[str, object] | bytes] = list(stream.rows)
    for i, b in enumerate(BAD):
        payloads.insert(100 * (i + 1), b)
    produced: dict[tuple[int, int], int] = {}

    async def scenario() -> list[tuple[int, int]]:
        await ensure_topics(s.kafka, {topo.input_topic: 4})
        await produce_rows(s.kafka, topo.input_topic, payloads, key_field="entity",
                           on_ack=lambda i, p, o: produced.__setitem__((p, o), i))
        slot = ModelSlot(registry, topo, poll_s=0.5)
        pipeline = await slot.wait_for_model()
        scored: list[tuple[int, int]] = []
        loop = HotLoop(pipeline, settings=s, topology=topo,
                       after_batch=lambda em: scored.extend((r.partition, r.offset) for r in em.outcome.scored))
        await _run_worker_until(loop, len(payloads), timeout=90)
        return scored

    scored = asyncio.run(scenario())
    valid = {po for po, i in produced.items() if not isinstance(payloads[i], bytes)}
    counts = Counter(scored)
    assert set(counts) == valid, "every valid record is scored"
    assert max(counts.values()) == 1, "no record is scored twice"

    dlq = asyncio.run(read_all(s.kafka, topo.alerts.dlq_topic))
    assert sorted(m.value for m in dlq) == sorted(BAD)
    reasons = {dict(m.headers)["stream-vae.reason"].decode() for m in dlq}
    assert reasons == {"invalid_json", "missing_field", "non_finite", "oversize"}
    assert all(dict(m.headers)["stream-vae.source.topic"].decode() == topo.input_topic for m in dlq)

    alerts = [json.loads(m.value) for m in asyncio.run(read_all(s.kafka, topo.alerts.anomaly_topic))]
    assert alerts
    ev = alerts[0]
    assert {"specversion", "id", "source", "type", "time", "data"} <= set(ev)
    d = ev["data"]
    assert {"stream", "key", "record", "score", "threshold", "p_value", "severity", "top_features",
            "model_version", "calibration_id", "incident"} <= set(d)
    assert d["model_version"] == art.version and d["stream"] == name
    rec = d["record"]  # alerts.group: record (default): every alert is its own incident
    assert d["incident"] == {"id": f"{topo.input_topic}:{rec['partition']}:{rec['offset']}", "event": "open"}
    # the alerts point at the injected anomalies
    valid_rows = {p: k for k, p in enumerate(i for i, x in enumerate(payloads) if not isinstance(x, bytes))}
    hit = {valid_rows[produced[(a["data"]["record"]["partition"], a["data"]["record"]["offset"])]] for a in alerts}
    assert stream.anomalous[sorted(hit)].mean() > 0.6, "most alerts are on injected anomalies"
    assert stream.count_detected(hit) >= 0.8 * len(stream.injected)
