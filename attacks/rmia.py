"""``rmia``: the Robust Membership Inference Attack (Zarifzadeh et al., ICML 2024).

Zarifzadeh, Liu, Chatzikokolakis, Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML
2024). With ``Pr(x | theta)`` a model's probability of ``x``'s label, the attack compares the target
``x`` with population samples ``z`` (a seeded subset of the attacker's auxiliary pool, ``population``
of them) through the pairwise likelihood ratio

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],
    score(x) = Pr_z[ LR(x, z) >= gamma ],

higher = member, where ``theta`` is the victim and ``Pr(x)`` the mean of ``Pr(x | theta')`` over
reference models trained with the victims' recipe:

* **offline** (the default): OUT models only, the shadow models of the auxiliary pool
  (:func:`attacks.shadow.shadow_models`, shared with ``lira_offline`` and the shadow-calibrated attacks);
  their mean is an estimate of ``Pr(x)`` over models without ``x``, and the paper's approximation of the
  IN half is ``Pr(x) = ((1 + a) * Pr_OUT(x) + (1 - a)) / 2``;
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
    population: int = Field(1000, gt=0, description="population samples z drawn from the auxiliary pool")
    gamma: float = Field(1.0, gt=0.0, description="threshold of the pairwise likelihood ratio")
    a: float = Field(0.3, ge=0.0, le=1.0, description="offline: Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2")


def label_probability(p: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``Pr(x | theta)``: each row's probability of its label, ``(N,)`` float64."""
    return p.double().gather(1, y[:, None]).squeeze(1).numpy()


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
        if p.online:
            models = reference_models(view, p.shadow_models, data, p.shadow_size, p.shadow_epochs).models
        else:
            models = [sh.model for sh in shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)]
        ref_x = np.mean([label_probability(probabilities(m, data.x), data.y) for m in models], axis=0)
        ref_z = np.mean([label_probability(probabilities(m, z.x), z.y) for m in models], axis=0)
        if not p.online:
            ref_x = ((1 + p.a) * ref_x + (1 - p.a)) / 2
        ratio_x = label_probability(outputs(data.x), data.y) / np.maximum(ref_x, EPS)
        ratio_z = label_probability(outputs(z.x), z.y) / np.maximum(ref_z, EPS)
        return AttackResult(rmia_scores(ratio_x, ratio_z, p.gamma), None, {
            "reference_models": p.shadow_models, "reference_mode": "online" if p.online else "offline",
            "population": len(z), "queries": 1})
