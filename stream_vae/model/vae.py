"""A plain MLP Variational Autoencoder with a Gaussian decoder (learned per-feature variance)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

_LOG2PI = math.log(2 * math.pi)

ScoreKind = Literal["gaussian", "robust"]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Encoder q(z|x) = N(mu, diag(exp(logvar))), decoder p(x|z) = N(dec(z), diag(exp(out_logvar))).

    ``out_logvar`` is one learned log-variance per input feature: noisy features weigh less in the
    score than quiet ones, which plain MSE cannot express.

    ``score`` says how a scorer turns the reconstruction into one anomaly score (see
    :class:`~stream_vae.model.scorer.VAEScorer`). It is kept as a buffer, so it travels with the
    weights and a loaded model scores the way it was calibrated; weights saved without it load as
    ``"gaussian"``. ``score_scale`` (one per feature, ``n_features`` of them; a windowed row holds
    ``n_in / n_features`` records) is the robust score's unit per feature, set after training from
    held-out data; weights saved without it load with scale 1.
    """

    def __init__(
        self, n_in: int, *, hidden: Sequence[int] = (64, 32), latent_dim: int = 4, score: ScoreKind = "gaussian",
        n_features: int | None = None,
    ) -> None:
        super().__init__()
        self.n_in = n_in
        self.hidden = tuple(hidden)
        self.latent_dim = latent_dim
        self.encoder = _mlp([n_in, *hidden])
        self.enc_mu = nn.Linear(hidden[-1], latent_dim)
        self.enc_logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = _mlp([latent_dim, *reversed(hidden)])
        self.dec_mu = nn.Linear(hidden[0], n_in)
        self.out_logvar = nn.Parameter(torch.zeros(n_in))
        self.register_buffer("robust_score", torch.tensor(1.0 if score == "robust" else 0.0))
        self.register_buffer("score_scale", torch.ones(n_features or n_in))

    @property
    def score_kind(self) -> ScoreKind:
        return "robust" if float(self.get_buffer("robust_score")) > 0.5 else "gaussian"

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        sd = dict(state_dict)
        sd.setdefault("robust_score", torch.tensor(0.0))  # artifacts from before the robust score
        sd.setdefault("score_scale", torch.ones_like(self.get_buffer("score_scale")))  # ... and its scale
        return super().load_state_dict(sd, strict=strict, assign=assign)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.enc_mu(h), self.enc_logvar(h).clamp(-10.0, 10.0)

    def decode(self, z: Tensor) -> Tensor:
        out: Tensor = self.dec_mu(self.decoder(z))
        return out

    def out_log_variance(self) -> Tensor:
        # Bounded so a feature that was constant in training cannot make the likelihood degenerate.
        return self.out_logvar.clamp(-6.0, 6.0)

    def nll_per_feature(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Gaussian negative log-likelihood of ``x`` under the decoder, per feature."""
        lv = self.out_log_variance()
        return 0.5 * (_LOG2PI + lv + (x - x_hat) ** 2 * torch.exp(-lv))

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) per record."""
        return -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


class VAEEnsemble(nn.Module):
    """VAEs of one architecture trained from different seeds, scored together.

    A scorer averages the members' scores and contributions; the latent posterior (for the drift
    monitor) is the first member's, so one reference describes it. Training noise is the largest
    variance in the detector: on SMD the same settings with seeds 0/1/2 spread label-free PA-F1
    over 0.70-0.78, and three members matched the best single seed (benchmarks/detection.md).
    """

    def __init__(self, members: Sequence[VAE]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def first(self) -> VAE:
        first: VAE = self.members[0]  # type: ignore[assignment]
        return first

    @property
    def n_in(self) -> int:
        return self.first.n_in

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.first.hidden

    @property
    def latent_dim(self) -> int:
        return self.first.latent_dim

    @property
    def score_kind(self) -> ScoreKind:
        return self.first.score_kind

    def vaes(self) -> list[VAE]:
        return [m for m in self.members if isinstance(m, VAE)]


AnyVAE = VAE | VAEEnsemble


def members(vae: AnyVAE) -> list[VAE]:
    """The VAEs to score with: the members of an ensemble, or the one VAE."""
    return vae.vaes() if isinstance(vae, VAEEnsemble) else [vae]
