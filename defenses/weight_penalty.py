"""``weight_penalty``: an L1 or L2 penalty on the weights added to every batch loss.

``loss + lam * sum_w |w|`` (L1) or ``loss + lam * sum_w w^2`` (L2) over the parameters with more than
one dimension (weights, not biases or norm scales). The optimizer's ``weight_decay`` is the other
form of L2; this one is explicit in the loss, as in the MIA-defence comparisons.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.defense import TrainingDefense
from dfl.registries import DEFENSES


class WeightPenaltyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    norm: Literal["l1", "l2"] = "l2"
    lam: float = Field(1e-4, gt=0.0, description="penalty weight")


@DEFENSES.register("weight_penalty", params=WeightPenaltyParams)
class WeightPenalty(TrainingDefense):
    """L1 or L2 penalty on the weights."""

    batched = True  # a pure rewrite of the targets / of the loss: runs on the batched engine

    params: WeightPenaltyParams

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        ws = [p for p in model.parameters() if p.ndim > 1]
        if not ws:
            return None
        total = sum((p.abs().sum() if self.params.norm == "l1" else p.pow(2).sum()) for p in ws)
        return self.params.lam * total  # type: ignore[return-value]
