"""Membership inference end to end: attackers, schedules, scores against the truth, outputs, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attacks.base import Labelled
from attacks.correctness import Correctness
from dfl import api
from dfl.adversary.membership import scheduled
from dfl.cli import main
from dfl.config import AttackSpec
from dfl.experiment import parse_config
from dfl.metrics.membership import decision_metrics
from dfl.metrics.signals import modified_entropy
from dfl.rundir import RunDir


def _with_attacks(tiny, *attacks, aux=0.2):
    tiny["data"]["auxiliary_fraction"] = aux
    tiny["attacks"] = list(attacks)
    return tiny


def test_correctness_accuracy_is_the_gap_attack_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    train = Labelled(torch.randn(200, 5), torch.randint(0, 3, (200,)))
    test = Labelled(torch.randn(200, 5), torch.randint(0, 3, (200,)))

    def outputs(x):
        return torch.softmax(model(x), 1).detach()

    def acc(d):
        return float((outputs(d.x).argmax(1) == d.y).double().mean())

    data = Labelled(torch.cat([train.x, test.x]), torch.cat([train.y, test.y]))
    res = Correctness(None).score(None, outputs, data)  # type: ignore[arg-type]
    truth = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    assert decision_metrics(res.predicted, truth)["accuracy"] == pytest.approx(0.5 * (acc(train) + 1 - acc(test)), abs=1e-12)


def test_modified_entropy_matches_its_formula():
    p = torch.softmax(torch.randn(50, 4), 1)
    y = torch.randint(0, 4, (50,))
    q = p.double().numpy()
    ref = []
    for i in range(50):
        py = q[i, y[i]]
        m = -(1 - py) * np.log(py) - sum(q[i, k] * np.log(1 - q[i, k]) for k in range(4) if k != y[i])
        ref.append(-m)
    assert np.allclose(modified_entropy(p, y).numpy(), ref)


def test_schedule():
    assert scheduled(AttackSpec(name="loss"), 5, 5) and not scheduled(AttackSpec(name="loss"), 4, 5)
    assert [r for r in range(1, 7) if scheduled(AttackSpec(name="loss", every=2), r, 7)] == [2, 4, 6]
    assert [r for r in range(1, 7) if scheduled(AttackSpec(name="loss", rounds=[1, 3]), r, 6)] == [1, 3]


def test_attacks_run_against_neighbours_and_are_scored(tiny, write_cfg):
    tiny = _with_attacks(tiny, {"name": "loss", "every": 2}, {"name": "correctness", "access": "params"},
                         {"name": "modified_entropy", "params": {"per_class": True}})
    tiny["output"]["plots"] = True
    res = api.run(write_cfg(tiny))
    mia = [r for r in RunDir(res.run_dir).records() if r["kind"] == "mia"]
    # attacker 1 on a 4-node ring attacks nodes 0 and 2: loss in rounds 2 and 3, the others in round 3
    assert sorted((r["round"], r["attack"], r["node"]) for r in mia) == sorted(
        [(2, "loss", 0), (2, "loss", 2), (3, "loss", 0), (3, "loss", 2), (3, "correctness", 0), (3, "correctness", 2),
         (3, "modified_entropy", 0), (3, "modified_entropy", 2)])
    for r in mia:
        assert r["attacker"] == 1 and r["members"] == r["non_members"] > 0
        assert 0 <= r["auc"] <= 1 and 0 <= r["accuracy"] <= 1 and r["baseline_f1"] == pytest.approx(2 / 3)
        assert r["victim_gap"] == pytest.approx(r["victim_train_acc"] - r["victim_holdout_acc"])
    assert (res.run_dir / "tables/mia.csv").is_file() and (res.run_dir / "plots/roc.png").is_file()
    assert "## Membership inference" in (res.run_dir / "report.md").read_text()
    assert "loss_auc" in res.summary["mia"] and "correctness_params_accuracy" in res.summary["mia"]
    again = api.run(write_cfg(tiny))
    assert (again.run_dir / "metrics.jsonl").read_bytes() == (res.run_dir / "metrics.jsonl").read_bytes()


def test_overfit_victims_leak_membership(tiny, write_cfg):
    """Few noisy samples per node and many local epochs: the loss attack separates members."""
    tiny["data"]["dataset"]["params"].update(noise=1.2, train_size=600)
    tiny["training"]["local_epochs"] = 10
    tiny["rounds"] = 3
    tiny = _with_attacks(tiny, {"name": "loss"}, {"name": "confidence"}, aux=0.3)
    res = api.run(write_cfg(tiny))
    s = res.summary["mia"]
    assert s["loss_victim_gap"] > 0.2
    assert s["loss_auc"] > 0.65 and s["confidence_auc"] > 0.65
    assert s["loss_accuracy"] > 0.55


@pytest.mark.parametrize(("patch", "needle"), [
    ({"attacks": [{"name": "loss"}]}, "data.auxiliary_fraction is 0"),
    ({"attacks": [{"name": "shadow_magic"}]}, "unknown attack 'shadow_magic'"),
    ({"attacks": [{"name": "correctness"}], "attackers": []}, "no node is an attacker"),
    ({"attacks": [{"name": "correctness"}], "nodes": 5, "attackers": [4], "topology": {
        "name": "edges", "params": {"edges": [[0, 1], [1, 2], [2, 3]]}, "allow_disconnected": True}}, "no neighbours"),
    ({"attacks": [{"name": "correctness", "rounds": [9]}]}, "round 9 does not exist"),
])
def test_bad_attack_config_exits_2(tiny, write_cfg, capsys, patch, needle):
    tiny.update(patch)
    assert main(["validate", str(write_cfg(tiny))]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_attacker_count_is_placed_by_seed(tiny):
    tiny["attackers"] = 2
    a = parse_config(tiny).attackers
    assert len(a) == 2 and a == parse_config(tiny).attackers and all(0 <= i < 4 for i in a)


def test_the_same_attack_twice_with_both_accesses(tiny, write_cfg):
    tiny = _with_attacks(tiny, {"name": "loss"}, {"name": "loss", "access": "params"})
    res = api.run(write_cfg(tiny))
    mia = [r for r in RunDir(res.run_dir).records() if r["kind"] == "mia"]
    assert sorted(r["access"] for r in mia) == ["params", "params", "query", "query"]
    # without query-time defenses the two accesses see the same outputs
    q = {r["node"]: r["auc"] for r in mia if r["access"] == "query"}
    assert all(r["auc"] == q[r["node"]] for r in mia if r["access"] == "params")


def test_compare_table_has_attack_metrics(tiny, write_cfg, tmp_path):
    tiny = _with_attacks(tiny, {"name": "loss"})
    tiny["rounds"] = 2
    res = api.compare(write_cfg(tiny), ["topology.name=ring,fully_connected"], out_dir=tmp_path / "cmp")
    assert all("mia_loss_auc" in row and "mia_loss_victim_gap" in row for row in res.rows)
    assert "mia_loss_auc" in (res.out_dir / "comparison.md").read_text()
    # every membership record beside its graph context, and AUC plotted against hop distance and degree
    with open(res.out_dir / "attack_context.csv") as f:
        context = list(csv.DictReader(f))
    assert len(context) == 2 + 3  # the ring's attacker hits 2 neighbours, the complete graph's 3
    assert sorted((row["cell"], row["victim_degree"], row["hops"]) for row in context) == [
        ("topology.name=fully_connected", "3", "1")] * 3 + [("topology.name=ring", "2", "1")] * 2
    assert (res.out_dir / "plots/auc_vs_hops.png").is_file() and (res.out_dir / "plots/auc_vs_degree.png").is_file()


def test_null_test_on_a_trained_model():
    """Loss scores of two disjoint sets of non-members, one called 'members': AUC 0.5 +- 0.03."""
    from dfl.metrics.membership import mia_metrics
    from dfl.metrics.signals import loss

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 20, generator=g)
    y = torch.randint(0, 4, (4400,), generator=g)
    x = centres[y] + 3.0 * torch.randn(4400, 20, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(500):  # overfit the first 400 samples
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:400]), y[:400]).backward()
        opt.step()
    with torch.no_grad():
        p = torch.softmax(model(x[400:]), 1)
    s = loss(p, y[400:]).numpy()
    fake = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    assert abs(mia_metrics(s, fake)["auc"] - 0.5) <= 0.03
    with torch.no_grad():  # and the same signal does separate the real members
        real = loss(torch.softmax(model(x[:400]), 1), y[:400]).numpy()
    assert mia_metrics(np.r_[real, s[:400]], np.r_[np.ones(400, bool), np.zeros(400, bool)])["auc"] > 0.6


def test_query_attacks_may_target_any_node_params_attacks_only_neighbours(tiny, write_cfg):
    """One rule for explicit targets: ``access: query`` reaches any node's prediction API; ``access: params``
    (and every inversion attack) sees only what its neighbours share, so a non-neighbour is a config error."""
    from dfl.errors import ConfigError
    from dfl.experiment import parse_config
    from dfl.rundir import RunDir

    tiny["rounds"] = 1  # a ring of 4, attacker 1: neighbours 0 and 2, node 3 is not one
    tiny["attacks"] = [{"name": "correctness", "targets": [3]}]
    res = api.run(write_cfg(tiny))
    assert [(r["attacker"], r["node"]) for r in RunDir(res.run_dir).records() if r["kind"] == "mia"] == [(1, 3)]
    for attack in ({"name": "correctness", "targets": [3], "access": "params"},
                   {"name": "idlg", "targets": [3], "params": {"iterations": 2}}):
        tiny["attacks"] = [attack]
        with pytest.raises(ConfigError) as exc:
            parse_config(tiny)
        assert exc.value.errors[0][0] == "attacks.0.targets.0" and "not a neighbour of attacker(s) [1]" in exc.value.errors[0][1]
    tiny["attacks"] = [{"name": "correctness", "targets": [2], "access": "params"}]
    parse_config(tiny)  # a neighbour is fine


def test_per_sample_signals_recompute_every_records_metrics(tmp_path: Path, tiny: dict[str, Any]) -> None:
    """Each ``kind: mia`` record names its .npz; scikit-learn recomputes the record's AUC, TPR at 1% FPR,
    advantage and calibrated accuracy from it, and its indices point at the samples of their split."""
    from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve


    tiny["data"]["auxiliary_fraction"] = 0.2
    tiny["attacks"] = [{"name": "loss"}, {"name": "loss", "access": "params", "samples": 40},
                       {"name": "modified_entropy", "params": {"shadow_models": 1}}]
    cfg = parse_config(tiny)
    run = api.run(cfg, out_dir=tmp_path)
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    mia = [r for r in records if r["kind"] == "mia"]
    assert len(mia) == 6 and len({r["signals"] for r in mia}) == 6
    from dfl.federation.population import Population

    data = Population.from_config(cfg).data
    for r in mia:
        with np.load(run.run_dir / r["signals"], allow_pickle=False) as z:
            s, member = z["score"], z["member"]
            assert (int(z["round"]), int(z["attacker"]), int(z["victim"])) == (r["round"], r["attacker"], r["node"])
            assert str(z["attack"]) == r["attack"] and str(z["access"]) == r["access"]
            assert int(member.sum()) == r["members"] and int((~member).sum()) == r["non_members"]
            assert roc_auc_score(member, s) == pytest.approx(r["auc"], abs=1e-12)
            fpr, tpr, _ = roc_curve(member, s)
            assert float(np.max(tpr - fpr)) == pytest.approx(r["advantage"], abs=1e-12)
            if r["tpr_at_1_fpr"] is not None:
                assert float(tpr[fpr <= 0.01].max()) == r["tpr_at_1_fpr"]
            if "accuracy" in r:
                assert accuracy_score(member, z["decision"]) == pytest.approx(r["accuracy"], abs=1e-12)
            else:
                assert "decision" not in z
            train = z["split"] == "train"
            assert np.array_equal(z["label"][train], data.y_train[z["index"][train]])
            assert np.array_equal(z["label"][~train], data.y_test[z["index"][~train]])


def test_signals_off_and_auto(tmp_path: Path, tiny: dict[str, Any]) -> None:
    from dfl.adversary.membership import SIGNALS_AUTO_BYTES, Adversary
    from dfl.federation.population import Population

    tiny["data"]["auxiliary_fraction"] = 0.2
    tiny["attacks"] = [{"name": "loss"}]
    tiny["output"]["signals"] = False
    run = api.run(parse_config(tiny), out_dir=tmp_path)
    assert not (run.run_dir / "signals").exists()
    assert all("signals" not in json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines())
    tiny["output"]["signals"] = "auto"
    cfg = parse_config(tiny)
    adversary = Adversary(cfg, Population.from_config(cfg), tmp_path / "s")
    assert adversary.signals == tmp_path / "s" and 0 < adversary.signal_bytes() <= SIGNALS_AUTO_BYTES
    tiny["rounds"], tiny["attacks"] = 3, [{"name": "loss", "every": 1, "samples": 10**7}]  # 3 rounds x 10M samples
    big = parse_config(tiny)
    assert Adversary(big, Population.from_config(big), tmp_path / "s").signals is None
