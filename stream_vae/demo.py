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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from stream_vae.config import KafkaSettings, RedisSettings, Settings
from stream_vae.exceptions import BrokerError, ConfigError
from stream_vae.services import Service, free_port, kafka_service, redis_service, stop_process
from stream_vae.synth import SynthStream
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
def service_process(verb: str, topology_file: Path, env: dict[str, str], log_file: Path
                    ) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``stream-vae worker|trainer`` process; stopped with SIGTERM (graceful) at the end."""
    with log_file.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_vae.cli", verb, "--topology", str(topology_file)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop_process(proc, timeout=30)


class Console:
    """One live status line on stderr (or nothing with ``quiet``).

    On a terminal the line is redrawn in place; piped into a file or a CI log, where a carriage
    return would pile every update onto one line, it is printed as a line of its own at most every
    ``every_s`` seconds.
    """

    def __init__(self, quiet: bool, *, every_s: float = 5.0) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self._last = -float("inf")

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def status(self, msg: str) -> None:
        if self.quiet:
            return
        if self.tty:
            print("\r" + msg.ljust(100), end="", file=sys.stderr, flush=True)
        elif msg and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(msg, file=sys.stderr, flush=True)


Scenario = Literal["anomalies", "drift"]


def run_demo(
    *, seconds: float = 60.0, rate: float = 2000.0, quiet: bool = False, n_entities: int = 6,
    scenario: Scenario = "anomalies",
) -> dict[str, Any]:
    """Run the demo; returns the summary (also what ``--json`` prints)."""
    from stream_vae.state import redis_client

    con = Console(quiet)
    deadline = time.monotonic() + seconds
    run_id = uuid.uuid4().hex[:8]
    with kafka_service() as kafka, redis_service() as redis_svc, tempfile.TemporaryDirectory() as tmp:
        con.say(f"broker: {kafka.kind} at {kafka.address}   redis: {redis_svc.kind}   scenario: {scenario}")
        base = demo_topology()
        sfx = "" if kafka.kind.startswith("embedded") else f".{run_id}"  # never mix with a shared broker's data
        topo = base.model_copy(update={
            "input_topic": base.input_topic + sfx,
            "alerts": base.alerts.model_copy(update={
                "anomaly_topic": base.alerts.anomaly_topic + sfx, "drift_topic": base.alerts.drift_topic + sfx,
                "dlq_topic": base.alerts.dlq_topic + sfx, "audit_topic": f"stream-vae.audit{sfx}",
            }),
            "control": base.control.model_copy(update={
                "recalibrate_topic": base.control.recalibrate_topic + sfx,
                "model_topic": base.control.model_topic + sfx,
            }),
        })
        rs = RedisSettings(url=redis_svc.address, prefix=f"stream-vae-demo-{run_id}")
        client = redis_client(rs)
        try:
            demo = Demo(topo, kafka=kafka, redis=rs, client=client, tmp=Path(tmp), con=con, deadline=deadline,
                        rate=rate, n_entities=n_entities, scenario=scenario)
            summary = demo.run()
        finally:
            for k in client.scan_iter(f"{rs.prefix}:*"):  # leave no keys behind in a Redis we did not start
                client.delete(k)
            client.close()
        summary.update({"broker": kafka.kind, "redis": redis_svc.kind})
        return summary


@dataclass
class Watched:
    """What the demo reads back from Kafka while the stream runs."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    dlq: list[Any] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)


