"""How well the training hold-out calibrates a multi-entity model: flag rate against the budget.

Synthetic server metrics (``synth.generate``: 6 hosts, daily seasonality + AR noise, no anomaly),
trained on 4,000 steps per host, 20,000 steps per host scored through ``Pipeline.process_batch``
with the threshold calibrated on the held-out training windows and never moved (``adapt: off``),
so the rate shows the calibration alone. Four training seeds, windows 1 and 4, budgets 0.002 and
0.01; the summary is the mean |ln(observed / budget)| (0 = on budget every time).

    python benchmarks/holdout_fpr.py          # ~10 min on 1 core

The rule before session 13 (windows > 1: the entities that came last held out whole) was measured
with this script at commit fadec69 (``git worktree add /tmp/old fadec69`` and ``PYTHONPATH=/tmp/old``).
"""

from __future__ import annotations

import numpy as np
import torch

from stream_vae.model.train import train_model
from stream_vae.pipeline import Pipeline
from stream_vae.synth import generate
from stream_vae.testing import loaded, raw_records, synth_topology


def main() -> None:
    torch.set_num_threads(1)
    live = generate(n_steps=20_000, t0=4000, anomaly_rate=0.0, seed=1)
    hosts = np.array([r["entity"] for r in live.rows])
    recs = raw_records(live.rows)
    dist: dict[int, list[float]] = {1: [], 4: []}
    for seed in range(4):
        train = generate(n_steps=4000, anomaly_rate=0.0, seed=10 + seed)
        for window, runs in dist.items():
            for fpr in (0.002, 0.01):
                topo = synth_topology(window=window, calibration={"fpr": fpr, "adapt": "off"},
                                      model={"seed": seed, "latent_dim": 3, "hidden": [32, 16], "epochs": 30,
                                             "kl_warmup_epochs": 3, "learning_rate": 0.003})
                p = Pipeline(topo, loaded(train_model(train.X, topo, entities=train.entities)))
                flags = np.concatenate([p.process_batch(recs[i : i + 2000]).is_anomaly
                                        for i in range(0, len(recs), 2000)])
                per = [flags[hosts == h].mean() / fpr for h in np.unique(hosts)]
                runs.append(abs(float(np.log(flags.mean() / fpr))))
                print(f"seed={seed} window={window} fpr={fpr:<6} observed/budget {flags.mean() / fpr:.2f} "
                      f"(per host {min(per):.2f}-{max(per):.2f})", flush=True)
    for window, d in dist.items():
        print(f"window={window}: mean |ln(observed / budget)| {np.mean(d):.2f} over {len(d)} runs")


if __name__ == "__main__":
    main()
