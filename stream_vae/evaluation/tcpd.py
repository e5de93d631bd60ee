"""Change-point evaluation: TCPD (32 real series, 5 annotators each) and a synthetic suite.

:func:`run_tcpd` streams every TCPD series through an online detector of
:mod:`stream_vae.changepoint`, one observation at a time in arrival order, collects the change
points it reports, and scores them against the five annotators with TCPDBench's F1 (margin 5) and
covering metric (:func:`~stream_vae.evaluation.metrics.tcpd_f1`,
:func:`~stream_vae.evaluation.metrics.tcpd_cover`). River's ADWIN and PageHinkley with default
settings and a detector that never reports a change ("zero") run in the same call, and
TCPDBench's published default-setting means are attached for reference.

:func:`run_synthetic` scores detector variants on generated piecewise-stationary series with known
change points (mean shifts, variance shifts, trends with slope changes, autocorrelated noise,
change-free series, and a multivariate set). The defaults of :class:`~stream_vae.changepoint.BOCPD`
were chosen there, never on the TCPD annotations (those are the test set).

Conventions
-----------
* Reported change point: the detector's ``change_point`` at each step where ``drift_detected`` is
  True. BOCPD reports the estimated start of the new segment (it can be earlier than the step of
  the declaration); river's detectors report the step of the declaration.
* Missing values (``null`` in the JSON, NaN after loading) are *skipped*: the detector never sees
  them, and its indices are mapped back to the series' own indices. A multivariate row is fed with
  its finite entries (each dimension skips its own NaN); a row with no finite entry is skipped.
* Multivariate series go through :class:`~stream_vae.changepoint.MultiSeriesDetector` (any
  dimension fires, ``k=1``); the river baselines run per dimension on the raw values
  (``standardize="never"``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from numpy.typing import NDArray

from stream_vae.changepoint import MultiSeriesDetector, Standardize, make_detector
from stream_vae.evaluation.datasets import TcpdSeries, load_tcpd
from stream_vae.evaluation.metrics import tcpd_cover, tcpd_f1

__all__ = [
    "DETECTORS",
    "PUBLISHED_F1",
    "SYNTHETIC_VARIANTS",
    "DetectorSpec",
    "SyntheticSeries",
    "detect_change_points",
    "make_synthetic",
    "run_synthetic",
    "run_tcpd",
    "tcpd_app",
]

FloatArray = NDArray[np.float64]
SpecName = Literal["bocpd", "adwin", "page_hinkley", "kswin", "zero"]
MARGIN = 5

PUBLISHED_F1: dict[str, float] = {"binseg": 0.680, "pelt": 0.653, "bocpd": 0.611, "bocpd_oracle": 0.831}
"""TCPDBench mean F1 over its 42 series (default settings; ``bocpd_oracle``: best setting per series)."""


@dataclass(frozen=True)
class DetectorSpec:
    """A named detector configuration.

    Attributes
    ----------
    detector : str
        ``"bocpd"``, ``"adwin"``, ``"page_hinkley"``, ``"kswin"``, or ``"zero"`` (never fires).
    params : dict
        Constructor arguments of the univariate detector.
    standardize : {"auto", "always", "never"}
        Online standardisation of each dimension (multivariate series only; ``"auto"``: for the
        river detectors, not for BOCPD, see :class:`~stream_vae.changepoint.MultiSeriesDetector`).
    """

    detector: SpecName
    params: dict[str, Any]
    standardize: Standardize = "auto"


DETECTORS: dict[str, DetectorSpec] = {
    "default": DetectorSpec("bocpd", {}),
    "bocpd-constant": DetectorSpec("bocpd", {"model": "constant"}),
    "bocpd-linear": DetectorSpec("bocpd", {"model": "linear"}),
    "bocpd-ar1": DetectorSpec("bocpd", {"model": "ar1"}),
    "adwin": DetectorSpec("adwin", {}, standardize="never"),
    "page_hinkley": DetectorSpec("page_hinkley", {}, standardize="never"),
    "zero": DetectorSpec("zero", {}),
}
"""Named configurations for :func:`run_tcpd`: ``"default"`` is :class:`~stream_vae.changepoint.BOCPD` with its
defaults (chosen on the synthetic suite); ``"bocpd-<model>"`` changes only the segment model."""


# --------------------------------------------------------------------------------------------
# running a detector over one series
# --------------------------------------------------------------------------------------------


def detect_change_points(values: FloatArray, spec: DetectorSpec) -> list[int]:
    """Stream ``values`` through a fresh detector and return the change points it reports.

    Parameters
    ----------
    values : numpy.ndarray of float, shape (T,) or (T, D)
        The series in arrival order; NaN entries are skipped (see the module notes).
    spec : DetectorSpec
        What to run.

    Returns
    -------
    list of int
        Sorted, distinct 0-based indices into ``values``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.r_[np.zeros(60), np.full(60, 3.0)] + np.random.default_rng(0).normal(0, 0.5, 120)
    >>> detect_change_points(x, DETECTORS["default"])
    [60]
    >>> detect_change_points(x, DETECTORS["zero"])
    []
    """
    X = np.asarray(values, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if spec.detector == "zero":
        return []
    found: set[int] = set()
    fed: list[int] = []  # series index of each observation the detector counted
    if X.shape[1] == 1:
        det: Any = make_detector(spec.detector, **spec.params)
        rows: Iterable[tuple[int, Any]] = ((i, float(v)) for i, v in enumerate(X[:, 0]) if math.isfinite(v))
    else:
        det = MultiSeriesDetector(
            X.shape[1],
            detector=spec.detector,
            params=spec.params,
            standardize=spec.standardize,
        )
        rows = ((i, row) for i, row in enumerate(X) if np.isfinite(row).any())
    for i, obs in rows:
        det.update(obs)
        fed.append(i)
        if det.drift_detected and det.change_point is not None:
            found.add(fed[det.change_point])
    return sorted(found)


def _score(cps: Sequence[int], series: TcpdSeries) -> tuple[float, float]:
    return (
        float(tcpd_f1(cps, series.annotations, series.n_obs, margin=MARGIN)),
        float(tcpd_cover(cps, series.annotations, series.n_obs)),
    )


def _resolve(detector: str | DetectorSpec) -> tuple[str, DetectorSpec]:
    if isinstance(detector, DetectorSpec):
        return detector.detector, detector
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTORS)}")
    return detector, DETECTORS[detector]


def run_tcpd(
    data_dir: str | Path,
    *,
    detector: str | DetectorSpec = "default",
    names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Run a detector and the baselines over TCPD and score them (F1 with margin 5, cover).

    Parameters
    ----------
    data_dir : str or Path
        The TCPD folder (``shared/data/drift/tcpd``; its parent is accepted too).
    detector : str or DetectorSpec
        A key of :data:`DETECTORS` or a spec.
    names : iterable of str, optional
        Only these series.

    Returns
    -------
    dict
        JSON-able: ``dataset``, ``detector``, ``params``, ``f1`` and ``cover`` (means over the
        series), ``per_series`` (``{name: {"f1", "cover", "n_cp", "detected"}}``, ``n_cp`` being
        the number of detected change points), ``baselines`` (``adwin``, ``page_hinkley``,
        ``zero``: ``{"f1", "cover"}``), ``published`` (TCPDBench default-setting mean F1),
        ``n_series``, ``margin`` and ``runtime_s`` (seconds for the detector under test).
    """
    series = load_tcpd(data_dir, names)
    name, spec = _resolve(detector)
    t0 = time.perf_counter()
    per_series: dict[str, dict[str, Any]] = {}
    for s in series:
        cps = detect_change_points(s.values, spec)
        f1, cover = _score(cps, s)
        per_series[s.name] = {"f1": f1, "cover": cover, "n_cp": len(cps), "detected": cps}
    runtime = time.perf_counter() - t0
    baselines: dict[str, dict[str, float]] = {}
    for base in ("adwin", "page_hinkley", "zero"):
        scores = [_score(detect_change_points(s.values, DETECTORS[base]), s) for s in series]
        baselines[base] = {
            "f1": float(np.mean([f for f, _ in scores])),
            "cover": float(np.mean([c for _, c in scores])),
        }
    return {
        "dataset": "tcpd",
        "detector": name,
        "params": dict(spec.params),
        "f1": float(np.mean([r["f1"] for r in per_series.values()])),
        "cover": float(np.mean([r["cover"] for r in per_series.values()])),
        "per_series": per_series,
        "baselines": baselines,
        "published": dict(PUBLISHED_F1),
        "n_series": len(series),
        "margin": MARGIN,
        "runtime_s": round(runtime, 3),
    }


