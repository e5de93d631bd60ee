"""Command line: ``stream-vae VERB --help``. Errors are one line that says what to fix (exit 2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from stream_vae.clierrors import fail, friendly
from stream_vae.config import Settings
from stream_vae.evaluation.cli import eval_app
from stream_vae.evaluation.tcpd import tcpd_app

app = typer.Typer(
    name="stream-vae",
    help="Streaming anomaly and drift monitor for Kafka (VAE scoring, label-free calibration, hot-swapped models).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List, activate and roll back model versions.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (results go in BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")
eval_app.add_typer(tcpd_app)  # no name: its verbs (tcpd, changepoint-synthetic) join `stream-vae eval`

TopologyOpt = Annotated[Path, typer.Option("--topology", "-t", help="topology YAML file", show_default=False)]
PrettyOpt = Annotated[bool, typer.Option("--pretty", help="human-readable console logs instead of JSON")]


def _settings(pretty: bool = False) -> Settings:
    from stream_vae.logging import configure_logging

    s = Settings()
    configure_logging(fmt="console" if pretty else s.log_format, level=s.log_level)
    return s


def _torch(s: Settings) -> None:
    from stream_vae.model import set_torch_threads

    set_torch_threads(s.worker.torch_threads)


def _topology(path: Path) -> Any:
    from stream_vae.topology import load_topology

    return load_topology(path)


def _signing_key(s: Settings) -> bytes | None:
    return s.model_signing_key.get_secret_value().encode() if s.model_signing_key else None


def _registry(s: Settings) -> Any:
    from stream_vae.model.registry import RedisModelRegistry
    from stream_vae.state import redis_client

    return RedisModelRegistry.for_settings(redis_client(s.redis), s, signing_key=_signing_key(s))


@app.command("validate-topologies")
@friendly
def validate_topologies(
    directory: Annotated[Path | None, typer.Argument(
        help="a directory of topology YAML files, or one file (default: STREAM_VAE_TOPOLOGY_DIR, else "
             "./topologies)")] = None,
) -> None:
    """Check every topology file strictly; name the file and field of the first error."""
    from stream_vae.topology import load_all, load_topology

    directory = directory or Path(_settings().topology_dir)
    topos = {(t := load_topology(directory)).name: t} if directory.is_file() else load_all(directory)
    if not topos:
        fail(f"{directory}: no *.yaml topology files found")
    for name, t in topos.items():
        typer.echo(f"ok  {name}: {t.input_topic} -> {t.alerts.anomaly_topic} ({len(t.features)} features)")


@app.command()
@friendly
def train(
    topology: TopologyOpt,
    input: Annotated[Path, typer.Option("--input", "-i", help="training data: CSV with a header, or .npy [N, D]")],
    activate: Annotated[bool, typer.Option(help="make the new version active right away")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as one JSON line")] = False,
    pretty: PrettyOpt = False,
) -> None:
    """Train, calibrate and register a model version in Redis."""
    from rich.progress import Progress

    from stream_vae.io import read_rows, rows_to_matrix
    from stream_vae.model.train import train_model

    s = _settings(pretty)
    topo = _topology(topology)
    registry = _registry(s)  # fail fast on Redis before training
    _torch(s)
    X, ents = rows_to_matrix(read_rows(input, topo, note=_note), topo, note=_note)
    with Progress(transient=True, disable=json_out) as prog:
        task = prog.add_task(f"training {topo.name} on {len(X)} rows", total=topo.model.epochs)

        def cb(epoch: int, total: int, tr: float, val: float) -> None:
            prog.update(task, completed=epoch, description=f"epoch {epoch}/{total} train={tr:.3f} val={val:.3f}")

        model = train_model(X, topo, entities=ents, progress=cb)
    art = registry.register(model, activate=activate)
    out = {
        "stream": topo.name, "version": art.version, "active": activate, "rows": len(X),
        "epochs": len(model.history), "threshold": model.calibrator.threshold,
        "calibration": f"{model.calibrator.method} fpr={model.calibrator.fpr}", "sha256": art.manifest["sha256"],
    }
    typer.echo(json.dumps(out) if json_out else "registered " + " ".join(f"{k}={v}" for k, v in out.items()))


@app.command()
@friendly
def worker(topology: TopologyOpt, pretty: PrettyOpt = False) -> None:
    """Run a scorer worker for one topology against Kafka (SIGTERM stops it gracefully)."""
    from stream_vae.app import create_app, run_app
    from stream_vae.state import redis_client

    s = _settings(pretty)
    topo = _topology(topology)
    _check_port(s)
    redis_client(s.redis)  # one-line error now rather than a failing worker later
    asyncio.run(_ensure_topics(s, topo))
    run_app(create_app(s, topo, signing_key=_signing_key(s)))


@app.command()
@friendly
def trainer(
    topology: Annotated[list[Path], typer.Option("--topology", "-t", help="topology YAML (repeat for several)")],
    pretty: PrettyOpt = False,
) -> None:
    """Run the trainer: answers control.recalibrate with validated candidates (SIGTERM stops it)."""
    from stream_vae.app import create_trainer_app, run_app
    from stream_vae.state import redis_client

    s = _settings(pretty)
    topos = {t.name: t for t in (_topology(p) for p in topology)}
    _check_port(s)
    redis_client(s.redis)
    for t in topos.values():
        asyncio.run(_ensure_topics(s, t))
    run_app(create_trainer_app(s, topos, signing_key=_signing_key(s)))


def _note(msg: str) -> None:
    typer.echo(f"note: {msg}", err=True)


def _check_port(s: Settings) -> None:
    """The probes' port must be free: a second worker on one host otherwise died in a 47-line traceback."""
    import socket

    w = s.worker
    if w.http_port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in w.http_host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((w.http_host, w.http_port))
        except OSError as exc:
            fail(f"cannot listen on {w.http_host}:{w.http_port} ({exc.strerror}): another stream-vae worker or "
                 "trainer on this host (both serve their probes there)? Set STREAM_VAE_WORKER__HTTP_PORT")


