"""The sigmoid LeNet of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019).

Three 5x5 conv layers of 12 channels (strides 2, 2, 1) with sigmoid activations and one linear
layer; twice-differentiable everywhere, which gradient matching needs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.registries import MODELS


class LeNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(12, gt=0, description="channels of each conv layer")


@MODELS.register("lenet", params=LeNetParams)
def build(in_shape: tuple[int, int, int], num_classes: int, params: LeNetParams) -> nn.Module:
    """Conv(5, s2) -> Sigmoid -> Conv(5, s2) -> Sigmoid -> Conv(5, s1) -> Sigmoid -> Flatten -> Linear."""
    c, h, w = in_shape
    k = params.width
    for stride in (2, 2, 1):
        h, w = (h + 4 - 5) // stride + 1, (w + 4 - 5) // stride + 1
    return nn.Sequential(
        nn.Conv2d(c, k, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(k, k, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(k, k, 5, padding=2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(k * h * w, num_classes),
    )
