"""DP-SGD (``dp_sgd``): Opacus's clipping against a per-sample reference, its accountant, determinism,
resumption, the BatchNorm refusal and the utility at the two ends of the noise scale."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfl import api
from dfl.config import TrainingConfig
from dfl.defense import DefenseContext
from dfl.errors import ConfigError
from dfl.experiment import parse_config
from dfl.federation.participant import Participant, Split
from dfl.plugins import load_plugins
from dfl.registries import DEFENSES
from dfl.rundir import RunDir

load_plugins()
CTX = DefenseContext(node=0, seed=0, num_classes=5, mean=np.array([0.5]), std=np.array([0.25]))


def _dp(**params):
    entry = DEFENSES.get("dp_sgd")
    return entry.obj(entry.parse_params(params), CTX)


def _participant(defenses, n=12, lr=0.5, model=None) -> Participant:
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(n, 1, 4, 4), torch.randint(0, 5, (n,))
    training = TrainingConfig(local_steps=1, batch_size=n, optimizer={"name": "sgd", "lr": lr})
    return Participant(0, model, {"train": Split(x, y)}, training, seed=0, training_defenses=defenses)


def _clipped_mean(p: Participant, c: float) -> torch.Tensor:
    """``mean_i g_i * min(1, C / (||g_i|| + 1e-6))`` over the training samples, one autograd call per sample."""
    data, params = p.data["train"], list(p.model.parameters())
    out = torch.zeros(sum(q.numel() for q in params))
    for i in range(len(data)):
        grads = torch.autograd.grad(F.cross_entropy(p.model(data.x[i : i + 1]), data.y[i : i + 1]), params)
        g = torch.cat([t.reshape(-1) for t in grads])
        out += g * min(1.0, c / (float(g.norm()) + 1e-6))
    return out / len(data)


def test_one_step_is_the_mean_of_per_sample_clipped_gradients():
    c, lr = 0.01, 100.0  # a large step, so that the update stands well above float32 rounding of the weights
    p = _participant([_dp(noise_multiplier=0.0, max_grad_norm=c)], lr=lr)
    ref, before = _clipped_mean(p, c), p.state()
    stats = p.train_round(0)
    update = (before - p.state())[: ref.numel()]
    assert torch.allclose(update, lr * ref, rtol=1e-4, atol=1e-6)
    assert float(update.norm()) <= lr * c * (1 + 1e-5)  # clipped
    plain = _participant([], lr=lr)
    plain.train_round(0)
    assert not torch.allclose(before - plain.state(), update, atol=1e-6)  # the clipping did something
    assert stats["dp_epsilon"] == float("inf") and stats["steps"] == 1.0
    # the parameters stay views of the flat state, with no Opacus attributes or hooks left behind
    assert all(w.untyped_storage().data_ptr() == p.flat.untyped_storage().data_ptr() for w in p.model.parameters())
    assert not any(hasattr(w, a) for w in p.model.parameters() for a in ("grad_sample", "summed_grad", "_forward_counter"))
    assert not any(m._forward_hooks or m._backward_hooks for m in p.model.modules())


def test_noise_is_seeded_by_node_and_round():
    def update(round_idx: int) -> torch.Tensor:
        p = _participant([_dp(noise_multiplier=1.0, max_grad_norm=0.01)])
        before = p.state()
        p.train_round(round_idx)
        return before - p.state()

    assert torch.equal(update(0), update(0))
    assert not torch.equal(update(0), update(1))
    clean = _participant([_dp(noise_multiplier=0.0, max_grad_norm=0.01)])
    before = clean.state()
    clean.train_round(0)
    assert not torch.allclose(update(0), before - clean.state(), atol=1e-4)


def test_epsilon_is_opacus_rdp_and_grows_with_sigma_down_and_rounds_up(tiny, write_cfg):
    from opacus.accountants import RDPAccountant

    from defenses.dp_sgd import epsilon
    from dfl.federation.population import Population

    sigma, delta = 1.3, 1e-4
    tiny["defenses"] = [{"name": "dp_sgd", "params": {"noise_multiplier": sigma, "max_grad_norm": 1.0, "delta": delta}}]
    recs = RunDir(api.run(write_cfg(tiny)).run_dir).records()
    train = [r for r in recs if r["kind"] == "train" and r["node"] == 0]
    n = len(Population.from_config(parse_config(tiny)).splits.nodes[0].train)
    q = tiny["training"]["batch_size"] / n
    accountant = RDPAccountant()
    for r in train:
        for _ in range(int(r["steps"])):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
        assert r["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    eps = [r["dp_epsilon"] for r in train]
    assert len(eps) == tiny["rounds"] and all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert all("dp_epsilon" not in r for r in recs if r["kind"] == "train" and r["node"] == 1)  # the attacker
    assert epsilon(2 * sigma, q, 15, delta) < epsilon(sigma, q, 15, delta) < epsilon(sigma, q, 30, delta)


def test_same_seed_same_metrics_and_resume_continues_the_accounting(tiny, write_cfg):
    tiny["defenses"] = [{"name": "dp_sgd", "params": {"noise_multiplier": 0.8, "max_grad_norm": 0.5}}]
    path = write_cfg(tiny)
    a = (api.run(path).run_dir / "metrics.jsonl").read_bytes()
    b = (api.run(path).run_dir / "metrics.jsonl").read_bytes()
    assert a == b and b"dp_epsilon" in a
    stopped = api.run(path, stop_after=1)
    assert (api.resume(stopped.run_dir).run_dir / "metrics.jsonl").read_bytes() == a


@pytest.mark.parametrize("command", ["validate", "run"])
def test_batchnorm_model_exits_2_naming_the_norm_param(tiny, write_cfg, capsys, command):
    from dfl.cli import main

    tiny["model"] = {"name": "cnn", "params": {"channels": [4], "hidden": 8, "norm": "batch"}}
    tiny["defenses"] = [{"name": "dp_sgd"}]
    assert main([command, str(write_cfg(tiny))]) == 2
    err = capsys.readouterr().err
    assert "model.params.norm" in err and "group" in err and "Traceback" not in err
    tiny["model"]["params"]["norm"] = "group"
    assert main(["validate", str(write_cfg(tiny))]) == 0


def test_batchnorm_is_refused_at_training_time_too():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))
    with pytest.raises(ConfigError, match="model.params.norm"):
        _dp().wrap(model.train(), torch.optim.SGD(model.parameters(), lr=0.1), 0, 1, 8, 8)


@pytest.mark.parametrize(("nodes", "ok"), [("honest", False), ([0], True)])
def test_a_loss_penalty_cannot_share_a_node_with_dp_sgd(tiny, nodes, ok):
    tiny["defenses"] = [{"name": "dp_sgd", "nodes": [2, 3]}, {"name": "weight_penalty", "nodes": nodes}]
    if ok:
        parse_config(tiny)
    else:
        with pytest.raises(ConfigError, match=r"defenses\.1\.name: weight_penalty adds a loss penalty"):
            parse_config(tiny)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # epsilon is tiny at sigma = 1000
def test_utility_at_both_ends_of_the_noise_scale(tiny, write_cfg):
    def mean_acc(defenses) -> float:
        raw = copy.deepcopy(tiny)
        raw["defenses"] = defenses
        return api.run(write_cfg(raw)).summary["final"]["mean_test_acc"]

    base = mean_acc([])
    assert base > 0.9
    assert abs(mean_acc([{"name": "dp_sgd", "params": {"noise_multiplier": 0.0, "max_grad_norm": 1e6}}]) - base) < 0.05
    assert mean_acc([{"name": "dp_sgd", "params": {"noise_multiplier": 1000.0, "max_grad_norm": 1.0}}]) < 0.6
