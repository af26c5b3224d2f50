"""``top1_threshold``: the global top-one threshold attack of the MIA-defence slides (shared/papers).

The adversary queries the victim's confidence scores and calls a sample a member when the highest one
reaches a threshold, found by searching the threshold that maximises accuracy on shadow data. The
query API returns probabilities, so the score is the top-one probability (a monotone function of the
top-one logit only for a fixed log-sum-exp; the threshold search is the same). No label is needed.
"""

from __future__ import annotations

import torch

from attacks.metric import MetricAttack, MetricParams
from dfl.metrics.signals import top1
from dfl.registries import ATTACKS


@ATTACKS.register("top1_threshold", params=MetricParams)
class Top1Threshold(MetricAttack):
    """Member iff the victim's top-one confidence reaches a shadow-calibrated global threshold."""

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return top1(p, y)
