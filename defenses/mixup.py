"""``mixup``: train on convex combinations of pairs of samples and of their labels (Zhang et al., ICLR 2018).

``lam ~ Beta(alpha, alpha)``, ``x = lam * x_i + (1 - lam) * x_j``, ``t = lam * y_i + (1 - lam) * y_j`` with
``j`` a random permutation of the batch; one ``lam`` per batch.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dfl.defense import TrainingDefense
from dfl.registries import DEFENSES


def beta(a: float, g: torch.Generator) -> float:
    """One draw of ``Beta(a, a)`` from ``g`` (as a ratio of two Gamma draws)."""
    u = torch._standard_gamma(torch.full((2,), float(a)), generator=g)
    return float(u[0] / u.sum())


class MixupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0.0, description="Beta(alpha, alpha)")


@DEFENSES.register("mixup", params=MixupParams)
class Mixup(TrainingDefense):
    """Mixed images, mixed soft labels."""

    params: MixupParams
    draws = True

    def alpha(self, progress: float) -> float:
        """The Beta parameter for a batch at ``progress`` of the node's training (mixup: constant)."""
        return self.params.alpha

    def draw(self, size: int, progress: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``lam ~ Beta(alpha, alpha)`` (a float64 scalar tensor) and the partner permutation."""
        lam = beta(self.alpha(progress), g)
        return torch.tensor(lam, dtype=torch.float64), torch.randperm(size, generator=g)

    def apply(self, x: torch.Tensor, target: torch.Tensor,
              drawn: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm = drawn
        perm = perm.to(x.device)
        a, b = weights(lam, x.dtype)
        soft = target if target.ndim == 2 else torch.nn.functional.one_hot(target, self.ctx.num_classes).to(x.dtype)
        return a * x + b * x[perm], a * soft + b * soft[perm]

    def batch(self, x: torch.Tensor, target: torch.Tensor, progress: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(x, target, self.draw(len(x), progress, g))


def weights(lam: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam`` and ``1 - lam`` (computed in float64, as Python floats would be) rounded to ``dtype``."""
    return lam.to(dtype), (1 - lam).to(dtype)
