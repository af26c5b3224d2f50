"""Conformance of every registered attack: defaults, config, ``dfl-sim list``, pickling and untouched inputs.

One parametrised test per property over ``ATTACKS.names()``, so an attack added later (built in or
from an entry-point plugin) is checked without touching this file. Membership attacks are prepared and
scored on a hand-built adversary view; gradient-inversion attacks reconstruct from a tiny sigmoid net's
gradients with two iterations.
"""

from __future__ import annotations

import copy
import pickle
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conformance import check_defaults, check_listed, defaults_fail, list_rows
from conftest import TINY
from torch import nn

from dfl.experiment import parse_config
from dfl.plugins import load_plugins
from dfl.registries import ATTACKS

load_plugins()

# Attacks whose params have no valid default, with the smallest params that validate. An attack missing
# from this list must validate with ``params: {}``; a new one that does not fails below.
REQUIRED: dict[str, dict[str, Any]] = {}

# Small settings for the calls below (not needed to validate): inversion attacks run 2 iterations.
FAST: dict[str, dict[str, Any]] = {"dlg": {"iterations": 2}, "idlg": {"iterations": 2},
                                   "inverting_gradients": {"iterations": 2}}

NUM_CLASSES = 4


def attack_api() -> ModuleType:
    """The module defining ``AdversaryView``, ``Labelled``, ``MembershipAttack`` and ``InversionAttack``,
    found through the registered attacks' base classes so that this file does not name the module."""
    for entry in ATTACKS:
        for cls in getattr(entry.obj, "__mro__", ()):
            if cls.__name__ in ("MembershipAttack", "InversionAttack"):
                return sys.modules[cls.__module__]
    raise LookupError("no registered attack derives from MembershipAttack or InversionAttack")


API = attack_api()
MEMBERSHIP = [e.name for e in ATTACKS if isinstance(e.obj, type) and issubclass(e.obj, API.MembershipAttack)]
INVERSION = [e.name for e in ATTACKS if isinstance(e.obj, type) and issubclass(e.obj, API.InversionAttack)]


def _attack(name: str) -> Any:
    entry = ATTACKS.get(name)
    return entry.obj(entry.parse_params({**REQUIRED.get(name, {}), **FAST.get(name, {})}))


# -------------------------------------------------------------------------------------- every attack

@pytest.fixture(scope="module")
def listing() -> dict[str, list[str]]:
    return list_rows("attacks")


def test_every_attack_has_a_kind() -> None:
    """Each entry is a membership or a gradient-inversion attack (the scorers run no other kind)."""
    assert sorted(MEMBERSHIP + INVERSION) == ATTACKS.names()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_default_params_validate(name: str) -> None:
    check_defaults(ATTACKS, REQUIRED, name)


def test_attacks_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in ATTACKS if defaults_fail(e)} == set(REQUIRED)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_config_validates(name: str) -> None:
    entry = ATTACKS.get(name)
    raw = copy.deepcopy(TINY)
    raw["attackers"] = [0]
    raw["attacks"] = [{"name": name, "params": REQUIRED.get(name, {})}]
    if getattr(entry.obj, "needs_auxiliary", False):
        raw["data"]["auxiliary_fraction"] = 0.3  # shadow data for the shadow models
    cfg = parse_config(raw)
    assert [a.name for a in cfg.attacks] == [name]
    assert cfg.attacks[0].params == entry.parse_params(REQUIRED.get(name, {})).model_dump(mode="json")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_is_listed(listing: dict[str, list[str]], name: str) -> None:
    check_listed(listing, "attacks", ATTACKS.get(name))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_pickle_round_trip(name: str) -> None:
    """The engines ship attacks between processes: a round trip keeps the class and the params."""
    attack = _attack(name)
    clone = pickle.loads(pickle.dumps(attack))
    assert type(clone) is type(attack)
    assert type(clone.params) is type(attack.params) and clone.params == attack.params


# --------------------------------------------------------------------------------------- membership


def _labelled(n: int, g: torch.Generator) -> Any:
    return API.Labelled(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))


def _view() -> Any:
    """Attacker 1 in round 2: 8x8 one-channel images of 4 classes, a linear model, TINY's training recipe."""
    g = torch.Generator().manual_seed(123)

    def make_model() -> nn.Module:
        torch.manual_seed(7)  # the federation's fixed initialisation
        return nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES))

    return API.AdversaryView(
        attacker=1, round=2, num_classes=NUM_CLASSES, recipe=parse_config(copy.deepcopy(TINY)).training,
        local_epochs_so_far=1.0, make_model=make_model, load_state=lambda m, s: None, own=_labelled(30, g),
        auxiliary=_labelled(80, g), received={}, query={}, seed=0)


@pytest.mark.parametrize("name", MEMBERSHIP)
def test_membership_attack_leaves_data_and_view_unchanged(name: str) -> None:
    torch.manual_seed(3)
    victim = nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES)).eval()
    victim_before = {k: v.clone() for k, v in victim.state_dict().items()}

    def outputs(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(victim(x), 1)

    view = _view()
    data = _labelled(40, torch.Generator().manual_seed(5))
    tensors = {"data.x": data.x, "data.y": data.y, "own.x": view.own.x, "own.y": view.own.y,
               "auxiliary.x": view.auxiliary.x, "auxiliary.y": view.auxiliary.y}
    before = {k: t.clone() for k, t in tensors.items()}
    attack = _attack(name)
    attack.prepare(view)
    result = attack.score(view, outputs, data)
    for k, t in tensors.items():
        assert torch.equal(t, before[k]), f"{k} was modified"
    assert data.x is tensors["data.x"] and data.y is tensors["data.y"]
    assert all(torch.equal(victim.state_dict()[k], v) for k, v in victim_before.items())
    scores = np.asarray(result.scores)
    assert scores.shape == (40,) and np.isfinite(scores).all()
    assert result.predicted is None or np.asarray(result.predicted).shape == (40,)


# ---------------------------------------------------------------------------------------- inversion


@pytest.mark.parametrize("name", INVERSION)
def test_inversion_attack_leaves_model_and_gradients_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Sigmoid(), nn.Linear(16, NUM_CLASSES))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 4, 4, generator=g), torch.tensor([1, 3])
    grads = [t.detach() for t in torch.autograd.grad(nn.functional.cross_entropy(model(x), y),
                                                     list(model.parameters()))]
    grads_before = [t.clone() for t in grads]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.25, 0.2, 0.3])
    mean0, std0 = mean.copy(), std.copy()
    rec = _attack(name).reconstruct(model, grads, 2, NUM_CLASSES, (3, 4, 4), torch.Generator().manual_seed(0),
                                    mean, std)
    for t, t0 in zip(grads, grads_before, strict=True):
        assert torch.equal(t, t0)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state_before.items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(mean, mean0)
    np.testing.assert_array_equal(std, std0)
    assert rec.images.shape == (2, 3, 4, 4) and rec.labels.shape == (2,)
    assert 1 <= rec.iterations <= 2
