"""Which features does an alert name? Counterfactual attributions against the residual peaks (HitRate).

An alert names its top features from each feature's residual (``ScoreResult.attributions``: the
peak over the window of ``0.5 * ((x - x_hat) / sigma)^2``, session 7). A residual blames the
features the model reconstructs badly, and in an autoencoder one anomalous input moves the latent
code and so the reconstruction of the features correlated with it: they show residuals too, and
a feature that is really off can be partly "explained" into the latent and look smaller. Two
counterfactual readings ask instead what the record would look like without feature j:

* ``drop``: how much the member's robust score falls when feature j (at every position of the
  window) is replaced by its reconstruction, re-encoded and scored again;
* ``clean``: feature j's residual peak when the latent code is inferred from the record with j
  replaced by its reconstruction (so j cannot pull the code towards itself).

Each is the mean over the ensemble's members, like the residual peaks. The script runs the eval's
own ``run_pipeline`` on every SMD machine and ASD service (seed, window 5, the eval defaults),
records the scaled rows the scorer saw and scores HitRate@100/150 of the three readings at the same
points the eval uses (detected at the best-F1 threshold, inside labelled segments). The residual
reading must reproduce the eval's ``hitrate_*``.

    python benchmarks/attribution.py --data-root ../shared/data --seed 0   # ~15 min, 1 thread
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_vae.evaluation.datasets import list_entities, load_smd_like
from stream_vae.evaluation.metrics import best_f1, hitrate_at_p
from stream_vae.evaluation.runner import EvalSettings, run_pipeline
from stream_vae.model import scorer as scorer_mod
from stream_vae.model.vae import VAE

_seen: list[tuple[scorer_mod.VAEScorer, np.ndarray]] = []
_score_many = scorer_mod.VAEScorer.score_many


def _recording(self: scorer_mod.VAEScorer, X: np.ndarray) -> Any:
    _seen.append((self, np.array(X, dtype=np.float32)))
    return _score_many(self, X)


def _robust(vae: VAE, x: torch.Tensor, x_hat: torch.Tensor, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust score per row, residual peak per row and feature)."""
    z2 = (0.5 * (x - x_hat) ** 2 * torch.exp(-vae.out_log_variance())).reshape(len(x), -1, D)
    return torch.log1p(z2.sum(1) / vae.get_buffer("score_scale")).sum(1), z2.amax(1)


@torch.inference_mode()
def counterfactual(scorer: scorer_mod.VAEScorer, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(drop, clean) attributions of the rows ``X`` (n, w * D): each (n, D), the members' mean."""
    D = scorer.n_features
    drops, cleans = [], []
    x_all = torch.as_tensor(X)
    for vae in scorer.members:
        x = x_all[:, -vae.n_in :]
        x_hat = vae.decode(vae.encode(x)[0])
        s0, _ = _robust(vae, x, x_hat, D)
        w = vae.n_in // D
        drop, clean = torch.empty(len(x), D), torch.empty(len(x), D)
        for j in range(D):
            cols = [k * D + j for k in range(w)]
            xj = x.clone()
            xj[:, cols] = x_hat[:, cols]
            xj_hat = vae.decode(vae.encode(xj)[0])
            drop[:, j] = s0 - _robust(vae, xj, xj_hat, D)[0]
            # j's own residual against the reconstruction from the code that j did not inform
            clean[:, j] = _robust(vae, x, xj_hat, D)[1][:, j]
        drops.append(drop)
        cleans.append(clean)
    return torch.stack(drops).mean(0).numpy(), torch.stack(cleans).mean(0).numpy()


def entity_hitrates(data: Path, entity: str, seed: int) -> dict[str, list[float]]:
    e = load_smd_like(data, entity)
    _seen.clear()
    scorer_mod.VAEScorer.score_many = _recording  # type: ignore[method-assign]
    try:
        trace = run_pipeline(np.asarray(e.train, float), np.asarray(e.test, float),
                             EvalSettings(window=5, seed=seed, threads=1, baselines=()), key=entity)
    finally:
        scorer_mod.VAEScorer.score_many = _score_many  # type: ignore[method-assign]
    scorer = _seen[-1][0]
    rows = np.concatenate([X for s, X in _seen[1:]])  # the first call is the calibration on held-out rows
    label = np.asarray(e.label).astype(bool)
    detected = trace.score >= best_f1(trace.score, label, point_adjusted=False)[1]
    used = np.zeros(len(label), dtype=bool)
    for lo, hi, _ in e.interpretation:
        used[lo:hi] = True
    used &= detected
    readings = {"residual peak (default)": trace.contributions}
    drop, clean = (np.zeros_like(trace.contributions) for _ in range(2))
    idx = np.flatnonzero(used)
    for lo in range(0, len(idx), 2000):
        d, c = counterfactual(scorer, rows[idx[lo : lo + 2000]])
        drop[idx[lo : lo + 2000]], clean[idx[lo : lo + 2000]] = d, c
    readings |= {"drop": drop, "clean": clean}
    return {name: [hitrate_at_p(a, e.interpretation, p, pred=detected) for p in (100, 150)]
            for name, a in readings.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, required=True, help="folder holding smd/ and asd/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default="smd,asd")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for ds in args.datasets.split(","):
        rows: dict[str, list[list[float]]] = {}
        for entity in list_entities(args.data_root / ds):
            for name, h in entity_hitrates(args.data_root / ds, entity, args.seed).items():
                rows.setdefault(name, []).append(h)
                print(f"  {ds} {entity:12s} {name:24s} hitrate_100 {h[0]:.3f}  hitrate_150 {h[1]:.3f}", flush=True)
        print(f"\n{ds} seed {args.seed}: mean hitrate_100 / hitrate_150")
        for name, hs in rows.items():
            print(f"  {name:24s} " + " / ".join(f"{x:.3f}" for x in np.mean(hs, axis=0)), flush=True)


if __name__ == "__main__":
    main()
