"""Metric-based attacks (Song & Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning
Models", USENIX Security 2021): a membership signal computed from the victim's output on ``(x, y)`` and
a threshold calibrated on shadow models.

The threshold (global, or one per class) maximises ``(TPR + TNR) / 2`` on the shadow models' known
members and non-members; the attack then calls a sample a member when its signal reaches it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.shadow import ShadowParams, shadow_models, stack
from dfl.metrics.membership import best_threshold, per_class_thresholds


class MetricParams(ShadowParams):
    per_class: bool = Field(False, description="one threshold per class instead of a global one")


class MetricAttack(MembershipAttack):
    """A signal of the victim's output and a shadow-calibrated threshold."""

    params: MetricParams
    calibrated: ClassVar[bool] = True

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The membership signal of probabilities ``p: (B, K)`` and labels ``y: (B,)`` (higher = member)."""
        raise NotImplementedError

    def _key(self) -> str:
        return f"thresholds:{type(self).__name__}:{self.params.model_dump_json()}"

    def prepare(self, view: AdversaryView) -> None:
        p = self.params
        key = self._key()
        if key in view.cache:
            return
        ins, outs, labels = [], [], []
        for sh in shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs):
            ins.append(self.signal(probabilities(sh.model, sh.inside.x), sh.inside.y).numpy())
            outs.append(self.signal(probabilities(sh.model, sh.outside.x), sh.outside.y).numpy())
            labels += [sh.inside.y.numpy(), sh.outside.y.numpy()]
        scores, truth = stack(np.concatenate(ins), np.concatenate(outs))
        lab = np.concatenate([*labels[0::2], *labels[1::2]])  # the order of `scores`: members, then non-members
        view.cache[key] = (per_class_thresholds(scores, truth, lab, view.num_classes) if p.per_class
                           else best_threshold(scores, truth))

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        s = self.signal(outputs(data.x), data.y).numpy()
        if not type(self).calibrated:
            return AttackResult(s, s >= 0.5)
        th = view.cache[self._key()]
        limit = th[data.y.numpy()] if self.params.per_class else th
        info = {"threshold": float(th) if not self.params.per_class else [float(t) for t in th]}
        return AttackResult(s, s >= limit, info)
