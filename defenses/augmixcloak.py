"""``augmixcloak``: query-time defense by pHash detection, hash-chosen augmentation and prototype fusion.

AugMixCloak (shared/papers/augmixcloak-summary.txt, arXiv 2505.07149). A node indexes the 64-bit pHash
of its training images (with labels) and of its neighbours' (the arrays they send over the round-0
graph, and the arrays of new neighbours whenever a resampled topology brings some; an array once
received stays indexed) in a :class:`defenses.phash_index.PHashIndex`. For each query:

1. its pHash ``h`` is looked up (binary search; within Hamming distance ``d`` by multi-index hashing);
   a query that matches nothing passes unchanged;
2. a match is augmented deterministically from ``h``: ``n = 1 + h mod intensity`` of the 12 ops
   (intensity 0 turns augmentation off), chosen without replacement by the base-12 digits of
   ``h >> 8``, each at a magnitude in [0.3, 1] of its range read from a further byte of ``h``;
3. the result is fused with the matched label's prototype: ``alpha * augmented + (1 - alpha) * proto``,
   where ``proto_c`` is the PCA reconstruction of class ``c``'s typical training image from its first
   principal component (class mean + median score along the first component), precomputed per class
   from the node's own training images.

Everything depends only on the query's pixels, the node's data and (with ``tune``) its model, so
identical queries always get identical outputs. The ops run batched over the matched queries
(:func:`augment`), each row with its own plan.

With ``tune: true`` the node chooses ``intensity`` and ``alpha`` itself whenever its model changes
(:meth:`AugMixCloak.fit`): the setting that brings its own simulated attack's F1 into ``target_f1``
(default [0.35, 0.65]) while its accuracy on non-member queries stays within ``benign_tolerance``;
the choice is reported as a ``kind: defense`` record in metrics.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from defenses.phash import phash
from defenses.phash_index import PHashIndex
from dfl.defense import DefenseContext, QueryDefense
from dfl.metrics.membership import best_threshold
from dfl.metrics.signals import entropy, loss, modified_entropy, top1
from dfl.registries import DEFENSES
from dfl.seeding import AUGMIXCLOAK_TUNE, derive_seed


def _affine_theta(name: str, m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-row inverse affine matrices ``(B, 2, 3)`` of a geometric op, as torchvision's ``affine``/``rotate``
    build them (centre of the image, no scaling)."""
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    rows = []
    for mi in m.tolist():
        if name == "rotate":  # torchvision's rotate passes -angle to the affine matrix
            args: tuple[float, list[float], list[float]] = (-30.0 * mi, [0.0, 0.0], [0.0, 0.0])
        elif name == "shear_x":
            args = (0.0, [0.0, 0.0], [math.degrees(math.atan(0.3 * mi)), 0.0])
        elif name == "shear_y":
            args = (0.0, [0.0, 0.0], [0.0, math.degrees(math.atan(0.3 * mi))])
        elif name == "translate_x":
            args = (0.0, [float(round(0.3 * w * mi)), 0.0], [0.0, 0.0])
        else:  # translate_y
            args = (0.0, [0.0, float(round(0.3 * h * mi))], [0.0, 0.0])
        angle, translate, shear = args
        rows.append(_get_inverse_affine_matrix([0.0, 0.0], angle, translate, 1.0, shear))
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2, 3)


def _warp(img: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of uint8 images ``(B, C, H, W)`` by per-row inverse matrices, zero fill
    (torchvision's tensor ``affine`` kernel, batched over matrices)."""
    b, _, h, w = img.shape
    base = torch.empty(1, h, w, 3)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h]))
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(scaled).view(b, h, w, 2)
    out = torch.nn.functional.grid_sample(img.to(torch.float32), grid, mode="nearest", padding_mode="zeros",
                                          align_corners=False)
    return out.round_().to(torch.uint8)


