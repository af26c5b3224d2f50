"""torchvision's ResNet-18, with a small-image stem and an optional GroupNorm (for DP-SGD)."""

from __future__ import annotations

from functools import partial

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.models.base import AvgPoolTo, norm_layer
from dfl.registries import MODELS


class ResNet18Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    norm: str = Field("batch", pattern="^(batch|group)$", description="group: GroupNorm(32), Opacus-compatible")
    small_input: bool = Field(True, description="3x3 stride-1 stem without max-pool (CIFAR-style)")


@MODELS.register("resnet18", params=ResNet18Params)
def build(in_shape: tuple[int, int, int], num_classes: int, params: ResNet18Params) -> nn.Module:
    """``torchvision.models.resnet18(num_classes)``; stem swapped for 3x3/1 on small images;
    global pooling with deterministic CUDA kernels."""
    # here, not at the top: torchvision.models costs about 2 s of start-up (it imports torch._dynamo)
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes, norm_layer=partial(_norm, params.norm))
    if params.small_input or in_shape[0] != 3:
        model.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False) if params.small_input else nn.Conv2d(
            in_shape[0], 64, 7, 2, 3, bias=False
        )
    if params.small_input:
        model.maxpool = nn.Identity()  # type: ignore[assignment]
    model.avgpool = AvgPoolTo(1)  # type: ignore[assignment]
    return model


def _norm(kind: str, channels: int) -> nn.Module:
    return norm_layer(kind, channels, groups=32)
