"""Query-time defenses: conformance over the registry, label preservation, and their effect on attacks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dfl import api
from dfl.defense import DefenseContext, QueryDefense, defended_query
from dfl.plugins import load_plugins
from dfl.registries import DEFENSES
from dfl.rundir import RunDir

load_plugins()
_RNG = np.random.default_rng(0)
_TRAIN = (_RNG.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), _RNG.integers(0, 5, 40))
_HOLDOUT = (_RNG.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), _RNG.integers(0, 5, 40))
CTX = DefenseContext(node=0, seed=0, num_classes=5, mean=np.array([0.5]), std=np.array([0.25]),
                     neighbours=(1,), train_images=lambda node: _TRAIN, holdout_images=lambda node: _HOLDOUT)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5))


def _defense(name: str, **params) -> QueryDefense:
    entry = DEFENSES.get(name)
    return entry.obj(entry.parse_params(params), CTX)


QUERY_DEFENSES = [e.name for e in DEFENSES if isinstance(e.obj, type) and issubclass(e.obj, QueryDefense)]


@pytest.mark.parametrize("name", QUERY_DEFENSES)
def test_conformance(name):
    """Shapes, finite non-negative scores, no mutation of the input, same seed -> same output."""
    x = torch.randn(12, 1, 4, 4)
    before = x.clone()
    d = _defense(name)
    a = defended_query(_model(), x, [d], torch.Generator().manual_seed(1), batch=5)
    b = defended_query(_model(), x, [d], torch.Generator().manual_seed(1), batch=5)
    assert a.shape == (12, 5) and torch.isfinite(a).all() and (a >= 0).all()
    assert torch.equal(x, before) and torch.equal(a, b)


@pytest.mark.parametrize("params", [{"mode": "top_k", "k": 1}, {"mode": "top_k", "k": 3}, {"mode": "label_only"},
                                    {"mode": "rounding", "decimals": 0}, {"mode": "rounding", "decimals": 1}])
def test_masking_keeps_the_predicted_label(params):
    torch.manual_seed(3)
    p = torch.softmax(torch.randn(2000, 5) * 2, 1)
    p[0] = torch.tensor([0.26, 0.24, 0.2, 0.15, 0.15])  # rounds to a tie at 1 decimal... and at 0 decimals
    out = _defense("confidence_masking", **params).probabilities(p, torch.Generator())
    assert torch.equal(out.argmax(1), p.argmax(1))
    if params["mode"] == "top_k":
        assert ((out > 0).sum(1) <= params["k"]).all()


def test_confidence_regularization_bounds_the_top_confidence():
    r, k = 1.0, 5
    p = defended_query(_model(), torch.randn(100, 1, 4, 4) * 10, [_defense("confidence_regularization", r=r)],
                       torch.Generator())
    assert float(p.max()) <= math.exp(r) / (math.exp(r) + (k - 1) * math.exp(-r)) + 1e-6


def test_perturbations_change_outputs_within_their_range():
    x = torch.randn(50, 1, 4, 4)
    model = _model()
    clean = model(x).detach()
    z = _defense("confidence_perturbation", r=0.5).logits(clean, torch.Generator().manual_seed(0))
    assert 0 < float((z - clean).abs().max()) <= 0.5
    xi = _defense("image_perturbation", r=0.1).images(x, torch.Generator().manual_seed(0))
    assert 0 < float((xi - x).abs().max()) <= 0.1 / 0.25 + 1e-6  # pixel units / std


def _mia(tiny, write_cfg, defenses, attacks):
    tiny["data"]["dataset"]["params"].update(noise=1.2, train_size=600)
    tiny["training"]["local_epochs"] = 10
    tiny["data"]["auxiliary_fraction"] = 0.3
    tiny["attacks"] = attacks
    tiny["defenses"] = defenses
    res = api.run(write_cfg(tiny))
    recs = RunDir(res.run_dir).records()
    return res.summary, recs


def test_defenses_act_on_queries_only(tiny, write_cfg):
    attacks = [{"name": "loss"}, {"name": "loss", "access": "params"}, {"name": "label_only"}]
    base, base_recs = _mia(copy.deepcopy(tiny), write_cfg, [], attacks)
    masked, masked_recs = _mia(copy.deepcopy(tiny), write_cfg, [{"name": "confidence_masking", "params": {"mode": "label_only"}}],
                               attacks)
    # the loss attack through the query API collapses to the correctness signal; white-box access is unaffected
    assert masked["mia"]["loss_auc"] < base["mia"]["loss_auc"] - 0.05
    assert masked["mia"]["loss_params_auc"] == base["mia"]["loss_params_auc"]
    # a label-preserving defense leaves the label-only attack exactly where it was
    assert masked["mia"]["label_only_auc"] == base["mia"]["label_only_auc"]
    # training and utility are untouched: the same eval records
    evals = [r for r in base_recs if r["kind"] == "eval"]
    assert evals == [r for r in masked_recs if r["kind"] == "eval"]


def test_participant_query_applies_its_defenses(tiny):
    from dfl.experiment import parse_config
    from dfl.federation.population import Population

    tiny["defenses"] = [{"name": "confidence_masking", "params": {"mode": "label_only"}, "nodes": [0]}]
    pop = Population.from_config(parse_config(tiny))
    x = pop.participant(0).data["train"].x[:10]
    defended = pop.participant(0).query(x)
    open_ = pop.participant(2).query(x)
    assert set(defended.unique().tolist()) <= {0.0, 1.0}
    assert not set(open_.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(defended.argmax(1), open_.argmax(1))  # same initial model, same labels


@pytest.mark.parametrize(("defense", "needle"), [
    ({"name": "tinfoil"}, "unknown defense 'tinfoil'"),
    ({"name": "confidence_masking", "params": {"mode": "blur"}}, "defenses.0.params.mode"),
    ({"name": "confidence_regularization", "nodes": [9]}, "defenses.0.nodes.0"),
    ({"name": "memguard", "params": {"budget": 0.1}}, "defenses.0.params.budget"),
    ({"name": "dp_sgd", "params": {"max_grad_norm": 0}}, "defenses.0.params.max_grad_norm"),
])
def test_bad_defense_config_exits_2(tiny, write_cfg, capsys, defense, needle):
    from dfl.cli import main

    tiny["defenses"] = [defense]
    assert main(["validate", str(write_cfg(tiny))]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ training time


def _train_defense(name: str, **params):
    entry = DEFENSES.get(name)
    return entry.obj(entry.parse_params(params), CTX)


def test_adamixup_strength_decays_linearly_and_labels_are_the_dominant_sample():
    from defenses.adamixup import strength
    from defenses.mixup import beta

    assert strength(1.0, 0.1, 0.0) == 1.0 and strength(1.0, 0.1, 1.0) == pytest.approx(0.1)
    assert strength(1.0, 0.1, 0.5) == pytest.approx(0.55)
    d = _train_defense("adamixup")
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 5, (16,))
    for progress in (0.0, 0.5, 0.99):
        xm, ym = d.batch(x, y, progress, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)  # replay the same draws
        lam = beta(strength(1.0, 0.1, progress), g)
        perm = torch.randperm(16, generator=g)
        assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
        assert ym.dtype == torch.long and torch.equal(ym, y if lam >= 0.5 else y[perm])


def test_mixup_and_label_smoothing_give_probability_targets():
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 5, (8,))
    _, t = _train_defense("mixup", alpha=0.4).batch(x, y, 0.0, torch.Generator().manual_seed(0))
    assert t.shape == (8, 5) and torch.allclose(t.sum(1), torch.ones(8))
    _, s = _train_defense("label_smoothing", eps=0.2).batch(x, y, 0.0, torch.Generator())
    assert torch.allclose(s.max(1).values, torch.full((8,), 0.8 + 0.2 / 5)) and torch.equal(s.argmax(1), y)


def test_weight_penalty_matches_its_formula():
    model = _model()
    w = model[1].weight.detach()
    l1 = _train_defense("weight_penalty", norm="l1", lam=0.5).penalty(model).detach()
    l2 = _train_defense("weight_penalty", norm="l2", lam=0.5).penalty(model).detach()
    assert float(l1) == pytest.approx(0.5 * float(w.abs().sum()))
    assert float(l2) == pytest.approx(0.5 * float(w.pow(2).sum()))


@pytest.mark.parametrize("defense", [{"name": "adamixup"}, {"name": "mixup"}, {"name": "label_smoothing"},
                                     {"name": "weight_penalty", "params": {"lam": 0.01}},
                                     {"name": "dp_sgd", "params": {"noise_multiplier": 0.5}}])
def test_training_defenses_change_training_deterministically(tiny, write_cfg, defense):
    """Applied to the honest nodes only (the attacker trains as usual); the same seed gives the same run."""
    tiny["rounds"] = 2
    base, base_recs = _mia(copy.deepcopy(tiny), write_cfg, [], [{"name": "correctness"}])
    _, recs = _mia(copy.deepcopy(tiny), write_cfg, [defense], [{"name": "correctness"}])
    _, recs2 = _mia(copy.deepcopy(tiny), write_cfg, [defense], [{"name": "correctness"}])
    assert recs == recs2

    def train(rs, node):
        return [r["loss"] for r in rs if r["kind"] == "train" and r["node"] == node]

    assert train(recs, 0) != train(base_recs, 0)  # honest node 0 trains differently
    assert train(recs, 1)[0] == train(base_recs, 1)[0]  # attacker 1's first round is untouched


# ------------------------------------------------------------------------------------------ AugMixCloak


def test_augmixcloak_plan_is_a_function_of_the_hash():
    from defenses.augmixcloak import OPS, plan

    assert plan(12345, 0) == []
    for h in [0, 1, 2**63 + 7, 0xDEADBEEFCAFEF00D]:
        p = plan(h, 4)
        assert 1 <= len(p) <= 4 and len({n for n, _ in p}) == len(p) and all(n in OPS for n, _ in p)
        assert all(0.3 <= m <= 1.0 for _, m in p) and plan(h, 4) == p


def test_prototypes_are_class_images():
    from defenses.augmixcloak import prototypes

    x = np.zeros((6, 1, 2, 2), np.uint8)
    x[3:] = 255
    protos = prototypes(x, np.array([0, 0, 0, 1, 1, 1]), 3)
    assert protos.shape == (3, 1, 2, 2)
    assert np.allclose(protos[0], 0) and np.allclose(protos[1], 1) and np.allclose(protos[2], 0.5)


def test_augmixcloak_changes_members_only_and_deterministically():
    d = _defense("augmixcloak", intensity=3, alpha=0.5)
    members = torch.from_numpy(_TRAIN[0][:8]).float() / 255
    members = (members - 0.5) / 0.25
    strangers = torch.randn(8, 1, 4, 4) * 3
    x = torch.cat([members, strangers])
    out = d.images(x, torch.Generator())
    assert not torch.allclose(out[:8], x[:8])          # matched queries are cloaked
    assert torch.equal(out[8:], x[8:])                 # the others pass unchanged
    assert torch.equal(d.images(x, torch.Generator().manual_seed(5)), out)  # no randomness at all


def test_augmixcloak_indexes_new_neighbours_when_the_topology_changes():
    import dataclasses

    rng = np.random.default_rng(7)
    data = {j: (rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8), rng.integers(0, 5, 20)) for j in range(3)}
    ctx = dataclasses.replace(CTX, train_images=lambda node: data[node],
                              neighbours_until=lambda r: (1,) if r < 2 else (1, 2))
    entry = DEFENSES.get("augmixcloak")
    d = entry.obj(entry.parse_params({"intensity": 3, "alpha": 0.5}), ctx)

    def cloaked(node: int) -> bool:
        x = (torch.from_numpy(data[node][0]).float() / 255 - 0.5) / 0.25
        out = d.images(x, torch.Generator())
        changed = (out != x).flatten(1).any(1)
        assert bool(changed.all()) or not bool(changed.any())
        return bool(changed.all())

    assert cloaked(0) and cloaked(1) and not cloaked(2)
    for r in (0, 1):
        d.start_round(r)
    assert not cloaked(2) and d.drain() == []
    d.start_round(2)  # the resampled graph brings node 2: its array is indexed, node 1's stays
    assert cloaked(0) and cloaked(1) and cloaked(2)
    assert d.drain() == [{"round_started": 2, "indexed_nodes": [0, 1, 2], "indexed_hashes": 60}]
    d.start_round(3)
    assert d.drain() == []
    solo = entry.obj(entry.parse_params({"neighbours": False}), ctx)
    solo.start_round(5)
    assert len(solo.index) == 20 and solo.drain() == []


def test_a_resampled_topology_reaches_augmixcloak_in_a_run(tiny, write_cfg):
    tiny.update(nodes=6, rounds=4, attackers=[0])
    tiny["topology"] = {"name": "erdos_renyi", "params": {"p": 0.7}, "resample_every": 1}
    _, recs = _mia(tiny, write_cfg, [{"name": "augmixcloak"}], [{"name": "loss", "every": 1}])
    from dfl.config import ExperimentConfig
    from dfl.topology import base_graph

    cfg = ExperimentConfig.model_validate(tiny)
    grown = [r for r in recs if r["kind"] == "defense" and "round_started" in r]
    assert grown
    for r in grown:  # the victim's own hashes and those of every node it has neighboured so far
        met = set().union(*(base_graph(cfg, e).neighbors(r["node"]) for e in range(r["round_started"] + 1)))
        assert r["indexed_nodes"] == sorted(met | {r["node"]}) and r["round_started"] == r["round"] - 1


def test_augmixcloak_protects_query_access_only(tiny, write_cfg):
    attacks = [{"name": "loss"}, {"name": "loss", "access": "params"}]
    base, base_recs = _mia(copy.deepcopy(tiny), write_cfg, [], attacks)
    cloaked, recs = _mia(copy.deepcopy(tiny), write_cfg, [{"name": "augmixcloak", "params": {"alpha": 0.3}}], attacks)
    # every member query is cloaked, so the query attack's numbers move (on these synthetic images the
    # class prototype is the class centroid, so they need not fall); white-box access is untouched
    assert cloaked["mia"]["loss_auc"] != base["mia"]["loss_auc"]
    assert cloaked["mia"]["loss_params_auc"] == base["mia"]["loss_params_auc"]
    assert [r for r in recs if r["kind"] == "eval"] == [r for r in base_recs if r["kind"] == "eval"]


def test_confidence_regularization_keeps_the_predicted_label_within_the_range():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5000, 10, generator=g) * 5  # most rows have several logits above r
    z[0] = -5 - torch.rand(10, generator=g)     # every logit below -r
    d = _defense("confidence_regularization", r=1.0)
    out = d.logits(z, torch.Generator())
    assert torch.equal(out.argmax(1), z.argmax(1))
    assert float(out.max()) <= 1.0 and float(out.min()) >= -1.0
    assert torch.equal(out[(z.abs() < 0.99).all(1)], z[(z.abs() < 0.99).all(1)])  # nothing clipped: unchanged


@pytest.mark.parametrize("defense", [{"name": "memguard"},
                                     {"name": "confidence_masking", "params": {"mode": "rounding", "decimals": 1}}])
def test_label_preserving_defenses_leave_accuracy_and_the_label_only_attack_unchanged(tiny, write_cfg, defense):
    """They must not claim protection against an attack that reads labels only."""
    attacks = [{"name": "label_only"}, {"name": "loss"}]
    base, base_recs = _mia(copy.deepcopy(tiny), write_cfg, [], attacks)
    defended, recs = _mia(copy.deepcopy(tiny), write_cfg, [defense], attacks)
    assert defended["mia"]["label_only_auc"] == base["mia"]["label_only_auc"]
    for key in ("label_only_answered_non_member_acc", "label_only_answered_member_acc"):
        assert defended["mia"][key] == base["mia"][key]  # the answers' labels are the model's
    assert defended["mia"]["loss_auc"] != base["mia"]["loss_auc"]  # while the scores do move
    assert [r for r in recs if r["kind"] == "eval"] == [r for r in base_recs if r["kind"] == "eval"]
