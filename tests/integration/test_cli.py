"""The command line against the real broker and Redis, the way users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stream_vae.demo import scrape
from stream_vae.services import free_port
from stream_vae.testing import synth_topology

from .helpers import cli, http_get, wait_for, write_topology

pytestmark = pytest.mark.integration


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAM_VAE_REDIS__URL": redis_url,
        "STREAM_VAE_REDIS__PREFIX": redis_prefix,
        "STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS": "3000",
        "STREAM_VAE_WORKER__MODEL_POLL_S": "0.5",
    }


def test_worker_process_probes_train_produce_alerts_and_sigterm(tmp_path: Path, env: dict[str, str]) -> None:
    """A worker started like the image's entrypoint (the `stream-vae` console script) is live at once,
    ready only after a model is trained, scores replayed data, exposes metrics, and exits 0 on SIGTERM."""
    name = f"cli{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name, epochs=5, alerts={"anomaly_topic": f"{name}.alerts", "dlq_topic": f"{name}.dlq",
                                                  "drift_topic": f"{name}.drift"})
    tfile = write_topology(tmp_path / "t.yaml", topo)
    data = tmp_path / "data"
    r = cli("demo-data", "--out", str(data), "--steps", "400", env=env)
    assert r.returncode == 0, r.stderr
    port = free_port()
    wenv = {**os.environ, **env, "STREAM_VAE_WORKER__HTTP_PORT": str(port), "STREAM_VAE_WORKER__HTTP_HOST": "127.0.0.1"}
    entrypoint = str(Path(sys.executable).with_name("stream-vae"))  # the image's ENTRYPOINT
    proc = subprocess.Popen([entrypoint, "worker", "--topology", str(tfile)],
                            env=wenv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, 60, "liveness")
        code, body = http_get(port, "/readyz")
        assert code == 503 and json.loads(body)["model_version"] is None, "not ready without a model"
        before = scrape(port)  # the stream's series exist at 0 before their first event (alert rules, panels)
        for series in ("stream_vae_drift_open", "stream_vae_model_rollbacks_total", "stream_vae_redis_errors_total"):
            assert before.get(series) == 0.0, (series, sorted(before))

        r = cli("train", "--topology", str(tfile), "--input", str(data / "demo_train.csv"), "--json", env=env)
        assert r.returncode == 0, r.stderr
        trained = json.loads(r.stdout.strip().splitlines()[-1])
        assert trained["version"] == "v1" and trained["active"] is True

        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, "readiness after training")
        r = cli("produce", "--topology", str(tfile), "--input", str(data / "demo_stream.csv"), env=env)
        assert r.returncode == 0, r.stderr
        n_rows = sum(1 for _ in (data / "demo_stream.csv").open()) - 1

        wait_for(lambda: scrape(port).get("stream_vae_records_scored_total", 0) >= n_rows, 60, "all scored")
        metrics = http_get(port, "/metrics")[1]
        assert 'stream_vae_active_model_info{calibration_id="v1/' in metrics
        assert "stream_vae_batch_seconds_bucket" in metrics

        r = cli("alerts", "--topic", f"{name}.alerts", env=env)
        assert r.returncode == 0
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        assert lines and len(lines) == scrape(port)["stream_vae_alerts_total"]
        assert all(a["data"]["model_version"] == "v1" for a in lines)

        r = cli("models", "list", "--stream", name, "--json", env=env)
        assert [m["version"] for m in json.loads(r.stdout)] == ["v1"]
        # faust's own consumer would leave a `<app id>-__assignor-__leader` topic per pod on the cluster
        assert not [t for t in _topics(env["KAFKA_BOOTSTRAP_SERVERS"]) if name in t and "assignor" in t]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert "worker_stopped" in out


def _topics(bootstrap: str) -> list[str]:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(names())


def test_models_activate_and_rollback(tmp_path: Path, env: dict[str, str]) -> None:
    """models activate / rollback move the active pointer and say so."""
    name = f"m{uuid.uuid4().hex[:6]}"
    tfile = write_topology(tmp_path / "t.yaml", synth_topology(name, epochs=2))
    cli("demo-data", "--out", str(tmp_path), "--steps", "50", env=env)
    for _ in range(2):
        r = cli("train", "-t", str(tfile), "-i", str(tmp_path / "demo_train.csv"), env=env)
        assert r.returncode == 0, r.stderr
    r = cli("models", "list", "-t", str(tfile), "--json", env=env)
    assert [(m["version"], m["active"]) for m in json.loads(r.stdout)] == [("v1", False), ("v2", True)]
    r = cli("models", "rollback", "-t", str(tfile), env=env)
    assert r.returncode == 0 and "v2 -> v1" in r.stdout
    r = cli("models", "activate", "v2", "--stream", name, env=env)
    assert r.returncode == 0 and "v1 -> v2" in r.stdout
    r = cli("models", "activate", "v9", "--stream", name, env=env)
    assert r.returncode == 2 and "not found" in r.stderr
    r = cli("models", "export", "v2", "--stream", name, "--out", str(tmp_path / "m"), env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "m" / "v2").iterdir()) == ["manifest.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["models", "list"], {"STREAM_VAE_REDIS__URL": "redis://127.0.0.1:1/0"}, "cannot reach Redis"),
        (["produce", "-t", "topologies/demo.yaml", "-i", "missing.csv"], {}, "input file not found"),
        (["worker", "-t", "nope.yaml"], {}, "no such topology file"),
        (["models", "list"], {"STREAM_VAE_KAFKA__SECURITY_PROTOCOL": "TLS"}, "STREAM_VAE_KAFKA__SECURITY_PROTOCOL"),
        (["alerts"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "cannot reach Kafka"),
        # fail() inside a verb raised typer.Exit, a RuntimeError, which the error handler printed again
        (["models", "activate", "v1"], {}, "name the stream"),
        (["worker", "-t", "topologies"], {}, "topologies"),  # a directory where a file was meant
        (["validate-topologies"], {"STREAM_VAE_TOPOLOGY_DIR": "no-such-dir"}, "no-such-dir"),
        (["models", "list"], {"STREAM_VAE_KAFKA__SASL_MECHANISM": "PLAIN"}, "needs security_protocol SASL_SSL"),
        (["models", "list"], {"STREAM_VAE_REDIS__URL": "127.0.0.1:6379"}, "must start with redis://"),
    ],
)
def test_bad_config_is_one_line_not_a_traceback(args: list[str], extra_env: dict[str, str], message: str,
                                               env: dict[str, str]) -> None:
    """Bad config or a missing broker/Redis gives a one-line error naming the fix, exit code 2."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "stream_vae.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **env, **extra_env}, cwd=root, timeout=60, check=False)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "Unclosed" not in r.stderr  # clients that failed to start are closed
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # nothing else: no library's own ERROR line first