def _blend(img: torch.Tensor, other: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r * img + (1 - r) * other`` clamped to uint8 (torchvision's blend with a per-row ratio)."""
    return img.mul(r).add_(other * (1.0 - r)).clamp_(0, 255).to(torch.uint8)


def _sharpen(img: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` with a per-row factor: blend with a 3x3 smoothed image, border kept."""
    c = img.shape[1]
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]]).expand(c, 1, 3, 3)
    out = img.to(torch.float32)
    if img.shape[-1] <= 2 or img.shape[-2] <= 2:
        return img.clone()
    blurred = torch.nn.functional.conv2d(out, kernel, groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view) * (1.0 - r))
    return out.clamp_(0, 255).to(torch.uint8)


def apply_op(name: str, img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Op ``name`` on uint8 images ``(B, C, H, W)``, row ``i`` at magnitude ``m[i]`` in [0, 1].

    The same ops as torchvision's v2 functional API at the same magnitudes (autocontrast, equalize and
    posterize, solarize, the geometric ops exactly; the blends to within one grey level, see the tests),
    applied to a whole batch with per-row magnitudes in a few tensor operations.
    """
    import torchvision.transforms.v2.functional as TF  # here: importing the plugins stays fast

    h, w = img.shape[-2:]
    col = m.to(torch.float32).reshape(-1, 1, 1, 1)
    if name == "autocontrast":
        return TF.autocontrast(img)
    if name == "equalize":
        return TF.equalize(img)
    if name == "posterize":
        bits = (8 - torch.round(4 * m.to(torch.float64))).clamp(min=1).to(torch.int64)
        mask = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8).reshape(-1, 1, 1, 1)
        return img & mask
    if name == "solarize":
        t = torch.tensor([int(255 * (1 - 0.5 * mi)) for mi in m.tolist()], dtype=torch.int16).reshape(-1, 1, 1, 1)
        return torch.where(img.to(torch.int16) >= t, 255 - img, img)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return _warp(img, _affine_theta(name, m, h, w))
    factor = 1.0 + 0.9 * col
    if name == "brightness":
        return img.mul(factor).clamp_(0, 255).to(torch.uint8)
    if name == "contrast":
        grey = TF.rgb_to_grayscale(img).to(torch.float32) if img.shape[1] == 3 else img.to(torch.float32)
        return _blend(img, grey.mean(dim=(-3, -2, -1), keepdim=True), factor)
    if name == "sharpness":
        return _sharpen(img, factor)
    raise ValueError(name)


def augment(u8: torch.Tensor, plans: list[list[tuple[str, float]]]) -> torch.Tensor:
    """Each row of uint8 ``u8 (B, C, H, W)`` through its own plan of ops, batched per (step, op)."""
    out = u8.clone()
    for step in range(max((len(p) for p in plans), default=0)):
        by_op: dict[str, list[int]] = {}
        for k, p in enumerate(plans):
            if step < len(p):
                by_op.setdefault(p[step][0], []).append(k)
        for name, rows in by_op.items():
            idx = torch.tensor(rows)
            mags = torch.tensor([plans[k][step][1] for k in rows], dtype=torch.float64)
            out[idx] = apply_op(name, out[idx], mags)
    return out


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
    tune: bool = Field(False, description="choose intensity and alpha per node against its own simulated attack")
    tune_intensities: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="intensities searched")
    tune_alphas: list[float] = Field([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], min_length=1,
                                     description="alphas searched")
    target_f1: tuple[float, float] = Field((0.35, 0.65), description="band the simulated attack's F1 must reach")
    tune_samples: int = Field(250, gt=0, description="members (and as many holdout non-members) the tuning scores")
    benign_tolerance: float = Field(0.01, ge=0.0, description="largest drop of non-member accuracy allowed")

    @field_validator("tune_intensities")
    @classmethod
    def _intensities(cls, v: list[int]) -> list[int]:
        if any(not 0 <= i <= 4 for i in v):
            raise ValueError(f"intensities must lie in 0..4, got {v}")
        return v

    @field_validator("tune_alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError(f"alphas must lie in [0, 1], got {v}")
        return v

    @field_validator("target_f1")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"target_f1 must be [low, high] with 0 <= low < high <= 1, got {list(v)}")
        return v


@DEFENSES.register("augmixcloak", params=AugMixCloakParams)
class AugMixCloak(QueryDefense):
    """pHash-matched queries are augmented by their hash and fused with a class prototype."""

    detects = True

    params: AugMixCloakParams

    def __init__(self, params: AugMixCloakParams, ctx: DefenseContext) -> None:
        super().__init__(params, ctx)
        if ctx.train_images is None:
            raise ValueError("augmixcloak needs the node's training images in its DefenseContext")
        if params.tune and (ctx.holdout_images is None or len(ctx.holdout_images(ctx.node)[0]) == 0):
            raise ValueError("augmixcloak with tune: true needs the node's holdout images (non-members); "
                             "set data.holdout_fraction > 0")
        x, y = ctx.train_images(ctx.node)
        self.parts = {ctx.node: PHashIndex(phash(x), y)}
        self.index = self.parts[ctx.node]
        self.receive(ctx.neighbours)
        self.protos = torch.from_numpy(prototypes(x, y, ctx.num_classes))
        self.intensity, self.alpha = params.intensity, params.alpha

    def receive(self, neighbours: Sequence[int]) -> bool:
        """Index the training hashes of the ``neighbours`` not indexed yet (with ``neighbours: true``);
        whether there were any."""
        assert self.ctx.train_images is not None
        new = [j for j in neighbours if j not in self.parts] if self.params.neighbours else []
        for j in new:
            xj, yj = self.ctx.train_images(j)
            self.parts[j] = PHashIndex(phash(xj), yj)
        if new:  # the node's own hashes first, then the neighbours' by id
            me = self.ctx.node
            self.index = PHashIndex.merge([self.parts[me]] + [self.parts[j] for j in sorted(self.parts) if j != me])
        return bool(new)

    def start_round(self, round_idx: int) -> None:
        """Index the arrays of neighbours a resampled topology brought by this round (reported as a record)."""
        if self.ctx.neighbours_until is not None and self.receive(self.ctx.neighbours_until(round_idx)):
            self.records.append({"round_started": round_idx, "indexed_nodes": sorted(self.parts),
                                 "indexed_hashes": len(self.index)})

    # ------------------------------------------------------------------ the defended query

    def cloak(self, u8: np.ndarray, hashes: np.ndarray, labels: np.ndarray, intensity: int,
              alphas: list[float]) -> list[torch.Tensor]:
        """Matched uint8 images -> their cloaked versions in [0, 1] pixels, one batch per alpha."""
        plans = [plan(int(h), intensity) for h in hashes]
        aug = augment(torch.from_numpy(u8), plans).to(torch.float32) / 255.0
        protos = self.protos[torch.from_numpy(labels.astype(np.int64))]
        return [a * aug + (1 - a) * protos for a in alphas]

    def images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        u8 = self.ctx.to_uint8(x)
        hashes = phash(u8)
        match = self.index.lookup(hashes, self.params.radius)
        self.queries += len(x)
        self.detected += int(match.found.sum())
        if not match.found.any():
            return x
        k = np.flatnonzero(match.found)
        (fused,) = self.cloak(u8[k], hashes[k], match.label[k], self.intensity, [self.alpha])
        out = x.clone()
        out[torch.from_numpy(k).to(x.device)] = self.ctx.normalise(fused.to(x.dtype)).to(x.device)
        return out

    # ------------------------------------------------------------------ per-node tuning

    def fit(self, model: nn.Module) -> None:
        """With ``tune``: pick ``(intensity, alpha)`` for this model from the node's own simulated attack.

        The node scores ``tune_samples`` of its training images (members) and as many of its holdout
        images (non-members) with four metric attacks (loss, confidence, entropy, modified entropy), each
        thresholded where its balanced accuracy is highest on the undefended model (as an attacker
        calibrating on shadow models of the undefended recipe would), and reads their F1 on the defended
        answers of every grid point. Kept: grid points whose non-member accuracy is within
        ``benign_tolerance`` of undefended; among those with every attack's F1 inside ``target_f1``, the
        one whose F1s are closest to 0.5 (ties: the higher member accuracy, then the milder setting);
        with none inside, the one closest to the band. The choice
        and its figures are reported as a record.
        """
        if not self.params.tune:
            return
        train, holdout = self.ctx.train_images, self.ctx.holdout_images
        assert train is not None and holdout is not None
        p = self.params
        rng = np.random.default_rng(derive_seed(self.ctx.seed, AUGMIXCLOAK_TUNE, self.ctx.node))
        xm, ym = train(self.ctx.node)
        xn, yn = holdout(self.ctx.node)
        n = min(p.tune_samples, len(xm), len(xn))
        mi, ni = np.sort(rng.choice(len(xm), n, replace=False)), np.sort(rng.choice(len(xn), n, replace=False))
        u8 = np.concatenate([xm[mi], xn[ni]])
        y = torch.from_numpy(np.concatenate([ym[mi], yn[ni]]).astype(np.int64))
        member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
        device = next(model.parameters()).device

        def answer(pixels: torch.Tensor) -> torch.Tensor:
            model.eval()
            with torch.no_grad():
                x = self.ctx.normalise(pixels).to(device)
                return torch.cat([torch.softmax(model(b), 1).cpu() for b in x.split(500)])

        clean_px = torch.from_numpy(u8).to(torch.float32) / 255.0
        clean = answer(clean_px)
        hashes = phash(u8)
        match = self.index.lookup(hashes, p.radius)
        k = np.flatnonzero(match.found)

        # membership scores (higher = more member-like) of the metric attacks the node simulates
        signals = {"loss": loss, "confidence": top1, "entropy": entropy, "modified_entropy": modified_entropy}
        thresholds = {a: best_threshold(f(clean, y).numpy(), member) for a, f in signals.items()}

        def figures(q: torch.Tensor) -> dict[str, float]:
            correct = (q.argmax(1) == y).numpy()
            f1 = {a: _f1(f(q, y).numpy() >= thresholds[a], member) for a, f in signals.items()}
            return {"f1": max(f1.values()), "f1_min": min(f1.values()), **{f"f1_{a}": v for a, v in f1.items()},
                    "member_acc": float(correct[member].mean()), "non_member_acc": float(correct[~member].mean())}

        base = figures(clean)
        grid: list[tuple[int, float, dict[str, float]]] = []
        for intensity in sorted(set(p.tune_intensities)):
            alphas = sorted(set(p.tune_alphas), reverse=True)
            cloaked = self.cloak(u8[k], hashes[k], match.label[k], intensity, alphas) if len(k) else []
            for j, a in enumerate(alphas):
                px = clean_px.clone()
                if len(k):
                    px[torch.from_numpy(k)] = cloaked[j]
                grid.append((intensity, a, figures(answer(px))))
        lo, hi = p.target_f1
        benign = [c for c in grid if c[2]["non_member_acc"] >= base["non_member_acc"] - p.benign_tolerance]
        pool = benign or grid

        def rank(c: tuple[int, float, dict[str, float]]) -> tuple[float, float, float, int, float]:
            top, bottom = c[2]["f1"], c[2]["f1_min"]
            outside = max(lo - bottom, top - hi, 0.0)
            return outside, max(abs(top - 0.5), abs(bottom - 0.5)), -c[2]["member_acc"], c[0], -c[1]

        intensity, alpha, chosen = min(pool, key=rank)
        self.intensity, self.alpha = intensity, alpha
        self.records.append({
            "fit": "augmixcloak", "intensity": intensity, "alpha": alpha,
            "in_band": lo <= chosen["f1_min"] and chosen["f1"] <= hi,
            "benign_kept": bool(benign), "samples": n, "matched": int(len(k)), "grid_points": len(grid),
            **{f"sim_{key}": v for key, v in chosen.items()},
            **{f"sim_{key}_undefended": v for key, v in base.items()},
        })


def _f1(predicted: np.ndarray, member: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(member, predicted, zero_division=0.0))
