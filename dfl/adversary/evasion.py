"""Adaptive queries: an attacker transforms each candidate before querying, to dodge query-time defenses.

A defense keyed on recognising its training images (AugMixCloak's pHash index, ``radius`` bits) fires on
exact or near copies; an attacker that knows this queries a transformed copy and scores membership from
the answer: the model still recognises a flipped or slightly shifted training image, while its hash
moves away. The AugMixCloak paper leaves this attacker open. Transforms (``attacks.N.evasion``, applied
in order, on pixels in ``[0, 1]``, each sample with its own draws from the attack's stream):

* ``flip``: horizontal mirror;
* ``translate``: a shift by up to ``strength`` pixels (default 2) in each direction, edges replicated;
* ``crop``: a window ``1 - strength`` of each side (default 0.125 cut), resized back (antialiased);
* ``noise``: Gaussian noise of standard deviation ``strength`` (default 0.02), clipped;
* ``jpeg``: JPEG re-encoding at quality ``strength`` (default 75; Pillow's codec).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dfl.config import EvasionSpec

DEFAULT_STRENGTH = {"translate": 2.0, "crop": 0.125, "noise": 0.02, "jpeg": 75.0}


def describe(specs: Sequence[EvasionSpec]) -> str | None:
    """``flip+translate:2+jpeg:75``: the record's ``evasion`` (``None`` without)."""
    if not specs:
        return None
    parts = []
    for s in specs:
        strength = s.strength if s.strength is not None else DEFAULT_STRENGTH.get(s.name)
        parts.append(s.name if strength is None else f"{s.name}:{strength:g}")
    return "+".join(parts)


def _integer(low: int, high: int, size: int, g: torch.Generator) -> list[int]:
    return torch.randint(low, high + 1, (size,), generator=g).tolist()


def _jpeg(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image encoded as a JPEG at ``quality`` and decoded again (Pillow's codec)."""
    import io

    from PIL import Image

    u8 = (pixels * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in u8:
        buffer = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out.append(decoded.reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def transform(pixels: torch.Tensor, spec: EvasionSpec, g: torch.Generator) -> torch.Tensor:
    """One evasion transform of a batch of images ``(B, C, H, W)`` in ``[0, 1]``."""
    from torchvision.transforms.v2 import functional as TF

    strength = spec.strength if spec.strength is not None else DEFAULT_STRENGTH.get(spec.name, 0.0)
    b, _, h, w = pixels.shape
    if spec.name == "flip":
        return TF.horizontal_flip(pixels)
    if spec.name == "noise":
        return (pixels + strength * torch.randn(pixels.shape, generator=g)).clamp(0.0, 1.0)
    if spec.name == "jpeg":
        return _jpeg(pixels, int(round(strength)))
    if spec.name == "translate":
        s = max(1, int(round(strength)))
        padded = F.pad(pixels, (s, s, s, s), mode="replicate")
        dx, dy = _integer(-s, s, b, g), _integer(-s, s, b, g)
        return torch.stack([padded[i, :, s + dy[i] : s + dy[i] + h, s + dx[i] : s + dx[i] + w] for i in range(b)])
    if spec.name == "crop":
        ch, cw = max(1, int(round(h * (1 - strength)))), max(1, int(round(w * (1 - strength))))
        top, left = _integer(0, h - ch, b, g), _integer(0, w - cw, b, g)
        return torch.stack([TF.resized_crop(pixels[i], top[i], left[i], ch, cw, [h, w], antialias=True).clamp(0, 1)
                            for i in range(b)])
    raise ValueError(f"unknown evasion {spec.name!r}")


def evasive(query: Callable[[torch.Tensor], torch.Tensor], specs: Sequence[EvasionSpec], mean: Sequence[float],
            std: Sequence[float], g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """``query`` behind the evasion ``specs``: normalised images in, each transformed on its pixels
    (``x * std + mean``) and normalised again before it is asked."""
    m = torch.as_tensor(np.asarray(mean, dtype=np.float32)).view(1, -1, 1, 1)
    s = torch.as_tensor(np.where(np.asarray(std) > 0, std, 1.0).astype(np.float32)).view(1, -1, 1, 1)

    def ask(x: torch.Tensor) -> torch.Tensor:
        pixels = (x.detach().cpu() * s + m).clamp(0.0, 1.0)
        for spec in specs:
            pixels = transform(pixels, spec, g)
        return query(((pixels - m) / s).to(x.dtype).to(x.device))

    return ask
