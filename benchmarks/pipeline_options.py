"""What the session 5 options cost a worker: in-process ``process_batch`` throughput, same process.

Three pipelines on the demo's synthetic server metrics (6 hosts, 8 features, window 5, three
VAEs): plain, with seasonal differences (``model.seasonal_period: 288``) and with incident alerts
(``alerts.group: incident``). 24,000 records in batches of 1,000, the three run in turn, three
times; the median records/s of each and its ratio to the plain pipeline.

    python benchmarks/pipeline_options.py   # ~1 min on 1 core
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from stream_vae.model.train import train_model
from stream_vae.pipeline import Pipeline
from stream_vae.records import RawRecord
from stream_vae.synth import FEATURES, SynthStream, generate
from stream_vae.testing import loaded, synth_topology

VARIANTS = {
    "plain": ({}, "record"),
    "seasonal_period 288": ({"seasonal_period": 288}, "record"),
    "alerts.group incident": ({}, "incident"),
}


def demo_stream() -> tuple[SynthStream, list[RawRecord]]:
    """The demo's synthetic server metrics: a clean training stretch, and 24,000 test records (1 % anomalous)."""
    train = generate(n_steps=3000, anomaly_rate=0.0, seed=0)
    test = generate(n_steps=4000, anomaly_rate=0.01, seed=1)
    records = [
        RawRecord(json.dumps({"entity": e, "ts": 0, **dict(zip(FEATURES, row, strict=True))}).encode(), e.encode(),
                  "bench", 0, i, 0)
        for i, (row, e) in enumerate(zip(test.X.tolist(), test.entities, strict=True))
    ]
    return train, records


def main() -> None:
    torch.set_num_threads(1)
    train, records = demo_stream()
    pipelines = {}
    for name, (model, group) in VARIANTS.items():
        topo = synth_topology(window=5, model={"latent_dim": 3, "hidden": [32, 16], "epochs": 5, "kl_warmup_epochs": 2,
                                               "ensemble": 3, **model}, alerts={"group": group, "cooldown_s": 0})
        pipelines[name] = (topo, loaded(train_model(train.X, topo, entities=list(train.entities))))
    rates: dict[str, list[float]] = {k: [] for k in pipelines}
    for _ in range(3):
        for name, (topo, model) in pipelines.items():
            p = Pipeline(topo, model)
            t0 = time.perf_counter()
            for i in range(0, len(records), 1000):
                p.process_batch(records[i : i + 1000])
            rates[name].append(len(records) / (time.perf_counter() - t0))
    base = float(np.median(rates["plain"]))
    for name, r in rates.items():
        print(f"{name:22s} {np.median(r):9.0f} records/s  ratio {np.median(r) / base:.2f}")


if __name__ == "__main__":
    main()
