"""``rmia``: the Robust Membership Inference Attack (Zarifzadeh et al., ICML 2024).

Zarifzadeh, Liu, Chatzikokolakis, Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML
2024). With ``Pr(x | theta)`` a model's probability of ``x``'s label, the attack compares the target
``x`` with population samples ``z`` (the attacker's auxiliary pool, or a seeded subset of ``population``
of it) through the pairwise likelihood ratio

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],
    score(x) = Pr_z[ LR(x, z) >= gamma ],

higher = member, where ``theta`` is the victim and ``Pr(x)`` the mean of ``Pr(x | theta')`` over
reference models trained with the victims' recipe:

* **offline** (the default): OUT models only, the shadow models of the auxiliary pool
  (:func:`attacks.shadow.shadow_models`, shared with ``lira_offline`` and the shadow-calibrated attacks);
  their mean is an estimate of ``Pr(x)`` over models without ``x``, and the paper's approximation of the
  IN half is ``Pr(x) = ((1 + a) * Pr_OUT(x) + (1 - a)) / 2``, with ``a`` chosen as the paper does unless
  given (:func:`tune_a`: each shadow model in turn plays the victim of the others; recorded as
  ``offline_a``);
* **online**: IN and OUT models (:func:`attacks.shadow.reference_models`: each target in half of them,
  shared with ``lira``); ``Pr(x)`` is their plain mean.

``Pr(z)`` is the mean over the same reference models (the population samples are part of the pool they
train on, as in the paper). Counting ``z`` with ``LR(x, z) >= gamma`` is a binary search over the
sorted ``Pr(z | theta) / Pr(z)``, so a score costs ``O(log |Z|)``.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.shadow import ShadowParams, reference_models, shadow_models
from dfl.registries import ATTACKS

EPS = 1e-30


class RmiaParams(ShadowParams):
    shadow_models: int = Field(4, ge=1, description="reference models (online: at least 2, IN and OUT halves)")
    online: bool = Field(False, description="IN and OUT reference models per target (else OUT only, offline)")
    population: int | None = Field(None, gt=0, description="population samples z drawn from the auxiliary pool "
                                   "(default: all of it; more z resolve the score more finely)")
    gamma: float = Field(1.0, gt=0.0, description="threshold of the pairwise likelihood ratio")
    a: float | None = Field(None, ge=0.0, le=1.0, description="offline: Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2 "
                            "(default: chosen on the shadow models, the paper's procedure; 0.3 with one)")


def label_probability(p: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``Pr(x | theta)``: each row's probability of its label, ``(N,)`` float64."""
    return p.double().gather(1, y[:, None]).squeeze(1).numpy()


A_GRID = np.linspace(0.0, 1.0, 11)  # the offline a values tried on the shadow models
A_ONE_MODEL = 0.3  # the offline a with a single shadow model, where none is left to tune it on


def offline_ratio(p_target: np.ndarray, p_refs: np.ndarray, a: float) -> np.ndarray:
    """``Pr(x | theta) / Pr(x)`` with the offline ``Pr(x) = ((1 + a) mean(p_refs) + 1 - a) / 2``."""
    return p_target / np.maximum(((1 + a) * p_refs.mean(0) + (1 - a)) / 2, EPS)


def tune_a(shadows: list, z: Labelled, gamma: float) -> float:
    """The offline ``a`` of the paper's procedure: each shadow model in turn plays the victim (its own
    members and non-members are known), the others the reference models; the ``a`` of :data:`A_GRID`
    with the best mean AUC wins (ties: the smallest)."""
    from sklearn.metrics import roc_auc_score  # here: importing the plugins stays fast

    if len(shadows) < 2:
        return A_ONE_MODEL
    pz = np.stack([label_probability(probabilities(sh.model, z.x), z.y) for sh in shadows])
    auc = np.zeros(len(A_GRID))
    for t, target in enumerate(shadows):
        x = torch.cat([target.inside.x, target.outside.x])
        y = torch.cat([target.inside.y, target.outside.y])
        truth = np.r_[np.ones(len(target.inside), bool), np.zeros(len(target.outside), bool)]
        px = np.stack([label_probability(probabilities(sh.model, x), y) for sh in shadows])
        others = [j for j in range(len(shadows)) if j != t]
        ratio_z = pz[t] / np.maximum(pz[others].mean(0), EPS)
        for i, a in enumerate(A_GRID):
            auc[i] += roc_auc_score(truth, rmia_scores(offline_ratio(px[t], px[others], a), ratio_z, gamma))
    return float(A_GRID[int(np.argmax(auc))])


def rmia_scores(ratio_x: np.ndarray, ratio_z: np.ndarray, gamma: float) -> np.ndarray:
    """``mean_z 1[ratio_x / ratio_z >= gamma]`` per target: the fraction of ``ratio_z <= ratio_x / gamma``."""
    z = np.sort(ratio_z)
    return np.searchsorted(z, ratio_x / gamma, side="right") / len(z)


@ATTACKS.register("rmia", params=RmiaParams)
class Rmia(MembershipAttack):
    """RMIA: how often the target's likelihood ratio beats those of population samples."""

    params: RmiaParams

    def prepare(self, view: AdversaryView) -> None:
        p = self.params
        if not p.online:
            shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)  # once per attacker and round

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        p = self.params
        if p.online and p.shadow_models < 2:
            raise ValueError("online rmia needs at least 2 reference models (params.shadow_models)")
        aux = view.auxiliary
        pick = view.rng(500).permutation(len(aux))[: p.population]
        z = aux.subset(np.sort(pick))
        info: dict = {"reference_models": p.shadow_models, "reference_mode": "online" if p.online else "offline",
                      "population": len(z), "queries": 1}
        if p.online:
            models = reference_models(view, p.shadow_models, data, p.shadow_size, p.shadow_epochs).models
        else:
            shadows = shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)
            models = [sh.model for sh in shadows]
            key = f"rmia_a:{p.shadow_models}:{p.shadow_size}:{p.shadow_epochs}:{p.population}:{p.gamma}"
            if p.a is None and key not in view.cache:
                view.cache[key] = tune_a(shadows, z, p.gamma)
            info["a"] = p.a if p.a is not None else view.cache[key]
        p_x = np.stack([label_probability(probabilities(m, data.x), data.y) for m in models])
        ref_z = np.mean([label_probability(probabilities(m, z.x), z.y) for m in models], axis=0)
        target_x = label_probability(outputs(data.x), data.y)
        ratio_x = target_x / np.maximum(p_x.mean(0), EPS) if p.online else offline_ratio(target_x, p_x, info["a"])
        ratio_z = label_probability(outputs(z.x), z.y) / np.maximum(ref_z, EPS)
        return AttackResult(rmia_scores(ratio_x, ratio_z, p.gamma), None, info)
