"""The VAE, its scorer, training and the model registry."""

from __future__ import annotations


def set_torch_threads(n: int) -> None:
    """Pin torch's intra-op threads. One per process is the default: workers scale out by processes
    and partitions, and on a busy 2-core machine a second OpenMP thread made batched scoring 140x
    slower (3.9 M vs 28 k records/s, measured; see BENCHMARKS.md)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
