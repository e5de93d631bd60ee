"""Replays: a second signal next to the VAE ensemble's score (session 9 of benchmarks/detection.md).

Every variant reuses the per-member contributions that ``benchmarks/smd_asd_selection.py`` records
from the eval's own ``run_pipeline`` at window 5 (its cache; the default's replay reproduces the
eval) and score the result with the eval's threshold tracker and metrics.

* ``long``: the default score next to its rolling mean over the last L records (a sustained
  stretch of slightly-off records, e.g. intermittent spikes through a long labelled segment), each
  put on the scale of its held-out scores ((s - median) / (q90 - median)) and combined by
  ``max(z_short, w * z_long)``.
* ``count``: the same with the count of records above the held-out q-quantile among the last L
  instead of the rolling mean (each record counts once, however far above; session 10),
  standardised by the held-out mean and sd of the count; ``gated``: the count lifts only records
  whose own score is above a held-out quantile of it.
* ``forecast``: a ridge forecaster of the next record from the last W (fitted on the first 80 % of
  train, min-max scaled on those rows; residual variance per feature on the last 20 %), scored
  ``sum_j log(1 + r_j^2 / (2 var_j))`` like the robust score; mixed with the VAE as
  ``(z_vae + w * z_fc) / (1 + w)``, or OR-ed with it at the level of flags (each thresholded by
  its own tracker).

    python benchmarks/smd_asd_selection.py --data-root ../shared/data --seed S   # fills the cache
    python benchmarks/second_signal.py long --data-root ../shared/data --seeds 0,1,2
    python benchmarks/second_signal.py count --data-root ../shared/data --seeds 0   # and gated
    python benchmarks/second_signal.py forecast --data-root ../shared/data --seeds 0,1,2
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stream_vae.evaluation.datasets import list_entities, load_smd_like
from stream_vae.evaluation.metrics import auc_pr, best_f1, f1_score, point_adjust
from stream_vae.evaluation.runner import EvalSettings, _tracked

KEYS = ("f1_best", "auc_pr", "f1_online", "f1_pa_online")


def on_held_out_scale(ref: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.median(ref)
    s = np.quantile(ref, 0.9) - m
    return (ref - m) / s, (x - m) / s


def rolling_mean(x: np.ndarray, L: int) -> np.ndarray:
    """Causal mean of the last ``L`` values (fewer at the start)."""
    c = np.cumsum(np.r_[0.0, x])
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - L, 0)
    return (c[n] - c[lo]) / (n - lo)


def judged(ref: np.ndarray, test: np.ndarray, label: np.ndarray, fpr: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """The four goal metrics of ``test`` thresholded by the eval's tracker calibrated on ``ref``; and the flags."""
    s, thr, _ = _tracked(ref, test, EvalSettings(fpr=fpr))
    flags = s > thr
    return np.array([best_f1(s, label, point_adjusted=False)[0], auc_pr(s, label),
                     f1_score(flags, label)[2], f1_score(point_adjust(flags, label), label)[2]]), flags


def vae_scores(cache: Path, ds: str, entity: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = cache / f"{ds}_{entity}_w5_s{seed}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/smd_asd_selection.py --seed {seed} first")
    r = dict(np.load(path))
    return np.log1p(r["val"]).sum(-1).mean(0), np.log1p(r["test"]).sum(-1).mean(0), r["label"].astype(bool)


def forecast_scores(train: np.ndarray, test: np.ndarray, W: int) -> tuple[np.ndarray, np.ndarray]:
    n_fit = int(0.8 * len(train))
    lo = train[:n_fit].min(0)
    span = np.maximum(train[:n_fit].max(0) - lo, 1e-3)
    A, B = (np.clip((X - lo) / span, -5, 6) for X in (train, test))

    def lagged(X: np.ndarray) -> np.ndarray:  # row t: records t-1 ... t-W (the first repeated at the start), and 1
        P = np.concatenate([np.repeat(X[:1], W, 0), X])
        return np.concatenate([P[W - k - 1 : len(P) - k - 1] for k in range(W)] + [np.ones((len(X), 1))], axis=1)

    La, Lb = lagged(A), lagged(B)
    X, Y = La[W:n_fit], A[W:n_fit]
    beta = np.linalg.solve(X.T @ X + 1e-2 * np.eye(X.shape[1]), X.T @ Y)
    r_ref = A[n_fit:] - La[n_fit:] @ beta
    var = np.maximum(r_ref.var(0), 1e-4)
    score = lambda R: np.log1p(0.5 * R**2 / var).sum(1)  # noqa: E731
    return score(r_ref), score(B - Lb @ beta)


