"""``confidence_regularization``: clip every logit to ``[-r, r]`` before the softmax (MIA-defence slides).

Bounding the logits bounds the top confidence at ``e^r / (e^r + (K-1) e^-r)``, taking away the
"confidence outliers" a threshold attack picks out. Clipping is monotone but makes the logits above
``r`` tie; the tie is broken towards the original winner by moving the other tied logits a hair
(``r / 1000``) inside the range, so the predicted label (and test accuracy) is kept.
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
        r = self.params.r
        c = z.clamp(-r, r)
        win = z.argmax(1, keepdim=True)
        top = c.gather(1, win)
        tied = (c == top).scatter_(1, win, False)
        hair = 1e-3 * r
        # at the upper edge the others step down; where every logit sits at -r the winner steps up
        lowered = torch.where(tied & (top > -r), c - hair, c)
        return torch.where((top <= -r) & tied.any(1, keepdim=True), lowered.scatter_add(
            1, win, torch.full_like(top, hair)), lowered)
