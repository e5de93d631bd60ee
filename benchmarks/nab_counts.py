"""NAB windows found and detections outside windows, at the corpus threshold and label-free.

Runs the eval's own `evaluate_nab` (NAB profile, seed 0, no baselines) and counts, after each
file's probationary period, the labelled windows with at least one detection (an alert = the first
record of a run of flags) and the detections outside every window: the two halves of the NAB score.

    python benchmarks/nab_counts.py --data-dir ../shared/data/nab [--seasonal-period 0]   # ~20 s
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from stream_vae.evaluation.cli import NAB_DEFAULTS
from stream_vae.evaluation.metrics import nab_probation_length
from stream_vae.evaluation.runner import _ratio, alerted, evaluate_nab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seasonal-period", default=str(NAB_DEFAULTS.seasonal_period), help="'auto' or records (0 = off)")
    args = ap.parse_args()
    period = args.seasonal_period if args.seasonal_period == "auto" else int(args.seasonal_period)
    settings = replace(NAB_DEFAULTS, baselines=(), seasonal_period=period)
    doc, series, traces = evaluate_nab(args.data_dir, settings=settings)
    print(f"seasonal_period={period}: standard {doc['score_standard']}, "
          f"label-free {doc['label_free']['score_standard']}")
    for name, tau in (("corpus threshold", doc["threshold_ratio"]["score_standard"]), ("label-free", 1.0)):
        found = total = outside = 0
        for s, tr in zip(series, traces, strict=True):
            det = alerted(_ratio(tr), tau, settings.alert_group)
            det[: nab_probation_length(len(s.values))] = False
            in_window = np.zeros(len(det), dtype=bool)
            for a, b in s.window_indices:
                in_window[a : b + 1] = True
                total += 1
                found += bool(det[a : b + 1].any())
            outside += int((det & ~in_window).sum())
        print(f"{name}: {found} of {total} windows found, {outside} detections outside windows")


if __name__ == "__main__":
    main()
