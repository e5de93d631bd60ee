"""How optimistic is a NAB profile picked on the same 51 files? A split-half selection check.

The NAB eval profile (score kind, window, range rule, seasonal differences) was chosen by running
all 51 files. This script runs a grid of 24 profiles once (seed 0, no baselines, the eval's own `evaluate_nab`), then
repeatedly splits the files in two halves (alternating within each category, random order), picks
the best profile on one half by NAB's standard score (corpus threshold chosen on that half's
labels, as NAB does) and scores it on the other half. The gap between "picked on the other half"
and "best in hindsight on this half" is the selection optimism.

    python benchmarks/nab_profile_split.py --data-dir ../shared/data/nab   # ~8 min on 1 core
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from dataclasses import replace

import numpy as np

from stream_vae.evaluation.cli import NAB_DEFAULTS
from stream_vae.evaluation.runner import NAB_RATIOS, _nab_scores, _ratio, evaluate_nab

GRID = {"score": ("gaussian", "robust"), "window": (32, 64, 128), "range_tolerance": (0.0, 0.05),
        "seasonal_period": (0, "auto")}


def best_standard(series: list, ratios: list, idx: list[int]) -> float:
    sub, rr = [series[i] for i in idx], [ratios[i] for i in idx]
    return max(_nab_scores(sub, rr, tau)[0]["standard"] for tau in NAB_RATIOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the split order (the models use seed 0)")
    args = ap.parse_args()

    profiles: dict[str, list[np.ndarray]] = {}
    series: list = []
    for values in itertools.product(*GRID.values()):
        kw = dict(zip(GRID, values, strict=True))
        doc, series, traces = evaluate_nab(args.data_dir, settings=replace(NAB_DEFAULTS, baselines=(), **kw))
        name = " ".join(f"{k}={v}" for k, v in kw.items())
        profiles[name] = [_ratio(t) for t in traces]
        print(f"{name}: standard {doc['score_standard']} (all {len(series)} files)", flush=True)

    cats: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        cats.setdefault(s.category, []).append(i)
    rng = np.random.default_rng(args.seed)
    picked, out_of_half, hindsight = Counter(), [], []
    for _ in range(args.splits):
        halves: tuple[list[int], list[int]] = ([], [])
        for idx in cats.values():
            order = [int(i) for i in rng.permutation(idx)]
            halves[0].extend(order[::2])
            halves[1].extend(order[1::2])
        scores = [{p: best_standard(series, r, h) for p, r in profiles.items()} for h in halves]
        for pick_on, test_on in ((0, 1), (1, 0)):
            choice = max(scores[pick_on], key=scores[pick_on].__getitem__)
            picked[choice] += 1
            out_of_half.append(scores[test_on][choice])
            hindsight.append(max(scores[test_on].values()))
    print(f"profile picked on a half ({2 * args.splits} picks): {dict(picked)}")
    print(f"standard score on the other half: {np.mean(out_of_half):.1f} "
          f"(best profile in hindsight there: {np.mean(hindsight):.1f}; "
          f"half-to-half range {min(out_of_half):.1f}-{max(out_of_half):.1f})")


if __name__ == "__main__":
    main()
