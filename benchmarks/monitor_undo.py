"""What undoing a failed batch costs a worker (session 12): ``StreamMonitor.process`` with and without the
snapshot of the batch's entities that ``_Undo`` takes before the pipeline changes them, same process.

The demo-like stream of ``pipeline_options.py`` (6 hosts, 8 features, three VAEs), 24,000 records in
batches of 1,000 and of 100, against the Redis at ``REDIS_URL`` (the monitor's reservoir, alert gate and
drift keys: a key prefix of its own, deleted after). The two variants run in turn, three times; the
median records/s of each and their ratio.

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/monitor_undo.py   # ~2 min on 1 core
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np
import torch
from pipeline_options import demo_stream

from stream_vae import monitor as monitor_module
from stream_vae.config import RedisSettings
from stream_vae.model.train import train_model
from stream_vae.monitor import StreamMonitor
from stream_vae.pipeline import Pipeline
from stream_vae.state import redis_client
from stream_vae.testing import loaded, synth_topology


class _NoSnapshot(monitor_module._Undo):
    """The monitor before session 12: resume only, nothing kept to put back."""

    def resume(self, keys: Any) -> list[dict[str, Any]]:
        return self._resume(keys)


def main() -> None:
    torch.set_num_threads(1)
    train, records = demo_stream()
    topo = synth_topology(window=5, model={"latent_dim": 3, "hidden": [32, 16], "epochs": 5, "kl_warmup_epochs": 2,
                                           "ensemble": 3}, alerts={"cooldown_s": 0})
    model = loaded(train_model(train.X, topo, entities=list(train.entities)))
    client = redis_client(RedisSettings(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    prefix = f"bench-undo-{uuid.uuid4().hex[:8]}"
    undo = monitor_module._Undo
    try:
        for batch in (1000, 100):
            rates: dict[str, list[float]] = {"without": [], "with": []}
            for _ in range(3):
                for name, cls in (("without", _NoSnapshot), ("with", undo)):
                    monitor_module._Undo = cls  # type: ignore[misc]
                    pipeline = Pipeline(topo, model)
                    mon = StreamMonitor(topo, lambda p=pipeline: p, client=client, prefix=prefix, checkpoint_s=3600)
                    t0 = time.perf_counter()
                    for i in range(0, len(records), batch):
                        mon.process(records[i : i + batch])
                    rates[name].append(len(records) / (time.perf_counter() - t0))
            before, after = float(np.median(rates["without"])), float(np.median(rates["with"]))
            print(f"batches of {batch:4d}: without {before:7.0f} records/s, with {after:7.0f}, "
                  f"ratio {after / before:.3f}")
    finally:
        monitor_module._Undo = undo  # type: ignore[misc]
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


if __name__ == "__main__":
    main()
