"""Shadow models: the attacker imitates a victim's training on its own auxiliary data.

Shokri et al., "Membership Inference Attacks against Machine Learning Models" (S&P 2017): each shadow
model is trained with the victims' recipe (architecture, initialisation, optimizer, batch size, the
epochs of local training a victim has done so far) on a random half of a slice of the auxiliary pool,
so the attacker knows exactly which samples were members of each shadow model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from attacks.base import AdversaryView, Labelled


class ShadowParams(BaseModel):
    """How an attack trains its shadow models (shared by every shadow-calibrated attack)."""

    model_config = ConfigDict(extra="forbid")
    shadow_models: int = Field(2, gt=0, description="shadow models")
    shadow_size: int | None = Field(None, gt=0, description="members per shadow model (default: own train size)")
    shadow_epochs: float | None = Field(None, gt=0, description="default: a victim's local epochs so far")


@dataclass
class Shadow:
    """One trained shadow model with its members (``inside``) and non-members (``outside``)."""

    model: nn.Module
    inside: Labelled
    outside: Labelled


def train_model(view: AdversaryView, data: Labelled, epochs: float, seed: int) -> nn.Module:
    """A fresh model of the federation's architecture trained on ``data`` with the victims' recipe."""
    model = view.make_model()
    o = view.recipe.optimizer
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay) if o.name == "adam"
        else torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay))
    g = torch.Generator().manual_seed(seed)
    n, bs = len(data), view.recipe.batch_size
    steps = max(1, round(epochs * math.ceil(n / bs)))
    model.train()
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(torch.randperm(n, generator=g).split(bs))
    for idx in batches[:steps]:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    model.eval()
    return model


def shadow_models(view: AdversaryView, k: int, size: int | None, epochs: float | None) -> list[Shadow]:
    """``k`` shadow models (cached in the view for this attacker and round).

    Each takes ``2 * size`` samples of the auxiliary pool (default size: the attacker's own training
    set, capped by half the pool), trains on one half and keeps the other as known non-members.
    """
    key = f"shadows:{k}:{size}:{epochs}"
    if key in view.cache:
        return view.cache[key]
    aux = view.auxiliary
    half = min(size or len(view.own), len(aux) // 2)
    if half < 1:
        raise ValueError(f"attacker {view.attacker} has {len(aux)} auxiliary samples: too few for a shadow model")
    ep = epochs if epochs is not None else max(view.local_epochs_so_far, 1.0)
    out = []
    for s in range(k):
        idx = view.rng(s).permutation(len(aux))[: 2 * half]
        inside, outside = aux.subset(idx[:half]), aux.subset(idx[half:])
        seed = int(view.rng(100 + s).integers(2**62))
        out.append(Shadow(train_model(view, inside, ep, seed), inside, outside))
    view.cache[key] = out
    return out


def stack(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of members then non-members, and the matching truth vector."""
    return np.concatenate([a, b]), np.concatenate([np.ones(len(a), bool), np.zeros(len(b), bool)])
