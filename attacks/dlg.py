"""``dlg``: Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Dummy images ``x'`` and dummy label logits ``u`` are drawn from N(0, 1) and optimised with L-BFGS so
that the gradient they produce matches the victim's:

    min_{x', u}  sum_i || d CE(f(x'), softmax(u)) / d theta_i  -  g_i ||^2

The recovered labels are ``argmax u``. The optimiser follows the authors' code (torch.optim.LBFGS with
lr 1, up to 20 function evaluations per iteration, history 100) plus a strong-Wolfe line search: without
one, the full quasi-Newton steps overshoot into saturated sigmoids for some initialisations and the
matching loss freezes far from zero; ``line_search=False`` gives the original behaviour. The sigmoid
LeNet of the paper (``lenet``, weights drawn from U(-0.5, 0.5)) is the setting where the attack works;
ReLU networks and trained models are much harder for it (Geiping et al. 2020).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn

from dfl.adversary.gradients import Reconstruction, gradient_of, l2_mismatch
from dfl.attack import InversionAttack, InversionOptions
from dfl.registries import ATTACKS


class DLGParams(InversionOptions):
    iterations: int = Field(300, gt=0, description="L-BFGS iterations (each up to max_eval closure evaluations)")
    lr: float = Field(1.0, gt=0, description="L-BFGS step size")
    history_size: int = Field(100, gt=0, description="L-BFGS memory")
    max_eval: int = Field(20, gt=0, description="L-BFGS function evaluations per iteration (torch's max_iter)")
    line_search: bool = Field(True, description="strong-Wolfe line search (the authors' code has none)")


@torch.no_grad()
def uniform_init_(model: nn.Module, generator: torch.Generator, bound: float = 0.5) -> nn.Module:
    """Draw every parameter (weights and biases) from U(-bound, bound), in place, as the DLG authors' code does.

    ``bound = 0.5`` on the sigmoid LeNet is the setting of Zhu et al. 2019's experiments. Returns ``model``.
    """
    for p in model.parameters():
        p.copy_((torch.rand(p.shape, generator=generator) * (2 * bound) - bound).to(p.device, p.dtype))
    return model


@dataclass
class _Best:
    loss: float
    x: torch.Tensor
    y: torch.Tensor


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def lbfgs_match(
    model: nn.Module,
    target_grads: Sequence[torch.Tensor],
    dummy_x: torch.Tensor,
    labels: torch.Tensor,
    *,
    soft: bool,
    iterations: int,
    lr: float,
    history_size: int = 100,
    max_eval: int = 20,
    line_search: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """Minimise the L2 gradient distance over ``dummy_x`` (and ``labels`` as logits when ``soft``) with L-BFGS.

    Returns the best point evaluated (images, labels or logits), the loss after each iteration and the
    number of iterations run. Stops early when the loss stops being finite (divergence) or when an
    iteration leaves it unchanged twice in a row, the second time after L-BFGS's memory was cleared.
    """
    target = [t.detach().to(dummy_x.device) for t in target_grads]
    search = "strong_wolfe" if line_search else None
    leaves = [dummy_x.requires_grad_(True)] + ([labels.requires_grad_(True)] if soft else [])

    def make() -> torch.optim.LBFGS:
        return torch.optim.LBFGS(leaves, lr=lr, max_iter=max_eval, history_size=history_size, line_search_fn=search)

    opt = make()
    best = _Best(math.inf, dummy_x.detach().clone(), labels.detach().clone())
    last = [math.inf]

    def closure() -> torch.Tensor:
        y = torch.softmax(labels, dim=-1) if soft else labels
        loss = l2_mismatch(gradient_of(model, dummy_x, y, create_graph=True), target)
        # Gradients only for the dummies: model.parameters() keep whatever .grad they had.
        for leaf, g in zip(leaves, torch.autograd.grad(loss, leaves), strict=True):
            leaf.grad = g
        last[0] = value = float(loss.detach())
        if value < best.loss:
            best.loss, best.x, best.y = value, dummy_x.detach().clone(), labels.detach().clone()
        return loss.detach()

    history: list[float] = []
    just_reset = False
    for _ in range(iterations):
        opt.step(closure)
        history.append(last[0])
        if not math.isfinite(last[0]):
            break
        if len(history) > 1 and history[-1] == history[-2]:
            if just_reset:
                break
            # A stalled L-BFGS (no descent direction from its memory) repeats itself forever; clear its
            # memory once before giving up.
            opt, just_reset = make(), True
        else:
            just_reset = False
    return best.x, best.y, history, len(history)


def dlg(
    model: nn.Module,
    target_grads: Sequence[torch.Tensor],
    batch_size: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    iterations: int = 300,
    lr: float = 1.0,
    history_size: int = 100,
    max_eval: int = 20,
    line_search: bool = True,
    generator: torch.Generator,
) -> Reconstruction:
    """Reconstruct a batch of ``batch_size`` images ``image_shape = (C, H, W)`` and their labels from ``target_grads``.

    ``target_grads``: the victim's gradient per parameter of ``model`` (:func:`dfl.adversary.gradients.pseudo_gradient`
    of its update, or :func:`dfl.adversary.gradients.gradient_of` of its batch). Dummy images and label logits are
    drawn from ``generator`` (a CPU ``torch.Generator``), so a seed fixes the reconstruction.
    """
    device = model_device(model)
    x0 = torch.randn((batch_size, *image_shape), generator=generator).to(device)
    u0 = torch.randn((batch_size, num_classes), generator=generator).to(device)
    start = time.perf_counter()
    x, u, history, its = lbfgs_match(
        model, target_grads, x0, u0, soft=True, iterations=iterations, lr=lr, history_size=history_size,
        max_eval=max_eval, line_search=line_search,
    )
    return Reconstruction(
        images=x.cpu(),
        labels=u.argmax(dim=-1).cpu(),
        loss_history=history,
        iterations=its,
        seconds=time.perf_counter() - start,
    )


@ATTACKS.register("dlg", params=DLGParams)
class DLG(InversionAttack):
    """The ``dlg`` gradient-inversion attack against a neighbour's update (see :func:`dlg`)."""

    params: DLGParams

    def reconstruct(self, model: nn.Module, grads: list[torch.Tensor], batch_size: int, num_classes: int,
                    image_shape: tuple[int, int, int], generator: torch.Generator,
                    mean: np.ndarray, std: np.ndarray) -> Reconstruction:
        return dlg(model, grads, batch_size, num_classes, image_shape, generator=generator, **self.options())
