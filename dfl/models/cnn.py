"""Small convolutional net for 8-32 px images (two conv blocks, one hidden dense layer)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.models.base import AvgPoolTo, norm_layer
from dfl.registries import MODELS


class CNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, description="conv block widths")
    hidden: int = Field(128, gt=0)
    norm: str = Field("none", pattern="^(none|batch|group)$")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


@MODELS.register("cnn", params=CNNParams)
def build(in_shape: tuple[int, int, int], num_classes: int, params: CNNParams) -> nn.Module:
    """[Conv3x3 -> norm -> ReLU -> MaxPool2] per width -> AvgPool(to 4 or less) -> FC -> ReLU -> FC.

    Pooling stops halving once the feature map reaches 2 px, so 8 px digits and 32 px CIFAR both fit.
    """
    c, h, _ = in_shape
    layers: list[nn.Module] = []
    size = h
    for width in params.channels:
        layers += [nn.Conv2d(c, width, 3, padding=1), norm_layer(params.norm, width), nn.ReLU()]
        if size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c = width
    side = min(size, 4)
    layers += [AvgPoolTo(side), nn.Flatten(), nn.Linear(c * side * side, params.hidden), nn.ReLU()]
    if params.dropout:
        layers.append(nn.Dropout(params.dropout))
    layers.append(nn.Linear(params.hidden, num_classes))
    return nn.Sequential(*layers)
