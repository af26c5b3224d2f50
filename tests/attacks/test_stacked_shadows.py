"""Shadow and reference models trained together (``view.stacked``, the batched engines) against the same
models trained one at a time: the same batches, parameters within float32 rounding (the batched engine's
tolerance), the attacks' metrics within the engine's tolerance, and a batched run of the MIA config."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

from attacks.base import AdversaryView, Labelled
from attacks.shadow import shadow_models, train_model, train_models
from dfl import api
from dfl.adversary.membership import Adversary
from dfl.config import TrainingConfig
from dfl.experiment import parse_config
from dfl.federation.participant import flatten_into_views, load_flat
from dfl.federation.population import Population

PARAM_TOL = 1e-5  # the batched engine's tolerance for parameters after one round
RECIPES = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
    "momentum+decay": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.001},
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 0.0001},
}


def view(recipe: dict[str, Any], stacked: bool) -> AdversaryView:
    g = torch.Generator().manual_seed(123)
    aux = Labelled(torch.randn(90, 1, 8, 8, generator=g), torch.randint(0, 4, (90,), generator=g))

    def make_model() -> nn.Module:
        torch.manual_seed(7)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
        flatten_into_views(model)
        return model

    return AdversaryView(
        attacker=1, round=2, num_classes=4, recipe=TrainingConfig(local_epochs=1, batch_size=8, optimizer=recipe),
        local_epochs_so_far=3.0, make_model=make_model, load_state=load_flat, own=aux.subset(np.arange(20)),
        auxiliary=aux, received={}, query={}, seed=0, stacked=stacked)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("chunk", [None, 2])
def test_stacked_models_equal_one_at_a_time(recipe: str, chunk: int | None) -> None:
    v = view(RECIPES[recipe], stacked=True)
    # different sizes (ragged last batches, different step counts) and seeds
    datas = [v.auxiliary.subset(np.arange(a, a + n)) for a, n in ((0, 20), (5, 13), (30, 29), (60, 8))]
    seeds = [11, 12, 13, 14]
    stacked = train_models(v, datas, 2.5, seeds, chunk=chunk)
    one = [train_model(v, d, 2.5, s) for d, s in zip(datas, seeds, strict=True)]
    start = flat(v.make_model())
    for a, b in zip(stacked, one, strict=True):
        assert not a.training
        assert torch.allclose(flat(a), flat(b), rtol=0, atol=PARAM_TOL)
        assert not torch.allclose(flat(a), start, atol=1e-3)  # it did train
    assert not torch.allclose(flat(stacked[0]), flat(stacked[1]), atol=1e-3)  # apart


def test_one_at_a_time_without_stacked() -> None:
    v = view(RECIPES["sgd"], stacked=False)
    datas = [v.auxiliary.subset(np.arange(20)), v.auxiliary.subset(np.arange(20, 40))]
    models = train_models(v, datas, 1.0, [1, 2])
    for m, d, s in zip(models, datas, [1, 2], strict=True):
        assert torch.equal(flat(m), flat(train_model(v, d, 1.0, s)))


def test_shadow_models_stacked_keep_their_splits() -> None:
    a = shadow_models(view(RECIPES["momentum+decay"], stacked=True), 3, 20, 2.0)
    b = shadow_models(view(RECIPES["momentum+decay"], stacked=False), 3, 20, 2.0)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.inside.x, y.inside.x) and torch.equal(x.outside.y, y.outside.y)
        assert torch.allclose(flat(x.model), flat(y.model), rtol=0, atol=PARAM_TOL)


def mia_config(engine: str) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["data"]["auxiliary_fraction"] = 0.3
    raw["rounds"] = 2
    raw["engine"] = {"name": engine}
    raw["attacks"] = [{"name": "lira_offline", "params": {"shadow_models": 3}},
                      {"name": "shadow_model", "params": {"shadow_models": 3}}]
    return raw


def attack_records(run_dir: Any) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "mia"]


def test_batched_run_attacks_within_tolerance_of_serial(tmp_path) -> None:
    batched = attack_records(api.run(parse_config(mia_config("batched")), out_dir=tmp_path / "b").run_dir)
    serial = attack_records(api.run(parse_config(mia_config("serial")), out_dir=tmp_path / "s").run_dir)
    assert len(batched) == len(serial) > 0
    for b, s in zip(batched, serial, strict=True):
        assert (b["attack"], b["attacker"], b["node"]) == (s["attack"], s["attacker"], s["node"])
        assert b["auc"] == pytest.approx(s["auc"], abs=0.02)


def test_stacked_flag_follows_the_engine() -> None:
    for engine, expected in (("serial", False), ("batched", True)):
        cfg = parse_config(mia_config(engine))
        adversary = Adversary(cfg, Population.from_config(cfg))
        assert adversary._stacked is expected
    ray = parse_config(replace_engine(mia_config("ray"), batched=True))
    assert Adversary(ray, Population.from_config(ray))._stacked


def replace_engine(raw: dict[str, Any], **ray: Any) -> dict[str, Any]:
    raw["engine"]["ray"] = ray
    return raw

