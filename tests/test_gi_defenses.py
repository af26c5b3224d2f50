"""Defenses against gradient inversion: defensive augmentation and the share-time rewrites of the update."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from defenses.defensive_augmentation import OPS, PRESETS, DefensiveAugmentationParams, apply, resolve_policy
from dfl.cli import main
from dfl.experiment import parse_config
from dfl.federation.population import Population
from dfl.plugins import load_plugins

load_plugins()
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_fourteen_ops_and_their_magnitude_ends():
    assert len(OPS) == 14
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    assert set(apply("posterize", x, 9).unique().tolist()) <= {0, 128}   # M9 keeps one bit
    assert torch.equal(apply("posterize", x, 0), x)
    assert torch.equal(apply("solarize", x, 9), TF.invert(x))            # M9 inverts every pixel
    assert torch.equal(apply("solarize", x, 0), x)
    for name in ("rotate", "shear_x", "translate_y"):
        assert torch.equal(apply(name, x, 0), x) and not torch.equal(apply(name, x, 9), x)
    assert torch.equal(apply("brightness", x, 9), TF.adjust_brightness(x, 1.9))
    for name in OPS:
        out = apply(name, x, 5)
        assert out.shape == x.shape and out.dtype == torch.uint8


def test_cifar10_preset_is_table_3():
    table = resolve_policy(DefensiveAugmentationParams(preset="cifar10"), CIFAR)
    assert table[CIFAR.index("cat")] == ("posterize", 9) and table[CIFAR.index("deer")] == ("brightness", 9)
    assert len(table) == 10 and set(PRESETS["cifar10"]) == set(CIFAR)
    assert resolve_policy(DefensiveAugmentationParams(policy={"3": ("invert", 0)}), CIFAR) == {3: ("invert", 0)}
    with pytest.raises(ValueError, match="neither a class name"):
        resolve_policy(DefensiveAugmentationParams(policy={"zebra": ("invert", 0)}), CIFAR)


def _population(tiny, defense):
    tiny = copy.deepcopy(tiny)
    tiny["defenses"] = [defense]
    tiny["attackers"] = []
    return Population.from_config(parse_config(tiny))


def test_batches_are_augmented_per_class_and_deterministically(tiny):
    pop = _population(tiny, {"name": "defensive_augmentation", "params": {"policy": {"1": ["invert", 0]}}})
    p = pop.participant(0)
    (d,) = p.training_defenses
    x, y = p.data["train"].x[:32], p.data["train"].y[:32]
    out, target = d.batch(x, y, 0.0, torch.Generator())
    assert torch.equal(target, y)
    ones = y == 1
    assert ones.any() and (~ones).any()
    torch.testing.assert_close(out[~ones], x[~ones], rtol=0, atol=1e-5)   # classes outside the policy: as they are
    u8 = torch.from_numpy(d.ctx.to_uint8(x[ones]))
    torch.testing.assert_close(out[ones], d.ctx.normalise(TF.invert(u8).float() / 255), rtol=0, atol=1e-5)
    assert torch.equal(d.batch(x, y, 0.5, torch.Generator().manual_seed(3))[0], out)


def test_update_pruning_zeroes_the_smallest_entries(tiny):
    pop = _population(tiny, {"name": "update_pruning", "params": {"fraction": 0.75}})
    p = pop.participant(0)
    start = p.state()
    p.train_round(0)
    update = p.state() - start
    assert (update == 0).float().mean() >= 0.75
    q = _population(tiny, {"name": "update_pruning", "params": {"fraction": 0.0}}).participant(0)
    q.train_round(0)
    kept = update != 0
    torch.testing.assert_close(update[kept], (q.state() - start)[kept])  # the survivors are the trained update


def test_update_noise_is_seeded_and_scaled(tiny):
    a = _population(tiny, {"name": "update_noise", "params": {"sigma": 0.5}}).participant(0)
    b = _population(tiny, {"name": "update_noise", "params": {"sigma": 0.5}}).participant(0)
    clean = _population(tiny, {"name": "update_noise", "params": {"sigma": 1e-9}}).participant(0)
    start = a.state()
    for p in (a, b, clean):
        p.train_round(0)
    assert torch.equal(a.state(), b.state())
    noise = (a.state() - start) - (clean.state() - start)
    u = clean.state() - start
    expected = 0.5 * float(u.norm()) / np.sqrt(u.numel())
    assert float(noise.std()) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("params", [{"preset": "cifar10", "op": "invert"}, {}, {"op": "blur"},
                                    {"policy": {"1": ["invert", 12]}}])
def test_bad_defensive_augmentation_exits_2(tiny, write_cfg, capsys, params):
    tiny["defenses"] = [{"name": "defensive_augmentation", "params": params}]
    assert main(["validate", str(write_cfg(tiny))]) == 2
    assert "defenses.0.params" in capsys.readouterr().err
