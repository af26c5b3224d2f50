"""VGG-11 without the fully connected head (one linear classifier on the conv features).

As in the defensive-augmentation paper (Zhang et al.), which trains VGG-11 on CIFAR-10 with the
three 4096-wide FC layers replaced by a single linear layer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.models.base import AvgPoolTo, norm_layer
from dfl.registries import MODELS


class VGG11Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    norm: str = Field("none", pattern="^(none|batch|group)$")


@MODELS.register("vgg11", params=VGG11Params)
def build(in_shape: tuple[int, int, int], num_classes: int, params: VGG11Params) -> nn.Module:
    """torchvision VGG-11 conv features (first conv adapted to C channels) -> global pool -> Linear(512)."""
    # here, not at the top: torchvision.models costs about 2 s of start-up (it imports torch._dynamo)
    from torchvision.models import vgg11

    features = vgg11().features
    layers: list[nn.Module] = []
    c = in_shape[0]
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            layers += [nn.Conv2d(c, layer.out_channels, 3, padding=1), norm_layer(params.norm, layer.out_channels)]
            c = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers, AvgPoolTo(1), nn.Flatten(), nn.Linear(c, num_classes))
