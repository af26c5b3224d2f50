"""``shadow_model``: a binary attack classifier trained on shadow models' outputs (Shokri; Salem A1).

Shokri et al., "Membership Inference Attacks against Machine Learning Models" (S&P 2017); Salem et al.,
"ML-Leaks: Model and Data Independent Membership Inference Attacks and Defenses on Machine Learning
Models" (NDSS 2019), adversary 1. The attacker trains ``k`` shadow models with the victims' recipe on
its auxiliary pool (``attacks.shadow.shadow_models``), so it knows each shadow model's members. The
features of a sample are the ``top_k`` largest probabilities of a model's output, sorted in
decreasing order (Salem's simplification of Shokri's full, per-class vectors: one attack model for all
classes, no label needed); an attack classifier learns

    f(sort(p(x))[:top_k]) = Pr[x is a member]

from the shadow models' members (label 1) and non-members (label 0), as many of each. A victim's
sample scores ``f`` on the victim's sorted top-k output and is called a member when ``f >= 0.5``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.shadow import ShadowParams, shadow_models
from dfl.registries import ATTACKS


class ShadowModelParams(ShadowParams):
    shadow_models: int = Field(1, gt=0, description="shadow models (Salem A1: one)")
    top_k: int = Field(3, gt=0, description="largest probabilities used as features (capped by the classes)")
    classifier: Literal["mlp", "logistic"] = Field("mlp", description="attack model: MLP (64 hidden) or logistic")


def top_k_features(p: torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` largest probabilities of each row, in decreasing order: ``(N, C) -> (N, min(k, C))`` float64."""
    return p.double().sort(dim=1, descending=True).values[:, :k].numpy()


def fit_attack_model(features: np.ndarray, is_member: np.ndarray, kind: str, seed: int) -> Any:
    """A binary classifier of ``features: (n, k)`` -> member, trained with a fixed ``seed``."""
    from sklearn.exceptions import ConvergenceWarning  # here: importing the plugins stays fast
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    model: MLPClassifier | LogisticRegression
    if kind == "mlp":
        model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
    else:
        model = LogisticRegression(max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        # a small shadow set may stop the MLP before its tolerance; the fit is still deterministic
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, is_member.astype(int))
    return model


@ATTACKS.register("shadow_model", params=ShadowModelParams)
class ShadowModel(MembershipAttack):
    """Member probability from a classifier trained on shadow models' sorted top-k outputs (Shokri; Salem A1)."""

    params: ShadowModelParams

    def _key(self) -> str:
        return f"shadow_model:{self.params.model_dump_json()}"

    def prepare(self, view: AdversaryView) -> None:
        p = self.params
        if self._key() in view.cache:
            return
        k = min(p.top_k, view.num_classes)
        feats, truth = [], []
        for sh in shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs):
            feats += [top_k_features(probabilities(sh.model, sh.inside.x), k),
                      top_k_features(probabilities(sh.model, sh.outside.x), k)]
            truth += [np.ones(len(sh.inside), bool), np.zeros(len(sh.outside), bool)]
        seed = int(view.rng(300).integers(2**31 - 1))
        view.cache[self._key()] = fit_attack_model(np.concatenate(feats), np.concatenate(truth), p.classifier, seed)

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        self.prepare(view)
        model = view.cache[self._key()]
        k = min(self.params.top_k, view.num_classes)
        s = model.predict_proba(top_k_features(outputs(data.x), k))[:, 1]
        return AttackResult(s, s >= 0.5, {"top_k": k})
