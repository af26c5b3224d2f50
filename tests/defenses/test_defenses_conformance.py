"""Conformance of every registered defense: defaults, config, ``dfl-sim list``, pickling and untouched inputs.

One parametrised test per property over ``DEFENSES.names()``, so a defense added later (built in or
from an entry-point plugin) is checked without touching this file. Training-time defenses are called
on a batch and through one local step; query-time defenses on each of their three hook points.
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
from dfl.registries import DEFENSES

load_plugins()

# Defenses whose params have no valid default, with the smallest params that validate. A defense missing
# from this list must validate with ``params: {}``; a new one that does not fails below.
REQUIRED: dict[str, dict[str, Any]] = {
    "defensive_augmentation": {"op": "invert"},  # exactly one of preset, policy or op must be given
}

NUM_CLASSES = 5
_RNG = np.random.default_rng(0)
_TRAIN = (_RNG.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), _RNG.integers(0, NUM_CLASSES, 40))
_HOLDOUT = (_RNG.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), _RNG.integers(0, NUM_CLASSES, 40))


def defense_api() -> ModuleType:
    """The module defining ``DefenseContext`` and the hooks (``QueryDefense``, ``TrainingDefense``,
    ``ShareDefense``), found through the
    registered defenses' base classes so that this file does not name the module."""
    for entry in DEFENSES:
        for cls in getattr(entry.obj, "__mro__", ()):
            if cls.__name__ in ("QueryDefense", "TrainingDefense"):
                return sys.modules[cls.__module__]
    raise LookupError("no registered defense derives from QueryDefense or TrainingDefense")


API = defense_api()
QUERY = [e.name for e in DEFENSES if isinstance(e.obj, type) and issubclass(e.obj, API.QueryDefense)]
TRAINING = [e.name for e in DEFENSES if isinstance(e.obj, type) and issubclass(e.obj, API.TrainingDefense)]
SHARE = [e.name for e in DEFENSES if isinstance(e.obj, type) and issubclass(e.obj, API.ShareDefense)]


# Module-level functions (not lambdas) so that a context, and the defense holding it, pickles by reference.
def _train_images(node: int) -> tuple[np.ndarray, np.ndarray]:
    return _TRAIN


def _holdout_images(node: int) -> tuple[np.ndarray, np.ndarray]:
    return _HOLDOUT


def _neighbours_until(round_idx: int) -> tuple[int, ...]:
    return (1,)


def _context() -> Any:
    """Node 0 of a 5-class federation of 1x4x4 images, with 40 training and 40 holdout images."""
    return API.DefenseContext(node=0, seed=0, num_classes=NUM_CLASSES, mean=np.array([0.5]), std=np.array([0.25]),
                              neighbours=(1,), train_images=_train_images, holdout_images=_holdout_images,
                              class_names=[f"c{i}" for i in range(NUM_CLASSES)], neighbours_until=_neighbours_until)


def _defense(name: str) -> Any:
    entry = DEFENSES.get(name)
    defense = entry.obj(entry.parse_params(copy.deepcopy(REQUIRED.get(name, {}))), _context())
    defense.name = name  # as a population sets it
    return defense


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, NUM_CLASSES))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


# ------------------------------------------------------------------------------------- every defense

@pytest.fixture(scope="module")
def listing() -> dict[str, list[str]]:
    return list_rows("defenses")


def test_every_defense_has_a_hook_kind() -> None:
    """Each entry is a training-time or a query-time defense (a population builds no other kind)."""
    assert sorted(QUERY + TRAINING + SHARE) == DEFENSES.names()


@pytest.mark.parametrize("name", DEFENSES.names())
def test_default_params_validate(name: str) -> None:
    check_defaults(DEFENSES, REQUIRED, name)


def test_defenses_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in DEFENSES if defaults_fail(e)} == set(REQUIRED)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_config_validates(name: str) -> None:
    raw = copy.deepcopy(TINY)
    raw["defenses"] = [{"name": name, "params": REQUIRED.get(name, {})}]
    cfg = parse_config(raw)
    assert [d.name for d in cfg.defenses] == [name]
    assert cfg.defenses[0].params == DEFENSES.get(name).parse_params(REQUIRED.get(name, {})).model_dump(mode="json")


@pytest.mark.parametrize("name", DEFENSES.names())
def test_is_listed(listing: dict[str, list[str]], name: str) -> None:
    check_listed(listing, "defenses", DEFENSES.get(name))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_pickle_round_trip(name: str) -> None:
    """The engines ship defenses between processes: a round trip keeps the class, params and name."""
    defense = _defense(name)
    clone = pickle.loads(pickle.dumps(defense))
    assert type(clone) is type(defense)
    assert type(clone.params) is type(defense.params) and clone.params == defense.params
    assert clone.name == name and clone.ctx.node == defense.ctx.node


