"""``confidence_masking``: return less of the score vector (the MIA-defence survey's masking baselines).

- ``top_k``: only the k largest probabilities, the others set to 0 (not renormalised);
- ``rounding``: every probability rounded to ``decimals`` decimal places;
- ``label_only``: the one-hot vector of the predicted label.

All three keep the predicted label, so they leave label-only attacks (and test accuracy) unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.base import QueryDefense
from dfl.registries import DEFENSES


class ConfidenceMaskingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["top_k", "rounding", "label_only"] = "top_k"
    k: int = Field(1, gt=0, description="top_k: scores kept")
    decimals: int = Field(1, ge=0, description="rounding: decimal places kept")


@DEFENSES.register("confidence_masking", params=ConfidenceMaskingParams)
class ConfidenceMasking(QueryDefense):
    """Top-k, rounded or label-only probability vectors."""

    params: ConfidenceMaskingParams

    def probabilities(self, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mode = self.params.mode
        if mode == "label_only":
            return torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)
        if mode == "top_k":
            k = min(self.params.k, p.shape[1])
            top = p.topk(k, dim=1)
            return torch.zeros_like(p).scatter_(1, top.indices, top.values)
        # rounding is monotone, so the winner's rounded score is a maximum; where rounding ties it with
        # another class, a quarter step on the winner keeps the predicted label (and the accuracy)
        scale = 10.0 ** self.params.decimals
        r = torch.round(p * scale) / scale
        tie = (r == r.max(1, keepdim=True).values).sum(1, keepdim=True) > 1
        bump = torch.zeros_like(r).scatter_(1, p.argmax(1, keepdim=True), 1.0 / (4 * scale))
        return torch.where(tie, r + bump, r)
