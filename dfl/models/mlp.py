"""Multi-layer perceptron on flattened images."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.registries import MODELS


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: list[int] = Field(default_factory=lambda: [128], description="hidden layer widths")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


@MODELS.register("mlp", params=MLPParams)
def build(in_shape: tuple[int, int, int], num_classes: int, params: MLPParams) -> nn.Module:
    """Flatten -> [Linear -> ReLU (-> Dropout)] per hidden width -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for h in params.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if params.dropout:
            layers.append(nn.Dropout(params.dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
