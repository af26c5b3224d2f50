"""``modified_entropy``: Song & Mittal's modified entropy, which uses the label: -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i), thresholded."""

from __future__ import annotations

import torch

from attacks.metric import MetricAttack, MetricParams
from dfl.metrics.signals import modified_entropy
from dfl.registries import ATTACKS


@ATTACKS.register("modified_entropy", params=MetricParams)
class ModifiedEntropy(MetricAttack):
    """Song & Mittal's modified entropy, which uses the label: -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i), thresholded."""

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return modified_entropy(p, y)
