"""Building a registered model and checking that it accepts the data's image shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfl.config import Spec
from dfl.errors import ConfigError
from dfl.registries import MODELS


def build_model(spec: Spec, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build ``spec`` for images of ``in_shape``; a shape the model cannot take is a config error."""
    entry = MODELS.get(spec.name, "model.name")
    params = entry.parse_params(spec.params, "model.params")
    model: nn.Module = entry.obj(in_shape, num_classes, params)
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            out = model(torch.zeros(1, *in_shape))
            model.train(was_training)
    except RuntimeError as exc:
        raise ConfigError(
            [("model.name", f"{spec.name} cannot take images of shape {tuple(in_shape)} ({exc}); "
              "choose a model for this image size (see `dfl-sim list models`)")]
        ) from None
    if tuple(out.shape) != (1, num_classes):
        raise ConfigError([("model.name", f"{spec.name} returned shape {tuple(out.shape)}, expected (1, {num_classes})")])
    return model


def norm_layer(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """``batch`` -> BatchNorm2d, ``group`` -> GroupNorm(min(groups, C)), ``none`` -> Identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    return nn.Identity()


class AvgPoolTo(nn.Module):
    """Average-pool a square feature map to ``side x side``, with deterministic CUDA kernels.

    ``nn.AdaptiveAvgPool2d`` back-propagates with atomic adds on CUDA, so two runs of one seed drift
    apart on a GPU; where the input side is a multiple of ``side`` (every model here) the same average
    is a plain ``avg_pool2d`` whose backward is a gather. Other sizes fall back to the adaptive pool.
    """

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h == w and h % self.side == 0:
            if self.side == 1:
                return x.mean(dim=(-2, -1), keepdim=True)
            k = h // self.side
            return F.avg_pool2d(x, k, k)
        return F.adaptive_avg_pool2d(x, self.side)

    def extra_repr(self) -> str:
        return f"side={self.side}"
