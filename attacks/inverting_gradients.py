"""``inverting_gradients``: Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients -- How easy is it
to break privacy in federated learning?", NeurIPS 2020.

The images alone are optimised (labels known, or read off the last layer as in iDLG) to match the
*direction* of the victim's gradient, with a total-variation prior:

    min_{x'}  1 - <grad(x', y), g> / (||grad(x', y)|| ||g||)  +  tv * TV(x')

by Adam on the sign of the gradient ("signed"), lr 0.1 divided by 10 at 3/8, 5/8 and 7/8 of the
iterations, each step followed by a projection onto the valid pixel box ``[(0 - mean)/std, (1 - mean)/std]``
("boxed"). Of several random restarts the one with the lowest final gradient mismatch is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from attacks.dlg import model_device
from attacks.idlg import infer_labels
from dfl.adversary.gradients import Reconstruction, cosine_mismatch, gradient_of, total_variation
from dfl.attack import InversionAttack, InversionOptions
from dfl.metrics.images import Stats
from dfl.registries import ATTACKS


class InvertingGradientsParams(InversionOptions):
    iterations: int = Field(3000, gt=0, description="Adam steps per restart")
    restarts: int = Field(1, gt=0, description="random initialisations; the best final match is kept")
    tv: float = Field(1e-3, ge=0, description="weight of the total-variation prior")
    lr: float = Field(0.1, gt=0, description="Adam step size before decay")
    signed: bool = Field(True, description="step on the sign of the gradient")
    boxed: bool = Field(True, description="project onto the valid pixel range after each step")
    lr_decay: bool = Field(True, description="divide lr by 10 at 3/8, 5/8 and 7/8 of the iterations")


def pixel_box(channels: int, mean: Stats, std: Stats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds ``(1, C, 1, 1)`` of normalised images whose pixels lie in ``[0, 1]``."""
    m = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    s = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    m, s = m.expand(channels), s.expand(channels)
    return ((0 - m) / s).view(1, -1, 1, 1).to(device), ((1 - m) / s).view(1, -1, 1, 1).to(device)


def inverting_gradients(
    model: nn.Module,
    target_grads: Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    image_shape: tuple[int, int, int],
    *,
    batch_size: int | None = None,
    iterations: int = 3000,
    restarts: int = 1,
    tv: float = 1e-3,
    lr: float = 0.1,
    signed: bool = True,
    boxed: bool = True,
    lr_decay: bool = True,
    generator: torch.Generator,
    mean: Stats = None,
    std: Stats = None,
) -> Reconstruction:
    """Reconstruct images ``(B, *image_shape)`` whose gradient points where ``target_grads`` does.

    ``labels: (B,)``, or ``None`` to infer ``batch_size`` labels by iDLG's rule
    (:func:`attacks.idlg.infer_labels`). ``mean``/``std``: the per-channel normalisation, for the pixel
    box (``None``: images are in [0, 1]). Initial images are N(0, 1) draws from ``generator`` (CPU).
    The result carries the kept restart's loss history (gradient mismatch, before each step) and
    iteration count; ``seconds`` covers all restarts.
    """
    if labels is None:
        if batch_size is None:
            raise ValueError("give the labels or the batch_size to infer them from the last layer")
        labels = infer_labels(model, target_grads, batch_size)
    device = model_device(model)
    y = labels.to(device=device, dtype=torch.long)
    target = [t.detach().to(device) for t in target_grads]
    lo, hi = pixel_box(image_shape[0], mean, std, device)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    start = time.perf_counter()
    best: tuple[float, torch.Tensor, list[float]] | None = None
    for _ in range(restarts):
        x = torch.randn((len(y), *image_shape), generator=generator).to(device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1) if lr_decay else None
        losses: list[torch.Tensor] = []
        for _ in range(iterations):
            mismatch = cosine_mismatch(gradient_of(model, x, y, create_graph=True), target)
            loss = mismatch + tv * total_variation(x) if tv else mismatch
            (g,) = torch.autograd.grad(loss, [x])
            x.grad = g.sign() if signed else g
            opt.step()
            if sched is not None:
                sched.step()
            if boxed:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            losses.append(mismatch.detach())
        x = x.detach()
        final = float(cosine_mismatch(gradient_of(model, x, y), target))
        history = [float(v) for v in torch.stack(losses).cpu()] if losses else []
        score = final if math.isfinite(final) else math.inf
        if best is None or score < best[0]:
            best = (score, x, history)
    assert best is not None
    _, images, history = best
    return Reconstruction(images=images.cpu(), labels=y.cpu(), loss_history=history, iterations=len(history),
                          seconds=time.perf_counter() - start)


@ATTACKS.register("inverting_gradients", params=InvertingGradientsParams)
class InvertingGradients(InversionAttack):
    """The ``inverting_gradients`` gradient-inversion attack against a neighbour's update (see :func:`inverting_gradients`)."""

    params: InvertingGradientsParams

    def reconstruct(self, model: nn.Module, grads: list[torch.Tensor], batch_size: int, num_classes: int,
                    image_shape: tuple[int, int, int], generator: torch.Generator,
                    mean: np.ndarray, std: np.ndarray, labels: torch.Tensor | None = None) -> Reconstruction:
        """``labels``: the batch's labels when the attacker knows them (the augmentation search grants them);
        by default they are read off the last layer's gradient as in iDLG."""
        return inverting_gradients(model, grads, labels, image_shape, batch_size=batch_size, generator=generator,
                                   mean=mean, std=std, **self.options())