async def _ensure_topics(s: Settings, topo: Any) -> None:
    from stream_vae.kafka import ensure_topics

    a, c = topo.alerts, topo.control
    topics = {topo.input_topic: topo.partitions, a.anomaly_topic: 1, a.drift_topic: 1, a.dlq_topic: 1,
              c.recalibrate_topic: 1, c.model_topic: 1}
    if a.audit_topic:
        topics[a.audit_topic] = 1
    await ensure_topics(s.kafka, topics)


@app.command()
@friendly
def produce(
    topology: TopologyOpt,
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV with a header, or .npy [N, D]")],
    rate: Annotated[float | None, typer.Option(min=0.0, help="records per second (default or 0: no limit)")] = None,
    pretty: PrettyOpt = False,
) -> None:
    """Replay a file into the topology's input topic."""
    from rich.progress import Progress

    from stream_vae.io import read_rows
    from stream_vae.kafka import produce_rows

    s = _settings(pretty)
    topo = _topology(topology)
    rows = read_rows(input, topo, note=_note)
    asyncio.run(_ensure_topics(s, topo))
    with Progress(transient=True) as prog:
        task = prog.add_task(f"producing to {topo.input_topic}", total=len(rows))
        n = asyncio.run(
            produce_rows(s.kafka, topo.input_topic, rows, key_field=topo.key_field, rate=rate,
                         progress=lambda k: prog.update(task, completed=k))
        )
    typer.echo(f"sent {n} records to {topo.input_topic}")


