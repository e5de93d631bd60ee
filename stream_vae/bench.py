"""``stream-vae bench throughput``: scored records/s of the worker's hot path through the broker,
with two baselines on the same broker, topic and messages in the same run:

- ``raw_loop_per_s``: aiokafka consume -> per-partition ``send_batch`` -> commit, no scoring;
- ``faust_passthrough_per_s``: a faust agent consuming each event and ``send``-ing it on.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import time
import uuid
import zlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_vae.config import KafkaSettings, Settings, WorkerSettings
from stream_vae.services import kafka_service


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


async def _fill(ks: KafkaSettings, topic: str, payloads: list[bytes], partitions: int) -> None:
    from stream_vae.kafka import ensure_topics, produce_rows

    await ensure_topics(ks, {topic: partitions})
    await produce_rows(ks, topic, payloads)


async def _raw_loop(ks: KafkaSettings, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(topic, **ks.client_kwargs(), group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=5000,
                                fetch_max_bytes=64 << 20, max_partition_fetch_bytes=8 << 20,
                                session_timeout_ms=6000, rebalance_timeout_ms=3000)
    producer = AIOKafkaProducer(**ks.client_kwargs(), acks="all", max_batch_size=1 << 20, linger_ms=5)
    await consumer.start()
    await producer.start()
    done, t0 = 0, 0.0
    try:
        while done < n:
            got = await consumer.getmany(timeout_ms=500, max_records=5000)
            if not got:
                continue
            if not t0:
                t0 = time.perf_counter()
            futs = []
            for tp, msgs in got.items():
                batch = producer.create_batch()
                for m in msgs:
                    if batch.append(key=m.key, value=m.value, timestamp=None) is None:
                        futs.append(await producer.send_batch(batch, f"{topic}.raw-out", partition=tp.partition))
                        batch = producer.create_batch()
                        batch.append(key=m.key, value=m.value, timestamp=None)
                futs.append(await producer.send_batch(batch, f"{topic}.raw-out", partition=tp.partition))
            await asyncio.gather(*futs)
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in got.items()})
            done += sum(len(v) for v in got.values())
        return done / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await producer.stop()


async def _hot_loop(ks: KafkaSettings, topic: str, n: int, processor: Any, topology: Any) -> tuple[float, int]:
    from stream_vae.hotpath import HotLoop

    settings = Settings(kafka=ks.model_copy(update={"session_timeout_ms": 6000, "rebalance_timeout_ms": 3000}),
                        worker=WorkerSettings(max_batch=5000))

    def until_done(_: Any) -> None:
        if loop.stats.scored + loop.stats.rejected >= n:
            loop.request_stop()

    loop = HotLoop(processor, settings=settings, topology=topology, after_batch=until_done,
                   group_id=f"bench-hot-{uuid.uuid4().hex[:6]}")
    await loop.start()
    await loop.run()
    return loop.stats.scored / (time.perf_counter() - loop.stats.first_batch_at), loop.stats.alerts


def run_throughput(*, records: int = 200_000, quiet: bool = False, faust_records: int | None = None) -> dict[str, Any]:
    from stream_vae.config import RedisSettings
    from stream_vae.demo import _DEMO_TOPOLOGY
    from stream_vae.hotswap import warm_up
    from stream_vae.model.registry import load_artifact, to_artifact
    from stream_vae.model.train import train_model
    from stream_vae.monitor import StreamMonitor
    from stream_vae.pipeline import Pipeline
    from stream_vae.services import redis_service
    from stream_vae.state import redis_client
    from stream_vae.synth import generate
    from stream_vae.topology import load_topology

    base = load_topology(_DEMO_TOPOLOGY)
    faust_n = faust_records or min(records, 20_000)
    with kafka_service() as kafka, redis_service() as redis_svc:
        ks = KafkaSettings(bootstrap_servers=kafka.address)
        topic = f"bench.{uuid.uuid4().hex[:6]}"
        topo = base.model_copy(update={
            "input_topic": topic,
            "alerts": base.alerts.model_copy(update={"anomaly_topic": f"{topic}.alerts", "dlq_topic": f"{topic}.dlq"}),
        })
        _say(quiet, f"training a small model; broker {kafka.kind} at {kafka.address}")
        tr = generate(n_steps=1500, anomaly_rate=0.0, seed=3)
        fast = topo.model_copy(update={"model": topo.model.model_copy(update={"epochs": 5})})
        model = load_artifact(to_artifact(train_model(tr.X, fast, entities=tr.entities), "bench"))
        warm_up(model)
        n_entities = 8
        stream = generate(n_entities=n_entities, n_steps=max(1, records // n_entities), t0=1500, seed=4)
        payloads = [json.dumps(r).encode() for r in stream.rows][:records]
        size = sum(map(len, payloads)) / len(payloads)
        _say(quiet, f"publishing {len(payloads)} records (~{size:.0f} bytes each) to {topic} (4 partitions)")
        asyncio.run(_fill(ks, topic, payloads, 4))
        _say(quiet, "measuring: the worker path (validate, featurize, VAE, calibrate, drift, hygiene, reservoir, "
                    "alerts, commit)")
        client = redis_client(RedisSettings(url=redis_svc.address))
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        pipeline = Pipeline(topo, model)
        monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=prefix)
        try:
            scored_per_s, n_alerts = asyncio.run(_hot_loop(ks, topic, len(payloads), monitor, topo))
        finally:
            for k in client.scan_iter(f"{prefix}:*"):
                client.delete(k)
        _say(quiet, "measuring: raw aiokafka consume -> send_batch -> commit")
        raw_per_s = asyncio.run(_raw_loop(ks, topic, len(payloads)))
        _say(quiet, f"measuring: faust agent per-event consume -> send ({faust_n} records)")
        proc = subprocess.run(
            [sys.executable, "-m", "stream_vae.bench_faust", kafka.address, topic, str(faust_n)],
            check=False, capture_output=True, text=True, timeout=600,
        )
        # faust's terminal spinner may prefix the line with escape codes: take the JSON object itself
        lines = [ln[ln.index("{"):] for ln in proc.stdout.splitlines() if "{" in ln]
        faust_per_s = json.loads(lines[-1])["per_s"] if lines else None
        if faust_per_s is None:
            _say(quiet, f"faust baseline failed: {proc.stderr[-800:]}")
    return {
        "records": len(payloads),
        "message_bytes": round(size, 1),
        "scored_per_s": round(scored_per_s, 1),
        "alerts": n_alerts,
        "raw_loop_per_s": round(raw_per_s, 1),
        "faust_passthrough_per_s": round(faust_per_s, 1) if faust_per_s else None,
        "faust_records": faust_n,
        "scored_vs_raw": round(scored_per_s / raw_per_s, 3),
        "scored_vs_faust": round(scored_per_s / faust_per_s, 1) if faust_per_s else None,
        "broker": kafka.kind,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}".strip(),
        "python": platform.python_version(),
    }


def run_drift(*, seeds: int = 5, steps: int = 6000, quiet: bool = False) -> dict[str, Any]:
    """Detection delay and false alarms of the drift monitor on the synthetic stream (no broker needed).

    For each seed: a stream whose workload shifts at a known step and a stationary stream of the same
    length (both with injected anomalies), scored by one model, fed in batches of 1000 through one
    ``DriftMonitor`` per partition (4 partitions, entities hashed). Every detector runs on the same data.
    """
    import numpy as np

    from stream_vae.drift import DriftMonitor
    from stream_vae.synth import generate
    from stream_vae.testing import quick_model, synth_topology

    base = synth_topology("bench-drift", epochs=15)
    model = quick_model(base, steps=2000)
    scorer = model.scorer()
    out: dict[str, Any] = {"seeds": seeds, "records_per_stream": steps * 6, "detectors": {}}
    for detector in ("page_hinkley", "adwin", "bocpd"):
        topo = base.model_copy(update={"drift": base.drift.model_copy(update={"detector": detector})})
        delays: list[int] = []
        misses = false_alarms = stationary_records = 0
        for seed in range(seeds):
            at_step = 2000 + steps // 3
            for drift_at in (at_step, None):
                s = generate(n_steps=steps, t0=2000, anomaly_rate=0.004, seed=100 + seed, drift_at=drift_at)
                r = scorer.score_many(model.scaler.transform(s.X))
                part = np.array([zlib.crc32(e.encode()) % 4 for e in s.entities])  # stable across runs
                mons = {p: DriftMonitor(topo, model.reference) for p in range(4)}
                first: int | None = None
                alarms = 0
                for i in range(0, len(s.X), 1000):
                    sl = np.arange(i, min(i + 1000, len(s.X)))
                    for p, mon in mons.items():
                        idx = sl[part[sl] == p]
                        if mon.update(score=r.score[idx], latent_mu=r.latent_mu[idx],
                                      contributions=r.contributions[idx]):
                            alarms += 1
                            first = int(sl[-1]) if first is None else first
                if drift_at is None:
                    false_alarms += alarms
                    stationary_records += len(s.X)
                else:
                    drift_row = int(np.flatnonzero(s.steps >= drift_at)[0])
                    early = first is not None and first < drift_row
                    if first is None or early:
                        misses += 1
                        false_alarms += int(early)
                    else:
                        delays.append(first - drift_row)
        out["detectors"][detector] = {
            "detected": len(delays),
            "missed": misses,
            "delay_records_median": float(np.median(delays)) if delays else None,
            "delay_records_max": int(max(delays)) if delays else None,
            "false_alarms_per_100k_stationary": round(1e5 * false_alarms / max(1, stationary_records), 3),
        }
        _say(quiet, f"{detector}: {out['detectors'][detector]}")
    return out
