"""``confidence_regularization``: clip every logit to ``[-r, r]`` before the softmax (MIA-defence slides).

Bounding the logits bounds the top confidence at ``e^r / (e^r + (K-1) e^-r)``, taking away the
"confidence outliers" a threshold attack picks out. Clipping is monotone, so the predicted label is
kept unless several logits clip to the same value (then the lowest index wins the tie).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.base import QueryDefense
from dfl.registries import DEFENSES


class ConfidenceRegularizationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: float = Field(1.0, gt=0.0, description="logits are clipped to [-r, r]")


@DEFENSES.register("confidence_regularization", params=ConfidenceRegularizationParams)
class ConfidenceRegularization(QueryDefense):
    """Logits clipped to [-r, r]."""

    params: ConfidenceRegularizationParams

    def logits(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return z.clamp(-self.params.r, self.params.r)
