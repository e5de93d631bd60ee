"""Public test helpers: small topologies, quickly trained models, record factories."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from stream_vae.model.registry import LoadedModel, load_artifact, to_artifact
from stream_vae.model.train import TrainedModel, train_model
from stream_vae.records import RawRecord
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
