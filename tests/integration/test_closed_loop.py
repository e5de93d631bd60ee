"""The closed loop on a real broker and Redis, with real worker and trainer processes:
drift -> drift alert -> retrain -> swap on both workers -> nothing lost or scored twice,
and a bad model is rolled back by the guard without anyone's help."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_vae.kafka import produce_rows, tail
from stream_vae.model.registry import RedisModelRegistry
from stream_vae.services import free_port
from stream_vae.state import redis_client
from stream_vae.synth import generate
from stream_vae.testing import quick_model, synth_topology

from .helpers import cli, http_get, settings, wait_for, write_topology

pytestmark = pytest.mark.integration


def _start(verb: str, tfile: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    e = {**os.environ, **env, "STREAM_VAE_WORKER__HTTP_PORT": str(port), "STREAM_VAE_WORKER__HTTP_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "stream_vae.cli", verb, "--topology", str(tfile)], env=e,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, port


def test_drift_retrain_swap_exactly_once_and_guard_rollback(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_prefix: str
) -> None:
    """Two workers and a trainer: a known drift point leads to a drift alert within a bounded number of
    records, a retrain, a swap seen by both workers, every record scored exactly once across the swap,
    and a deliberately bad model activated by hand is rolled back automatically."""
    name = f"loop{uuid.uuid4().hex[:6]}"
    topo = synth_topology(
        name, epochs=12,
        alerts={"anomaly_topic": f"{name}.alerts", "drift_topic": f"{name}.drift", "dlq_topic": f"{name}.dlq",
                "audit_topic": f"{name}.audit", "cooldown_s": 0},
        control={"recalibrate_topic": f"{name}.recal", "model_topic": f"{name}.model"},
        drift={"cooldown_s": 600, "episode_timeout_s": 300},  # one recalibration in this test
        retrain={"min_records": 6000, "max_train_seconds": 60, "wait_timeout_s": 120},
        guard={"records": 2000},
    )
    tfile = write_topology(tmp_path / "t.yaml", topo)
    s = settings(kafka_bootstrap, redis_url, redis_prefix)
    registry = RedisModelRegistry(redis_client(s.redis), prefix=redis_prefix)
    v1 = registry.register(quick_model(topo, steps=2000), activate=True).version
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAM_VAE_REDIS__URL": redis_url,
           "STREAM_VAE_REDIS__PREFIX": redis_prefix, "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
           "STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS": "3000", "STREAM_VAE_WORKER__MODEL_POLL_S": "0.5",
           "STREAM_VAE_WORKER__MAX_BATCH": "1000"}
    procs = [_start(v, tfile, env, tmp_path / f"{v}{i}.log") for i, v in enumerate(["trainer", "worker", "worker"])]
    drift_step = 2000 + 1500
    stream = generate(n_steps=20_000, t0=2000, anomaly_rate=0.002, seed=41, drift_at=drift_step)
    drift_row = int(np.flatnonzero(stream.steps >= drift_step)[0])
    where: dict[tuple[int, int], int] = {}
    events: dict[str, list[dict[str, Any]]] = {"model": [], "drift": [], "audit": []}

    async def scenario() -> int:
        stop = asyncio.Event()

        async def watch(topic: str, sink: list[dict[str, Any]]) -> None:
            async for m in tail(s.kafka, [topic], follow=True, stop=stop):
                sink.append(json.loads(m.value))

        watchers = [asyncio.create_task(watch(f"{name}.{k}", v)) for k, v in
                    (("model", events["model"]), ("drift", events["drift"]), ("audit", events["audit"]))]

        def actions(a: str) -> list[dict[str, Any]]:
            return [e["data"] for e in events["model"] if e["data"]["action"] == a]

        sent = 0

        async def send(n: int, pause: float = 0.2) -> None:
            nonlocal sent
            chunk = stream.rows[sent : sent + n]
            assert chunk, "the generated stream is long enough for every phase"
            await produce_rows(s.kafka, topo.input_topic, chunk, key_field="entity",
                               on_ack=lambda i, p, o, base=sent: where.__setitem__((p, o), base + i))
            sent += len(chunk)
            await asyncio.sleep(pause)  # a live stream, not a burst

        async def until(cond: Any, timeout: float, trickle: int = 300) -> None:
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline, f"timed out; model events: {events['model']}"
                await send(trickle, pause=0.5)

        # A: the old regime, the shift, and enough of the new regime for a retrain
        while sent < drift_row + 12_000:
            await send(1500)
        # B: keep the stream trickling until the retrained model is announced
        await until(lambda: actions("activate"), 150)
        # C: the swap and the guard's watch on the new model
        for _ in range(4):
            await send(1500)
        # D: a deliberately bad model, the pre-drift v1, activated by hand in the new regime
        r = await asyncio.to_thread(cli, "models", "activate", v1, "-t", str(tfile), env=env)
        assert r.returncode == 0, r.stderr
        await until(lambda: actions("rollback"), 90, trickle=1000)
        for _ in range(2):
            await send(1500)
        await asyncio.sleep(3)
        stop.set()
        for w in watchers:
            await asyncio.wait_for(w, 10)
        return sent

    try:
        for _, port in procs:
            wait_for(lambda port=port: http_get(port, "/readyz")[0] == 200, 90, "processes ready")  # type: ignore[misc]
        sent = asyncio.run(scenario())
    finally:
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            p.wait(60)
    logs = "\n".join(
        (tmp_path / f"{v}{i}.log").read_text()[-3000:] for i, v in enumerate(["trainer", "worker", "worker"])
    )
    assert all(p.returncode == 0 for p, _ in procs), logs

    # drift alert within a bounded number of records after the drift point
    assert events["drift"], "a drift alert was published\n" + logs
    d = events["drift"][0]["data"]
    det_row = where[(d["partition"], d["offset"])]
    assert drift_row <= det_row <= drift_row + 6000, (drift_row, det_row)
    assert {"test", "statistic", "threshold", "window", "latent_dims", "features"} <= set(d)

    # a retrain, announced, then seen by both workers
    activations = [e["data"] for e in events["model"] if e["data"]["action"] == "activate"]
    assert activations, ([e["data"] for e in events["model"]], (tmp_path / "trainer0.log").read_text()[-3000:])
    v2 = activations[0]["version"]
    assert activations[0]["previous"] == v1 and activations[0]["digest"]
    workers_on_v2 = {a["worker"] for a in events["audit"] if a["model_version"] == v2}
    assert len(workers_on_v2) == 2, "both workers swapped to the retrained model"

    # the bad model was rolled back automatically to v2
    rollbacks = [e["data"] for e in events["model"] if e["data"]["action"] == "rollback"]
    assert rollbacks and rollbacks[0]["version"] == v2 and rollbacks[0]["previous"] == v1, logs
    assert registry.active_version(name) == v2

    # exactly once across swaps and rollback
    counts: Counter[int] = Counter()
    for a in events["audit"]:
        for p, ranges in a["scored"].items():
            for lo, hi in ranges:
                for o in range(lo, hi + 1):
                    counts[where[(int(p), o)]] += 1
    assert set(counts) == set(range(sent)), f"lost: {len(set(range(sent)) - set(counts))}"
    assert max(counts.values()) == 1
