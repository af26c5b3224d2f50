"""Share-time defenses: what a node does to its update before its neighbours see the state.

After local training the node's update ``u = x_after - x_start`` is rewritten and the node continues
(and shares) from ``x_start + u'``:

- ``update_pruning``: the ``fraction`` of the update's entries smallest in magnitude are set to zero
  (gradient pruning, Zhu et al., 2019, "Deep Leakage from Gradients" §5);
- ``update_noise``: Gaussian noise of standard deviation ``sigma * ||u|| / sqrt(n)`` (``relative``, the
  default) or ``sigma`` per entry is added, from a stream of (seed, node, round).

Both are ``dfl.defense.ShareDefense``s: the participant hands them its update as one flat vector and
continues from what they return. They act on parameters and float buffers alike, so what an attacker
inverts is the rewritten update.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dfl.defense import ShareDefense
from dfl.registries import DEFENSES
from dfl.seeding import SHARE_NOISE, derive_seed


class PruningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.9, ge=0.0, lt=1.0, description="share of the update's entries set to zero")


@DEFENSES.register("update_pruning", params=PruningParams)
class UpdatePruning(ShareDefense):
    """The smallest-magnitude entries of the update are dropped."""

    params: PruningParams

    def rewrite(self, update: torch.Tensor, round_idx: int) -> torch.Tensor:
        k = int(self.params.fraction * update.numel())
        if k == 0:
            return update
        order = torch.argsort(update.abs(), stable=True)  # ties: the lower index goes first
        out = update.clone()
        out[order[:k]] = 0
        return out


class NoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(0.1, gt=0.0, description="noise scale")
    scale: Literal["relative", "absolute"] = Field("relative", description="relative: sigma * ||u|| / sqrt(n)")


@DEFENSES.register("update_noise", params=NoiseParams)
class UpdateNoise(ShareDefense):
    """Gaussian noise on the update."""

    params: NoiseParams

    def rewrite(self, update: torch.Tensor, round_idx: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.ctx.seed, SHARE_NOISE, self.ctx.node, round_idx))
        std = self.params.sigma
        if self.params.scale == "relative":
            std *= float(update.norm()) / max(update.numel(), 1) ** 0.5
        noise = torch.randn(update.shape, generator=g, dtype=update.dtype) * std
        return update + noise.to(update.device)
