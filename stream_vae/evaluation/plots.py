"""Figures for ``stream-vae eval --plots``: score and threshold over time, per-feature contributions.

matplotlib (the ``eval`` or ``dev`` extra) is imported on first use, with the non-interactive
Agg backend. Figures are small PNGs (a few hundred kB at most).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_vae.evaluation.runner import StreamTrace

__all__ = ["plot_contributions", "plot_score", "safe_name"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("--plots needs matplotlib: pip install 'stream-vae[eval]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(name: str) -> str:
    """A file-name-safe version of an entity or NAB file name.

    Examples
    --------
    >>> safe_name("realTweets/Twitter_volume_AAPL.csv")
    'realTweets_Twitter_volume_AAPL'
    """
    stem = name[:-4] if name.endswith(".csv") else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "entity"


def _spans(label: NDArray[Any]) -> list[tuple[int, int]]:
    padded = np.concatenate(([0], np.asarray(label, dtype=np.int8), [0]))
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def plot_score(
    path: str | Path,
    trace: StreamTrace,
    label: NDArray[Any],
    *,
    title: str,
    baseline: tuple[str, StreamTrace] | None = None,
) -> Path:
    """Score and online threshold over time, labelled anomalies shaded, flagged records marked.

    With ``baseline`` a second panel shows that detector's score and threshold the same way.
    """
    plt = _pyplot()
    panels = [("stream-vae", trace)] + ([baseline] if baseline else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels)), sharex=True, squeeze=False)
    spans = _spans(label)
    t = np.arange(len(trace.score))
    for ax, (name, tr) in zip(axes[:, 0], panels, strict=True):
        lo = float(np.quantile(tr.score, 0.001))
        positive = lo > 0 and float(tr.score.max()) / lo > 100
        for a, b in spans:
            ax.axvspan(a, b, color="tab:red", alpha=0.18, lw=0)
        ax.plot(t, tr.score, lw=0.4, color="tab:blue", label=f"{name} score")
        ax.plot(t, tr.threshold, lw=1.0, color="black", label="online threshold")
        ax.axhline(tr.base_threshold, lw=0.8, ls="--", color="gray", label="calibrated on train")
        idx = np.flatnonzero(tr.flagged)
        ax.plot(idx, tr.score[idx], ".", ms=1.5, color="tab:orange", label="flagged")
        if positive:
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.legend(loc="upper left", fontsize=7, ncol=4, frameon=False)
    axes[0, 0].set_title(f"{title} (labelled anomalies shaded)", fontsize=10)
    axes[-1, 0].set_xlabel("test record (arrival order)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _pick_segment(
    trace: StreamTrace, label: NDArray[Any], interpretation: Sequence[tuple[int, int, Sequence[int]]]
) -> tuple[int, int, Sequence[int]] | None:
    """The labelled segment the detector flagged most of (ties: the longer one); None if none."""
    cands: list[tuple[int, int, Sequence[int]]] = list(interpretation) or [(a, b, ()) for a, b in _spans(label)]
    if not cands:
        return None
    return max(cands, key=lambda c: (int(trace.flagged[c[0] : c[1]].sum()), c[1] - c[0]))


def plot_contributions(
    path: str | Path,
    trace: StreamTrace,
    label: NDArray[Any],
    *,
    title: str,
    interpretation: Sequence[tuple[int, int, Sequence[int]]] = (),
    context: int = 60,
) -> Path | None:
    """Per-feature contributions around one labelled anomaly, as a heat map (features x time).

    The segment is the one the pipeline flagged most of. Ground-truth dimensions (interpretation
    labels) are marked with a triangle on the left; the segment is outlined. Returns None when
    the trace has no contributions or the entity no anomaly.
    """
    if trace.contributions is None:
        return None
    seg = _pick_segment(trace, label, interpretation)
    if seg is None:
        return None
    a, b, dims = seg
    lo, hi = max(0, a - context), min(len(trace.score), b + context)
    if hi - lo > 600:  # long segments: show its start
        hi = lo + 600
    C = trace.contributions[lo:hi].T
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(
        2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 3.2]}, layout="constrained"
    )
    t = np.arange(lo, hi)
    ax0.plot(t, trace.score[lo:hi], lw=0.8, color="tab:blue")
    ax0.plot(t, trace.threshold[lo:hi], lw=0.8, color="black")
    ax0.axvspan(a, min(b, hi), color="tab:red", alpha=0.18, lw=0)
    ax0.set_ylabel("score")
    ax0.set_title(f"{title}: per-feature contributions around the anomaly at records {a}-{b - 1}", fontsize=10)
    im = ax1.imshow(
        np.log1p(C), aspect="auto", interpolation="nearest", cmap="magma",
        extent=(lo - 0.5, hi - 0.5, C.shape[0] - 0.5, -0.5),
    )
    ax1.axvline(a - 0.5, color="cyan", lw=0.8)
    ax1.axvline(min(b, hi) - 0.5, color="cyan", lw=0.8)
    if dims:
        ax1.plot(np.full(len(dims), lo - 0.5), list(dims), ">", color="cyan", ms=5, clip_on=False,
                 label="labelled dimensions")
        ax1.legend(loc="upper right", fontsize=7, frameon=False, labelcolor="white")
    ax1.set_ylabel("feature (0-based)")
    ax1.yaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("test record")
    fig.colorbar(im, ax=[ax0, ax1], label="log(1 + contribution)", pad=0.01)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
