"""``adamixup``: mixup with a decaying mixing strength and the dominant sample's hard label (shared/papers/adamixup.txt).

AdaMixup draws ``lam ~ Beta(a_t, a_t)`` with ``a_t`` decaying linearly over the node's whole local
training from ``a0`` (1.0) to ``a_end`` (0.1): ``a_t = a0 - (a0 - a_end) * t / T``, so mixing is strong
early and weak late; the mixed sample ``lam * x_i + (1 - lam) * x_j`` takes the hard label of its
dominant component, ``y_i`` if ``lam >= 0.5`` else ``y_j``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.mixup import Mixup, weights
from dfl.registries import DEFENSES


class AdaMixupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a0: float = Field(1.0, gt=0.0, description="Beta parameter at the start of training")
    a_end: float = Field(0.1, gt=0.0, description="Beta parameter at the end of training")


def strength(a0: float, a_end: float, progress: float) -> float:
    """``a_t = a0 - (a0 - a_end) * progress`` for ``progress`` in [0, 1]."""
    return a0 - (a0 - a_end) * min(max(progress, 0.0), 1.0)


@DEFENSES.register("adamixup", params=AdaMixupParams)
class AdaMixup(Mixup):
    """Mixed images with a decaying Beta parameter, labelled by the dominant sample."""

    params: AdaMixupParams  # type: ignore[assignment]

    def alpha(self, progress: float) -> float:
        return strength(self.params.a0, self.params.a_end, progress)

    def apply(self, x: torch.Tensor, target: torch.Tensor,
              drawn: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm = drawn
        perm = perm.to(x.device)
        a, b = weights(lam, x.dtype)
        return a * x + b * x[perm], torch.where(lam >= 0.5, target, target[perm])
