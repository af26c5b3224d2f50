"""``defensive_augmentation``: a per-class augmentation of the training data against gradient inversion.

Defensive augmentation (shared/papers/defensive-augmentation-gradient-inversion.txt): every training
image of class ``c`` is replaced by ``op_c(image, M_c)`` before the model sees it, so what a neighbour can
invert from the update is the augmented image, which the paper finds far less recognisable, at a
smaller accuracy cost than DP-SGD. The 14 ops at magnitudes 1-9 (0-9 accepted):

- AutoContrast, Equalize, Invert: no magnitude;
- Posterize: drop ``round(7 M / 9)`` of the 8 bits (the paper's range 0-7; M9 keeps one bit);
- Solarize: invert the pixels at or above ``256 (1 - M / 9)`` (M9 is Invert);
- Rotate: ``30 M / 9`` degrees; ShearX/ShearY: shear factor ``0.3 M / 9``; TranslateX/TranslateY:
  ``0.45 M / 9`` of the image's side;
- Brightness, Color, Contrast, Sharpness: enhancement factor ``0.1 + 1.8 M / 9`` (1 is the identity).

The policy is given per class (``policy: {class: [op, M]}``, class ids or names), as one op for every
class (``op``, ``magnitude``), or as a preset: ``preset: cifar10`` is the paper's Table 3 (each class's
highest-scoring augmentation). Classes a policy leaves out train on their images as they are.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dfl.defense import DefenseContext, TrainingDefense
from dfl.registries import DEFENSES

Op = Literal["autocontrast", "brightness", "color", "contrast", "equalize", "invert", "posterize", "rotate",
             "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y"]
OPS: tuple[str, ...] = Op.__args__  # type: ignore[attr-defined]

# shared/papers/defensive-augmentation-gradient-inversion.txt, Table 3: CIFAR-10 class -> best augmentation
PRESETS: dict[str, dict[str, tuple[str, int]]] = {
    "cifar10": {
        "airplane": ("solarize", 7), "automobile": ("solarize", 7), "bird": ("contrast", 7), "cat": ("posterize", 9),
        "deer": ("brightness", 9), "dog": ("equalize", 7), "frog": ("contrast", 6), "horse": ("posterize", 9),
        "ship": ("solarize", 6), "truck": ("solarize", 3),
    },
}


def apply(name: str, img: torch.Tensor, magnitude: int) -> torch.Tensor:
    """Op ``name`` at magnitude 0-9 on uint8 images ``(B, C, H, W)`` through torchvision."""
    import torchvision.transforms.v2.functional as TF

    m = magnitude / 9.0
    h, w = img.shape[-2:]
    factor = 0.1 + 1.8 * m
    ops = {
        "autocontrast": lambda: TF.autocontrast(img),
        "equalize": lambda: TF.equalize(img),
        "invert": lambda: TF.invert(img),
        "posterize": lambda: TF.posterize(img, bits=8 - round(7 * m)),
        "solarize": lambda: img.clone() if m == 0 else TF.solarize(img, threshold=256.0 * (1 - m)),
        "rotate": lambda: TF.rotate(img, angle=30.0 * m),
        "shear_x": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[_deg(0.3 * m), 0.0]),
        "shear_y": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, _deg(0.3 * m)]),
        "translate_x": lambda: TF.affine(img, angle=0.0, translate=[round(0.45 * w * m), 0], scale=1.0, shear=[0.0, 0.0]),
        "translate_y": lambda: TF.affine(img, angle=0.0, translate=[0, round(0.45 * h * m)], scale=1.0, shear=[0.0, 0.0]),
        "brightness": lambda: TF.adjust_brightness(img, factor),
        "color": lambda: TF.adjust_saturation(img, factor) if img.shape[1] == 3 else img,
        "contrast": lambda: TF.adjust_contrast(img, factor),
        "sharpness": lambda: TF.adjust_sharpness(img, factor),
    }
    return ops[name]()


def _deg(shear: float) -> float:
    import math

    return math.degrees(math.atan(shear))


class DefensiveAugmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: Literal["cifar10"] | None = Field(None, description="a shipped policy (cifar10: the paper's Table 3)")
    policy: dict[str, tuple[Op, int]] | None = Field(None, description="class id or name -> [op, magnitude 0-9]")
    op: Op | None = Field(None, description="one op for every class (with magnitude)")
    magnitude: int = Field(9, ge=0, le=9, description="magnitude of op")

    @model_validator(mode="after")
    def _one_source(self) -> DefensiveAugmentationParams:
        given = [k for k in ("preset", "policy", "op") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, policy or op (got {', '.join(given) or 'none'})")
        for cls, (_, m) in (self.policy or {}).items():
            if not 0 <= m <= 9:
                raise ValueError(f"policy[{cls}]: magnitude {m} must lie in 0..9")
        return self


@DEFENSES.register("defensive_augmentation", params=DefensiveAugmentationParams)
class DefensiveAugmentation(TrainingDefense):
    """Each training image through its class's augmentation (deterministic: no random draws)."""

    OPS: ClassVar[tuple[str, ...]] = OPS  # the ops a policy may name (``dfl-sim search-augmentation`` scores them)
    params: DefensiveAugmentationParams

    def __init__(self, params: DefensiveAugmentationParams, ctx: DefenseContext) -> None:
        super().__init__(params, ctx)
        self.table = resolve_policy(params, ctx.class_names or [str(c) for c in range(ctx.num_classes)])

    def batch(self, x: torch.Tensor, target: torch.Tensor, progress: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if target.ndim != 1 or not self.table:
            return x, target
        u8 = torch.from_numpy(self.ctx.to_uint8(x))
        out = u8.clone()
        labels = target.cpu()
        for c, (name, m) in self.table.items():
            rows = torch.nonzero(labels == c).flatten()
            if len(rows):
                out[rows] = apply(name, u8[rows], m)
        return self.ctx.normalise(out.to(torch.float32) / 255.0).to(x.device, x.dtype), target


def resolve_policy(params: DefensiveAugmentationParams, class_names: list[str]) -> dict[int, tuple[str, int]]:
    """``class id -> (op, magnitude)`` from a preset, a policy (ids or names) or one op for all classes."""
    if params.op is not None:
        return {c: (params.op, params.magnitude) for c in range(len(class_names))}
    raw = PRESETS[params.preset] if params.preset is not None else dict(params.policy or {})
    ids = {name: i for i, name in enumerate(class_names)}
    out: dict[int, tuple[str, int]] = {}
    for key, (name, m) in raw.items():
        if key in ids:
            out[ids[key]] = (name, int(m))
        elif key.isdigit() and int(key) < len(class_names):
            out[int(key)] = (name, int(m))
        else:
            raise ValueError(f"policy class {key!r} is neither a class name ({', '.join(class_names)}) nor an id "
                             f"below {len(class_names)}")
    return out
