"""``stream-vae demo``: the whole loop on an embedded broker, live in the terminal.

Starts (or reaches) Kafka and Redis, trains a VAE on a clean synthetic prefix, registers it,
runs a real scorer worker process, publishes a stream with injected anomalies and a few
invalid records, consumes alerts and dead letters, and reports what was caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from stream_vae.config import KafkaSettings, RedisSettings
from stream_vae.exceptions import BrokerError, ConfigError
from stream_vae.services import Service, free_port, kafka_service, redis_service, stop_process
from stream_vae.topology import Topology, load_topology

_DEMO_TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "demo.yaml"
_INVALID = [
    b"{not json",
    b'{"entity": "host-00", "cpu": 1.0}',  # missing fields
    b'{"entity": "host-01", "cpu": "high", "load": 1, "mem": 1, "net_in": 1, "net_out": 1, '
    b'"latency_ms": 1, "errors": 0, "disk_io": 1}',  # wrong type
    b'{"entity": "host-02", "cpu": NaN, "load": 1, "mem": 1, "net_in": 1, "net_out": 1, '
    b'"latency_ms": 1, "errors": 0, "disk_io": 1}',  # not finite
]


def demo_topology() -> Topology:
    if not _DEMO_TOPOLOGY.exists():
        raise ConfigError(f"demo topology not found at {_DEMO_TOPOLOGY}; run the demo from a repository checkout")
    return load_topology(_DEMO_TOPOLOGY)


def scrape(port: int) -> dict[str, float]:
    """Sum of each metric family on the worker's /metrics (labels folded)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[base] = out.get(base, 0.0) + float(value)
    return out


