"""False-positive rate on long stationary streams through ``Pipeline.process_batch`` (detection.md table).

Two streams with no anomaly, so every flag is a false positive; the observed rate is printed as a
multiple of the configured budget, for the tracked threshold (the default) and a fixed one.

* i.i.d.: the unit tests' correlated Gaussian stream (``stream_vae.testing.iid_stream``), 3
  entities, trained on 40k records, 200k records scored.
* synthetic server metrics (``synth.generate``, 6 hosts, daily seasonality + AR noise), trained on
  4,000 steps per host, 20,000 steps per host (120k records) scored.

    python benchmarks/fpr_stationary.py      # ~6 min on 1 core
"""

from __future__ import annotations

import numpy as np
import torch

from stream_vae.model.train import train_model
from stream_vae.pipeline import Pipeline
from stream_vae.records import RawRecord
from stream_vae.synth import generate
from stream_vae.testing import iid_stream, iid_topology, keyed_records, loaded, raw_records, synth_topology
from stream_vae.topology import Topology


def flag_rate(topo: Topology, train: np.ndarray, entities: list[str] | None, recs: list[RawRecord]) -> np.ndarray:
    p = Pipeline(topo, loaded(train_model(train, topo, entities=entities)))
    return np.concatenate([p.process_batch(recs[i : i + 2000]).is_anomaly for i in range(0, len(recs), 2000)])


def main() -> None:
    torch.set_num_threads(1)
    n = 200_000
    keys = [("a", "b", "c")[i % 3] for i in range(n)]
    iid = keyed_records(iid_stream(n, 2), keys)
    for fpr in (0.005, 0.02):
        for adapt in ("track", "off"):
            flags = flag_rate(iid_topology(adapt=adapt, fpr=fpr), iid_stream(40_000, 1), None, iid)
            print(f"iid   fpr={fpr:<6} adapt={adapt:<5} observed/budget {flags.mean() / fpr:.2f}", flush=True)
    train = generate(n_steps=4000, anomaly_rate=0.0, seed=0)
    live = generate(n_steps=20_000, t0=4000, anomaly_rate=0.0, seed=1)
    hosts = np.array([r["entity"] for r in live.rows])
    recs = raw_records(live.rows)
    for fpr in (0.002, 0.01):
        for adapt in ("track", "off"):
            topo = synth_topology(epochs=30, calibration={"fpr": fpr, "adapt": adapt})
            flags = flag_rate(topo, train.X, train.entities, recs)
            per = [flags[hosts == h].mean() / fpr for h in np.unique(hosts)]
            print(f"synth fpr={fpr:<6} adapt={adapt:<5} observed/budget {flags.mean() / fpr:.2f} "
                  f"(per host {min(per):.2f}-{max(per):.2f})", flush=True)


if __name__ == "__main__":
    main()