class Demo:
    """One demo run: train and register, run worker (and trainer), stream, watch, summarise."""

    def __init__(self, topology: Topology, *, kafka: Service, redis: RedisSettings, client: Any, tmp: Path,
                 con: Console, deadline: float, rate: float, n_entities: int, scenario: Scenario) -> None:
        self.topo = topology
        self.kafka = kafka
        self.redis = redis
        self.client = client
        self.tmp = tmp
        self.con = con
        self.deadline = deadline
        self.rate = rate
        self.n_entities = n_entities
        self.scenario = scenario
        # an external broker is reached the way the worker reaches it (STREAM_VAE_KAFKA__* security settings);
        # the embedded one speaks plain Kafka whatever the environment says
        self.external = not kafka.kind.startswith("embedded")
        base = Settings().kafka if self.external else KafkaSettings()
        self.ks = base.model_copy(update={"bootstrap_servers": kafka.address})
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

    def env(self, port: int) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items()  # the embedded broker speaks plain Kafka
                     if self.external or not k.startswith(("STREAM_VAE_KAFKA__SECURITY", "STREAM_VAE_KAFKA__SASL"))}
        return {
            **inherited,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.address,
            "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": self.kafka.address,
            "STREAM_VAE_REDIS__URL": self.redis.url,
            "STREAM_VAE_REDIS__PREFIX": self.redis.prefix,
            "STREAM_VAE_WORKER__HTTP_PORT": str(port),
            "STREAM_VAE_WORKER__HTTP_HOST": "127.0.0.1",
            # Tansu waits the full rebalance timeout on a join: keep it short for a demo
            "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS": "3000",
            "STREAM_VAE_WORKER__MODEL_POLL_S": "1",
            "STREAM_VAE_LOG_FORMAT": "json",
            # on a shared broker the demo's trainer must not join (and rebalance) the real trainers' group
            **({"STREAM_VAE_KAFKA__TRAINER_GROUP_ID": f"{self.redis.prefix}-trainer"} if self.external else {}),
        }

    def wait_ready(self, proc: subprocess.Popen[bytes], port: int, what: str, log_file: Path) -> None:
        while (info := ready(port)) is None or not info.get("ready"):
            if proc.poll() is not None:
                raise BrokerError(f"{what} exited with {proc.returncode}: {log_file.read_text()[-2000:]}")
            if time.monotonic() > self.deadline - 5:
                raise BrokerError(f"{what} not ready before --seconds ran out; give the demo more --seconds")
            time.sleep(0.25)

    def run(self) -> dict[str, Any]:
        from stream_vae.synth import generate

        self.train()
        topo_file = self.tmp / "demo.yaml"
        topo_file.write_text(yaml.safe_dump(json.loads(self.topo.model_dump_json())))
        with contextlib.ExitStack() as stack:
            wlog = self.tmp / "worker.log"
            proc = stack.enter_context(service_process("worker", topo_file, self.env(self.port), wlog))
            self.con.say(f"worker started (pid {proc.pid}); waiting until it is ready ...")
            if self.scenario == "drift":
                tport, tlog = free_port(), self.tmp / "trainer.log"
                tproc = stack.enter_context(service_process("trainer", topo_file, self.env(tport), tlog))
                self.con.say(f"trainer started (pid {tproc.pid})")
                self.wait_ready(tproc, tport, "trainer", tlog)
            self.wait_ready(proc, self.port, "worker", wlog)
            budget = max(3.0, self.deadline - time.monotonic() - 8)
            n_steps = max(50, int(self.rate * budget / self.n_entities))
            drift_at = 2000 + n_steps // 3 if self.scenario == "drift" else None
            stream = generate(n_entities=self.n_entities, n_steps=n_steps, t0=2000, anomaly_rate=0.004, seed=11,
                              drift_at=drift_at)
            payloads: list[dict[str, Any] | bytes] = list(stream.rows)
            # invalid records through the stream: they must land in the DLQ, not crash the worker
            stride = max(1, len(payloads) // 8)
            for j, bad in enumerate(_INVALID * 2):
                payloads.insert(min(len(payloads), (j + 1) * stride), bad)
            what = f", distribution shift at step {drift_at}" if drift_at else ""
            self.con.say(f"publishing {len(payloads)} records at ~{self.rate:.0f}/s to {self.topo.input_topic} "
                         f"({len(stream.injected)} injected anomalies, {len(_INVALID) * 2} invalid records{what})")
            return asyncio.run(self.stream_and_watch(payloads, stream, drift_at))

    async def stream_and_watch(self, payloads: list[dict[str, Any] | bytes], stream: SynthStream,
                               drift_at: int | None) -> dict[str, Any]:
        from stream_vae.kafka import produce_rows, tail

        t = self.topo
        valid_index = [i for i, p in enumerate(payloads) if not isinstance(p, bytes)]
        where: dict[tuple[int, int], int] = {}  # (partition, offset) -> payload index
        seen = Watched()
        stop = asyncio.Event()
        sent = 0
        t0 = time.monotonic()

        async def watch(topic: str, sink: list[Any], parse: bool) -> None:
            async for m in tail(self.ks, [topic], follow=True, stop=stop):
                event = json.loads(m.value) if parse else m
                if parse and event.get("type") == "io.stream-vae.incident.resolved":
                    continue  # alerts.group: incident also publishes the end of each incident; not an alert
                sink.append(event)

        async def show() -> None:
            while not stop.is_set():
                m = scrape(self.port)
                el = max(1e-6, time.monotonic() - t0)
                active = next((c["data"]["version"] for c in reversed(seen.control)
                               if c["data"]["action"] in ("activate", "rollback")), self.version)
                self.con.status(
                    f"sent {sent} ({sent / el:,.0f}/s)  scored {int(m.get('stream_vae_records_scored_total', 0))}  "
                    f"alerts {len(seen.alerts)}  drift {len(seen.drift)}  dlq {len(seen.dlq)}  model {active}"
                )
                await asyncio.sleep(0.5)

        def progress(n: int) -> None:
            nonlocal sent
            sent = n

        def on_ack(i: int, p: int, o: int) -> None:
            where[(p, o)] = i

        assert t.alerts.audit_topic is not None
        tasks = [asyncio.create_task(c) for c in (
            watch(t.alerts.anomaly_topic, seen.alerts, True), watch(t.alerts.dlq_topic, seen.dlq, False),
            watch(t.alerts.drift_topic, seen.drift, True), watch(t.control.model_topic, seen.control, True),
            watch(t.alerts.audit_topic, seen.audit, True), show(),
        )]
        n_sent = await produce_rows(self.ks, t.input_topic, payloads, key_field=t.key_field, rate=self.rate,
                                    progress=progress, on_ack=on_ack)
        n_valid = len(valid_index)
        while time.monotonic() < self.deadline - 1:  # until every valid record is scored, or time is up
            m = scrape(self.port)
            if m.get("stream_vae_records_scored_total", 0) >= n_valid and len(seen.dlq) >= n_sent - n_valid:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # let the last alerts and audit messages arrive
        metrics = scrape(self.port)
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5)
        self.con.status("")
        return self.summarise(stream, seen=seen, where=where, valid_index=valid_index, n_sent=n_sent,
                              metrics=metrics, drift_at=drift_at, elapsed=time.monotonic() - t0)

    def summarise(self, stream: SynthStream, *, seen: Watched, where: dict[tuple[int, int], int],
                  valid_index: list[int], n_sent: int, metrics: dict[str, float], drift_at: int | None,
                  elapsed: float) -> dict[str, Any]:
        row_of_payload = {p: k for k, p in enumerate(valid_index)}  # payload index -> stream row
        n_rows = len(stream.rows)

        def row(partition: int, offset: int) -> int | None:
            i = where.get((partition, offset))
            return row_of_payload.get(i) if i is not None else None

        # exactly-once accounting from the audit topic: which rows were scored, how often, by which version
        times_scored = np.zeros(n_rows, dtype=np.int64)
        version_of = np.full(n_rows, "", dtype=object)
        flagged = np.zeros(n_rows, dtype=bool)
        for a in seen.audit:
            for key, field_ in (("scored", None), ("flagged", flagged)):
                for p, ranges in a.get(key, {}).items():
                    for lo, hi in ranges:
                        for o in range(lo, hi + 1):
                            k = row(int(p), o)
                            if k is None:
                                continue
                            if field_ is None:
                                times_scored[k] += 1
                                version_of[k] = a["model_version"]
                            else:
                                field_[k] = True
        alert_rows = {k for a in seen.alerts
                      if (k := row(a["data"]["record"]["partition"], a["data"]["record"]["offset"])) is not None}
        detected = stream.count_detected(alert_rows)
        normal = ~stream.anomalous
        scored_rows = int((times_scored > 0).sum())
        summary: dict[str, Any] = {
            "scenario": self.scenario,
            "records_sent": n_sent,
            "records_scored": int(metrics.get("stream_vae_records_scored_total", scored_rows)),
            "alerts": len(seen.alerts),
            "alerts_on_injected": sum(1 for k in alert_rows if stream.anomalous[k]),
            "false_alert_rate": round(float(flagged[normal].mean()) if normal.any() else 0.0, 5),
            "dlq": len(seen.dlq),
            "invalid_sent": n_sent - len(valid_index),
            "injected_anomalies": len(stream.injected),
            "injected_detected": detected,
            "model_version": self.version,
            "records_lost": int((times_scored == 0).sum()),
            "records_double_scored": int((times_scored > 1).sum()),
            "elapsed_s": round(elapsed, 2),
        }
        if self.scenario == "drift" and drift_at is not None:
            before = stream.steps < drift_at
            new = (version_of != self.version) & (version_of != "")
            during = ~before & ~new
            activations = [c["data"] for c in seen.control if c["data"]["action"] == "activate"]
            summary.update({
                "drift_at_record": int(np.argmax(~before)),
                "drift_alerts": len(seen.drift),
                "retrains": len(activations),
                "refused": [c["data"].get("reason") for c in seen.control if c["data"]["action"] == "refuse"],
                "swaps": int(metrics.get("stream_vae_model_swaps_total", 0)),
                "rollbacks": int(metrics.get("stream_vae_model_rollbacks_total", 0)),
                "swap_pause_ms_max": round(metrics.get("stream_vae_swap_pause_max_seconds", 0.0) * 1000, 3),
                "final_model_version": str(version_of[times_scored > 0][-1]) if scored_rows else self.version,
                "alert_rate_before_drift": _rate(flagged, before),
                "alert_rate_during_drift": _rate(flagged, during),
                "alert_rate_after_swap": _rate(flagged, new),
                "records_after_swap": int(new.sum()),
            })
            summary["drift_implicated_features"] = seen.drift[0]["data"]["features"] if seen.drift else []
        self.report(summary, seen)
        return summary

    def report(self, s: dict[str, Any], seen: Watched) -> None:
        valid = s["records_sent"] - s["invalid_sent"]
        self.con.say(
            f"\ndone: {s['records_scored']}/{valid} valid records scored (lost {s['records_lost']}, "
            f"scored twice {s['records_double_scored']}), {s['alerts']} alerts, "
            f"{s['injected_detected']}/{s['injected_anomalies']} injected anomalies caught, {s['dlq']} in the DLQ"
        )
        if s["scenario"] == "drift":
            self.con.say(
                f"drift: {s['drift_alerts']} drift alerts, {s['retrains']} new versions activated (recalibration or "
                f"retrain), {s['swaps']} swaps "
                f"(max pause {s['swap_pause_ms_max']} ms), {s['rollbacks']} rollbacks; flagged rate "
                f"{s['alert_rate_before_drift']} before drift, {s['alert_rate_during_drift']} during, "
                f"{s['alert_rate_after_swap']} after the swap to {s['final_model_version']}"
            )
        for a in seen.alerts[:3]:
            d = a["data"]
            feats = ", ".join(f"{f['feature']}={f.get('value', '?')}" for f in d["top_features"])
            self.con.say(f"  alert {d['severity']} key={d['key']} score={d['score']:.2f} > {d['threshold']:.2f} "
                         f"top: {feats}")


def _rate(flagged: np.ndarray, mask: np.ndarray) -> float | None:  # type: ignore[type-arg]
    return round(float(flagged[mask].mean()), 5) if mask.any() else None