def ready(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def worker_process(topology_file: Path, env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``stream-vae worker`` process; stopped with SIGTERM (graceful) at the end."""
    with log_file.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_vae.cli", "worker", "--topology", str(topology_file)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop_process(proc, timeout=30)


class Console:
    """One live status line on stderr (or nothing with ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def status(self, msg: str) -> None:
        if not self.quiet:
            print("\r" + msg.ljust(100), end="", file=sys.stderr, flush=True)


def run_demo(
    *, seconds: float = 60.0, rate: float = 2000.0, quiet: bool = False, n_entities: int = 6
) -> dict[str, Any]:
    """Run the demo; returns the summary (also what ``--json`` prints)."""
    from stream_vae.state import redis_client

    con = Console(quiet)
    deadline = time.monotonic() + seconds
    run_id = uuid.uuid4().hex[:8]
    with kafka_service() as kafka, redis_service() as redis_svc, tempfile.TemporaryDirectory() as tmp:
        con.say(f"broker: {kafka.kind} at {kafka.address}   redis: {redis_svc.kind}")
        base = demo_topology()
        suffix = "" if kafka.kind.startswith("embedded") else f".{run_id}"  # never mix with a shared broker's data
        topo = base.model_copy(update={
            "input_topic": base.input_topic + suffix,
            "alerts": base.alerts.model_copy(update={
                "anomaly_topic": base.alerts.anomaly_topic + suffix,
                "drift_topic": base.alerts.drift_topic + suffix,
                "dlq_topic": base.alerts.dlq_topic + suffix,
            }),
        })
        rs = RedisSettings(url=redis_svc.address, prefix=f"stream-vae-demo-{run_id}")
        client = redis_client(rs)
        try:
            demo = Demo(topo, kafka=kafka, redis=rs, client=client, tmp=Path(tmp), con=con, deadline=deadline,
                        rate=rate, n_entities=n_entities)
            summary = demo.run()
        finally:
            for k in client.scan_iter(f"{rs.prefix}:*"):  # leave no keys behind in a Redis we did not start
                client.delete(k)
            client.close()
        summary.update({"broker": kafka.kind, "redis": redis_svc.kind})
        return summary


class Demo:
    """One demo run: train and register, run a worker, stream, watch, summarise."""

    def __init__(self, topology: Topology, *, kafka: Service, redis: RedisSettings, client: Any, tmp: Path,
                 con: Console, deadline: float, rate: float, n_entities: int) -> None:
        self.topo = topology
        self.kafka = kafka
        self.redis = redis
        self.client = client
        self.tmp = tmp
        self.con = con
        self.deadline = deadline
        self.rate = rate
        self.n_entities = n_entities
        self.ks = KafkaSettings(bootstrap_servers=kafka.address)
        self.port = free_port()
        self.version = ""

    def train(self) -> None:
        from stream_vae.model.registry import RedisModelRegistry
        from stream_vae.model.train import train_model
        from stream_vae.synth import generate

        train_s = generate(n_entities=self.n_entities, n_steps=2000, anomaly_rate=0.0, seed=7)
        self.con.say(f"training a VAE on {len(train_s.rows)} clean records "
                     f"({self.n_entities} hosts, {len(self.topo.features)} features)")
        model = train_model(train_s.X, self.topo, entities=train_s.entities, max_seconds=20)
        art = RedisModelRegistry(self.client, prefix=self.redis.prefix).register(model, activate=True)
        self.version = art.version
        self.con.say(f"registered model {art.version} (threshold {model.calibrator.threshold:.3f}, "
                     f"{model.calibrator.method} fpr={model.calibrator.fpr}) in Redis")

    def worker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.address,
            "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": self.kafka.address,
            "STREAM_VAE_REDIS__URL": self.redis.url,
            "STREAM_VAE_REDIS__PREFIX": self.redis.prefix,
            "STREAM_VAE_WORKER__HTTP_PORT": str(self.port),
            "STREAM_VAE_WORKER__HTTP_HOST": "127.0.0.1",
            # Tansu waits the full rebalance timeout on a join: keep it short for a demo
            "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS": "3000",
            "STREAM_VAE_WORKER__MODEL_POLL_S": "1",
            "STREAM_VAE_LOG_FORMAT": "json",
        }

    def run(self) -> dict[str, Any]:
        from stream_vae.synth import generate

        self.train()
        topo_file = self.tmp / "demo.yaml"
        topo_file.write_text(yaml.safe_dump(json.loads(self.topo.model_dump_json())))
        log_file = self.tmp / "worker.log"
        with worker_process(topo_file, self.worker_env(), log_file) as proc:
            self.con.say(f"worker started (pid {proc.pid}); waiting until it is ready ...")
            while (info := ready(self.port)) is None or not info.get("ready"):
                if proc.poll() is not None:
                    raise BrokerError(f"worker exited with {proc.returncode}: {log_file.read_text()[-2000:]}")
                if time.monotonic() > self.deadline - 5:
                    raise BrokerError("worker not ready before --seconds ran out; give the demo more --seconds")
                time.sleep(0.25)
            budget = max(3.0, self.deadline - time.monotonic() - 8)
            n_steps = max(50, int(self.rate * budget / self.n_entities))
            stream = generate(n_entities=self.n_entities, n_steps=n_steps, t0=2000, anomaly_rate=0.004, seed=11)
            payloads: list[dict[str, Any] | bytes] = list(stream.rows)
            # invalid records through the stream: they must land in the DLQ, not crash the worker
            stride = max(1, len(payloads) // 8)
            for j, bad in enumerate(_INVALID * 2):
                payloads.insert(min(len(payloads), (j + 1) * stride), bad)
            self.con.say(f"publishing {len(payloads)} records at ~{self.rate:.0f}/s to {self.topo.input_topic} "
                         f"({len(stream.injected)} injected anomalies, {len(_INVALID) * 2} invalid records)")
            return asyncio.run(self.stream_and_watch(payloads, stream))

    async def stream_and_watch(self, payloads: list[dict[str, Any] | bytes], stream: Any) -> dict[str, Any]:
        from stream_vae.kafka import produce_rows, tail

        valid_index = [i for i, p in enumerate(payloads) if not isinstance(p, bytes)]
        where: dict[tuple[int, int], int] = {}  # (partition, offset) -> payload index
        alerts: list[dict[str, Any]] = []
        dlq: list[Any] = []
        stop = asyncio.Event()
        sent = 0
        t0 = time.monotonic()

        async def watch(topic: str, sink: list[Any], parse: bool) -> None:
            async for m in tail(self.ks, [topic], follow=True, stop=stop):
                sink.append(json.loads(m.value) if parse else m)

        async def show() -> None:
            while not stop.is_set():
                m = scrape(self.port)
                el = max(1e-6, time.monotonic() - t0)
                self.con.status(
                    f"sent {sent} ({sent / el:,.0f}/s)  scored {int(m.get('stream_vae_records_scored_total', 0))}  "
                    f"alerts {len(alerts)}  dlq {len(dlq)}  model {self.version}"
                )
                await asyncio.sleep(0.5)

        def progress(n: int) -> None:
            nonlocal sent
            sent = n

        def on_ack(i: int, p: int, o: int) -> None:
            where[(p, o)] = i

        tasks = [asyncio.create_task(watch(self.topo.alerts.anomaly_topic, alerts, True)),
                 asyncio.create_task(watch(self.topo.alerts.dlq_topic, dlq, False)),
                 asyncio.create_task(show())]
        n_sent = await produce_rows(self.ks, self.topo.input_topic, payloads, key_field=self.topo.key_field,
                                    rate=self.rate, progress=progress, on_ack=on_ack)
        n_valid = len(valid_index)
        scored = 0
        while time.monotonic() < self.deadline - 1:  # until every valid record is scored, or time is up
            scored = int(scrape(self.port).get("stream_vae_records_scored_total", 0))
            if scored >= n_valid and len(dlq) >= n_sent - n_valid:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)  # let the last alerts arrive
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(t, timeout=5)
        scored = int(scrape(self.port).get("stream_vae_records_scored_total", scored))
        self.con.status("")
        return self.summarise(stream, alerts=alerts, dlq=dlq, where=where, valid_index=valid_index, n_sent=n_sent,
                              scored=scored, elapsed=time.monotonic() - t0)

    def summarise(self, stream: Any, *, alerts: list[dict[str, Any]], dlq: list[Any],
                  where: dict[tuple[int, int], int], valid_index: list[int], n_sent: int, scored: int,
                  elapsed: float) -> dict[str, Any]:
        row_of = {p: k for k, p in enumerate(valid_index)}  # payload index -> stream row
        alert_rows = set()
        for a in alerts:
            r = a["data"]["record"]
            i = where.get((r["partition"], r["offset"]))
            if i is not None and i in row_of:
                alert_rows.add(row_of[i])
        detected = stream.count_detected(alert_rows)
        on_anomalous = sum(1 for k in alert_rows if stream.anomalous[k])
        normal = max(1, int((~stream.anomalous).sum()))
        summary = {
            "records_sent": n_sent,
            "records_scored": scored,
            "alerts": len(alerts),
            "alerts_on_injected": on_anomalous,
            "false_alert_rate": round((len(alert_rows) - on_anomalous) / normal, 5),
            "dlq": len(dlq),
            "invalid_sent": n_sent - len(valid_index),
            "injected_anomalies": len(stream.injected),
            "injected_detected": detected,
            "model_version": self.version,
            "elapsed_s": round(elapsed, 2),
        }
        self.con.say(
            f"\ndone: {scored}/{len(valid_index)} valid records scored, {len(alerts)} alerts, "
            f"{detected}/{len(stream.injected)} injected anomalies caught, {len(dlq)} records in the DLQ"
        )
        for a in alerts[:3]:
            d = a["data"]
            feats = ", ".join(f"{f['feature']}={f.get('value', '?')}" for f in d["top_features"])
            self.con.say(f"  alert {d['severity']} key={d['key']} score={d['score']:.2f} > {d['threshold']:.2f} "
                         f"top: {feats}")
        return summary
