"""``augmixcloak``: query-time defense by pHash detection, hash-chosen augmentation and prototype fusion.

AugMixCloak (shared/papers/augmixcloak-summary.txt, arXiv 2505.07149). A node indexes the 64-bit pHash
of its training images (with labels) and of its neighbours' (the arrays they send over the round-0
graph) in a :class:`defenses.phash_index.PHashIndex`. For each query:

1. its pHash ``h`` is looked up (binary search; within Hamming distance ``d`` by multi-index hashing);
   a query that matches nothing passes unchanged;
2. a match is augmented deterministically from ``h``: ``n = 1 + h mod intensity`` of the 12 ops
   (intensity 0 turns augmentation off), chosen without replacement by the base-12 digits of
   ``h >> 8``, each at a magnitude in [0.3, 1] of its range read from a further byte of ``h``;
3. the result is fused with the matched label's prototype: ``alpha * augmented + (1 - alpha) * proto``,
   where ``proto_c`` is the PCA reconstruction of class ``c``'s typical training image from its first
   principal component (class mean + median score along the first component), precomputed per class
   from the node's own training images.

Everything depends only on the query's pixels and the node's data, so identical queries always get
identical outputs. The per-node auto-tuning of ``intensity`` and ``alpha`` is not part of this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from defenses.phash import phash
from defenses.phash_index import PHashIndex
from dfl.query import DefenseContext, QueryDefense
from dfl.registries import DEFENSES


def _op(name: str, img: torch.Tensor, m: float) -> torch.Tensor:
    """One op on a uint8 image ``(C, H, W)`` at magnitude ``m`` in [0, 1] (signed ops use ``m`` as is)."""
    import torchvision.transforms.v2.functional as TF  # here: importing the plugins stays fast

    h, w = img.shape[-2:]
    if name == "autocontrast":
        return TF.autocontrast(img)
    if name == "equalize":
        return TF.equalize(img)
    if name == "posterize":
        return TF.posterize(img, bits=max(1, 8 - round(4 * m)))
    if name == "solarize":
        return TF.solarize(img, threshold=int(255 * (1 - 0.5 * m)))
    if name == "rotate":
        return TF.rotate(img, angle=30.0 * m)
    if name == "shear_x":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(0.3 * m)), 0.0])
    if name == "shear_y":
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(0.3 * m))])
    if name == "translate_x":
        return TF.affine(img, angle=0.0, translate=[round(0.3 * w * m), 0], scale=1.0, shear=[0.0, 0.0])
    if name == "translate_y":
        return TF.affine(img, angle=0.0, translate=[0, round(0.3 * h * m)], scale=1.0, shear=[0.0, 0.0])
    if name == "brightness":
        return TF.adjust_brightness(img, 1.0 + 0.9 * m)
    if name == "contrast":
        return TF.adjust_contrast(img, 1.0 + 0.9 * m)
    if name == "sharpness":
        return TF.adjust_sharpness(img, 1.0 + 0.9 * m)
    raise ValueError(name)


OPS = ("autocontrast", "equalize", "posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x",
       "translate_y", "brightness", "contrast", "sharpness")


def plan(h: int, intensity: int) -> list[tuple[str, float]]:
    """The ops and magnitudes a hash selects: ``n = 1 + h mod intensity`` distinct ops (none at intensity 0)."""
    if intensity <= 0:
        return []
    n = 1 + h % intensity
    pool, key, out = list(OPS), h >> 8, []
    for i in range(n):
        key, digit = divmod(key, len(pool))
        name = pool.pop(digit)
        byte = (h >> (8 * (i % 8))) & 0xFF
        out.append((name, 0.3 + 0.7 * byte / 255))
    return out


def prototypes(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, ``mean + median(score) * v1`` with ``v1`` the first principal component, in [0, 1] pixels.

    ``x``: uint8 ``(N, C, H, W)``; returns float32 ``(num_classes, C, H, W)`` (the overall mean for a
    class the node has no image of).
    """
    flat = x.reshape(len(x), -1).astype(np.float64) / 255.0
    out = np.tile(flat.mean(0) if len(flat) else 0.5, (num_classes, 1))
    for c in range(num_classes):
        xc = flat[y == c]
        if len(xc) == 0:
            continue
        mu = xc.mean(0)
        if len(xc) > 1:
            _, _, vt = np.linalg.svd(xc - mu, full_matrices=False)
            v = vt[0]
            out[c] = mu + np.median((xc - mu) @ v) * v
        else:
            out[c] = mu
    return np.clip(out, 0, 1).astype(np.float32).reshape(num_classes, *x.shape[1:])


class AugMixCloakParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intensity: int = Field(2, ge=0, le=4, description="at most this many augmentation ops per matched query")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the augmented query against the prototype")
    radius: int = Field(0, ge=0, le=16, description="Hamming distance d that counts as a match")
    neighbours: bool = Field(True, description="also index the neighbours' training hashes")


@DEFENSES.register("augmixcloak", params=AugMixCloakParams)
class AugMixCloak(QueryDefense):
    """pHash-matched queries are augmented by their hash and fused with a class prototype."""

    params: AugMixCloakParams

    def __init__(self, params: AugMixCloakParams, ctx: DefenseContext) -> None:
        super().__init__(params, ctx)
        if ctx.train_images is None:
            raise ValueError("augmixcloak needs the node's training images in its DefenseContext")
        x, y = ctx.train_images(ctx.node)
        parts = [PHashIndex(phash(x), y)]
        if params.neighbours:
            for j in ctx.neighbours:
                xj, yj = ctx.train_images(j)
                parts.append(PHashIndex(phash(xj), yj))
        self.index = PHashIndex.merge(parts)
        self.protos = torch.from_numpy(prototypes(x, y, ctx.num_classes))

    def images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        u8 = self.ctx.to_uint8(x)
        hashes = phash(u8)
        match = self.index.lookup(hashes, self.params.radius)
        if not match.found.any():
            return x
        out = x.clone()
        a = self.params.alpha
        for k in np.flatnonzero(match.found):
            img = torch.from_numpy(u8[k])
            for name, m in plan(int(hashes[k]), self.params.intensity):
                img = _op(name, img, m)
            fused = a * img.to(torch.float32) / 255.0 + (1 - a) * self.protos[int(match.label[k])]
            out[k] = self.ctx.normalise(fused[None].to(x.dtype))[0].to(x.device)
        return out
