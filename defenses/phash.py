"""Batched perceptual hashes (pHash), bit for bit ``imagehash.phash``, as sorted ``uint64`` arrays.

pHash (Zauner 2010, as in imagehash): grey levels (PIL's ``convert("L")``: ``(19595 R + 38470 G +
7471 B + 2^15) >> 16``), resized to 32 x 32 (Lanczos; CIFAR-sized images are already 32 x 32 and PIL
leaves them untouched), a 2-D DCT-II (``scipy.fftpack.dct`` along rows then columns), the top-left
8 x 8 coefficients compared with their median: bit ``(i, j)`` is 1 where ``dct[i, j] > median``. The 64
bits in row-major order, first bit most significant, form the ``uint64`` whose hex string is
``str(imagehash.phash(img))``. AugMixCloak's index keeps these in a sorted array for binary search.
"""

from __future__ import annotations

import numpy as np

HASH_SIZE = 8
IMG_SIZE = 32
# The first 8 rows of the unnormalised DCT-II of length 32 (scipy.fftpack's convention):
# y[k] = 2 sum_n x[n] cos(pi k (2n + 1) / 64). Only these coefficients enter the hash.
_C8 = 2 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(IMG_SIZE)[None, :] + 1) / (2 * IMG_SIZE))


_LUMA = np.array([19595, 38470, 7471], dtype=np.float32)


def grey(x: np.ndarray) -> np.ndarray:
    """PIL's ``convert("L")`` on uint8 images ``(N, C, H, W)`` (C = 1 or 3) -> uint8 ``(N, H, W)``.

    ``(19595 R + 38470 G + 7471 B + 2^15) >> 16`` as one float32 product: every partial sum is an
    integer below ``255 * 2^16 < 2^24``, so float32 holds it exactly and the result is PIL's.
    """
    if x.shape[1] == 1:
        return x[:, 0]
    n, _, h, w = x.shape
    y = _LUMA @ x.reshape(n, 3, h * w).astype(np.float32)
    return np.floor((y + 0x8000) / 0x10000).astype(np.uint8).reshape(n, h, w)



def _resized(g: np.ndarray) -> np.ndarray:
    """Grey images resized to 32 x 32 with PIL's Lanczos filter (a no-op at 32 x 32)."""
    if g.shape[1:] == (IMG_SIZE, IMG_SIZE):
        return g
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS))
                     for im in g])


_K = np.kron(_C8, _C8).T  # (1024, 64): vec(C8 @ P @ C8^T) = vec(P) @ kron(C8, C8)^T


def low_frequencies(pixels: np.ndarray) -> np.ndarray:
    """The top-left 8 x 8 of the 2-D DCT-II of grey ``(N, 32, 32)`` images (float64).

    ``C8 @ P @ C8^T`` for all images at once as one matrix product ``(N, 1024) @ (1024, 64)``: the same
    coefficients as ``scipy.fftpack.dct`` up to float rounding (about 1e-10), which flips a bit only
    when two coefficients tie with the median to that precision (not seen on CIFAR-10's test set).
    """
    return (pixels.reshape(len(pixels), -1).astype(np.float64) @ _K).reshape(-1, HASH_SIZE, HASH_SIZE)


def phash_bits(x: np.ndarray, exact: bool = False) -> np.ndarray:
    """The 64 pHash bits of each image, ``(N, 8, 8)`` bool; ``x``: uint8 ``(N, C, H, W)``.

    ``exact=True`` computes the DCT with ``scipy.fftpack`` as imagehash does (the reference path).
    """
    pixels = _resized(grey(x))
    if exact:
        import scipy.fftpack

        low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE]
    else:
        low = low_frequencies(pixels)
    flat = low.reshape(len(low), -1)
    med = np.median(flat, axis=1)
    return low > med[:, None, None]


def phash(x: np.ndarray, exact: bool = False, chunk: int = 512) -> np.ndarray:
    """``uint64`` pHashes ``(N,)`` of uint8 images ``(N, C, H, W)``, equal to ``int(str(imagehash.phash(img)), 16)``.

    Works in chunks of ``chunk`` images so that the temporaries stay in cache.
    """
    out = np.empty(len(x), dtype=np.uint64)
    for a in range(0, len(x), chunk):
        bits = phash_bits(x[a : a + chunk], exact).reshape(-1, HASH_SIZE * HASH_SIZE)
        out[a : a + chunk] = np.packbits(bits, axis=1).view(">u8").reshape(-1)
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between ``uint64`` hashes (broadcasting)."""
    v = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.unpackbits(v.view(np.uint8).reshape(*v.shape, 8), axis=-1).sum(axis=-1)
