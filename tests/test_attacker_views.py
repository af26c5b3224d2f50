"""The attacks only decentralized learning has: what the attacker scores (view), where it stands in the
graph (context), and the DP audit of DP-trained victims."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch

import dfl.adversary.membership as membership
from dfl import api
from dfl.adversary.membership import view_state
from dfl.cli import main
from dfl.errors import ConfigError
from dfl.experiment import parse_config
from dfl.mixing import gossip, metropolis_hastings_matrix, neighbourhood_mean_matrix
from dfl.rundir import RunDir


def states(n: int, p: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


def test_the_own_view_is_the_attackers_aggregate_to_the_bit() -> None:
    W = metropolis_hastings_matrix(nx.to_numpy_array(nx.cycle_graph(6)) > 0)
    x = states(6)
    assert torch.equal(view_state("own", 2, 3, x, W), gossip(x, W)[2])


def test_isolation_with_uniform_weights_is_pasquinis_estimator() -> None:
    """Their attacker.py: n * theta_v - sum of the other models in the attacker's buffer (n = degree + 1)."""
    W = neighbourhood_mean_matrix(nx.to_numpy_array(nx.complete_graph(5)) > 0)
    x = states(5)
    want = 5 * x[3].double() - sum(x[j].double() for j in (0, 1, 2, 4))
    assert torch.allclose(view_state("isolated", 1, 3, x, W).double(), want, atol=1e-5)


def test_isolation_is_exact_where_the_victims_message_is_the_attackers_aggregate() -> None:
    """A victim that shares the aggregate of the attacker's neighbourhood with its own model in its slot
    (every node mixing the same messages with the same weights): the isolated state is the victim's own
    model, and an attack scores the two alike."""
    W = metropolis_hastings_matrix(nx.to_numpy_array(nx.wheel_graph(6)) > 0)
    a, v = 0, 2
    x, own_model = states(6, p=45, seed=1), states(1, p=45, seed=2)[0]
    x[v] = float(W[a, v]) * own_model + sum(float(W[a, j]) * x[j] for j in np.flatnonzero(W[a]) if j != v)
    isolated = view_state("isolated", a, v, x, W)
    assert torch.allclose(isolated, own_model, atol=1e-5)
    inputs, labels = torch.randn(30, 8, generator=torch.Generator().manual_seed(3)), torch.arange(30) % 5

    def scores(flat: torch.Tensor) -> torch.Tensor:  # the loss attack's: minus each sample's loss (a 8 -> 5 linear)
        logits = inputs @ flat[:40].view(5, 8).T + flat[40:]
        return -torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    assert torch.allclose(scores(isolated), scores(own_model), atol=1e-4)
    assert not torch.allclose(scores(x[v]), scores(own_model), atol=1e-2)  # the received message is not it
    # where the attacker's other inputs agree with the victim (its own model is what it shared), the
    # isolated state is the shared state itself, and so are its scores
    agreed = x.clone()
    agreed[np.flatnonzero(W[a])] = x[v]
    assert torch.allclose(view_state("isolated", a, v, agreed, W), x[v], atol=1e-5)


def test_a_view_needs_params_access() -> None:
    with pytest.raises(ConfigError, match="access: params"):
        parse_config({**_tiny_views({}), "attacks": [{"name": "loss", "view": "own"}]})


def _tiny_views(tiny: dict[str, Any], topology: str = "ring") -> dict[str, Any]:
    from conftest import TINY

    raw = {**TINY, **tiny}
    raw = {**raw, "rounds": 2, "topology": {"name": topology}, "data": {**raw["data"], "auxiliary_fraction": 0.2},
           "eval": {"every": 2}}
    raw["attacks"] = [{"name": "loss", "access": "params", "view": view} for view in ("received", "own", "isolated")]
    return raw


@pytest.mark.parametrize("topology", ["ring", "fully_connected"])
def test_three_views_on_a_ring_and_a_complete_graph(topology: str, write_cfg) -> None:
    res = api.run(write_cfg(_tiny_views({}, topology)))
    mia = [r for r in RunDir(res.run_dir).records() if r["kind"] == "mia"]
    neighbours = [0, 2] if topology == "ring" else [0, 2, 3]
    for view in ("received", "own", "isolated"):
        mine = [r for r in mia if r["view"] == view]
        assert sorted(r["node"] for r in mine) == neighbours
        assert all(r["hops"] == 1 and r["attacker_degree"] == len(neighbours) for r in mine)
        label = "loss_params" + ("" if view == "received" else f"_{view}")
        assert f"{label}_auc" in res.summary["mia"]
    auc = {(r["view"], r["node"]): r["auc"] for r in mia}
    assert any(auc["own", v] != auc["received", v] for v in neighbours)
    # the attacker's aggregate is one model: the own view scores every victim's members on it
    rounds = [r for r in RunDir(res.run_dir).records() if r["kind"] == "round"]
    assert all(0.0 < r["spectral_gap"] <= 1.0 for r in rounds)


def _dp(tiny: dict[str, Any]) -> dict[str, Any]:
    tiny = {**tiny, "rounds": 2, "eval": {"every": 2}, "data": {**tiny["data"], "auxiliary_fraction": 0.2}}
    tiny["defenses"] = [{"name": "dp_sgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}]
    tiny["attacks"] = [{"name": "loss", "access": "params"}, {"name": "loss"}]
    return tiny


def test_dp_trained_victims_are_audited_below_their_epsilon(tiny: dict[str, Any], write_cfg) -> None:
    res = api.run(write_cfg(_dp(tiny)))
    records = RunDir(res.run_dir).records()
    audits = [r for r in records if r["kind"] == "dp_audit"]
    assert sorted(r["node"] for r in audits) == [0, 2]
    train = {r["node"]: r["dp_epsilon"] for r in records if r["kind"] == "train" and r["round"] == 2
             and "dp_epsilon" in r}  # honest nodes run dp_sgd, the attacker does not
    for r in audits:
        assert r["epsilon"] == train[r["node"]] and r["attacks_audited"] == 2
        assert 0.0 <= r["epsilon_lower"] <= r["epsilon"] and not r["violation"]
    assert all("epsilon_lower" in r and "fpr_upper" in r for r in records if r["kind"] == "mia")
    assert "## DP audit" in (res.run_dir / "report.md").read_text()
    assert res.summary["dp_audit"]["violations"] == 0


def test_a_violation_is_reported_loudly(tiny: dict[str, Any], write_cfg, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bound above the accountant's epsilon (here forced) is a bug: the record, the report and the
    command line say so."""
    real = membership.epsilon_lower_bound
    monkeypatch.setattr(membership, "epsilon_lower_bound",
                        lambda *a, **k: {**real(*a, **k), "epsilon_lower": 1e3})
    assert main(["run", str(write_cfg(_dp(tiny)))]) == 0
    err = capsys.readouterr().err
    assert "DP AUDIT VIOLATION" in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert all(r["violation"] for r in RunDir(run_dir).records() if r["kind"] == "dp_audit")
    assert "**VIOLATION" in (run_dir / "report.md").read_text()
