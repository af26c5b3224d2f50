"""``loss``: the victim's cross-entropy loss on (x, y), thresholded (Yeom et al. 2018; Song & Mittal 2021)."""

from __future__ import annotations

import torch

from attacks.metric import MetricAttack, MetricParams
from dfl.metrics.signals import loss
from dfl.registries import ATTACKS


@ATTACKS.register("loss", params=MetricParams)
class Loss(MetricAttack):
    """The victim's cross-entropy loss on (x, y), thresholded (Yeom et al. 2018; Song & Mittal 2021)."""

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(p, y)
