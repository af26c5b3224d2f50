"""Image metrics of gradient inversion, in pixel space: MSE, PSNR, SSIM and the pairing they are taken after.

Images are compared in ``[0, 1]``: a normalised image ``z`` is mapped back with ``x = z * std + mean``
per channel and clipped to ``[0, 1]`` before MSE, PSNR and SSIM. Pure functions: numpy, torch tensors
in, numpy out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch

Stats: TypeAlias = Sequence[float] | np.ndarray | torch.Tensor | None
"""Per-channel ``mean`` or ``std`` of the normalisation, ``(C,)``; ``None``: images are already in [0, 1]."""

SSIM_WINDOW = 7  # scikit-image's default window side


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
    # here, not at the top: scikit-image costs start-up time, and only inversion scores SSIM
    from skimage.metrics import structural_similarity

    a, b = _pair(recon, truth, mean, std)
    win = ssim_window(a.shape[2], a.shape[3])
    return np.array(
        [structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=win) for x, y in zip(a, b, strict=True)],
        dtype=np.float64,
    )


def pair(recon: torch.Tensor | np.ndarray, originals: torch.Tensor | np.ndarray, mean: Stats = None,
         std: Stats = None) -> np.ndarray:
    """The one pairing of reconstructions with originals: for reconstruction ``k`` the index ``order[k]``
    of a distinct image of ``originals``, minimising the total pixel MSE (Hungarian algorithm, Kuhn 1955).

    A batch is recovered only up to a permutation, so metrics are taken after this assignment.
    ``originals: (M, C, H, W)`` may hold more images than ``recon: (B, C, H, W)`` (``M >= B``): the
    inversion scorer pairs against the victim's whole round of training images.
    """
    # here, not at the top: scipy.optimize costs about 0.6 s of start-up, and only inversion runs pair images
    from scipy.optimize import linear_sum_assignment

    a, b = to_pixels(recon, mean, std), to_pixels(originals, mean, std)
    if a.shape[1:] != b.shape[1:] or len(b) < len(a):
        raise ValueError(f"cannot pair reconstructions {a.shape} with originals {b.shape}: need the same image "
                         "shape and at least as many originals")
    err = ((a[:, None] - b[None, :]) ** 2).reshape(len(a), len(b), -1).mean(-1)
    rows, cols = linear_sum_assignment(err)
    order = np.empty(len(a), dtype=np.int64)
    order[rows] = cols
    return order

