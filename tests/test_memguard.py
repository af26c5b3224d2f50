"""MemGuard: label-preserving noise, its effect on a membership classifier and a threshold attack, refits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import memorising_mlp
from sklearn.metrics import roc_auc_score
from torch import nn

from defenses.memguard import MemGuard, classifier_logit, phase_two, sorted_scores
from dfl.defense import DefenseContext, defended_query
from dfl.errors import ConfigError
from dfl.plugins import load_plugins
from dfl.registries import DEFENSES

load_plugins()
_RNG = np.random.default_rng(0)
_X = _RNG.integers(0, 256, (80, 1, 4, 4), dtype=np.uint8)
_Y = _RNG.integers(0, 5, 80)
_TRAIN, _HOLDOUT = (_X[:40], _Y[:40]), (_X[40:], _Y[40:])
CTX = DefenseContext(node=0, seed=0, num_classes=5, mean=np.array([0.5]), std=np.array([0.25]),
                     train_images=lambda node: _TRAIN, holdout_images=lambda node: _HOLDOUT)
MEMBERS = np.r_[np.ones(40), np.zeros(40)]


def _images(u8: np.ndarray) -> torch.Tensor:
    return CTX.normalise(torch.from_numpy(u8).float() / 255)


def _memguard(ctx: DefenseContext = CTX, **params) -> MemGuard:
    entry = DEFENSES.get("memguard")
    params.setdefault("epochs", 200)
    return entry.obj(entry.parse_params(params), ctx)


@pytest.fixture(scope="module")
def overfit() -> nn.Module:
    """A 2-layer MLP that memorises the 40 random training images (and knows nothing of the other 40)."""
    return memorising_mlp(_images(_TRAIN[0]), torch.from_numpy(_TRAIN[1]), hidden=64, classes=5)


@pytest.fixture(scope="module")
def queries() -> torch.Tensor:
    return torch.cat([_images(_TRAIN[0]), _images(_HOLDOUT[0])])


def test_labels_are_kept_and_outputs_are_probabilities(overfit, queries):
    x = torch.cat([queries, torch.randn(40, 1, 4, 4) * 3])
    clean = defended_query(overfit, x, [], torch.Generator())
    out = defended_query(overfit, x, [_memguard()], torch.Generator())
    assert torch.equal(out.argmax(1), clean.argmax(1))
    assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(x)))
    assert not torch.allclose(out, clean, atol=1e-3)  # the scores did move


def test_labels_are_kept_against_a_classifier_that_is_at_half_near_a_tie(overfit, queries):
    """A hand-set classifier ``h = 100 (s_1 - s_2 - 0.02)`` is at 0.5 only where the top two scores
    nearly tie, so its search steps up to, and often past, a swap of the label."""
    d = _memguard()
    d.prepare(overfit)
    d.clf = [torch.tensor([[100.0, -100.0, 0.0, 0.0, 0.0]]), torch.tensor([-2.0])]
    with torch.no_grad():
        z = overfit(queries)
        out = d.logits(z, torch.Generator())
    assert torch.equal(torch.softmax(out, 1).argmax(1), torch.softmax(z, 1).argmax(1))
    assert int((out != z).any(1).sum()) > 10


def test_the_defense_classifier_is_fooled_and_a_threshold_attack_weakens(overfit, queries):
    d = _memguard()
    clean = defended_query(overfit, queries, [], torch.Generator())
    out = defended_query(overfit, queries, [d], torch.Generator())
    (rec,) = d.records
    assert rec["fit"] == "memguard" and rec["members"] == rec["non_members"] == 40
    assert rec["defense_classifier_train_acc"] > 0.7  # the overfit model does leak membership

    def gap(p: torch.Tensor) -> float:
        return float((torch.sigmoid(classifier_logit(d.clf, sorted_scores(p))) - 0.5).abs().mean())

    assert gap(out) < 0.2 * gap(clean)
    auc_clean = roc_auc_score(MEMBERS, clean.max(1).values.numpy())
    auc_defended = roc_auc_score(MEMBERS, out.max(1).values.numpy())
    assert auc_clean > 0.75
    assert auc_defended < auc_clean - 0.3


def test_same_model_queries_and_seed_give_the_same_answer(overfit, queries):
    a = defended_query(overfit, queries, [_memguard(p_noise=0.5)], torch.Generator().manual_seed(3))
    b = defended_query(overfit, queries, [_memguard(p_noise=0.5)], torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_phase_two_uses_the_noise_with_the_configured_probability():
    g = torch.Generator().manual_seed(0)
    z = torch.zeros(4000, 3)
    noisy = z.clone()
    noisy[:, 0] = 1.0  # L1 distortion d of every row
    d = float((torch.softmax(noisy, 1) - torch.softmax(z, 1)).abs().sum(1)[0])
    assert torch.equal(phase_two(z, noisy, 1.0, None, g), noisy)
    assert torch.equal(phase_two(z, noisy, 0.0, None, g), z)
    half = phase_two(z, noisy, 0.5, None, g)
    assert 0.45 < float((half[:, 0] == 1).float().mean()) < 0.55
    budget = phase_two(z, noisy, 1.0, d / 4, g)  # expected distortion d / 4: a quarter of the rows noisy
    assert 0.2 < float((budget[:, 0] == 1).float().mean()) < 0.3


def test_fit_runs_when_the_model_changes_only(overfit):
    d = _memguard(epochs=5)
    model = copy.deepcopy(overfit)
    before = [p.detach().clone() for p in model.parameters()]
    d.prepare(model)
    d.prepare(model)
    assert len(d.records) == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # untouched
    assert not model.training
    with torch.no_grad():
        model[3].bias += 0.5
    d.prepare(model)
    assert len(d.records) == 2


def test_no_holdout_is_a_config_error():
    empty = (_X[:0], _Y[:0])
    ctx = DefenseContext(node=3, seed=0, num_classes=5, mean=np.array([0.5]), std=np.array([0.25]),
                         train_images=lambda node: _TRAIN, holdout_images=lambda node: empty)
    with pytest.raises(ConfigError, match="holdout_fraction > 0"):
        _memguard(ctx)
    with pytest.raises(ConfigError, match="holdout images"):
        _memguard(DefenseContext(node=0, seed=0, num_classes=5, mean=np.array([0.5]), std=np.array([0.25]),
                                 train_images=lambda node: _TRAIN))


def test_a_run_fits_each_victims_classifier_and_blunts_the_loss_attack(tiny, write_cfg):
    from dfl import api
    from dfl.rundir import RunDir

    tiny["data"]["dataset"]["params"].update(noise=1.2, train_size=600)
    tiny["data"]["auxiliary_fraction"] = 0.3
    tiny["training"]["local_epochs"] = 10
    tiny["attacks"] = [{"name": "loss"}]
    tiny["defenses"] = [{"name": "memguard", "params": {"epochs": 100}}]
    res = api.run(write_cfg(tiny))
    fits = [r for r in RunDir(res.run_dir).records() if r["kind"] == "defense"]
    assert sorted(r["node"] for r in fits) == [0, 2]  # the attacker's neighbours on the ring
    assert all(r["defense"] == "memguard" and r["members"] == r["non_members"] > 0 for r in fits)
    assert res.summary["mia"]["loss_auc"] < 0.7  # 0.86 without the defense


def test_a_run_without_holdout_is_refused(tiny, write_cfg):
    from dfl import api

    tiny["data"]["holdout_fraction"] = 0.0
    tiny["defenses"] = [{"name": "memguard"}]
    with pytest.raises(ConfigError, match="data.holdout_fraction"):
        api.run(write_cfg(tiny))
