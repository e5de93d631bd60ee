"""Reference detectors for the benchmarks, with one tiny interface.

``fit(train[T, D]) -> self`` and ``score(test[T, D]) -> ndarray[T]`` (higher = more anomalous);
detectors that can explain a score also have ``contributions(test) -> ndarray[T, D]`` (for
HitRate@P%). All are deterministic for a given ``seed``.

* ``pca``: reconstruction error after projecting on the top principal components; contributions
  are the squared residuals.
* ``iforest``: scikit-learn ``IsolationForest`` (``-score_samples``); no contributions.
* ``hst``: river ``HalfSpaceTrees``, streamed row by row (prequential); no contributions.
* ``random``: uniform noise, a chance-level floor (the point-adjusted F1 of noise is far from 0);
  contributions are uniform noise too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from stream_vae.exceptions import NotFittedError

__all__ = [
    "BASELINES",
    "Baseline",
    "HalfSpaceTreesBaseline",
    "IsolationForestBaseline",
    "PCABaseline",
    "SupportsContributions",
    "UniformRandomBaseline",
]

FloatArray = NDArray[np.float64]


@runtime_checkable
class Baseline(Protocol):
    """A batch anomaly detector: fit on normal-ish data, score new rows."""

    name: str

    def fit(self, train: ArrayLike) -> Baseline:
        """Learn from ``train`` of shape (T, D); return self."""
        ...

    def score(self, test: ArrayLike) -> FloatArray:
        """Anomaly score per row of ``test`` (T, D), higher = more anomalous."""
        ...


@runtime_checkable
class SupportsContributions(Protocol):
    """A detector that splits its evidence over the input dimensions."""

    def contributions(self, test: ArrayLike) -> FloatArray:
        """Per-dimension evidence, shape (T, D), higher = more anomalous."""
        ...


def _matrix(x: ArrayLike, name: str, n_dims: int | None = None) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [T, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    if n_dims is not None and arr.shape[1] != n_dims:
        raise ValueError(f"{name} has {arr.shape[1]} columns, the detector was fitted on {n_dims}")
    return arr


class PCABaseline:
    """PCA reconstruction error.

    ``fit`` standardises each column with the train mean and standard deviation (a column that is
    constant in train keeps scale 1, so a change in it still shows), then keeps the smallest
    number of principal components whose cumulative explained variance reaches
    ``variance_kept`` (default 0.95; at least 1 and at most ``D - 1``, so some residual remains).
    A row's contributions are its squared residuals ``(z - z V V^T)^2`` per column, and its score
    their sum.

    Parameters
    ----------
    variance_kept : float
        Fraction of train variance the kept components must explain, in (0, 1].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(500, 1))
    >>> train = np.hstack([t, t, t]) + 0.01 * rng.normal(size=(500, 3))
    >>> model = PCABaseline().fit(train)
    >>> model.n_components
    1
    >>> s = model.score([[0.5, 0.5, 0.5], [0.5, -0.5, 0.5]])
    >>> bool(s[1] > 100 * s[0])
    True
    """

    name = "pca"

    def __init__(self, variance_kept: float = 0.95) -> None:
        if not 0.0 < variance_kept <= 1.0:
            raise ValueError("variance_kept must be in (0, 1]")
        self.variance_kept = variance_kept
        self.mean_: FloatArray | None = None
        self.scale_: FloatArray | None = None
        self.components_: FloatArray | None = None

    @property
    def n_components(self) -> int:
        """Number of kept components (after ``fit``)."""
        if self.components_ is None:
            raise NotFittedError("PCABaseline.fit must be called first")
        return int(self.components_.shape[0])

    def fit(self, train: ArrayLike) -> PCABaseline:
        """Standardise on ``train`` and keep the leading components; return self."""
        x = _matrix(train, "train")
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        z = (x - self.mean_) / self.scale_
        _, sing, vt = np.linalg.svd(z, full_matrices=False)
        var = sing**2
        total = float(var.sum())
        if total <= 0.0:
            k = 1
        else:
            ratio = np.cumsum(var) / total
            k = int(np.searchsorted(ratio, self.variance_kept - 1e-12) + 1)
        k = max(1, min(k, x.shape[1] - 1)) if x.shape[1] > 1 else 1
        self.components_ = vt[:k]
        return self

    def contributions(self, test: ArrayLike) -> FloatArray:
        """Squared standardised residual per row and column, shape (T, D)."""
        if self.components_ is None or self.mean_ is None or self.scale_ is None:
            raise NotFittedError("PCABaseline.fit must be called first")
        x = _matrix(test, "test", self.mean_.shape[0])
        z = (x - self.mean_) / self.scale_
        residual = z - (z @ self.components_.T) @ self.components_
        return np.asarray(residual**2, dtype=np.float64)

    def score(self, test: ArrayLike) -> FloatArray:
        """Sum of squared residuals per row, shape (T,)."""
        return np.asarray(self.contributions(test).sum(axis=1), dtype=np.float64)


class IsolationForestBaseline:
    """scikit-learn ``IsolationForest`` fitted on train; the score is ``-score_samples``.

    Needs scikit-learn (the ``eval`` or ``dev`` extra); it is imported on first use.

    Parameters
    ----------
    n_estimators : int
        Number of trees.
    max_samples : int or "auto"
        Rows per tree (``"auto"`` = min(256, T)).
    seed : int
        ``random_state`` of the forest.
    n_jobs : int or None
        Parallel jobs for fit/score (scores do not depend on it).
    """

    name = "iforest"

    def __init__(
        self, n_estimators: int = 100, max_samples: int | str = "auto", seed: int = 0, n_jobs: int | None = None
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed
        self.n_jobs = n_jobs
        self.model_: Any = None
        self.n_dims_: int | None = None

    def fit(self, train: ArrayLike) -> IsolationForestBaseline:
        """Fit the forest on ``train``; return self."""
        try:
            from sklearn.ensemble import IsolationForest
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("IsolationForestBaseline needs scikit-learn: pip install 'stream-vae[eval]'") from exc
        x = _matrix(train, "train")
        self.model_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.seed,
            n_jobs=self.n_jobs,
        ).fit(x)
        self.n_dims_ = x.shape[1]
        return self

    def score(self, test: ArrayLike) -> FloatArray:
        """Negated ``score_samples`` (higher = more anomalous), shape (T,)."""
        if self.model_ is None:
            raise NotFittedError("IsolationForestBaseline.fit must be called first")
        x = _matrix(test, "test", self.n_dims_)
        return np.asarray(-self.model_.score_samples(x), dtype=np.float64)


class HalfSpaceTreesBaseline:
    """river ``HalfSpaceTrees``, streamed one row at a time.

    Each column is min-max scaled with the *train* range (a constant column maps to 0) and
    clipped to [0, 1], the domain the trees split. ``fit`` calls ``learn_one`` on every train
    row. ``score`` then walks the test rows in order and, with ``learn_on_test=True`` (default),
    runs ``score_one`` then ``learn_one`` on each: the prequential protocol a streaming monitor
    runs in production, so the model keeps adapting during the test (long anomalies fade as
    they become the reference window). ``learn_on_test=False`` freezes the model after ``fit``.
    Note that river scores are 0 until the first reference window (``window_size`` rows) is
    complete, and that ``score`` mutates the model when ``learn_on_test`` is set, so scoring the
    same rows twice gives different results.

    The defaults (10 trees, height 8, window 250) stream one SMD entity (~23.7k train + ~23.7k
    test rows, 38 columns) in roughly 10-15 s on one CPU core.

    Parameters
    ----------
    n_trees, height, window_size : int
        River's ``HalfSpaceTrees`` parameters.
    seed : int
        River's seed.
    learn_on_test : bool
        Keep learning while scoring (prequential) or not.
    """

    name = "hst"

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        seed: int = 0,
        *,
        learn_on_test: bool = True,
    ) -> None:
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.learn_on_test = learn_on_test
        self.model_: Any = None
        self.low_: FloatArray | None = None
        self.span_: FloatArray | None = None

    def _scaled(self, x: FloatArray) -> FloatArray:
        assert self.low_ is not None and self.span_ is not None
        return np.asarray(np.clip((x - self.low_) / self.span_, 0.0, 1.0), dtype=np.float64)

    def fit(self, train: ArrayLike) -> HalfSpaceTreesBaseline:
        """Learn the scaling and stream ``train`` through ``learn_one``; return self."""
        from river.anomaly import HalfSpaceTrees

        x = _matrix(train, "train")
        self.low_ = x.min(axis=0)
        span = x.max(axis=0) - self.low_
        self.span_ = np.where(span > 0, span, np.inf)
        self.model_ = HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )
        learn = self.model_.learn_one
        for row in self._scaled(x).tolist():
            learn(dict(enumerate(row)))
        return self

    def score(self, test: ArrayLike) -> FloatArray:
        """Stream ``test`` in order; ``score_one`` (then ``learn_one`` if enabled) per row."""
        if self.model_ is None or self.low_ is None:
            raise NotFittedError("HalfSpaceTreesBaseline.fit must be called first")
        x = _matrix(test, "test", self.low_.shape[0])
        out = np.empty(x.shape[0], dtype=np.float64)
        score_one, learn_one = self.model_.score_one, self.model_.learn_one
        for i, row in enumerate(self._scaled(x).tolist()):
            features = dict(enumerate(row))
            out[i] = score_one(features)
            if self.learn_on_test:
                learn_one(features)
        return out


class UniformRandomBaseline:
    """Uniform noise in [0, 1): the chance level of a metric (and a sanity check of protocols).

    The stream of random numbers restarts from ``seed`` on every call, so repeated calls on the
    same shape return the same values.

    Examples
    --------
    >>> m = UniformRandomBaseline(seed=1).fit(np.zeros((3, 2)))
    >>> bool((m.score(np.zeros((4, 2))) == m.score(np.zeros((4, 2)))).all())
    True
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.n_dims_: int | None = None

    def fit(self, train: ArrayLike) -> UniformRandomBaseline:
        """Remember the number of columns; return self."""
        self.n_dims_ = _matrix(train, "train").shape[1]
        return self

    def score(self, test: ArrayLike) -> FloatArray:
        """Uniform [0, 1) per row, shape (T,)."""
        if self.n_dims_ is None:
            raise NotFittedError("UniformRandomBaseline.fit must be called first")
        x = _matrix(test, "test", self.n_dims_)
        return np.asarray(np.random.default_rng(self.seed).random(x.shape[0]), dtype=np.float64)

    def contributions(self, test: ArrayLike) -> FloatArray:
        """Uniform [0, 1) per row and column, shape (T, D) (chance-level HitRate)."""
        if self.n_dims_ is None:
            raise NotFittedError("UniformRandomBaseline.fit must be called first")
        x = _matrix(test, "test", self.n_dims_)
        return np.random.default_rng(self.seed + 1).random(x.shape)


BASELINES: dict[str, Callable[[], Baseline]] = {
    "pca": PCABaseline,
    "iforest": IsolationForestBaseline,
    "hst": HalfSpaceTreesBaseline,
    "random": UniformRandomBaseline,
}
"""Factories with default settings, by name."""
