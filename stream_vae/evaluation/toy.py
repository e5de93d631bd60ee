"""Tiny generated datasets in the SMD and NAB folder layouts, for tests and quick runs of ``stream-vae eval``.

The real benchmark data is never copied into the project; these folders are written from a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_toy_nab", "write_toy_smd"]


def write_toy_smd(
    root: str | Path, *, entities: tuple[str, ...] = ("toy-1", "toy-2"), n_dims: int = 4,
    n_train: int = 800, n_test: int = 600, seed: int = 0,
) -> Path:
    """Write an SMD-layout folder: correlated seasonal metrics, two anomalies per test split.

    Test anomalies: a level jump of 6 standard deviations on dimension 1 over rows
    ``[n_test // 3, n_test // 3 + 20)`` (type ``metric``) and a short burst on dimensions 0 and
    ``n_dims - 1`` over ``[2 n_test // 3, 2 n_test // 3 + 6)`` (type ``metric-temporal``).
    Interpretation labels use the SMD convention (end exclusive, 1-based dimensions).

    Examples
    --------
    >>> import tempfile
    >>> from stream_vae.evaluation.datasets import list_entities
    >>> list_entities(write_toy_smd(tempfile.mkdtemp()))
    ['toy-1', 'toy-2']
    """
    root = Path(root)
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    types = ["dataset,anomaly_segment,anomaly_type"]
    for k, name in enumerate(entities):
        rng = np.random.default_rng(seed + k)
        t = np.arange(n_train + n_test)
        base = np.sin(2 * np.pi * t / 50.0)
        mix = rng.uniform(0.5, 1.5, size=n_dims)
        X = 0.5 + 0.2 * base[:, None] * mix[None, :] + 0.03 * rng.normal(size=(len(t), n_dims))
        train, test = X[:n_train].copy(), X[n_train:].copy()
        label = np.zeros(n_test, dtype=int)
        a = n_test // 3
        test[a : a + 20, 1] += 6 * 0.2
        label[a : a + 20] = 1
        b = 2 * n_test // 3
        test[b : b + 6, [0, n_dims - 1]] -= 0.6
        label[b : b + 6] = 1
        np.save(root / "train" / f"{name}.npy", train.astype(np.float32))
        np.save(root / "test" / f"{name}.npy", test.astype(np.float32))
        (root / "test_label" / f"{name}.txt").write_text("\n".join(str(v) for v in label) + "\n")
        (root / "interpretation_label" / f"{name}.txt").write_text(f"{a}-{a + 20}:2\n{b}-{b + 6}:1,{n_dims}\n")
        types += [f"{name},{a}-{a + 20},metric", f"{name},{b}-{b + 6},metric-temporal"]
    (root / "anomaly_type.csv").write_text("\n".join(types) + "\n")
    return root


def write_toy_nab(root: str | Path, *, n_files: int = 2, n_rows: int = 800, seed: int = 0) -> Path:
    """Write an NAB-layout folder: noisy daily-like series, one spike per file, labelled windows.

    Examples
    --------
    >>> import tempfile
    >>> from stream_vae.evaluation.datasets import load_nab
    >>> [s.name for s in load_nab(write_toy_nab(tempfile.mkdtemp()))]
    ['toyCategory/toy_0.csv', 'toyCategory/toy_1.csv']
    """
    root = Path(root)
    data = root / "data" / "toyCategory"
    data.mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    windows: dict[str, list[list[str]]] = {}
    t0 = np.datetime64("2020-01-01T00:00:00", "s")
    for k in range(n_files):
        rng = np.random.default_rng(seed + k)
        i = np.arange(n_rows)
        v = 10 + 3 * np.sin(2 * np.pi * i / 96.0) + rng.normal(size=n_rows)
        spike = int(n_rows * 0.7) + 10 * k
        v[spike : spike + 3] += 15
        stamps = t0 + i * np.timedelta64(300, "s")
        lines = ["timestamp,value"] + [f"{str(s).replace('T', ' ')},{x:.4f}" for s, x in zip(stamps, v, strict=True)]
        name = f"toyCategory/toy_{k}.csv"
        (root / "data" / name).write_text("\n".join(lines) + "\n")
        half = n_rows // 40
        lo, hi = stamps[spike - half], stamps[spike + half]
        windows[name] = [[str(lo).replace("T", " ") + ".000000", str(hi).replace("T", " ") + ".000000"]]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows, indent=1))
    return root
