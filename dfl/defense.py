"""Query-time defense hook: the chain a node's black-box prediction API passes through.

A query passes ``images -> [image transforms] -> model -> logits -> [logit transforms] -> softmax ->
[probability transforms]``; each query-time defense may act at any of the three points, in the order
the config lists the defenses. Before a model answers, every defense of the chain sees it once through
:meth:`QueryDefense.prepare` (defenses fitted to the model -- AugMixCloak's tuning, MemGuard's
classifier -- refit there when the model's state changed since their last fit). The chain is applied wherever a node answers queries (its
``Participant.query`` and the adversary's view of it), so an attack with ``access: query`` meets the
victim's defenses and one with ``access: params`` does not. Defined in the core so that participants
never import the ``defenses`` plugin package; defenses subclass :class:`QueryDefense`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn


@dataclass
class DefenseContext:
    """What a defense of node ``node`` may use: its identity, the data normalisation, the run seed,
    and (for defenses that index training data, such as AugMixCloak) its own training images and its
    neighbours' node ids in the round-0 graph (and, for dynamic topologies, every node it has been a
    neighbour of up to a round), with a way to read a node's training images; and its holdout split
    (images it never trained on: the non-members of its own simulated attacks)."""

    node: int
    seed: int
    num_classes: int
    mean: np.ndarray  # (C,) per-channel mean of the [0, 1] pixels, as used to normalise the images
    std: np.ndarray   # (C,)
    neighbours: tuple[int, ...] = ()
    train_images: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # node -> (uint8 (N,C,H,W), labels)
    holdout_images: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # likewise, the holdout split
    class_names: list[str] | None = None  # the data set's class names, by class id
    # round -> sorted ids of every node adjacent to this one in a topology epoch up to that round's
    neighbours_until: Callable[[int], tuple[int, ...]] | None = None

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Normalised images back to uint8 pixels ``(N, C, H, W)`` (exact for images that were uint8)."""
        m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return ((x * torch.where(s > 0, s, torch.ones_like(s)) + m) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def normalise(self, u: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] ``(N, C, H, W)`` to the normalised space the models see."""
        m = torch.as_tensor(self.mean, dtype=u.dtype, device=u.device).reshape(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=u.dtype, device=u.device).reshape(1, -1, 1, 1)
        return (u - m) / torch.where(s > 0, s, torch.ones_like(s))


class QueryDefense:
    """A query-time defense; subclasses override the transforms they need (the defaults pass through)."""

    name = ""  # the registered name, set when a population builds the chain
    #: the defense recognises some queries (AugMixCloak: a pHash match) and counts them in ``detected``
    #: out of ``queries``: a membership record then carries the fraction of its queries detected
    detects: ClassVar[bool] = False

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        self.params = params
        self.ctx = ctx
        self.records: list[dict[str, Any]] = []  # what the defense reports (metrics.jsonl rows, kind "defense")
        self._fitted_to: tuple[float, float] | None = None
        self.queries = 0  # query images seen (a detecting defense counts them)
        self.detected = 0  # of which recognised

    def prepare(self, model: nn.Module) -> None:
        """Called with the node's model before it answers a batch of queries; calls :meth:`fit` when the
        model's state differs from the one the defense was last fitted to."""
        if type(self).fit is QueryDefense.fit:  # nothing fitted to the model: no fingerprint on every query
            return
        key = model_key(model)
        if key != self._fitted_to:
            self.fit(model)
            self._fitted_to = key

    def fit(self, model: nn.Module) -> None:
        """Fit whatever depends on the model (nothing by default)."""

    def start_round(self, round_idx: int) -> None:
        """Called as round ``round_idx`` starts: by the node before its local training, and by the
        adversary before it queries the node (nothing by default)."""

    def drain(self) -> list[dict[str, Any]]:
        """The records reported since the last call (then forgotten)."""
        out, self.records = self.records, []
        return out

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

    name = ""  # the registered name, set when a population builds the chain
    #: ``batch`` and ``penalty`` are pure tensor functions that draw nothing from ``g`` and ignore
    #: ``progress``: the batched engine then runs them per node under ``vmap`` (else it refuses the defense)
    batched: ClassVar[bool] = False
    #: ``batch(x, target, progress, g)`` is ``apply(x, target, draw(len(x), progress, g))``: every random
    #: number comes from ``draw`` and ``apply`` is a pure tensor function of them. The batched engine then
    #: draws per node from the node's own stream, in the serial engine's order, and applies under ``vmap``
    draws: ClassVar[bool] = False

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        self.params = params
        self.ctx = ctx

    def batch(self, x: torch.Tensor, target: torch.Tensor, progress: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` with ``target`` class indices ``(B,)`` or class probabilities ``(B, K)``."""
        return x, target

    def draw(self, size: int, progress: float, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random numbers ``batch`` takes for a batch of ``size`` samples, as tensors (``draws = True``).

        Index tensors must be permutations of ``range(size)`` or indices below ``size``, so that the batched
        engine can pad them to its batch width with the identity."""
        raise NotImplementedError(f"{type(self).__name__} does not split its draws from its batch rewrite")

    def apply(self, x: torch.Tensor, target: torch.Tensor,
              drawn: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch``'s rewrite given ``draw``'s numbers (``draws = True``)."""
        raise NotImplementedError(f"{type(self).__name__} does not split its draws from its batch rewrite")

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the batch loss (``None``: nothing)."""
        return None

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, round_idx: int, steps: int,
             batch_size: int, num_samples: int) -> torch.optim.Optimizer:
        """The optimizer that takes the ``steps`` local steps of round ``round_idx`` (batches of
        ``batch_size`` out of ``num_samples``); by default ``optimizer`` itself."""
        return optimizer

    def unwrap(self, model: nn.Module, round_idx: int) -> dict[str, float]:
        """Undo :meth:`wrap` once the round's steps are done; returns stats for the node's training record."""
        return {}

    def privacy_spent(self, rounds: int, steps: int, batch_size: int, num_samples: int) -> tuple[float, float] | None:
        """``(epsilon, delta)`` of a node's training after ``rounds`` rounds of ``steps`` local steps (batches
        of ``batch_size`` out of ``num_samples``), for a defense with a differential-privacy accountant;
        ``None`` for the others. The DP audit of the membership attacks compares with it."""
        return None


class ShareDefense:
    """A share-time defense: rewrites a node's update before its neighbours see the state.

    After a node's local training (its training-time defenses done), its update ``u = x_after - x_start``
    -- one flat vector of parameters then float buffers, the layout a node shares
    (:func:`dfl.federation.participant.shared_tensors`) -- becomes ``rewrite(u, round_idx)``, and the node
    continues and shares from ``x_start + u'``. Several apply in config order. ``rewrite`` returns a new
    tensor and leaves ``update`` as it was.
    """

    name = ""  # the registered name, set when a population builds the chain

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        self.params = params
        self.ctx = ctx

    def rewrite(self, update: torch.Tensor, round_idx: int) -> torch.Tensor:
        """The update the node shares in round ``round_idx`` instead of ``update: (n_params,)``."""
        return update


def model_key(model: nn.Module) -> tuple[float, float]:
    """A fingerprint of a model's parameters and buffers (sum and sum of squares, in float64)."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                t64 = t.detach().to(torch.float64)
                total += float(t64.sum())
                squares += float((t64 * t64).sum())
    return total, squares


@torch.no_grad()
def defended_query(model: nn.Module, x: torch.Tensor, chain: list[QueryDefense], g: torch.Generator,
                   batch: int = 1000) -> torch.Tensor:
    """The black-box API of a node: probabilities ``(B, K)`` of ``model`` on ``x`` through ``chain``."""
    for d in chain:
        with torch.enable_grad():
            d.prepare(model)
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
