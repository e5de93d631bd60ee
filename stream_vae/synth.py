"""Synthetic multivariate server-metrics stream with injected anomalies (for the demo, tests and benches).

Several entities, correlated features driven by shared latent factors, daily-like seasonality,
and anomalies of a few kinds whose exact positions are returned, so detection can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_vae.records import FloatArray

FEATURES = ("cpu", "load", "mem", "net_in", "net_out", "latency_ms", "errors", "disk_io")
KINDS = ("spike", "level_shift", "correlation_break", "latency_storm")
PERIOD = 288  # one "day" of 5-minute samples


@dataclass
class Injected:
    """One injected anomaly: an entity and a range of its time steps."""

    entity: str
    kind: str
    start: int
    end: int  # exclusive
    features: tuple[str, ...]


@dataclass
class SynthStream:
    """Rows in arrival order (time step, then entity) and the anomalies injected in them."""

    rows: list[dict[str, Any]]
    X: FloatArray
    entities: list[str]
    steps: FloatArray
    injected: list[Injected] = field(default_factory=list)
    anomalous: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # type: ignore[type-arg]

    def rows_of(self, inj: Injected) -> np.ndarray:  # type: ignore[type-arg]
        """Row indices (arrival order) that belong to one injected anomaly."""
        ents = np.asarray(self.entities)
        return np.flatnonzero((ents == inj.entity) & (self.steps >= inj.start) & (self.steps < inj.end))

    def count_detected(self, flagged_rows: set[int]) -> int:
        """How many injected anomalies have at least one flagged row."""
        return sum(any(int(k) in flagged_rows for k in self.rows_of(inj)) for inj in self.injected)


def _entity_series(rng: np.random.Generator, n: int, t0: int, scale: float, drift_at: int | None) -> FloatArray:
    t = np.arange(t0, t0 + n)
    season = np.sin(2 * np.pi * t / PERIOD) + 0.3 * np.sin(4 * np.pi * t / PERIOD)
    ar = np.zeros(n)
    e = rng.normal(0, 1, n)
    for i in range(1, n):
        ar[i] = 0.9 * ar[i - 1] + 0.45 * e[i]
    cpu = 40 * scale + 18 * season + 5 * ar + rng.normal(0, 1.5, n)
    if drift_at is not None:
        # a workload change: more traffic and a new cpu/latency relationship from drift_at on
        shifted = t >= drift_at
        cpu = cpu + shifted * 15
    load = cpu / 25 + rng.normal(0, 0.08, n)
    mem = 55 + 4 * season + 0.5 * ar + rng.normal(0, 0.8, n)
    net_in = 100 * scale + 45 * season + 8 * ar + rng.normal(0, 3, n)
    if drift_at is not None:
        net_in = net_in * np.where(t >= drift_at, 1.6, 1.0)
    net_out = 0.8 * net_in + rng.normal(0, 2.5, n)
    latency = 20 + 0.15 * cpu + rng.normal(0, 0.8, n)
    errors = np.abs(0.4 + 0.01 * cpu + rng.normal(0, 0.15, n))
    disk = 30 + 8 * ar + 3 * season + rng.normal(0, 1.2, n)
    X = np.stack([cpu, load, mem, net_in, net_out, latency, errors, disk], axis=1)
    return X


def _inject(X: FloatArray, kind: str, s: int, e: int, rng: np.random.Generator) -> tuple[str, ...]:
    sd = X.std(axis=0) + 1e-6
    if kind == "spike":
        j = int(rng.integers(0, X.shape[1]))
        X[s:e, j] += (6 + 2 * rng.random()) * sd[j]
        return (FEATURES[j],)
    if kind == "level_shift":
        j = int(rng.choice([0, 2, 7]))
        X[s:e, j] += 4.5 * sd[j]
        return (FEATURES[j],)
    if kind == "correlation_break":
        X[s:e, 4] = X[s:e, 3] * 0.35  # net_out stops following net_in
        return ("net_out",)
    X[s:e, 5] += 8 * sd[5]  # latency storm: latency and errors together, cpu unchanged
    X[s:e, 6] += 8 * sd[6]
    return ("latency_ms", "errors")


def generate(
    *,
    n_entities: int = 6,
    n_steps: int = 2000,
    t0: int = 0,
    anomaly_rate: float = 0.004,
    drift_at: int | None = None,
    seed: int = 0,
) -> SynthStream:
    """Generate ``n_steps`` time steps for ``n_entities`` hosts, with anomalies at ``anomaly_rate`` per step.

    Examples
    --------
    >>> s = generate(n_entities=2, n_steps=50, anomaly_rate=0.0)
    >>> len(s.rows), sorted(s.rows[0])[:3]
    (100, ['cpu', 'disk_io', 'entity'])
    """
    rng = np.random.default_rng(seed)
    entities = [f"host-{i:02d}" for i in range(n_entities)]
    per: list[FloatArray] = []
    injected: list[Injected] = []
    masks = []
    for ent in entities:
        scale = 0.7 + 0.6 * rng.random()
        X = _entity_series(rng, n_steps, t0, scale, drift_at)
        mask = np.zeros(n_steps, dtype=bool)
        n_anom = rng.binomial(n_steps, anomaly_rate)
        for _ in range(n_anom):
            kind = KINDS[int(rng.integers(0, len(KINDS)))]
            length = 1 if kind == "spike" else int(rng.integers(5, 15))
            s = int(rng.integers(20, max(21, n_steps - length)))
            if mask[max(0, s - 10) : s + length + 10].any():
                continue  # keep events apart so each one is a distinct incident
            feats = _inject(X, kind, s, s + length, rng)
            mask[s : s + length] = True
            injected.append(Injected(ent, kind, t0 + s, t0 + s + length, feats))
        X[:, 0] = np.clip(X[:, 0], 0, 100)
        X[:, 2] = np.clip(X[:, 2], 0, 100)
        X[:, 5:7] = np.maximum(X[:, 5:7], 0)
        per.append(X)
        masks.append(mask)
    # interleave: time step major, entity minor (arrival order)
    Xall = np.stack(per, axis=1).reshape(-1, len(FEATURES))
    anomalous = np.stack(masks, axis=1).reshape(-1)
    ents = entities * n_steps
    steps = np.repeat(np.arange(t0, t0 + n_steps), n_entities).astype(np.float64)
    rows = [
        {"entity": e, "ts": int(st) * 300, **{f: round(float(v), 4) for f, v in zip(FEATURES, x, strict=True)}}
        for e, st, x in zip(ents, steps, Xall, strict=True)
    ]
    return SynthStream(rows, Xall, ents, steps, injected, anomalous)
