"""``correctness``: a sample is a member when the victim classifies it correctly (Yeom et al. 2018).

No threshold and no shadow data: on balanced members (train) and non-members (held out) its accuracy
is exactly ``(train_acc + 1 - test_acc) / 2``, the gap attack.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from attacks.metric import MetricAttack
from dfl.metrics.signals import correctness
from dfl.registries import ATTACKS


class CorrectnessParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@ATTACKS.register("correctness", params=CorrectnessParams)
class Correctness(MetricAttack):
    """Member iff the victim's prediction is correct."""

    needs_auxiliary: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False
    def signal(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return correctness(p, y)

    def prepare(self, view: object) -> None:
        return None
