"""Shadow models: the attacker imitates a victim's training on its own auxiliary data.

Shokri et al., "Membership Inference Attacks against Machine Learning Models" (S&P 2017): each shadow
model is trained with the victims' recipe (architecture, initialisation, optimizer, batch size, the
epochs of local training a victim has done so far) on a random half of a slice of the auxiliary pool,
so the attacker knows exactly which samples were members of each shadow model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from attacks.base import AdversaryView, Labelled
from dfl.stacked import (
    Layout,
    Optimizer,
    Trainer,
    activation_numel,
    batch_plan,
    chunk_size,
    cross_entropy,
    vmap_pays,
)


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


def _batches(n: int, batch_size: int, epochs: float, seed: int) -> list[torch.Tensor]:
    """``round(epochs * ceil(n / batch_size))`` batches (at least one) of shuffled passes over ``n`` samples."""
    g = torch.Generator().manual_seed(seed)
    steps = max(1, round(epochs * math.ceil(n / batch_size)))
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(torch.randperm(n, generator=g).split(batch_size))
    return batches[:steps]


def train_model(view: AdversaryView, data: Labelled, epochs: float, seed: int) -> nn.Module:
    """A fresh model of the federation's architecture trained on ``data`` with the victims' recipe."""
    model = view.make_model()
    o = view.recipe.optimizer
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay) if o.name == "adam"
        else torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay))
    model.train()
    for idx in _batches(len(data), view.recipe.batch_size, epochs, seed):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    model.eval()
    return model


def train_models(view: AdversaryView, datas: list[Labelled], epochs: float, seeds: list[int],
                 chunk: int | None = None) -> list[nn.Module]:
    """Fresh models trained on ``datas[i]`` with the victims' recipe and ``seeds[i]``'s batches.

    With ``view.stacked`` (the batched engines) they train together as rows of one tensor through
    :class:`dfl.stacked.Trainer`, ``chunk`` at a time (default: a working-memory budget), so ``k``
    small models cost about one; each row draws the same batches as :func:`train_model` and agrees
    with it within float32 rounding (the batched engine's tolerance). Otherwise, and for a single
    model (which stacking cannot speed up), one at a time.
    """
    if not view.stacked or len(datas) == 1:
        return [train_model(view, d, epochs, s) for d, s in zip(datas, seeds, strict=True)]
    shell = view.make_model()
    layout = Layout(shell)
    k, bs = len(datas), view.recipe.batch_size
    flat = layout.row(shell).expand(k, -1).clone()
    plan = batch_plan([_batches(len(d), bs, epochs, s) for d, s in zip(datas, seeds, strict=True)], bs)
    xs = torch.zeros((k, max(len(d) for d in datas), *datas[0].x.shape[1:]), dtype=datas[0].x.dtype)
    ys = torch.zeros(xs.shape[:2], dtype=torch.long)
    for i, d in enumerate(datas):
        xs[i, : len(d)], ys[i, : len(d)] = d.x, d.y

    def fetch(lo: int, hi: int, step: int, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        rows, local = torch.arange(lo, hi)[:, None], local.clamp_min(0)
        return xs[rows, local], ys[rows, local], None

    rowwise = not vmap_pays(shell, flat.device)
    trainer = Trainer(layout, Optimizer(view.recipe.optimizer, k, layout.n_params, flat.device), cross_entropy(shell),
                      rowwise=rowwise)
    shape = tuple(xs.shape[2:])
    step = chunk or chunk_size(k, layout.n_state, bs, math.prod(shape), activation_numel(shell, shape), rowwise)
    for lo in range(0, k, step):
        hi = min(lo + step, k)
        trainer.train(flat, lo, hi, plan[lo:hi], fetch)
    models = []
    for row in flat:
        model = view.make_model()
        view.load_state(model, row)
        models.append(model.eval())
    return models


def shadow_models(view: AdversaryView, k: int, size: int | None, epochs: float | None) -> list[Shadow]:
    """``k`` shadow models (cached in the view for this attacker and round, shared by every attack that
    asks for this size and epochs: model ``s`` depends on ``s`` alone, so an attack asking for fewer
    takes the first ones and one asking for more trains only the rest), trained by :func:`train_models`.

    Each takes ``2 * size`` samples of the auxiliary pool (default size: the attacker's own training
    set, capped by half the pool), trains on one half and keeps the other as known non-members.
    """
    key = f"shadows:{size}:{epochs}"
    have: list[Shadow] = view.cache.setdefault(key, [])
    if len(have) >= k:  # model s depends on s alone: an attack asking fewer takes the first k
        return have[:k]
    aux = view.auxiliary
    half = min(size or len(view.own), len(aux) // 2)
    if half < 1:
        raise ValueError(f"attacker {view.attacker} has {len(aux)} auxiliary samples: too few for a shadow model")
    ep = epochs if epochs is not None else max(view.local_epochs_so_far, 1.0)
    splits, seeds = [], []
    for s in range(len(have), k):
        idx = view.rng(s).permutation(len(aux))[: 2 * half]
        splits.append((aux.subset(idx[:half]), aux.subset(idx[half:])))
        seeds.append(int(view.rng(100 + s).integers(2**62)))
    models = train_models(view, [inside for inside, _ in splits], ep, seeds)
    have += [Shadow(m, inside, outside) for m, (inside, outside) in zip(models, splits, strict=True)]
    return have[:k]


@dataclass
class Reference:
    """Reference models for one set of targets (online attacks): ``keep[j, i]`` is whether model ``j``
    trained on target ``i``."""

    models: list[nn.Module]
    keep: np.ndarray


def reference_models(view: AdversaryView, k: int, targets: Labelled, size: int | None,
                     epochs: float | None) -> Reference:
    """``k`` reference models with and without each target (the online setting of Carlini et al. 2022 and
    Zarifzadeh et al. 2024), cached in the view for these targets.

    Carlini et al.'s keep matrix puts every target in exactly ``k // 2`` of the models (a random half per
    target), so each target is IN for half of the models and OUT for the others. A model trains on its
    IN targets, filled up with random auxiliary samples to ``size`` (default: the attacker's own
    training set size, as the shadow models; no fill when its targets already reach it), so that it
    memorises about as much as a victim does; with the victims' recipe (:func:`train_models`: batched on
    the batched engines), for ``epochs`` (default: a victim's local epochs so far).
    """
    digest = hashlib.sha256(targets.x.numpy().tobytes() + targets.y.numpy().tobytes()).hexdigest()[:16]
    key = f"reference:{k}:{size}:{epochs}:{digest}"
    if key in view.cache:
        return view.cache[key]
    aux = view.auxiliary
    rng = view.rng(400, k)
    keep = rng.uniform(size=(k, len(targets))).argsort(0) < k // 2  # each column: exactly k // 2 models
    want = size or len(view.own)
    datas = []
    for row in keep:
        inside = targets.subset(np.flatnonzero(row))
        fill = aux.subset(rng.permutation(len(aux))[: max(0, want - len(inside))])
        datas.append(Labelled(torch.cat([inside.x, fill.x]), torch.cat([inside.y, fill.y])))
    ep = epochs if epochs is not None else max(view.local_epochs_so_far, 1.0)
    seeds = [int(s) for s in rng.integers(2**62, size=k)]
    out = Reference(train_models(view, datas, ep, seeds), keep)
    view.cache[key] = out
    return out


def stack(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of members then non-members, and the matching truth vector."""
    return np.concatenate([a, b]), np.concatenate([np.ones(len(a), bool), np.zeros(len(b), bool)])