# --------------------------------------------------------------------------------------------
# synthetic suite (where the defaults were chosen)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSeries:
    """A generated series with its true change points.

    Attributes
    ----------
    kind : str
        ``"mean"``, ``"variance"``, ``"trend"``, ``"ar1"``, ``"none"`` or ``"multi"``.
    values : numpy.ndarray of float, shape (T,) or (T, D)
    cps : list of int
        First index of each new segment.
    """

    kind: str
    values: FloatArray
    cps: list[int]


SYNTHETIC_KINDS = ("mean", "variance", "trend", "ar1", "none", "multi")


def _change_points(rng: np.random.Generator, n: int, n_cp: int, min_seg: int) -> list[int]:
    """``n_cp`` sorted change points with every segment at least ``min_seg`` long."""
    slack = n - (n_cp + 1) * min_seg
    cuts = np.sort(rng.integers(0, slack + 1, size=n_cp))
    return [int(c + (j + 1) * min_seg) for j, c in enumerate(cuts)]


def _ar1(rng: np.random.Generator, n: int, phi: float) -> FloatArray:
    """AR(1) noise with unit marginal variance."""
    e = rng.normal(0.0, math.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    out[0] = rng.normal()
    for i in range(1, n):
        out[i] = phi * out[i - 1] + e[i]
    return out


def _segments(n: int, cps: Sequence[int]) -> list[tuple[int, int]]:
    bounds = [0, *cps, n]
    return [(bounds[j], bounds[j + 1]) for j in range(len(bounds) - 1)]


def _one(rng: np.random.Generator, kind: str) -> SyntheticSeries:
    n = int(rng.integers(100, 601))
    min_seg = 25
    n_cp = 0 if kind == "none" else int(rng.integers(1, min(4, n // min_seg - 1) + 1))
    cps = _change_points(rng, n, n_cp, min_seg)
    segs = _segments(n, cps)

    def sign() -> float:
        return float(rng.choice([-1.0, 1.0]))

    if kind == "multi":
        d = 3
        X = rng.normal(size=(n, d))
        for a, _ in segs[1:]:
            dims = rng.choice(d, size=int(rng.integers(1, 3)), replace=False)
            X[a:, dims] += [sign() * rng.uniform(1.0, 5.0) for _ in dims]
        X = X * 10.0 ** rng.uniform(-2, 3, size=d) + rng.normal(0, 100, size=d)
        return SyntheticSeries(kind, X, cps)
    if kind in ("mean", "ar1"):
        level = np.empty(n)
        mu = 0.0
        lo = 1.0 if kind == "mean" else 2.0
        for a, b in segs:
            level[a:b] = mu
            mu += sign() * rng.uniform(lo, 5.0)
        noise = rng.normal(size=n) if kind == "mean" else _ar1(rng, n, float(rng.uniform(0.3, 0.7)))
        x = level + noise
    elif kind == "variance":
        x = np.empty(n)
        sd = 1.0
        for a, b in segs:
            x[a:b] = rng.normal(0.0, sd, b - a)
            sd *= rng.uniform(2.0, 4.0) ** sign()
    elif kind == "trend":
        x = np.empty(n)
        start, slope = 0.0, sign() * rng.uniform(0.0, 0.1)
        for a, b in segs:
            x[a:b] = start + slope * np.arange(b - a)
            start += slope * (b - a)
            if rng.random() < 0.5:
                start += sign() * rng.uniform(1.0, 5.0)
            slope += sign() * rng.uniform(0.05, 0.2)
        x = x + rng.normal(size=n)
    elif kind == "none":
        flavour = int(rng.integers(0, 3))
        noise = rng.normal(size=n) if flavour != 1 else _ar1(rng, n, float(rng.uniform(0.3, 0.7)))
        slope = sign() * rng.uniform(0.01, 0.1) if flavour == 2 else 0.0
        x = slope * np.arange(n) + noise
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose one of {SYNTHETIC_KINDS}")
    # arbitrary units: the detectors must not depend on the scale or offset of the data
    x = x * 10.0 ** rng.uniform(-2, 4) + rng.normal(0, 1000)
    return SyntheticSeries(kind, x, cps)


def make_synthetic(
    n_per_kind: int = 40, *, seed: int = 20261124, kinds: Sequence[str] = SYNTHETIC_KINDS
) -> list[SyntheticSeries]:
    """Generate the synthetic suite: ``n_per_kind`` series of each kind, reproducibly.

    Kinds: ``mean`` (shifts of 1-5 sd, i.i.d. noise), ``variance`` (sd ratio 2-4 up or down),
    ``trend`` (slope changes of 0.05-0.2 sd per step, half with a level jump of 1-5 sd), ``ar1``
    (shifts of 2-5 marginal sd in AR(1) noise, phi 0.3-0.7), ``none`` (no change: i.i.d., AR(1), or
    a constant trend), ``multi`` (3 dimensions, each change shifts 1-2 of them by 1-5 sd). Lengths
    100-600, 1-4 changes (0 for ``none``), segments at least 25 long; each series is then put in
    arbitrary units (scale 10^-2..10^4, random offset).

    Parameters
    ----------
    n_per_kind : int
        Series per kind.
    seed : int
        Seed of the generator.
    kinds : sequence of str
        Which kinds.

    Returns
    -------
    list of SyntheticSeries

    Examples
    --------
    >>> suite = make_synthetic(2)
    >>> len(suite), suite[0].kind, suite[-1].values.shape[1]
    (12, 'mean', 3)
    """
    rng = np.random.default_rng(seed)
    return [_one(rng, kind) for kind in kinds for _ in range(n_per_kind)]


_MODELS = ("constant", "linear", "ar1", "linear-ar1")
_BASE: dict[str, Any] = {"expected_run_length": 100.0, "threshold": 0.5, "window": 10, "kappa0": 1.0, "rule": "prob"}


def _bocpd(model: str, **changes: Any) -> DetectorSpec:
    return DetectorSpec("bocpd", {**_BASE, "model": model, **changes})


SYNTHETIC_VARIANTS: dict[str, DetectorSpec] = {
    # stage 1, the principled base of each segment model: lambda=100, kappa0=kappa1=1, alpha0=1,
    # and "P(change in the last 10 steps) >= 0.5" (rule "prob") or the MAP run length (rule "map")
    **{m: _bocpd(m) for m in _MODELS},
    **{f"{m}-map": _bocpd(m, rule="map") for m in _MODELS},
    # stage 1, one-at-a-time sensitivity around each base
    **{
        f"{m}-{tag}": _bocpd(m, **p)
        for m in _MODELS
        for tag, p in (
            ("lambda50", {"expected_run_length": 50.0}),
            ("lambda250", {"expected_run_length": 250.0}),
            ("kappa0.1", {"kappa0": 0.1}),
            ("thr0.8", {"threshold": 0.8}),
            ("window5", {"window": 5}),
            ("window20", {"window": 20}),
        )
    },
    # stage 2: the moves that helped every model in stage 1, combined
    **{
        f"{m}-{tag}": _bocpd(m, **p)
        for m in _MODELS
        for tag, p in (
            ("thr0.8-lambda250", {"threshold": 0.8, "expected_run_length": 250.0}),
            ("thr0.8-window5", {"threshold": 0.8, "window": 5}),
            ("thr0.8-lambda250-window5", {"threshold": 0.8, "expected_run_length": 250.0, "window": 5}),
        )
    },
    # multivariate with the online standardisation in front of BOCPD ("auto" leaves it out)
    **{f"{m}-multi-std": DetectorSpec("bocpd", {**_BASE, "model": m}, standardize="always") for m in _MODELS},
    # what was chosen (the class defaults: linear-ar1, lambda=250), and the references
    "default": DETECTORS["default"],
    "adwin": DetectorSpec("adwin", {}, standardize="never"),
    "page_hinkley": DetectorSpec("page_hinkley", {}, standardize="never"),
    "zero": DetectorSpec("zero", {}),
}
"""Variants scored by :func:`run_synthetic` (all are reported in ``benchmarks/tcpd.md``)."""


def run_synthetic(
    variants: Iterable[str] | None = None,
    *,
    n_per_kind: int = 40,
    seed: int = 20261124,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score detector variants on :func:`make_synthetic` (one annotator: the true change points).

    Parameters
    ----------
    variants : iterable of str, optional
        Keys of :data:`SYNTHETIC_VARIANTS` (default: all).
    n_per_kind, seed
        Passed to :func:`make_synthetic`.
    progress : callable, optional
        Called with each variant name as it starts.

    Returns
    -------
    dict
        ``{variant: {"f1", "cover", "f1_univariate", "by_kind": {kind: {"f1", "cover"}}, "runtime_s"}}``;
        ``f1``/``cover`` average over all series, ``f1_univariate`` over the univariate kinds.
    """
    suite = make_synthetic(n_per_kind, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for name in variants or SYNTHETIC_VARIANTS:
        spec = SYNTHETIC_VARIANTS[name]
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        rows: list[tuple[str, float, float]] = []
        for s in suite:
            cps = detect_change_points(s.values, spec)
            truth = {"truth": s.cps}
            n = s.values.shape[0]
            rows.append((s.kind, float(tcpd_f1(cps, truth, n, margin=MARGIN)), float(tcpd_cover(cps, truth, n))))
        kinds = sorted({k for k, _, _ in rows}, key=SYNTHETIC_KINDS.index)
        out[name] = {
            "f1": float(np.mean([f for _, f, _ in rows])),
            "cover": float(np.mean([c for _, _, c in rows])),
            "f1_univariate": float(np.mean([f for k, f, _ in rows if k != "multi"])),
            "by_kind": {
                k: {
                    "f1": float(np.mean([f for kk, f, _ in rows if kk == k])),
                    "cover": float(np.mean([c for kk, _, c in rows if kk == k])),
                }
                for k in kinds
            },
            "runtime_s": round(time.perf_counter() - t0, 2),
        }
    return out


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

tcpd_app = typer.Typer(help="Change-point benchmarks (TCPD, synthetic).", no_args_is_help=True)


def _default_data_dir() -> Path:
    import os

    root = os.environ.get("STREAM_VAE_DATA_DIR")
    return Path(root) / "drift" / "tcpd" if root else Path("../shared/data/drift/tcpd")


@tcpd_app.command("tcpd")
def tcpd_command(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="TCPD folder (default: $STREAM_VAE_DATA_DIR/drift/tcpd, else ../shared/data/drift/tcpd)"
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as one JSON document")] = False,
    detector: Annotated[str, typer.Option("--detector", help=f"one of {', '.join(DETECTORS)}")] = "default",
) -> None:
    """Stream every TCPD series through a change detector; F1 (margin 5) and cover vs 5 annotators."""
    if detector not in DETECTORS:
        typer.echo(f"error: unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}", err=True)
        raise typer.Exit(2)
    folder = data_dir or _default_data_dir()
    try:
        result = run_tcpd(folder, detector=detector)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{'series':<20} {'F1':>6} {'cover':>6} {'n_cp':>5}  detected")
    for name, row in result["per_series"].items():
        typer.echo(f"{name:<20} {row['f1']:6.3f} {row['cover']:6.3f} {row['n_cp']:5d}  {row['detected']}")
    typer.echo(f"{'MEAN ' + result['detector']:<20} {result['f1']:6.3f} {result['cover']:6.3f}")
    for base, row in result["baselines"].items():
        typer.echo(f"{base:<20} {row['f1']:6.3f} {row['cover']:6.3f}")
    published = ", ".join(f"{k} {v:.3f}" for k, v in result["published"].items())
    typer.echo(f"published TCPDBench mean F1 (42 series): {published}")
    typer.echo(f"{result['n_series']} series, {result['runtime_s']:.2f} s")


@tcpd_app.command("changepoint-synthetic")
def synthetic_command(
    json_out: Annotated[bool, typer.Option("--json", help="print the result as one JSON document")] = False,
    n_per_kind: Annotated[int, typer.Option(help="series per kind")] = 40,
    seed: Annotated[int, typer.Option(help="generator seed")] = 20261124,
) -> None:
    """Score every detector variant on the synthetic suite the defaults were chosen on."""
    result = run_synthetic(n_per_kind=n_per_kind, seed=seed)
    if json_out:
        typer.echo(json.dumps(result))
        return
    kinds = list(next(iter(result.values()))["by_kind"])
    typer.echo(f"{'variant':<20} {'F1':>6} {'F1uni':>6} {'cover':>6} " + " ".join(f"{k:>8}" for k in kinds))
    for name, row in result.items():
        by = " ".join(f"{row['by_kind'][k]['f1']:8.3f}" for k in kinds)
        typer.echo(f"{name:<20} {row['f1']:6.3f} {row['f1_univariate']:6.3f} {row['cover']:6.3f} {by}")


if __name__ == "__main__":  # pragma: no cover
    tcpd_app()