def test_every_verb_has_help() -> None:
    """Each verb answers --help."""
    for verb in (["demo"], ["worker"], ["train"], ["produce"], ["alerts"], ["models", "list"],
                 ["validate-topologies"], ["bench", "throughput"], ["demo-data"]):
        r = cli(*verb, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, verb


def test_produce_a_csv_without_the_key_column_or_with_a_byte_order_mark(tmp_path: Path, env: dict[str, str],
                                                                        kafka_bootstrap: str) -> None:
    """A spreadsheet's CSV (BOM, feature columns only) is one entity "0", as a .npy file is; before, every
    record lacked its key and went to the dead-letter topic while `produce` reported success."""
    import asyncio

    from stream_vae.config import KafkaSettings
    from stream_vae.kafka import tail

    name = f"p{uuid.uuid4().hex[:6]}"
    topo = synth_topology(name)
    tfile = write_topology(tmp_path / "t.yaml", topo)
    header = ",".join(topo.feature_names)
    (tmp_path / "x.csv").write_text("\ufeff" + header + "\n" + ",".join(["50"] * len(topo.feature_names)) + "\n",
                                    encoding="utf-8")
    r = cli("produce", "-t", str(tfile), "-i", str(tmp_path / "x.csv"), env=env)
    assert r.returncode == 0, r.stderr
    assert "note: " in r.stderr and "one entity" in r.stderr  # said, not silent

    async def read() -> list[dict[str, object]]:
        return [json.loads(m.value) async for m in tail(KafkaSettings(bootstrap_servers=kafka_bootstrap),
                                                        [topo.input_topic])]

    [record] = asyncio.run(read())
    assert record[topo.key_field or ""] == "0" and record[topo.feature_names[0]] == 50.0
    (tmp_path / "empty.csv").write_text(header + "\n")
    r = cli("train", "-t", str(tfile), "-i", str(tmp_path / "empty.csv"), env=env)
    assert r.returncode == 2 and "no data rows" in r.stderr and "Traceback" not in r.stderr


def test_a_second_worker_on_a_busy_port_says_which_setting_to_change(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root = Path(__file__).resolve().parents[2]
        r = subprocess.run([sys.executable, "-m", "stream_vae.cli", "worker", "-t", "topologies/demo.yaml"],
                           capture_output=True, text=True, cwd=root, timeout=60, check=False,
                           env={**os.environ, **env, "STREAM_VAE_WORKER__HTTP_PORT": str(port),
                                "STREAM_VAE_WORKER__HTTP_HOST": "127.0.0.1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "STREAM_VAE_WORKER__HTTP_PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_validate_topologies_takes_a_file_too() -> None:
    r = cli("validate-topologies", str(Path(__file__).resolve().parents[2] / "topologies" / "demo.yaml"))
    assert r.returncode == 0 and r.stdout.startswith("ok  demo"), r.stderr


def test_alerts_says_why_nothing_was_printed(env: dict[str, str]) -> None:
    """A typo in --topic or --stream printed nothing and exited 0: now a note says the topic held nothing,
    or which streams its messages were of."""
    import asyncio
    import uuid

    from stream_vae.config import KafkaSettings
    from stream_vae.kafka import produce_rows

    topic = f"al{uuid.uuid4().hex[:6]}"
    out = cli("alerts", "--topic", f"{topic}-typo", env=env, timeout=60)
    assert out.returncode == 0 and out.stdout == "" and f"note: {topic}-typo: no messages" in out.stderr
    alert = {"type": "io.stream-vae.anomaly", "data": {"stream": "svc_latency"}}
    asyncio.run(produce_rows(KafkaSettings(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"]), topic, [alert] * 3))
    out = cli("alerts", "--topic", topic, "--stream", "svc-latency", env=env, timeout=60)
    assert out.stdout == "" and "3 messages, none of stream 'svc-latency' (streams seen: ['svc_latency'])" in out.stderr
    out = cli("alerts", "--topic", topic, "--stream", "svc_latency", env=env, timeout=60)
    assert len(out.stdout.splitlines()) == 3 and "note:" not in out.stderr


def test_activating_a_version_of_a_misspelled_stream_says_so(env: dict[str, str]) -> None:
    out = cli("models", "activate", "v4", "--stream", "no_such_stream", env=env, timeout=60)
    assert out.returncode == 2 and "no model of stream 'no_such_stream' at all (streams with models:" in out.stderr
