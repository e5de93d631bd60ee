"""Public test helpers: small topologies, quickly trained models, record factories."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from stream_vae.model.registry import LoadedModel, load_artifact, to_artifact
from stream_vae.model.train import TrainedModel, train_model
from stream_vae.records import FloatArray, RawRecord
from stream_vae.synth import FEATURES, generate
from stream_vae.topology import Topology, parse_topology


def synth_topology(name: str = "synth", *, input_topic: str | None = None, epochs: int = 8, **extra: Any) -> Topology:
    """A topology for the synthetic server-metrics stream, cheap to train (one VAE unless ``model`` says
    ``ensemble``)."""
    data: dict[str, Any] = {
        "name": name,
        "input_topic": input_topic or f"records.{name}",
        "key_field": "entity",
        "timestamp_field": "ts",
        "features": [{"name": f} for f in FEATURES],
        "model": {"latent_dim": 3, "hidden": [32, 16], "epochs": epochs, "kl_warmup_epochs": 3,
                  "learning_rate": 0.003},
        "calibration": {"fpr": 0.002},
        **extra,
    }
    data["model"] = {"ensemble": 1, **data["model"]}
    return parse_topology(data, source="<testing>")


def quick_model(topology: Topology, *, steps: int = 1200, seed: int = 0) -> TrainedModel:
    tr = generate(n_steps=steps, anomaly_rate=0.0, seed=seed)
    return train_model(tr.X, topology, entities=tr.entities)


def loaded(model: TrainedModel, version: str = "v-test") -> LoadedModel:
    return load_artifact(to_artifact(model, version), topology=model.topology)


def raw_records(rows: Iterable[dict[str, Any] | bytes], *, topic: str = "t", partition: int = 0) -> list[RawRecord]:
    out = []
    for i, r in enumerate(rows):
        value = r if isinstance(r, bytes) else json.dumps(r).encode()
        out.append(RawRecord(value, None, topic, partition, i, 0))
    return out


def iid_stream(n: int, seed: int) -> FloatArray:
    """Stationary correlated Gaussian metrics: 2 latent factors behind 4 features, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.5, 0.0, 2.0], [0.0, 1.0, 1.0, -1.0]])
    out: FloatArray = z @ mix + 0.3 * rng.normal(size=(n, 4)) + np.array([10.0, 0.0, 5.0, 1.0])
    return out


def iid_topology(**calibration: object) -> Topology:
    """A small topology for :func:`iid_stream` (features f0..f3, key field ``entity``, window 2, fpr 0.02)."""
    return parse_topology({
        "name": "iid", "input_topic": "in", "key_field": "entity",
        "features": [{"name": f"f{i}"} for i in range(4)], "window": 2,
        "model": {"epochs": 3, "kl_warmup_epochs": 1, "hidden": [16, 8], "latent_dim": 2},
        "calibration": {"fpr": 0.02, **calibration},
    })


def keyed_records(X: FloatArray, keys: list[str]) -> list[RawRecord]:
    """One JSON record per row of ``X`` (features f0..), keyed by ``entity``."""
    rows = [{"entity": k, **{f"f{j}": float(v) for j, v in enumerate(row)}} for row, k in zip(X, keys, strict=True)]
    return raw_records(rows)
