"""``entropy``: the entropy of the victim's prediction, thresholded: members get sharper predictions (Song & Mittal 2021)."""

from __future__ import annotations

import torch

from attacks.metric import MetricAttack, MetricParams
from dfl.metrics.signals import entropy
from dfl.registries import ATTACKS


@ATTACKS.register("entropy", params=MetricParams)
class Entropy(MetricAttack):
    """The entropy of the victim's prediction, thresholded: members get sharper predictions (Song & Mittal 2021)."""

    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return entropy(p, y)
