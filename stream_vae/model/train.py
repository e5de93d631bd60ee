"""train: fit scaler + VAE on normal data, early-stop on validation ELBO, calibrate on held-out scores.

Usable offline (``stream-vae train``) and from the trainer process. Returns an in-memory
``TrainedModel``; the registry turns it into a versioned artifact.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
import torch

from stream_vae.calibrate import Calibrator, ScoreSmoother
from stream_vae.exceptions import ConfigError
from stream_vae.lru import entity_groups
from stream_vae.model.scorer import VAEScorer
from stream_vae.model.vae import VAE, AnyVAE, VAEEnsemble
from stream_vae.preprocess import Scaler, detect_period, make_windows, seasonal_differences
from stream_vae.records import BoolArray, FloatArray
from stream_vae.topology import ModelSpec, Topology

Progress = Callable[[int, int, float, float], None]  # epoch, epochs, train_loss, val_loss
log = structlog.get_logger(__name__)


@dataclass
class TrainedModel:
    """A trained, calibrated model before it gets a version in the registry."""

    topology: Topology
    vae: AnyVAE
    scaler: Scaler
    calibrator: Calibrator
    reference: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    n_train: int = 0
    seasonal_period: int = 0  # resolved ModelSpec.seasonal_period: 0 = no seasonal differences
    origin: str = ""  # what made it (the trainer's attempt id), kept in the manifest to find it again

    def scorer(self, version: str = "unregistered") -> VAEScorer:
        return VAEScorer(self.vae, n_features=len(self.topology.features), model_version=version)


def _windows_and_keys(
    X: FloatArray, entities: Sequence[str] | None, window: int
) -> tuple[FloatArray, list[str], np.ndarray[Any, np.dtype[np.intp]]]:
    """Windows that never cross entities, with their keys and, for each window, the row of ``X`` it ends
    at: in arrival order for window 1 or one entity, else grouped by entity (each entity's windows in
    its own arrival order, entities in order of first appearance)."""
    if entities is None:
        return make_windows(X, window), [""] * len(X), np.arange(len(X))
    groups = entity_groups(entities)  # (not np.asarray(entities) == e: numpy drops a key's trailing NULs)
    if window == 1 or len(groups) == 1:
        return make_windows(X, window), [str(e) for e in entities], np.arange(len(X))
    order = sorted(groups, key=lambda e: int(groups[e][0]))  # in order of first appearance
    ends = np.concatenate([groups[e] for e in order])
    W = np.concatenate([make_windows(X[groups[e]], window) for e in order], axis=0)
    return W, [str(entities[i]) for i in ends], ends


def holdout(keys: Sequence[str], fraction: float, window: int = 1) -> tuple[BoolArray, BoolArray]:
    """Which training windows are held out (early stopping, calibration) and which are trained on.

    With window 1 or one entity: the most recent ``fraction`` (``keys`` in arrival order), since later
    data is what the model meets next. With several entities and longer windows (``keys`` grouped by
    entity) each entity holds out one contiguous block of its own windows, its share of ``fraction``,
    at a different point of its history: entity i of K, in order of first appearance, ends its block
    at (i + 1) / K of its history, the last one at its newest window. Every entity is then trained on
    and held out. The ``window - 1`` windows after a block read records of it and are in neither set
    (unless that would leave out more windows than the blocks hold).

    Measured by ``benchmarks/holdout_fpr.py`` (synthetic server metrics, 6 hosts, window 4, four
    seeds, budgets 0.002 and 0.01, static threshold): the flag rate's distance from the budget, mean
    |ln(observed / budget)|, fell from 0.50 (the entities that came last held out whole, untrained:
    the rule before) to 0.18. With window 1 the blocks did not help (0.39 against 0.32 for the newest
    rows in a first run), so window 1 keeps the newest rows. The newest rows with longer windows were
    tried in session 12: a retrain's candidate was refused (benchmarks/detection.md).

    >>> val, fit = holdout(["a"] * 100 + ["b"] * 100, 0.2, window=3)
    >>> np.flatnonzero(val)[[0, 19, 20, 39]].tolist(), np.flatnonzero(~val & ~fit).tolist()
    ([30, 49, 180, 199], [50, 51])
    """
    n = len(keys)
    n_val = min(n - 1, max(20, int(n * fraction)))
    val = np.zeros(n, dtype=bool)
    groups = entity_groups(keys)
    if window == 1 or len(groups) <= 1:
        val[n - n_val:] = True
        return val, ~val
    order = sorted(groups, key=lambda e: int(groups[e][0]))
    quota = np.diff(np.round(n_val * np.cumsum([len(groups[e]) for e in order]) / n).astype(int), prepend=0)
    fit = np.ones(n, dtype=bool)
    for i, (e, b) in enumerate(zip(order, quota, strict=True)):
        idx = groups[e]
        end = max(int(b), round((i + 1) / len(order) * len(idx)))
        val[idx[end - b:end]] = True
        fit[idx[end - b:end + window - 1]] = False
    # Many short histories (a block, then window - 1 left out, per entity) could leave little to train
    # on: then those windows are trained on after all.
    return val, fit if fit.sum() >= n - 2 * n_val else ~val


def _seasonal(
    X: FloatArray, entities: Sequence[str] | None, topology: Topology
) -> tuple[FloatArray, Sequence[str] | None, int, np.ndarray[Any, np.dtype[np.bool_]]]:
    """Append each entity's seasonal differences (``ModelSpec.seasonal_period``, 'auto' resolved here).

    Each entity's first period of rows has no lagged value and is left out; the rest keep their
    arrival order. Returns the rows, their entities, the period (0: the rows unchanged) and which
    rows of ``X`` were kept.
    """
    spec = topology.model
    groups = list(entity_groups(entities).values()) if entities is not None else [np.arange(len(X))]
    if spec.seasonal_period == "auto":
        period = detect_period([X[g] for g in groups], min_lag=topology.window + 1,
                               min_correlation=spec.seasonal_min_correlation)
    else:
        period = spec.seasonal_period
    keep = np.ones(len(X), dtype=bool)
    if period == 0:
        return X, entities, 0, keep
    diff = np.zeros_like(X, dtype=np.float64)
    for g in groups:
        diff[g] = seasonal_differences(X[g], period)[:, X.shape[1]:]
        keep[g[:period]] = False
    if keep.sum() < 100:
        raise ConfigError(
            f"seasonal_period {period} leaves {int(keep.sum())} training rows (each entity's first period has no "
            "lagged value); need at least 100: give more history or a shorter period"
        )
    kept = None if entities is None else [str(e) for e, k in zip(entities, keep, strict=True) if k]
    return np.hstack([X, diff])[keep], kept, period, keep


def _fit(
    vae: VAE, train_w: np.ndarray, val_w: np.ndarray, spec: ModelSpec,  # type: ignore[type-arg]
    *, rng: np.random.Generator, history: list[dict[str, float]], member: int, progress: Progress | None,
    deadline: float | None,
) -> None:
    """Minibatch ELBO with KL annealing; early stopping on the validation ELBO; keeps the best epoch."""
    opt = torch.optim.Adam(vae.parameters(), lr=spec.learning_rate)
    xt, xv = torch.from_numpy(train_w), torch.from_numpy(val_w)
    best, best_state, bad = float("inf"), copy.deepcopy(vae.state_dict()), 0
    for epoch in range(spec.epochs):
        beta = spec.beta * min(1.0, (epoch + 1) / max(1, spec.kl_warmup_epochs))  # KL annealing
        vae.train()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(xt), spec.batch_size):
            xb = xt[perm[i : i + spec.batch_size]]
            x_hat, mu, logvar = vae(xb)
            loss = (vae.nll_per_feature(xb, x_hat).sum(1) + beta * VAE.kl(mu, logvar)).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += loss.item() * len(xb)
        vae.eval()
        with torch.inference_mode():
            x_hat, mu, logvar = vae(xv)
            val = float((vae.nll_per_feature(xv, x_hat).sum(1) + spec.beta * VAE.kl(mu, logvar)).mean())
        history.append({"member": member, "epoch": epoch, "train": total / len(xt), "val": val, "beta": beta})
        if progress:
            progress(member * spec.epochs + epoch + 1, spec.ensemble * spec.epochs, total / len(xt), val)
        # Only judge early stopping once the KL weight has reached its final value.
        if epoch + 1 >= spec.kl_warmup_epochs:
            if val < best - 1e-4:
                best, best_state, bad = val, copy.deepcopy(vae.state_dict()), 0
            else:
                bad += 1
                if bad >= spec.patience:
                    break
        else:
            best_state = copy.deepcopy(vae.state_dict())
        if deadline is not None and time.monotonic() > deadline:
            break
    vae.load_state_dict(best_state)
    vae.eval()


def train_model(
    X: FloatArray,
    topology: Topology,
    *,
    entities: Sequence[str] | None = None,
    progress: Progress | None = None,
    max_seconds: float | None = None,
    normal: Sequence[bool] | np.ndarray[Any, np.dtype[np.bool_]] | None = None,
) -> TrainedModel:
    """Train and calibrate a VAE on rows of (presumed normal) raw feature values.

    Parameters
    ----------
    X
        ``[N, D]`` raw values in the topology's feature order, in arrival order.
    entities
        Entity key per row; windows never cross entities.
    max_seconds
        Stop training early after this long (the best epoch so far is kept); an ensemble gives each
        member an equal share and keeps the members that finished in time.
    normal
        Which rows to learn from (default: all). The others, records the serving model flagged, are
        context only: the windows and seasonal differences of their neighbours read them, as the
        pipeline did when it scored those neighbours (the reservoir keeps both kinds).
    """
    spec = topology.model
    if X.ndim != 2 or X.shape[1] != len(topology.features):
        raise ConfigError(
            f"training data has shape {X.shape}, topology '{topology.name}' expects {len(topology.features)} columns"
        )
    if len(X) < 100:
        raise ConfigError(f"need at least 100 training rows, got {len(X)}")
    if not np.all(np.isfinite(X)):
        raise ConfigError("training data contains NaN or infinite values; clean or impute them first")
    if normal is not None and len(normal) != len(X):
        raise ConfigError(f"normal has {len(normal)} flags for {len(X)} training rows")
    n_train = len(X) if normal is None else int(np.count_nonzero(normal))
    learn = X if normal is None else X[np.asarray(normal, dtype=bool)]
    spread = learn.std(axis=0) if len(learn) else np.ones(X.shape[1])
    constant = [f for f, sd in zip(topology.feature_names, spread, strict=True) if sd == 0]
    if constant:  # the model learns it never moves: any other value later scores as far out as the scale allows
        log.warning("constant_features", stream=topology.name, features=constant[:20],
                    values=[float(learn[0, topology.feature_names.index(f)]) for f in constant[:20]],
                    why="every other value will score at the scaler's cap (a critical alert); train on data "
                        "where they vary, or leave them out of the topology")
    X, entities, period, kept = _seasonal(X, entities, topology)
    use = np.ones(len(X), dtype=bool) if normal is None else np.asarray(normal, dtype=bool)[kept]
    if use.sum() < 100:
        raise ConfigError(f"need at least 100 normal training rows, got {int(use.sum())}")
    scaler = Scaler(center_windows=spec.center_windows).fit(X[use])
    # Window first, then scale: exactly what the pipeline does (Windower, then Scaler.transform of
    # the windowed row), so a per-window step such as center_windows is the same in training and
    # serving. (Training once scaled single records, so centring never reached training.)
    W64, keys, ends = _windows_and_keys(X, entities, topology.window)
    rows = use[ends]  # the windows that end at a normal record
    W64, keys = scaler.transform(W64[rows]), [k for k, r in zip(keys, rows, strict=True) if r]
    W = W64.astype(np.float32)
    val, fit = holdout(keys, spec.validation_fraction, topology.window)
    train_w, val_w = W[fit], W[val]
    val_keys = [k for k, v in zip(keys, val, strict=True) if v]
    n_features = len(topology.features)
    windows = topology.member_windows
    t0 = time.monotonic()
    vaes: list[VAE] = []
    history: list[dict[str, float]] = []
    for member in range(spec.ensemble):
        # max_seconds is shared evenly: member i must finish by t0 + (i + 1) / K of it, so a slow
        # first member cannot leave a half-trained last one
        deadline = None if max_seconds is None else t0 + max_seconds * (member + 1) / spec.ensemble
        if vaes and deadline is not None and time.monotonic() > deadline:
            break  # out of time: the members trained so far are the model
        seed = spec.seed + member
        torch.manual_seed(seed)  # member 0 is exactly the single model of this seed
        # A member with a shorter window sees the last records of the longest one (make_windows pads
        # the start the same way, so this is exactly that member's own windowing).
        cols = windows[member] * X.shape[1]  # columns per record: the features and their seasonal differences
        vae = VAE(cols, hidden=spec.hidden, latent_dim=spec.latent_dim, score=spec.score, n_features=n_features)
        _fit(vae, train_w[:, -cols:], val_w[:, -cols:], spec, rng=np.random.default_rng(seed), history=history,
             member=member, progress=progress, deadline=deadline)
        if spec.score == "robust" and spec.score_quantile > 0:
            # Each feature's unit in the robust score: its own extreme (not typical) held-out contribution.
            scorer = VAEScorer(vae, n_features=n_features, model_version="-")
            c = scorer.score_many(val_w[:, -cols:].astype(np.float64)).contributions
            q = np.quantile(c, spec.score_quantile, axis=0)
            vae.get_buffer("score_scale").copy_(torch.from_numpy(np.maximum(q, 1e-6)))
        vaes.append(vae)
    model: AnyVAE = vaes[0] if len(vaes) == 1 else VAEEnsemble(vaes)
    val_res = VAEScorer(model, n_features=n_features, model_version="unregistered").score_many(val_w.astype(np.float64))
    cs = topology.calibration
    cal = Calibrator.from_spec(cs)
    # The pipeline smooths each entity's scores in arrival order; calibrate on scores smoothed the same way.
    val_scores = ScoreSmoother(cs.smoothing).transform(val_res.score, val_keys)
    cal.infer_threshold(val_scores)
    if cs.range_tolerance > 0:
        cal.set_range(X[use])
    reference = {
        # The latent and score distribution of held-out normal data: the drift monitor's reference.
        "latent_mu_mean": val_res.latent_mu.mean(0).tolist(),
        "latent_mu_std": val_res.latent_mu.std(0).tolist(),
        "score_mean": float(val_scores.mean()),
        "score_std": float(val_scores.std()),
        "n": len(val_w),
    }
    return TrainedModel(topology, model, scaler, cal, reference, history, n_train=n_train, seasonal_period=period)
