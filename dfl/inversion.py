"""Shared pieces of gradient-inversion attacks: pseudo-gradients, matching losses, image metrics.

The attacks themselves (``attacks/dlg.py``, ``attacks/idlg.py``, ``attacks/inverting_gradients.py``)
reconstruct a victim's training batch from what it shared: in DFL its update
``state_after - state_before``, which :func:`pseudo_gradient` turns into per-parameter gradients.

Images are compared in pixel space, ``[0, 1]``: a normalised image ``z`` is mapped back with
``x = z * std + mean`` per channel and clipped to ``[0, 1]`` before MSE, PSNR and SSIM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

Stats: TypeAlias = Sequence[float] | np.ndarray | torch.Tensor | None
"""Per-channel ``mean`` or ``std`` of the normalisation, ``(C,)``; ``None``: images are already in [0, 1]."""

SSIM_WINDOW = 7  # scikit-image's default window side


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
    flat layout of :func:`dfl.participant.flatten_into_views` (parameters, then float buffers); the buffer
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


# ---------------------------------------------------------------------------------- metrics


def _channel_stats(values: Stats, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full((1, channels, 1, 1), default)
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    arr = arr.reshape(-1)
    if arr.size not in (1, channels):
        raise ValueError(f"need one mean/std value per channel ({channels}), got {arr.size}")
    return np.broadcast_to(arr, (channels,)).reshape(1, channels, 1, 1)


def to_pixels(images: torch.Tensor | np.ndarray, mean: Stats = None, std: Stats = None) -> np.ndarray:
    """Normalised images ``(B, C, H, W)`` (or one ``(C, H, W)``) as float64 pixels in ``[0, 1]``: ``clip(z * std + mean)``."""
    x = images.detach().cpu().double().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W) or (C, H, W), got {x.shape}")
    c = x.shape[1]
    return np.clip(x * _channel_stats(std, c, 1.0) + _channel_stats(mean, c, 0.0), 0.0, 1.0)


def _pair(recon: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, mean: Stats, std: Stats) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_pixels(recon, mean, std), to_pixels(truth, mean, std)
    if a.shape != b.shape:
        raise ValueError(f"reconstructions {a.shape} and originals {b.shape} differ in shape; pair them first")
    return a, b


def mse(recon: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, mean: Stats = None, std: Stats = None) -> np.ndarray:
    """Mean squared error per image in ``[0, 1]`` pixel space: ``(B,)``."""
    a, b = _pair(recon, truth, mean, std)
    return np.mean((a - b) ** 2, axis=(1, 2, 3))


def psnr(recon: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, mean: Stats = None, std: Stats = None) -> np.ndarray:
    """Peak signal-to-noise ratio per image, ``10 log10(1 / MSE)`` dB (data range 1): ``(B,)``; ``inf`` where identical."""
    err = mse(recon, truth, mean, std)
    with np.errstate(divide="ignore"):
        return np.where(err > 0, -10.0 * np.log10(np.maximum(err, 1e-300)), np.inf)


def ssim_window(height: int, width: int) -> int:
    """SSIM window side: scikit-image's 7, or the largest odd side that fits a smaller image (at least 3)."""
    side = min(SSIM_WINDOW, height, width)
    if side % 2 == 0:
        side -= 1
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return side


def ssim(recon: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, mean: Stats = None, std: Stats = None) -> np.ndarray:
    """Structural similarity per image (Wang et al. 2004), mean over channels: ``(B,)``, 1 where identical.

    scikit-image's ``structural_similarity(data_range=1, channel_axis=0)``: a uniform 7x7 window (smaller
    for images under 7 px, see :func:`ssim_window`) and sample covariances.
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(recon, truth, mean, std)
    win = ssim_window(a.shape[2], a.shape[3])
    return np.array(
        [structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=win) for x, y in zip(a, b, strict=True)],
        dtype=np.float64,
    )


def match(recon: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, mean: Stats = None, std: Stats = None) -> np.ndarray:
    """The pairing of reconstructions with originals that maximises the total PSNR: ``order: (B,)``.

    ``recon[order[i]]`` is the reconstruction of ``truth[i]``; a batch is recovered only up to a
    permutation, so metrics are taken after this assignment (Hungarian algorithm, Kuhn 1955).
    """
    a, b = _pair(recon, truth, mean, std)
    if len(a) <= 1:
        return np.arange(len(a))
    err = np.mean((b[:, None] - a[None, :]) ** 2, axis=(2, 3, 4))  # (truth, recon)
    # -log10(MSE) is PSNR up to a factor; a floor keeps identical pairs finite and preferred.
    score = -np.log10(np.maximum(err, 1e-30))
    rows, cols = linear_sum_assignment(score, maximize=True)
    order = np.empty(len(a), dtype=np.int64)
    order[rows] = cols
    return order
