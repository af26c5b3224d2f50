"""The shadow-model, label-only and offline-LiRA membership attacks: registration, params, end to end,
leakage on overfit victims, label-only-ness, determinism, and their pure helpers against oracles."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from attacks.base import AdversaryView, Labelled
from attacks.label_only import LabelOnly, LabelOnlyParams, queries, shifts, translate
from attacks.lira_offline import LiraOffline, LiraOfflineParams, logit_confidence, offline_lr, out_statistics
from attacks.shadow_model import ShadowModel, ShadowModelParams, top_k_features
from dfl import api
from dfl.config import TrainingConfig
from dfl.errors import ConfigError
from dfl.plugins import load_plugins
from dfl.registries import ATTACKS
from dfl.rundir import RunDir

NEW = ("shadow_model", "label_only", "lira_offline")


def _with_attacks(tiny: dict[str, Any], *names: str, aux: float = 0.3) -> dict[str, Any]:
    tiny["data"]["auxiliary_fraction"] = aux
    tiny["attacks"] = [{"name": n} for n in names]
    return tiny


def _view(seed: int = 0) -> AdversaryView:
    """A hand-built view: 8x8 one-channel images of 4 classes, a linear model, random auxiliary data."""
    g = torch.Generator().manual_seed(123)
    aux = Labelled(torch.randn(80, 1, 8, 8, generator=g), torch.randint(0, 4, (80,), generator=g))
    own = Labelled(torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 4, (30,), generator=g))

    def make_model() -> nn.Module:
        torch.manual_seed(7)  # the federation's fixed initialisation
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))

    return AdversaryView(
        attacker=1, round=2, num_classes=4, recipe=TrainingConfig(local_epochs=1, batch_size=8),
        local_epochs_so_far=3.0, make_model=make_model, load_state=lambda m, s: None, own=own, auxiliary=aux,
        received={}, query={}, seed=seed)


def _victim() -> tuple[nn.Module, Labelled]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    g = torch.Generator().manual_seed(5)
    return model, Labelled(torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 4, (40,), generator=g))


ATTACK_CLASSES = {"shadow_model": (ShadowModel, ShadowModelParams), "label_only": (LabelOnly, LabelOnlyParams),
                  "lira_offline": (LiraOffline, LiraOfflineParams)}


@pytest.mark.parametrize("name", NEW)
def test_registered_and_params_reject_unknown_keys(name):
    load_plugins()
    entry = ATTACKS.get(name)
    assert entry.obj is ATTACK_CLASSES[name][0] and entry.params is ATTACK_CLASSES[name][1]
    assert entry.obj.needs_auxiliary
    entry.parse_params({})  # the defaults are valid
    with pytest.raises(ConfigError, match=r"attacks\.0\.params\.shadow_modles: unknown key"):
        entry.parse_params({"shadow_modles": 2}, "attacks.0.params")


def test_params_give_the_allowed_range():
    with pytest.raises(ConfigError, match=r"params\.shadow_models: .*greater than or equal to 2 \(got 1\)"):
        ATTACKS.get("lira_offline").parse_params({"shadow_models": 1})
    with pytest.raises(ConfigError, match=r"noise_std \(0.1\) and noise_draws \(0\) must both be positive"):
        ATTACKS.get("label_only").parse_params({"noise_std": 0.1})
    with pytest.raises(ConfigError, match=r"params\.classifier: "):
        ATTACKS.get("shadow_model").parse_params({"classifier": "forest"})
    assert ShadowModelParams().shadow_models == 1 and ShadowModelParams().top_k == 3
    assert LiraOfflineParams().shadow_models == 4 and LiraOfflineParams().global_variance


def test_attacks_run_end_to_end(tiny, write_cfg):
    res = api.run(write_cfg(_with_attacks(tiny, *NEW)))
    mia = [r for r in RunDir(res.run_dir).records() if r["kind"] == "mia"]
    # attacker 1 on a 4-node ring attacks nodes 0 and 2 in the last round
    assert sorted((r["attack"], r["node"]) for r in mia) == sorted((n, v) for n in NEW for v in (0, 2))
    for r in mia:
        assert r["round"] == 3 and r["attacker"] == 1 and r["members"] == r["non_members"] > 0
        assert 0 <= r["auc"] <= 1 and 0 <= r["oracle_accuracy"] <= 1
        # lira_offline calibrates no threshold: threshold-free metrics only
        assert ("accuracy" in r) == (r["attack"] != "lira_offline")
    assert all("threshold" in r for r in mia if r["attack"] == "label_only")


def test_overfit_victims_leak_membership(tiny, write_cfg):
    """The overfit setting of tests/test_mia.py: shadow-model and offline LiRA separate members."""
    tiny["data"]["dataset"]["params"].update(noise=1.2, train_size=600)
    tiny["training"]["local_epochs"] = 10
    res = api.run(write_cfg(_with_attacks(tiny, "shadow_model", "lira_offline")))
    s = res.summary["mia"]
    assert s["shadow_model_victim_gap"] > 0.2
    assert s["shadow_model_auc"] > 0.6 and s["lira_offline_auc"] > 0.6
    assert s["shadow_model_accuracy"] > 0.55


def test_label_only_reads_only_the_label():
    """Two victims with different probabilities but the same argmax get identical scores and decisions."""
    model, data = _victim()
    params = LabelOnlyParams(translations=2, noise_std=0.3, noise_draws=3)
    seen: list[int] = []

    def sharp(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        with torch.no_grad():
            return torch.softmax(model(x), 1)

    def flat(x: torch.Tensor) -> torch.Tensor:  # rounded, label-preserving: 0.4 on the argmax, 0.2 elsewhere
        p = torch.full((len(x), 4), 0.2)
        return p.scatter(1, sharp(x).argmax(1, keepdim=True), 0.4)

    a, b = LabelOnly(params).score(_view(), sharp, data), LabelOnly(params).score(_view(), flat, data)
    assert not torch.allclose(sharp(data.x), flat(data.x))
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.predicted, b.predicted)
    assert set(seen) == {len(data)} and len(queries(data.x, params, torch.Generator())) == 2 * 13 + 3
    assert np.all((a.scores >= 0) & (a.scores <= 1))


@pytest.mark.parametrize("name", NEW)
def test_same_seed_same_scores(name):
    cls, params_model = ATTACK_CLASSES[name]
    model, data = _victim()

    def outputs(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(x), 1)

    params = params_model(shadow_models=2) if name != "label_only" else params_model(noise_std=0.5, noise_draws=2)
    runs = []
    for _ in range(2):
        view = _view(seed=0)
        attack = cls(params)
        attack.prepare(view)
        runs.append(attack.score(view, outputs, data))
    np.testing.assert_array_equal(runs[0].scores, runs[1].scores)
    assert runs[0].scores.shape == (len(data),) and np.isfinite(runs[0].scores).all()
    if runs[0].predicted is not None:
        np.testing.assert_array_equal(runs[0].predicted, runs[1].predicted)


def test_translate_matches_a_pixel_loop():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    for dy, dx in shifts(2):
        t = translate(x, dy, dx)
        for i in range(5):
            for j in range(6):
                src = x[..., min(max(i - dy, 0), 4), min(max(j - dx, 0), 5)]
                assert torch.equal(t[..., i, j], src)
    assert shifts(0) == [(0, 0)] and len(shifts(1)) == 5 and len(shifts(2)) == 13


def test_top_k_features_are_sorted_largest_probabilities():
    p = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    np.testing.assert_allclose(top_k_features(p, 2), [[0.6, 0.3], [0.5, 0.3]], atol=1e-7)


def test_logit_confidence_and_the_offline_test():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    phi = logit_confidence(p, y)
    assert phi[0] == pytest.approx(math.log(0.7 / 0.3), rel=1e-6) and phi[1] == pytest.approx(0.0, abs=1e-7)
    assert np.isfinite(phi[2]) and phi[2] > 60  # saturated confidence: finite, very large
    phi_out = np.array([[0.0, 1.0], [2.0, 3.0]])  # 2 OUT models x 2 targets
    mu, sigma = out_statistics(phi_out, global_variance=True)
    np.testing.assert_allclose(mu, [1.0, 2.0])
    assert sigma == pytest.approx(math.sqrt(2.0))
    _, per_target = out_statistics(phi_out, global_variance=False)
    np.testing.assert_allclose(per_target, [math.sqrt(2.0)] * 2)
    lr = offline_lr(np.array([1.0, 5.0, -3.0]), np.array([1.0, 1.0, 1.0]), 2.0)
    assert lr[0] == pytest.approx(math.log(0.5)) and lr[1] > lr[0] > lr[2] and np.isfinite(lr).all()
