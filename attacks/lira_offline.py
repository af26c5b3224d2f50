"""``lira_offline``: the offline Likelihood Ratio Attack (Carlini et al., S&P 2022).

Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First Principles"
(S&P 2022), the offline variant: the attacker trains only OUT shadow models -- models that did not
see the target -- and tests whether the victim's confidence on the target is unusually high for a
model that did not train on it. The signal is the logit-scaled confidence

    phi(p, y) = log(p_y / (1 - p_y)),

which is close to Gaussian across models. With ``phi_1..phi_k`` of the ``k`` OUT models on ``(x, y)``,
``mu = mean(phi_i)`` and ``sigma`` their standard deviation -- a single one pooled over all targets
(``global_variance``, the paper's recommendation with few shadow models) or one per target -- the score
is the one-sided test

    s(x, y) = log Pr[Z <= phi_victim],   Z ~ N(mu, sigma^2),

higher = member. With ``augment`` the horizontal flip is a second query: ``mu`` and ``sigma`` are
estimated per query and the two log-probabilities averaged.

The auxiliary pool is disjoint from every victim's data, so every shadow model (a random subset of the
pool of the victims' training-set size, trained with their recipe) is OUT for every target. The
attack calibrates no decision threshold: its records carry the threshold-free metrics only.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.shadow import ShadowParams, shadow_models
from dfl.registries import ATTACKS

EPS = 1e-30
MIN_SIGMA = 1e-6  # OUT models that agree exactly (saturated confidences) must not divide by zero


class LiraOfflineParams(ShadowParams):
    shadow_models: int = Field(4, ge=2, description="OUT shadow models (at least 2 for a variance)")
    global_variance: bool = Field(True, description="one sigma pooled over all targets (offline LiRA) or per target")
    augment: bool = Field(False, description="also query the horizontal flip and average the two tests")


def logit_confidence(p: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``phi = log p_y - log sum_{i != y} p_i`` ``(N,)`` float64, stable near ``p_y = 1``; ``p: (N, C)``."""
    q = p.double()
    py = q.gather(1, y[:, None]).squeeze(1)
    rest = q.scatter(1, y[:, None], 0.0).sum(1)  # not 1 - p_y: that cancels to 0 in float32
    return (py.clamp_min(EPS).log() - rest.clamp_min(EPS).log()).numpy()


def out_statistics(phi_out: np.ndarray, global_variance: bool) -> tuple[np.ndarray, np.ndarray | float]:
    """``phi_out: (k, N)`` -> per-target means ``(N,)`` and the OUT std (pooled scalar, or ``(N,)``)."""
    mu = phi_out.mean(0)
    var = phi_out.var(0, ddof=1)
    sigma = np.sqrt(var.mean()) if global_variance else np.sqrt(var)
    return mu, np.maximum(sigma, MIN_SIGMA)


def offline_lr(phi_victim: np.ndarray, mu: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """``log Phi((phi_victim - mu) / sigma)``: the log-CDF of the victim's ``phi`` under the OUT Gaussian."""
    from scipy.special import log_ndtr  # here: importing the plugins stays fast

    return log_ndtr((phi_victim - mu) / sigma)


@ATTACKS.register("lira_offline", params=LiraOfflineParams)
class LiraOffline(MembershipAttack):
    """Offline LiRA: the victim's logit-scaled confidence against a Gaussian fit to OUT shadow models."""

    params: LiraOfflineParams

    def prepare(self, view: AdversaryView) -> None:
        p = self.params
        shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)  # trained once, cached in the view

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        p = self.params
        shadows = shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)
        views = [data.x, data.x.flip(-1)] if p.augment else [data.x]
        tests, sigmas = [], []
        for x in views:
            phi_out = np.stack([logit_confidence(probabilities(sh.model, x), data.y) for sh in shadows])
            mu, sigma = out_statistics(phi_out, p.global_variance)
            tests.append(offline_lr(logit_confidence(outputs(x), data.y), mu, sigma))
            sigmas.append(float(np.mean(sigma)))
        return AttackResult(np.mean(tests, axis=0), None, {"sigma_out": sigmas})
