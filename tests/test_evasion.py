"""Adaptive queries (attacks.N.evasion): the transforms, and AugMixCloak's detections falling under them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dfl import api
from dfl.adversary.evasion import describe, evasive, transform
from dfl.config import AttackSpec, EvasionSpec
from dfl.errors import ConfigError
from dfl.experiment import parse_config
from dfl.rundir import RunDir


def pixels(b: int = 6, c: int = 3, h: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, h, generator=torch.Generator().manual_seed(seed))


def test_flip_noise_and_jpeg_are_what_they_say() -> None:
    x, g = pixels(), torch.Generator().manual_seed(1)
    assert torch.equal(transform(x, EvasionSpec(name="flip"), g), x.flip(-1))
    noisy = transform(x, EvasionSpec(name="noise", strength=0.05), g)
    assert noisy.min() >= 0 and noisy.max() <= 1 and 0.02 < (noisy - x).std() < 0.06
    for c in (1, 3):
        x = pixels(c=c)
        jpeg = transform(x, EvasionSpec(name="jpeg", strength=90), g)
        assert jpeg.shape == x.shape and not torch.equal(jpeg, x) and (jpeg - x).abs().mean() < 0.2


def test_translate_and_crop_move_each_image_by_its_own_draw() -> None:
    x = pixels(b=8)
    shifted = transform(x, EvasionSpec(name="translate", strength=2), torch.Generator().manual_seed(0))
    for i in range(8):  # each image is its original shifted by some (dy, dx) within 2 pixels, edges replicated
        padded = torch.nn.functional.pad(x[i : i + 1], (2, 2, 2, 2), mode="replicate")[0]
        assert any(torch.equal(shifted[i], padded[:, 2 + dy : 14 + dy, 2 + dx : 14 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    cropped = transform(x, EvasionSpec(name="crop"), torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape and cropped.min() >= 0 and cropped.max() <= 1
    again = transform(x, EvasionSpec(name="crop"), torch.Generator().manual_seed(0))
    assert torch.equal(cropped, again)  # a seeded stream: repeatable


def test_evasive_queries_transform_pixels_not_normalised_values() -> None:
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = pixels()
    seen: list[torch.Tensor] = []
    ask = evasive(lambda q: seen.append(q) or q, [EvasionSpec(name="flip")], mean, std, torch.Generator())
    ask((x - m) / s)
    assert torch.allclose(seen[0] * s + m, x.flip(-1), atol=1e-6)
    assert describe([EvasionSpec(name="flip"), EvasionSpec(name="translate")]) == "flip+translate:2"
    assert describe([]) is None


@pytest.mark.parametrize(("spec", "needle"), [
    ({"name": "loss", "access": "params", "evasion": [{"name": "flip"}]}, "needs access: query"),
    ({"name": "loss", "evasion": [{"name": "jpeg", "strength": 200}]}, "quality from 1 to 100"),
    ({"name": "loss", "evasion": [{"name": "crop", "strength": 1.5}]}, "fraction below 1"),
    ({"name": "loss", "evasion": [{"name": "blur"}]}, "blur"),
])
def test_bad_evasions_are_named(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AttackSpec(**spec)


def test_a_flipping_attacker_dodges_augmixcloaks_index(tiny: dict[str, Any], write_cfg) -> None:
    """AugMixCloak recognises every member it is asked about (and no non-member): detected 0.5 on a
    balanced set. Flipped queries no longer match its pHash index."""
    tiny.update(rounds=2, eval={"every": 2}, defenses=[{"name": "augmixcloak"}],
                attacks=[{"name": "loss"}, {"name": "loss", "evasion": [{"name": "flip"}]}])
    tiny["data"]["auxiliary_fraction"] = 0.2
    res = api.run(write_cfg(tiny))
    mia = [r for r in RunDir(res.run_dir).records() if r["kind"] == "mia"]
    plain = [r for r in mia if r["evasion"] is None]
    adaptive = [r for r in mia if r["evasion"] == "flip"]
    assert len(plain) == len(adaptive) == 2
    assert all(r["detected"] == pytest.approx(0.5) for r in plain)
    assert all(r["detected"] < 0.1 for r in adaptive)
    assert {"loss_detected", "loss_evasion_detected", "loss_evasion_auc"} <= set(res.summary["mia"])
    with pytest.raises(ConfigError):
        parse_config({**tiny, "attacks": [{"name": "loss", "access": "params", "evasion": [{"name": "flip"}]}]})
