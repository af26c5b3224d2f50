"""``lira``: the online Likelihood Ratio Attack (Carlini et al., S&P 2022).

Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First Principles"
(S&P 2022), the online variant: the attacker trains ``k`` reference models, each on a random half of
the targets filled up with auxiliary data to a victim's training size
(:func:`attacks.shadow.reference_models`: each target is IN for exactly half of them), and fits two Gaussians per target to the logit-scaled confidence

    phi(p, y) = log(p_y / (1 - p_y))

of the models that trained on it (IN: ``mu_in``, ``sigma_in``) and of those that did not (OUT). The
score is the log-likelihood ratio of the victim's ``phi``:

    s(x, y) = log N(phi_victim; mu_in, sigma_in^2) - log N(phi_victim; mu_out, sigma_out^2),

higher = member. ``global_variance`` pools each of the two variances over all targets (the paper's
choice with few reference models), else one per target (needs at least 2 IN and 2 OUT models). With
``augment`` the horizontal flip is a second query and the two ratios are averaged. It shares the
reference models with ``rmia`` (online) in the same round, and its record states how many it trained.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.lira_offline import MIN_SIGMA, logit_confidence
from attacks.shadow import ShadowParams, reference_models
from dfl.registries import ATTACKS


class LiraParams(ShadowParams):
    shadow_models: int = Field(8, ge=2, description="reference models (IN and OUT halves; even counts balance them)")
    global_variance: bool = Field(True, description="one IN and one OUT sigma pooled over all targets, or per target")
    augment: bool = Field(False, description="also query the horizontal flip and average the two ratios")

    @model_validator(mode="after")
    def _enough(self) -> LiraParams:
        if not self.global_variance and self.shadow_models < 4:
            raise ValueError(f"per-target variances need at least 4 reference models (2 IN, 2 OUT), got {self.shadow_models}")
        return self


def gaussian_statistics(phi: np.ndarray, keep: np.ndarray, global_variance: bool) -> tuple[np.ndarray, ...]:
    """``phi, keep: (k, N)`` -> per-target ``mu_in, mu_out (N,)`` and ``sigma_in, sigma_out`` (pooled or ``(N,)``).

    Each target's IN statistics use the models with ``keep``, its OUT statistics the others."""
    w_in, w_out = keep.astype(np.float64), (~keep).astype(np.float64)
    n_in, n_out = w_in.sum(0), w_out.sum(0)
    mu_in = (phi * w_in).sum(0) / np.maximum(n_in, 1)
    mu_out = (phi * w_out).sum(0) / np.maximum(n_out, 1)
    var_in = ((phi - mu_in) ** 2 * w_in).sum(0) / np.maximum(n_in - 1, 1)
    var_out = ((phi - mu_out) ** 2 * w_out).sum(0) / np.maximum(n_out - 1, 1)
    if global_variance:
        var_in, var_out = np.full_like(mu_in, var_in.mean()), np.full_like(mu_out, var_out.mean())
    return mu_in, mu_out, np.maximum(np.sqrt(var_in), MIN_SIGMA), np.maximum(np.sqrt(var_out), MIN_SIGMA)


def online_lr(phi_victim: np.ndarray, mu_in: np.ndarray, mu_out: np.ndarray, sigma_in: np.ndarray,
              sigma_out: np.ndarray) -> np.ndarray:
    """``log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2)``, elementwise."""
    def log_normal(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)

    return log_normal(phi_victim, mu_in, sigma_in) - log_normal(phi_victim, mu_out, sigma_out)


@ATTACKS.register("lira", params=LiraParams)
class Lira(MembershipAttack):
    """Online LiRA: the victim's logit-scaled confidence, IN Gaussian against OUT Gaussian per target."""

    params: LiraParams

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        p = self.params
        ref = reference_models(view, p.shadow_models, data, p.shadow_size, p.shadow_epochs)
        views = [data.x, data.x.flip(-1)] if p.augment else [data.x]
        tests = []
        for x in views:
            phi = np.stack([logit_confidence(probabilities(m, x), data.y) for m in ref.models])
            stats = gaussian_statistics(phi, ref.keep, p.global_variance)
            tests.append(online_lr(logit_confidence(outputs(x), data.y), *stats))
        return AttackResult(np.mean(tests, axis=0), None, {"reference_models": p.shadow_models,
                                                           "reference_mode": "online", "queries": len(views)})
