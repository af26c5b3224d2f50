"""AugMixCloak: the batched ops against torchvision, and the per-node tuning."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from conftest import memorising_mlp
from torch import nn

from defenses.augmixcloak import OPS, AugMixCloak, AugMixCloakParams, apply_op, augment, plan
from dfl import api
from dfl.defense import DefenseContext, defended_query
from dfl.plugins import load_plugins
from dfl.rundir import RunDir

load_plugins()


def reference_op(name: str, img: torch.Tensor, m: float) -> torch.Tensor:
    """One op on one uint8 image through torchvision's v2 functional API, at AugMixCloak's magnitudes."""
    h, w = img.shape[-2:]
    shear = math.degrees(math.atan(0.3 * m))
    ops = {
        "autocontrast": lambda: TF.autocontrast(img),
        "equalize": lambda: TF.equalize(img),
        "posterize": lambda: TF.posterize(img, bits=max(1, 8 - round(4 * m))),
        "solarize": lambda: TF.solarize(img, threshold=int(255 * (1 - 0.5 * m))),
        "rotate": lambda: TF.rotate(img, angle=30.0 * m),
        "shear_x": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0]),
        "shear_y": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear]),
        "translate_x": lambda: TF.affine(img, angle=0.0, translate=[round(0.3 * w * m), 0], scale=1.0, shear=[0.0, 0.0]),
        "translate_y": lambda: TF.affine(img, angle=0.0, translate=[0, round(0.3 * h * m)], scale=1.0, shear=[0.0, 0.0]),
        "brightness": lambda: TF.adjust_brightness(img, 1.0 + 0.9 * m),
        "contrast": lambda: TF.adjust_contrast(img, 1.0 + 0.9 * m),
        "sharpness": lambda: TF.adjust_sharpness(img, 1.0 + 0.9 * m),
    }
    return ops[name]()


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", OPS)
def test_batched_op_matches_torchvision_per_image(name, channels):
    g = torch.Generator().manual_seed(len(name) * channels)
    x = torch.randint(0, 256, (48, channels, 32, 32), generator=g, dtype=torch.uint8)
    x[:8] //= 4  # some dark, low-contrast images for autocontrast and equalize
    m = 0.3 + 0.7 * torch.randint(0, 256, (48,), generator=g).double() / 255
    fast = apply_op(name, x, m)
    ref = torch.stack([reference_op(name, x[i], float(m[i])) for i in range(len(x))])
    diff = (fast.int() - ref.int()).abs()
    if name == "sharpness":  # the blend's rounding differs from torchvision's fused add on rare pixels
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3
    else:
        assert torch.equal(fast, ref)
    assert not torch.equal(fast, x) or name in ("autocontrast", "equalize")


def test_augment_applies_each_rows_own_plan():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 3, 16, 16), generator=g, dtype=torch.uint8)
    plans = [plan(int(h), 4) for h in torch.randint(0, 2**62, (20,), generator=g).tolist()]
    plans[3] = []
    out = augment(x, plans)
    for i, p in enumerate(plans):
        expect = x[i : i + 1]
        for name, m in p:
            expect = apply_op(name, expect, torch.tensor([m], dtype=torch.float64))
        assert torch.equal(out[i : i + 1], expect), p
    assert torch.equal(out[3], x[3])


# ---------------------------------------------------------------------------------------- tuning

_G = np.random.default_rng(0)
_TRAIN = (_G.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8), _G.integers(0, 3, 60))
_HOLD = (_G.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8), _G.integers(0, 3, 60))
_CTX = DefenseContext(node=0, seed=0, num_classes=3, mean=np.array([0.5]), std=np.array([0.25]),
                      train_images=lambda node: _TRAIN, holdout_images=lambda node: _HOLD)


def _pixels(u8: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(u8).float() / 255 - 0.5) / 0.25


def _memorising_model() -> nn.Module:
    """An MLP that has memorised the random labels of ``_TRAIN`` (so members are far easier than non-members)."""
    return memorising_mlp(_pixels(_TRAIN[0]), torch.from_numpy(_TRAIN[1]), hidden=128, classes=3)


def test_tuning_picks_a_setting_in_the_band_and_reports_it():
    model = _memorising_model()
    d = AugMixCloak(AugMixCloakParams(tune=True, tune_samples=60), _CTX)
    d.prepare(model)
    (rec,) = d.drain()
    assert rec["fit"] == "augmixcloak" and rec["samples"] == 60 and rec["matched"] == 60
    assert rec["grid_points"] == 5 * 9
    assert rec["sim_f1_undefended"] > 0.65  # the memorising model leaks
    assert rec["in_band"] and 0.35 <= rec["sim_f1_min"] <= rec["sim_f1"] <= 0.65
    assert all(0.35 <= rec[f"sim_f1_{a}"] <= 0.65 for a in ("loss", "confidence", "entropy", "modified_entropy"))
    assert (d.intensity, d.alpha) == (rec["intensity"], rec["alpha"]) and rec["alpha"] < 1.0
    # non-members never match the index, so their answers (and accuracy) are the undefended ones
    assert rec["sim_non_member_acc"] == rec["sim_non_member_acc_undefended"]
    # the chosen setting is what the defended API then uses, and the figures replay
    q = defended_query(model, _pixels(_TRAIN[0]), [d], torch.Generator())
    clean = defended_query(model, _pixels(_TRAIN[0]), [], torch.Generator())
    acc = float((q.argmax(1) == torch.from_numpy(_TRAIN[1])).float().mean())
    assert acc == pytest.approx(rec["sim_member_acc"]) and not torch.equal(q, clean)


def test_tuning_refits_only_when_the_model_changes():
    model = _memorising_model()
    d = AugMixCloak(AugMixCloakParams(tune=True, tune_samples=30, tune_intensities=[1, 2], tune_alphas=[0.9, 0.5]), _CTX)
    x = _pixels(_TRAIN[0][:5])
    defended_query(model, x, [d], torch.Generator())
    defended_query(model, x, [d], torch.Generator())
    assert len(d.drain()) == 1
    with torch.no_grad():
        model[1].bias.add_(0.1)
    defended_query(model, x, [d], torch.Generator())
    assert len(d.drain()) == 1


def test_tuning_needs_holdout_images():
    ctx = copy.copy(_CTX)
    ctx.holdout_images = lambda node: (_HOLD[0][:0], _HOLD[1][:0])
    with pytest.raises(ValueError, match="holdout_fraction"):
        AugMixCloak(AugMixCloakParams(tune=True), ctx)
    AugMixCloak(AugMixCloakParams(tune=False), ctx)  # fixed parameters need no holdout


def test_tuned_run_logs_the_choice_per_attack_round(tiny, write_cfg):
    tiny["data"]["dataset"]["params"].update(noise=1.2, train_size=600)
    tiny["training"]["local_epochs"] = 10
    tiny["data"]["auxiliary_fraction"] = 0.3
    tiny["attacks"] = [{"name": "loss", "every": 1}]
    tiny["defenses"] = [{"name": "augmixcloak", "params": {"tune": True, "tune_samples": 40}}]
    res = api.run(write_cfg(tiny))
    recs = [r for r in RunDir(res.run_dir).records() if r["kind"] == "defense"]
    # attacker 1 queries its neighbours 0 and 2 in each of the 3 rounds; their models change every round
    assert sorted((r["round"], r["node"]) for r in recs) == [(r, v) for r in (1, 2, 3) for v in (0, 2)]
    assert all(r["defense"] == "augmixcloak" and r["fit"] == "augmixcloak" for r in recs)
    assert all(0 <= r["intensity"] <= 4 and 0.0 <= r["alpha"] <= 1.0 for r in recs)
    again = api.run(write_cfg(tiny, "again.yaml"))
    assert [r for r in RunDir(again.run_dir).records() if r["kind"] == "defense"] == recs


def test_bad_tuning_band_exits_2(tiny, write_cfg, capsys):
    from dfl.cli import main

    tiny["defenses"] = [{"name": "augmixcloak", "params": {"tune": True, "target_f1": [0.7, 0.3]}}]
    assert main(["validate", str(write_cfg(tiny))]) == 2
    assert "defenses.0.params.target_f1" in capsys.readouterr().err
