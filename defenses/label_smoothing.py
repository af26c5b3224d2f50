"""``label_smoothing``: train on ``(1 - eps) * onehot(y) + eps / K`` (Szegedy et al., CVPR 2016)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dfl.defense import TrainingDefense
from dfl.registries import DEFENSES


class LabelSmoothingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(0.1, gt=0.0, lt=1.0)


@DEFENSES.register("label_smoothing", params=LabelSmoothingParams)
class LabelSmoothing(TrainingDefense):
    """Smoothed one-hot targets."""

    batched = True  # a pure rewrite of the targets / of the loss: runs on the batched engine

    params: LabelSmoothingParams

    def batch(self, x: torch.Tensor, target: torch.Tensor, progress: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.ctx.num_classes
        soft = target if target.ndim == 2 else torch.nn.functional.one_hot(target, k).to(x.dtype)
        return x, soft * (1 - self.params.eps) + self.params.eps / k
