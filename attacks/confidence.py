"""``confidence``: the victim's probability of the true label, thresholded (Song & Mittal 2021)."""

from __future__ import annotations

import torch

from attacks.metric import MetricAttack, MetricParams
from dfl.metrics.signals import confidence
from dfl.registries import ATTACKS


@ATTACKS.register("confidence", params=MetricParams)
class Confidence(MetricAttack):
    """The victim's probability of the true label, thresholded (Song & Mittal 2021)."""

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return confidence(p, y)
