"""score: batched torch inference; one call per batch, no gradients."""

from __future__ import annotations

import numpy as np
import torch

from stream_vae.model.vae import VAE
from stream_vae.records import FloatArray, ScoreResult


class VAEScorer:
    """Scores already-featurized rows with a trained VAE. Higher score = more anomalous.

    ``contributions`` fold the window back onto the topology's features: with a window of w
    records, feature j's contribution is its NLL summed over the w positions.
    """

    def __init__(self, vae: VAE, *, n_features: int, model_version: str) -> None:
        self.vae = vae.eval()
        self.n_features = n_features
        self.model_version = model_version

    @torch.inference_mode()
    def score_many(self, X: FloatArray) -> ScoreResult:
        x = torch.as_tensor(X, dtype=torch.float32)
        mu, logvar = self.vae.encode(x)
        nll = self.vae.nll_per_feature(x, self.vae.decode(mu))
        kl = VAE.kl(mu, logvar)
        per_feature = nll.reshape(len(X), -1, self.n_features).sum(dim=1)
        return ScoreResult(
            score=nll.sum(dim=1).double().numpy(),
            kl=kl.double().numpy(),
            contributions=per_feature.double().numpy(),
            latent_mu=mu.double().numpy(),
            latent_logvar=logvar.double().numpy(),
            model_version=self.model_version,
        )

    def score_one(self, x: FloatArray) -> float:
        return float(self.score_many(np.atleast_2d(x)).score[0])