# --------------------------------------------------------------------------------- training time


@pytest.mark.parametrize("target", ["indices", "probabilities"])
@pytest.mark.parametrize("name", TRAINING)
def test_training_defense_leaves_batch_and_model_unchanged(name: str, target: str) -> None:
    """Targets come as class indices, or as probabilities when an earlier defense of the chain made them soft."""
    defense = _defense(name)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, NUM_CLASSES, (8,), generator=g)
    if target == "probabilities":
        y = torch.softmax(torch.randn(8, NUM_CLASSES, generator=g), 1)
    x0, y0 = x.clone(), y.clone()
    xo, to = defense.batch(x, y, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert xo.shape == x.shape and to.shape in ((8,), (8, NUM_CLASSES))
    model = _model()
    before = _state(model)
    penalty = defense.penalty(model)
    _assert_same_state(model, before)
    assert penalty is None or (penalty.ndim == 0 and torch.isfinite(penalty))


@pytest.mark.parametrize("name", TRAINING)
def test_training_defense_local_step_unwraps_cleanly(name: str) -> None:
    """wrap -> batch -> loss (+ penalty) -> step -> unwrap trains the model and leaves no hooks on it."""
    defense = _defense(name)
    model = _model()
    before = _state(model)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    opt = defense.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), 0, 1, 8, 40)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, NUM_CLASSES, (8,), generator=g)
    model.train()
    xb, tb = defense.batch(x, y, 0.0, torch.Generator().manual_seed(1))
    loss = nn.functional.cross_entropy(model(xb), tb)
    penalty = defense.penalty(model)
    if penalty is not None:
        loss = loss + penalty
    opt.zero_grad()
    loss.backward()
    opt.step()
    stats = defense.unwrap(model, 0)
    assert isinstance(stats, dict) and all(isinstance(v, float) for v in stats.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items()), "the step changed nothing"
    left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    assert left == hooks
    assert not [n for n, p in model.named_parameters() if hasattr(p, "grad_sample")]


# ------------------------------------------------------------------------------------------ share time


@pytest.mark.parametrize("name", SHARE)
def test_share_defense_rewrites_a_copy_of_the_update_reproducibly(name: str) -> None:
    """``rewrite`` returns a new update of the same shape, leaves its input alone, and gives the same
    answer for the same round (its randomness is a stream of seed, node and round)."""
    defense = _defense(name)
    update = torch.randn(300, generator=torch.Generator().manual_seed(4))
    before = update.clone()
    out = defense.rewrite(update, 2)
    assert torch.equal(update, before)
    assert out.shape == update.shape and out.dtype == update.dtype and torch.isfinite(out).all()
    assert not torch.equal(out, update), "the rewrite changed nothing"
    assert torch.equal(_defense(name).rewrite(update, 2), out)
    assert not isinstance(defense, (API.TrainingDefense, API.QueryDefense))


# ------------------------------------------------------------------------------------------ query time


@pytest.mark.parametrize("name", QUERY)
def test_query_defense_leaves_queries_logits_probabilities_and_model_unchanged(name: str) -> None:
    defense = _defense(name)
    model = _model()
    before = _state(model)
    with torch.enable_grad():
        defense.prepare(model)
    g = torch.Generator().manual_seed(2)
    # members first (the training images, normalised), then strangers: defenses keyed on members act on some
    members = (torch.from_numpy(_TRAIN[0][:6]).float() / 255 - 0.5) / 0.25
    x = torch.cat([members, torch.randn(6, 1, 4, 4, generator=g)])
    with torch.no_grad():
        z = model(x)
    p = torch.softmax(z, 1)
    x0, z0, p0 = x.clone(), z.clone(), p.clone()
    xo = defense.images(x, torch.Generator().manual_seed(1))
    zo = defense.logits(z, torch.Generator().manual_seed(1))
    po = defense.probabilities(p, torch.Generator().manual_seed(1))
    assert torch.equal(x, x0) and torch.equal(z, z0) and torch.equal(p, p0)
    assert xo.shape == x.shape and zo.shape == z.shape and po.shape == p.shape
    answered = API.defended_query(model, x, [defense], torch.Generator().manual_seed(1), batch=5)
    assert torch.equal(x, x0)
    assert answered.shape == (12, NUM_CLASSES) and torch.isfinite(answered).all()
    _assert_same_state(model, before)