def variants(kind: str, *, data_root: Path, cache: Path, ds: str, entity: str, seed: int,
             ) -> Iterator[tuple[str, np.ndarray]]:
    ref, test, label = vae_scores(cache, ds, entity, seed)
    yield "VAE (default)", judged(ref, test, label)[0]
    if kind == "long":
        zr, zt = on_held_out_scale(ref, test)
        for L in (20, 50, 100, 200):
            lr, lt = on_held_out_scale(rolling_mean(ref, L), rolling_mean(test, L))
            for w in (0.5, 0.75, 1.0):
                yield f"max(short, {w} x long L={L})", judged(np.maximum(zr, w * lr), np.maximum(zt, w * lt), label)[0]
        return
    if kind == "count":
        zr, zt = on_held_out_scale(ref, test)
        for q in (0.9, 0.95, 0.99):
            cut = np.quantile(ref, q)
            for L in (20, 50, 100):
                cr, ct = rolling_mean((ref > cut).astype(float), L), rolling_mean((test > cut).astype(float), L)
                mu, sd = cr.mean(), max(cr.std(), 1e-9)
                lr, lt = (cr - mu) / sd, (ct - mu) / sd
                for w in (0.5, 1.0, 2.0):
                    yield (f"max(short, {w} x count q{q} L={L})",
                           judged(np.maximum(zr, w * lr), np.maximum(zt, w * lt), label)[0])
        return
    if kind == "gated":
        zr, zt = on_held_out_scale(ref, test)
        for q, L in ((0.9, 100), (0.95, 50), (0.95, 100)):
            cut = np.quantile(ref, q)
            cr, ct = rolling_mean((ref > cut).astype(float), L), rolling_mean((test > cut).astype(float), L)
            mu, sd = cr.mean(), max(cr.std(), 1e-9)
            lr, lt = (cr - mu) / sd, (ct - mu) / sd
            for g in (0.5, 0.75, 0.9):
                gate = np.quantile(zr, g)
                for w in (0.5, 1.0):
                    yield (f"gated {g}: max(short, {w} x count q{q} L={L})",
                           judged(np.where(zr >= gate, np.maximum(zr, w * lr), zr),
                                  np.where(zt >= gate, np.maximum(zt, w * lt), zt), label)[0])
        return
    e = load_smd_like(data_root / ds, entity)
    fref, ftest = forecast_scores(np.asarray(e.train, float), np.asarray(e.test, float), W=5)
    n = min(len(ref), len(fref))  # both held-out tails end at the last training row
    fr, ft = on_held_out_scale(fref[-n:], ftest)
    zr, zt = on_held_out_scale(ref[-n:], test)
    yield "forecast alone", judged(fref, ftest, label)[0]
    for w in (0.25, 0.5, 1.0):
        yield f"mix 1 : {w}", judged((zr + w * fr) / (1 + w), (zt + w * ft) / (1 + w), label)[0]
    for fpr in (0.0025, 0.005):
        fv = judged(ref, test, label, fpr)[1] | judged(fref, ftest, label, fpr)[1]
        yield f"flags OR, fpr {fpr} each", np.array([np.nan, np.nan, f1_score(fv, label)[2],
                                                      f1_score(point_adjust(fv, label), label)[2]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("long", "count", "gated", "forecast"))
    ap.add_argument("--data-root", type=Path, required=True, help="folder holding smd/ and asd/")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/stream-vae-selection"))
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    for seed in map(int, args.seeds.split(",")):
        for ds in ("smd", "asd"):
            rows: dict[str, list[np.ndarray]] = {}
            for entity in list_entities(args.data_root / ds):
                for name, m in variants(args.kind, data_root=args.data_root, cache=args.cache, ds=ds,
                                        entity=entity, seed=seed):
                    rows.setdefault(name, []).append(m)
            print(f"\n{ds} seed {seed}: " + " / ".join(KEYS))
            for name, ms in rows.items():
                print(f"  {name:30s} " + " / ".join(f"{x:.3f}" for x in np.mean(ms, axis=0)), flush=True)


if __name__ == "__main__":
    main()
