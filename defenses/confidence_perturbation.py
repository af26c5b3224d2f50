"""``confidence_perturbation``: add uniform noise ``U[-r, r]`` to every confidence score (logit).

From the MIA-defence slides (shared/papers): "select a random number between [-r, r], and add this
value to each of our confidence scores" -- one draw per score, from the node's seeded query stream.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.base import QueryDefense
from dfl.registries import DEFENSES


class ConfidencePerturbationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: float = Field(1.0, gt=0.0, description="noise range: each logit moves by U[-r, r]")


@DEFENSES.register("confidence_perturbation", params=ConfidencePerturbationParams)
class ConfidencePerturbation(QueryDefense):
    """Uniform noise on the logits."""

    params: ConfidencePerturbationParams

    def logits(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.rand(z.shape, generator=g, dtype=z.dtype) * 2 - 1
        return z + self.params.r * noise.to(z.device)
