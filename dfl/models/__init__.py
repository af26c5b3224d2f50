"""Model registry entries: builders ``build(in_shape, num_classes, params) -> nn.Module``.

``in_shape`` is ``(C, H, W)`` of one image. Importing this package registers every built-in model.
"""

from __future__ import annotations

from dfl.models import cnn, lenet, mlp, resnet18, vgg11
from dfl.models.base import build_model

__all__ = ["build_model", "cnn", "lenet", "mlp", "resnet18", "vgg11"]
