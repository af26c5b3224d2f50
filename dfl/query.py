"""Query-time defense hook: the chain a node's black-box prediction API passes through.

A query passes ``images -> [image transforms] -> model -> logits -> [logit transforms] -> softmax ->
[probability transforms]``; each query-time defense may act at any of the three points, in the order
the config lists the defenses. The chain is applied wherever a node answers queries (its
``Participant.query`` and the adversary's view of it), so an attack with ``access: query`` meets the
victim's defenses and one with ``access: params`` does not. Defined in the core so that participants
never import the ``defenses`` plugin package; defenses subclass :class:`QueryDefense`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn


@dataclass
class DefenseContext:
    """What a defense of node ``node`` may use: its identity, the data normalisation, the run seed."""

    node: int
    seed: int
    num_classes: int
    mean: np.ndarray  # (C,) per-channel mean of the [0, 1] pixels, as used to normalise the images
    std: np.ndarray   # (C,)


class QueryDefense:
    """A query-time defense; subclasses override the transforms they need (the defaults pass through)."""

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        self.params = params
        self.ctx = ctx

    def images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Normalised query images ``(B, C, H, W)`` before the model sees them."""
        return x

    def logits(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The model's logits ``(B, K)``."""
        return z

    def probabilities(self, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The probabilities ``(B, K)`` the API returns."""
        return p


class TrainingDefense:
    """A training-time defense: rewrites each local batch and may add a penalty to the loss.

    ``progress`` is the fraction of the node's whole local training done before this batch, in
    ``[0, 1)`` (schedules such as AdaMixup's decay read it); ``g`` is the node's defense stream for the
    round, separate from the batch order so that a defense never changes which samples are drawn.
    """

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        self.params = params
        self.ctx = ctx

    def batch(self, x: torch.Tensor, target: torch.Tensor, progress: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` with ``target`` class indices ``(B,)`` or class probabilities ``(B, K)``."""
        return x, target

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the batch loss (``None``: nothing)."""
        return None


@torch.no_grad()
def defended_query(model: nn.Module, x: torch.Tensor, chain: list[QueryDefense], g: torch.Generator,
                   batch: int = 1000) -> torch.Tensor:
    """The black-box API of a node: probabilities ``(B, K)`` of ``model`` on ``x`` through ``chain``."""
    model.eval()
    out = []
    for xb in x.split(batch):
        for d in chain:
            xb = d.images(xb, g)
        z = model(xb)
        for d in chain:
            z = d.logits(z, g)
        p = torch.softmax(z, dim=1)
        for d in chain:
            p = d.probabilities(p, g)
        out.append(p)
    return torch.cat(out) if out else torch.empty(0)
