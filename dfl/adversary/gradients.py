"""Shared pieces of gradient-inversion attacks: pseudo-gradients, matching losses, ``Reconstruction``.

The attacks themselves (``attacks/dlg.py``, ``attacks/idlg.py``, ``attacks/inverting_gradients.py``)
reconstruct a victim's training batch from what it shared: in DFL its update
``state_after - state_before``, which :func:`pseudo_gradient` turns into per-parameter gradients.
How close a reconstruction comes is measured by :mod:`dfl.metrics.images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Reconstruction:
    """What a gradient-inversion attack returns.

    ``images``: ``(B, C, H, W)`` in the normalised space the model takes; ``labels``: ``(B,)`` int64;
    ``loss_history``: the matching loss after each iteration; ``iterations``: iterations run (early
    stopping may end before the budget); ``seconds``: wall time of the optimisation.
    """

    images: torch.Tensor
    labels: torch.Tensor
    loss_history: list[float]
    iterations: int
    seconds: float


# ---------------------------------------------------------------------------------- gradients


def pseudo_gradient(model: nn.Module, update: torch.Tensor, lr: float, steps: int) -> list[torch.Tensor]:
    """Per-parameter pseudo-gradients ``-update / (lr * steps)`` of a victim's update, shaped like ``model.parameters()``.

    ``update: (n_params,)`` or ``(n_params + n_float_buffers,)`` is ``state_after - state_before`` in the
    flat layout of :func:`dfl.federation.participant.flatten_into_views` (parameters, then float buffers); the buffer
    part is ignored. After one step of plain SGD (no momentum, no weight decay) ``theta' = theta - lr * g``,
    so the result is exactly the gradient ``g``; after ``steps`` steps it is their mean, the FedAvg-style
    approximation of Geiping et al., "Inverting Gradients", NeurIPS 2020, section 5.
    """
    if lr <= 0 or steps < 1:
        raise ValueError(f"need lr > 0 and steps >= 1, got lr={lr} and steps={steps}")
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    flat = update.reshape(-1)
    if flat.numel() not in (n_params, n_params + n_buffers):
        raise ValueError(
            f"an update of {flat.numel()} values does not fit this model: expected {n_params} (parameters) "
            f"or {n_params + n_buffers} (parameters and float buffers); pass state_after - state_before of "
            "the same architecture"
        )
    scaled = flat[:n_params].detach().to(params[0].device, torch.float32) / (-lr * steps)
    return [chunk.view_as(p) for chunk, p in zip(scaled.split([p.numel() for p in params]), params, strict=True)]


def gradient_of(
    model: nn.Module, x: torch.Tensor, y_or_soft: torch.Tensor, create_graph: bool = False
) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy of batch ``x: (B, C, H, W)`` with respect to ``model.parameters()``.

    ``y_or_soft``: hard labels ``(B,)`` (int64) or soft labels ``(B, K)`` (rows summing to 1, as the
    dummy labels of DLG), for which the loss is ``mean_b sum_k -y_bk log softmax(f(x_b))_k``.
    ``create_graph=True`` keeps the graph, so a loss on the gradient can be differentiated with respect
    to ``x`` (and soft labels), as gradient matching needs. The model's mode (train/eval) is the caller's.
    """
    params = list(model.parameters())
    logits = model(x)
    if y_or_soft.dtype.is_floating_point:
        loss = torch.sum(-y_or_soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
    else:
        loss = F.cross_entropy(logits, y_or_soft)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return [g if create_graph else g.detach() for g in grads]


def l2_mismatch(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i ||dummy_i - target_i||^2`` over all parameter gradients (Zhu et al. 2019, eq. 4)."""
    return torch.stack([(d - t).pow(2).sum() for d, t in zip(dummy, target, strict=True)]).sum()


def cosine_mismatch(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1 - <dummy, target> / (||dummy|| ||target||)`` over all parameter gradients concatenated.

    Geiping et al., "Inverting Gradients -- How easy is it to break privacy in federated learning?",
    NeurIPS 2020, eq. 4 (without the TV term).
    """
    dot = torch.stack([(d * t).sum() for d, t in zip(dummy, target, strict=True)]).sum()
    dn = torch.stack([d.pow(2).sum() for d in dummy]).sum().sqrt()
    tn = torch.stack([t.pow(2).sum() for t in target]).sum().sqrt()
    return 1 - dot / (dn * tn).clamp_min(1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``x: (B, C, H, W)``: ``mean |x[.., :, 1:] - x[.., :, :-1]| + mean |x[.., 1:, :] - x[.., :-1, :]|``.

    The image prior of Geiping et al. 2020 (as in their code, means rather than sums).
    """
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy
