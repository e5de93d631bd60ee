"""Offline evaluation: benchmark loaders, metrics and reference baselines.

* :mod:`~stream_vae.evaluation.metrics`: point-adjust, best F1, AUC-PR, HitRate@P%, NAB score,
  TCPD F1 / cover (pure numpy).
* :mod:`~stream_vae.evaluation.datasets`: SMD / ASD entities, NAB corpus, TCPD series.
* :mod:`~stream_vae.evaluation.baselines`: PCA, IsolationForest, HalfSpaceTrees, uniform random.

Nothing here imports torch, Kafka or Redis; scikit-learn and river are imported only by the
baselines that use them.
"""

from __future__ import annotations

from stream_vae.evaluation.baselines import (
    BASELINES,
    Baseline,
    HalfSpaceTreesBaseline,
    IsolationForestBaseline,
    PCABaseline,
    SupportsContributions,
    UniformRandomBaseline,
)
from stream_vae.evaluation.datasets import (
    DatasetLayoutError,
    Entity,
    NabSeries,
    TcpdSeries,
    list_entities,
    load_nab,
    load_nab_profiles,
    load_smd_like,
    load_tcpd,
    parse_interpretation_label,
)
from stream_vae.evaluation.metrics import (
    NAB_PROFILES,
    NabProfile,
    auc_pr,
    best_f1,
    f1_score,
    hitrate_at_p,
    nab_counts,
    nab_normalized_score,
    nab_null_score,
    nab_perfect_score,
    nab_probation_length,
    nab_raw_score,
    nab_scaled_sigmoid,
    nab_score,
    nab_window_indices,
    point_adjust,
    tcpd_cover,
    tcpd_f1,
    tcpd_precision_recall,
)

__all__ = [
    "BASELINES",
    "NAB_PROFILES",
    "Baseline",
    "DatasetLayoutError",
    "Entity",
    "HalfSpaceTreesBaseline",
    "IsolationForestBaseline",
    "NabProfile",
    "NabSeries",
    "PCABaseline",
    "SupportsContributions",
    "TcpdSeries",
    "UniformRandomBaseline",
    "auc_pr",
    "best_f1",
    "f1_score",
    "hitrate_at_p",
    "list_entities",
    "load_nab",
    "load_nab_profiles",
    "load_smd_like",
    "load_tcpd",
    "nab_counts",
    "nab_normalized_score",
    "nab_null_score",
    "nab_perfect_score",
    "nab_probation_length",
    "nab_raw_score",
    "nab_scaled_sigmoid",
    "nab_score",
    "nab_window_indices",
    "parse_interpretation_label",
    "point_adjust",
    "tcpd_cover",
    "tcpd_f1",
    "tcpd_precision_recall",
]