@app.command()
@friendly
def alerts(
    *,
    topology: Annotated[Path | None, typer.Option("--topology", "-t", help="read this topology's alert topics")] = None,
    stream: Annotated[str | None, typer.Option(help="only this stream's alerts (alert topics may be shared)")] = None,
    topic: Annotated[list[str] | None, typer.Option(
        help="topic(s) to read (default: the topology's, else alerts.anomaly and alerts.drift)")] = None,
    dlq: Annotated[bool, typer.Option("--dlq", help="read the dead-letter topic: each record with its reason")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep waiting for new alerts")] = False,
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest retained alert")] = True,
) -> None:
    """Print alerts (or, with --dlq, dead letters) as JSON lines."""
    from stream_vae.kafka import tail

    s = _settings()
    t = _topology(topology) if topology else None
    name = stream or (t.name if t else None)
    if topic:
        topics = topic
    elif dlq:
        topics = [t.alerts.dlq_topic if t else "stream-vae.dlq"]
    elif t:
        topics = [t.alerts.anomaly_topic, t.alerts.drift_topic]
    else:
        topics = ["alerts.anomaly", "alerts.drift"]

    seen: Counter[str | None] = Counter()
    printed = 0

    async def run() -> None:
        nonlocal printed
        async for m in tail(s.kafka, topics, follow=follow, from_beginning=from_beginning):
            line = _printable(m, name)
            if line is not None:
                typer.echo(line)
                sys.stdout.flush()
                printed += 1
            else:
                seen[_stream_of(m)] += 1

    asyncio.run(run())
    if not printed:  # say why nothing came: a typo in a topic or stream name printed nothing, exit 0
        _note(f"{', '.join(topics)}: {'no messages' if not seen else f'{sum(seen.values())} messages'}"
              + (f", none of stream '{name}' (streams seen: {sorted(str(k) for k in seen)[:10]})" if seen else "")
              + ("" if from_beginning else " since the start"))


def _stream_of(m: Any) -> str | None:
    """The stream a message names: an alert's ``data.stream``, a dead letter's header."""
    for k, v in m.headers or ():
        if k == "stream-vae.stream":
            return str(v.decode("utf-8", "replace"))
    try:
        data = json.loads(m.value).get("data", {})
        return str(data["stream"]) if isinstance(data, dict) and "stream" in data else None
    except (TypeError, ValueError, AttributeError):  # not JSON, not an object
        return None


def _printable(m: Any, stream: str | None) -> str | None:
    """One message as a line: a dead letter with its reason headers, an alert as it is (None: another stream's;
    alert and dead-letter topics may be shared)."""
    if stream is not None and _stream_of(m) not in (None, stream):
        return None
    headers = {k: v.decode("utf-8", "replace") for k, v in (m.headers or ()) if k.startswith("stream-vae.")}
    if "stream-vae.reason" in headers:
        return json.dumps({
            "stream": headers.get("stream-vae.stream"),
            "reason": headers["stream-vae.reason"], "detail": headers.get("stream-vae.detail"),
            "source": {k.removeprefix("stream-vae.source."): v for k, v in headers.items() if ".source." in k},
            "key": None if m.key is None else m.key.decode("utf-8", "backslashreplace"),
            "value": None if m.value is None else m.value.decode("utf-8", "backslashreplace"),
        })
    return m.value.decode("utf-8", "replace") if m.value is not None else ""


def _stream_name(topology: Path | None, stream: str | None) -> str:
    if stream:
        return stream
    if topology:
        return str(_topology(topology).name)
    fail("name the stream: --stream NAME or --topology FILE")


@models_app.command("list")
@friendly
def models_list(
    topology: Annotated[Path | None, typer.Option("--topology", "-t")] = None,
    stream: Annotated[str | None, typer.Option(help="stream name (default: every stream in the registry)")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show model versions and which one is active."""
    s = _settings()
    reg = _registry(s)
    streams = [_stream_name(topology, stream)] if (topology or stream) else reg.streams()
    rows = [{"stream": st, **v} for st in streams for v in reg.list_versions(st)]
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no models registered yet: stream-vae train --topology FILE --input DATA")
        return
    for r in rows:
        mark = "*" if r["active"] else " "
        typer.echo(f"{mark} {r['stream']:<16} {r['version']:<6} threshold={r['threshold']:.4f} "
                   f"{r['calibration']:<22} rows={r['n_train']} sha256={r['sha256']}")


@models_app.command("activate")
@friendly
def models_activate(
    version: Annotated[str, typer.Argument(help="version to activate, e.g. v3")],
    topology: Annotated[Path | None, typer.Option("--topology", "-t")] = None,
    stream: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Make VERSION active; running workers swap to it between batches."""
    s = _settings()
    name = _stream_name(topology, stream)
    reg = _registry(s)
    model = reg.load(name, version)  # verify digest/signature before pointing workers at it
    prev = reg.activate(name, version)
    typer.echo(f"{name}: active {prev} -> {version}")
    _announce(s, topology, name, version=version, digest=model.digest, action="activate", previous=prev)


@models_app.command("rollback")
@friendly
def models_rollback(
    topology: Annotated[Path | None, typer.Option("--topology", "-t")] = None,
    stream: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Re-activate the previously active version."""
    s = _settings()
    name = _stream_name(topology, stream)
    reg = _registry(s)
    frm, to = reg.rollback(name)
    typer.echo(f"{name}: rolled back {frm} -> {to}")
    _announce(s, topology, name, version=to, digest=reg.get(name, to).manifest["sha256"], action="rollback",
              previous=frm)


def _model_topic_of(s: Settings, name: str) -> str:
    """The stream's control.model topic from its topology in STREAM_VAE_TOPOLOGY_DIR, else the default."""
    from stream_vae.exceptions import TopologyError
    from stream_vae.topology import ControlSpec, load_topology, topology_files

    for p in topology_files(s.topology_dir):
        with contextlib.suppress(TopologyError, OSError):  # another stream's broken file is not this one's
            found = load_topology(p)
            if found.name == name:
                return found.control.model_topic
    return ControlSpec().model_topic


def _announce(s: Settings, topology: Path | None, name: str, **event: Any) -> None:
    """Tell running workers on control.model (they would also see the pointer at their next poll)."""
    from stream_vae.exceptions import BrokerError
    from stream_vae.hotswap import model_event
    from stream_vae.kafka import produce_rows

    topic = _topology(topology).control.model_topic if topology else _model_topic_of(s, name)
    try:
        asyncio.run(asyncio.wait_for(produce_rows(s.kafka, topic, [model_event(name, **event)]), timeout=10))
        typer.echo(f"announced on {topic}")
    except (BrokerError, TimeoutError) as exc:
        typer.echo(f"note: could not announce on {topic} ({exc}); workers switch at their next registry poll",
                   err=True)


@models_app.command("export")
@friendly
def models_export(
    version: Annotated[str, typer.Argument(help="version to export, e.g. v3")],
    out: Annotated[Path, typer.Option(help="directory; the model lands in OUT/VERSION")] = Path("models"),
    topology: Annotated[Path | None, typer.Option("--topology", "-t")] = None,
    stream: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Write a version's model.safetensors + manifest.json to a directory (atomically), after verifying it."""
    from stream_vae.model.registry import export_artifact

    s = _settings()
    name = _stream_name(topology, stream)
    reg = _registry(s)
    reg.load(name, version)  # digest (and signature) checked before anything is written
    typer.echo(f"exported {name} {version} to {export_artifact(reg.get(name, version), out)}")


@app.command("demo-data")
@friendly
def demo_data(
    out: Annotated[Path, typer.Option(help="directory for demo_train.csv and demo_stream.csv")] = Path("demo-data"),
    steps: Annotated[int, typer.Option(min=1, help="time steps per entity in the stream file")] = 2000,
    seed: int = 0,
) -> None:
    """Write the demo's synthetic training and stream files (CSV) for the demo topology."""
    from stream_vae.io import write_csv
    from stream_vae.synth import generate

    train_s = generate(n_steps=3000, anomaly_rate=0.0, seed=seed)
    stream_s = generate(n_steps=steps, t0=3000, anomaly_rate=0.004, seed=seed + 1)
    write_csv(out / "demo_train.csv", train_s.rows)
    write_csv(out / "demo_stream.csv", stream_s.rows)
    typer.echo(f"wrote {out}/demo_train.csv ({len(train_s.rows)} rows), {out}/demo_stream.csv "
               f"({len(stream_s.rows)} rows, {len(stream_s.injected)} injected anomalies)")


@app.command()
@friendly
def demo(
    seconds: Annotated[float, typer.Option(help="upper bound on the run time")] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary as the last stdout line")] = False,
    rate: Annotated[float, typer.Option(min=1.0, help="records per second to publish")] = 2000.0,
    scenario: Annotated[str, typer.Option(help="anomalies | drift (the stream shifts mid-run; a trainer retrains)")]
    = "anomalies",
    # the demo always prints for a person (its worker logs go to a file); kept so that old scripts still run
    pretty: Annotated[bool, typer.Option("--pretty", hidden=True)] = True,
) -> None:
    """Live demo on an embedded broker: train, register, score a synthetic stream, show alerts."""
    from stream_vae.demo import run_demo
    from stream_vae.services import exits_on_sigterm

    _torch(Settings())
    if scenario not in ("anomalies", "drift"):
        fail(f"--scenario must be 'anomalies' or 'drift', not {scenario!r}")
    with exits_on_sigterm():
        summary = run_demo(seconds=seconds, rate=rate, quiet=json_out, scenario=scenario)  # type: ignore[arg-type]
    if json_out:
        typer.echo(json.dumps(summary))


@bench_app.command("throughput")
@friendly
def bench_throughput(
    records: Annotated[int, typer.Option(help="records per measured run")] = 200_000,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scored records/s of one worker through the broker, against raw aiokafka and faust baselines."""
    from stream_vae.bench import run_throughput
    from stream_vae.services import exits_on_sigterm

    _torch(Settings())
    with exits_on_sigterm():
        res = run_throughput(records=records, quiet=json_out)
    typer.echo(json.dumps(res) if json_out else "\n".join(f"{k}: {v}" for k, v in res.items()))


@bench_app.command("drift")
@friendly
def bench_drift(
    seeds: Annotated[int, typer.Option(help="streams per detector (each: one drifting, one stationary)")] = 5,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Drift detection delay and false alarms on the synthetic stream: Page-Hinkley, ADWIN, BOCPD."""
    from stream_vae.bench import run_drift

    _torch(Settings())
    res = run_drift(seeds=seeds, quiet=json_out)
    typer.echo(json.dumps(res) if json_out else json.dumps(res, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
