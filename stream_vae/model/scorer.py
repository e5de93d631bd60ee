"""score: batched torch inference; one call per batch, no gradients."""

from __future__ import annotations

import numpy as np
import torch

from stream_vae.model.vae import VAE, AnyVAE, members
from stream_vae.records import FloatArray, ScoreResult


class VAEScorer:
    """Scores already-featurized rows with a trained VAE. Higher score = more anomalous.

    ``contributions`` are each feature's squared standardised residual, 0.5 * ((x - x_hat) / sigma)^2
    (the part of the NLL that depends on the data, so always >= 0), folded back onto the
    topology's features: with a window of w records, summed over the w positions. ``attributions``
    take each feature's largest term over the w positions instead: what an alert names as its top
    features. A feature that spiked at one record outranks one that is a little off at every record of
    the window, which matches the labelled dimensions better (HitRate@150 on SMD / ASD, three seeds:
    benchmarks/detection.md, session 7).

    The score depends on the VAE's ``score_kind``:

    * ``"gaussian"``: the Gaussian negative log-likelihood of the (windowed) row, summed.
    * ``"robust"``: ``sum_j log(1 + c_j / q_j)`` over the features' contributions ``c_j``, with
      ``q_j`` the VAE's ``score_scale``: 1, or with ``ModelSpec.score_quantile`` set, that quantile
      of the feature's contributions on held-out training data. For one record this is, up to
      constants, the NLL of a Student-t with 2 degrees of freedom: a feature that wanders far (one
      noisy metric, one metric that moved since training) adds only logarithmically, so it cannot
      drown what many features say together. The ``contributions`` returned stay unscaled.

    An ensemble (:class:`~stream_vae.model.vae.VAEEnsemble`) scores with each member and returns
    the mean score and mean contributions; ``latent_mu``/``kl`` are the first member's. Rows hold
    the longest member's window; a member with ``n_in`` inputs reads the last ``n_in`` of them
    (``ModelSpec.member_windows``).
    """

    def __init__(self, vae: AnyVAE, *, n_features: int, model_version: str) -> None:
        self.vae = vae.eval()
        self.members = members(vae)
        self.n_features = n_features
        self.model_version = model_version

    @torch.inference_mode()
    def score_many(self, X: FloatArray) -> ScoreResult:
        x = torch.as_tensor(X, dtype=torch.float32)
        scores, per_features, peaks = [], [], []
        for i, vae in enumerate(self.members):  # an ensemble: the mean of its members
            xi = x[:, -vae.n_in :]  # a member with a shorter window reads the last records of the row
            mu_i, logvar_i = vae.encode(xi)
            x_hat = vae.decode(mu_i)
            z2 = 0.5 * (xi - x_hat) ** 2 * torch.exp(-vae.out_log_variance())
            by_position = z2.reshape(len(X), -1, self.n_features)
            per_feature = by_position.sum(dim=1)
            peaks.append(by_position.amax(dim=1))
            if vae.score_kind == "robust":
                scores.append(torch.log1p(per_feature / vae.get_buffer("score_scale")).sum(dim=1))
            else:
                scores.append(vae.nll_per_feature(xi, x_hat).sum(dim=1))
            per_features.append(per_feature)
            if i == 0:  # the drift monitor follows the first member's latent space
                mu, logvar = mu_i, logvar_i
        return ScoreResult(
            score=_mean(scores),
            kl=VAE.kl(mu, logvar).double().numpy(),
            contributions=_mean(per_features),
            attributions=_mean(peaks),
            latent_mu=mu.double().numpy(),
            latent_logvar=logvar.double().numpy(),
            model_version=self.model_version,
        )

    def score_one(self, x: FloatArray) -> float:
        return float(self.score_many(np.atleast_2d(x)).score[0])


def _mean(per_member: list[torch.Tensor]) -> FloatArray:
    """The ensemble's value: the members' mean (one member: its own, unchanged)."""
    out = per_member[0] if len(per_member) == 1 else torch.stack(per_member).mean(0)
    return out.double().numpy()  # type: ignore[no-any-return]
