"""``image_perturbation``: perturb every pixel of a query by ``U[-r, r]`` before classifying it.

From the MIA-defence slides (shared/papers). ``r`` is in pixel units of the [0, 1] image, so the noise
is divided by each channel's normalisation std before it is added to the normalised query.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.base import QueryDefense
from dfl.registries import DEFENSES


class ImagePerturbationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: float = Field(0.05, gt=0.0, description="noise range in [0, 1] pixel units")


@DEFENSES.register("image_perturbation", params=ImagePerturbationParams)
class ImagePerturbation(QueryDefense):
    """Uniform pixel noise on the query images."""

    params: ImagePerturbationParams

    def images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * self.params.r
        std = torch.as_tensor(self.ctx.std, dtype=x.dtype).clamp_min(1e-8).reshape(1, -1, 1, 1)
        return x + (noise / std).to(x.device)
