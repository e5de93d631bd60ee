"""What the worker's closed loop costs on top of the pipeline: in-process, Redis on the machine, same process.

``Pipeline.process_batch`` alone against ``StreamMonitor.process`` (the pipeline, then drift
monitoring per partition, the drift policy, alert hygiene, the reservoir's ``LPUSH``, the swap
guard) on the demo's synthetic server metrics (6 hosts, 8 features, window 5, three VAEs),
24,000 records in batches of 1,000, with ``retrain.sample_every`` 1 and 3 (one host in three kept
whole: the model reads windows). The paths run in turn, three times; the median microseconds per
record of each, and its ratio to the pipeline alone.

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/closed_loop.py   # ~1 min on 1 core
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import redis
import torch
from pipeline_options import demo_stream  # python benchmarks/closed_loop.py puts benchmarks/ on the path

from stream_vae.model.train import train_model
from stream_vae.monitor import StreamMonitor
from stream_vae.pipeline import Pipeline
from stream_vae.testing import loaded, synth_topology


def main() -> None:
    torch.set_num_threads(1)
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    train, records = demo_stream()
    model_spec = {"latent_dim": 3, "hidden": [32, 16], "epochs": 5, "kl_warmup_epochs": 2, "ensemble": 3}
    topo = synth_topology(window=5, model=model_spec)
    model = loaded(train_model(train.X, topo, entities=list(train.entities)))

    def pipeline_alone() -> None:
        p = Pipeline(topo, model)
        for i in range(0, len(records), 1000):
            p.process_batch(records[i : i + 1000])

    def monitor(every: int) -> None:
        t = topo.model_copy(update={"retrain": topo.retrain.model_copy(update={"sample_every": every})})
        p = Pipeline(t, model)
        m = StreamMonitor(t, lambda: p, client=client, prefix=prefix, checkpoint_s=3600)
        for i in range(0, len(records), 1000):
            m.process(records[i : i + 1000])

    paths = {"pipeline alone": pipeline_alone, "closed loop, sample_every 1": lambda: monitor(1),
             "closed loop, sample_every 3": lambda: monitor(3)}
    us: dict[str, list[float]] = {k: [] for k in paths}
    try:
        for _ in range(3):
            for name, run in paths.items():
                t0 = time.perf_counter()
                run()
                us[name].append((time.perf_counter() - t0) / len(records) * 1e6)
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    base = float(np.median(us["pipeline alone"]))
    for name, r in us.items():
        print(f"{name:30s} {np.median(r):7.1f} us/record  ratio {np.median(r) / base:.2f}")


if __name__ == "__main__":
    main()
