from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfl.config import TrainingConfig
from dfl.federation.participant import Participant, Split, flatten_into_views, local_batches
from dfl.seeding import LOCAL_TRAIN, torch_generator


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))


def _participant(node: int = 0, model: nn.Module | None = None, **training) -> Participant:
    g = torch.Generator().manual_seed(node)
    x = torch.randn(40, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    split = Split(x, y)
    return Participant(node, model or _bn_model(), {"train": split, "holdout": split, "test": split},
                       TrainingConfig(batch_size=8, **training), seed=0)


def test_flat_vector_holds_params_and_float_buffers_only():
    model = _bn_model()
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()]
                         + [b.reshape(-1) for b in model.buffers() if b.is_floating_point()])
    flat = flatten_into_views(model)
    assert torch.equal(flat, expected)
    flat.zero_()  # parameters are views: writing the vector writes the model
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())
    assert model[1].num_batches_tracked.dtype == torch.long


def test_load_state_changes_the_model_and_state_is_a_copy():
    p = _participant()
    s = p.state()
    s += 1.0
    assert not torch.equal(s, p.state())
    p.load_state(s)
    assert torch.equal(p.state(), s)
    assert torch.equal(p.model[0].weight.detach().reshape(-1), s[: p.model[0].weight.numel()])


def test_aggregate_averages_batchnorm_running_stats_but_not_the_counter():
    a, b = _participant(0), _participant(1)
    a.train_round(0)
    b.train_round(0)
    b.train_round(1)
    mean_a, mean_b = a.model[1].running_mean.clone(), b.model[1].running_mean.clone()
    assert not torch.allclose(mean_a, mean_b)
    states = torch.stack([a.state(), b.state()])
    a.aggregate(states, [0.5, 0.5])
    assert torch.allclose(a.model[1].running_mean, (mean_a + mean_b) / 2)
    # num_batches_tracked is an integer buffer: outside the shared state, untouched by aggregation
    assert int(a.model[1].num_batches_tracked) == 5 and int(b.model[1].num_batches_tracked) == 10


def test_training_lowers_the_loss():
    p = _participant(local_epochs=1)
    before = p.evaluate("train")["loss"]
    for r in range(15):
        p.train_round(r)
    assert p.evaluate("train")["loss"] < before * 0.8


def test_local_steps_and_epochs_count():
    assert _participant(local_steps=7, local_epochs=None).train_round(0)["steps"] == 7
    assert _participant(local_epochs=2).train_round(0)["steps"] == 10  # 40 samples, batch 8


def test_rounds_are_deterministic_and_independent_of_history():
    a, b = _participant(), _participant()
    a.train_round(0)
    b.train_round(0)
    assert torch.equal(a.state(), b.state())
    # the batches of round r depend only on (seed, node, r)
    assert all(torch.equal(x, y) for x, y in zip(a.batches(3), b.batches(3), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.batches(3), a.batches(4), strict=True))


def test_snapshot_restore_round_trip_continues_identically():
    a = _participant()
    a.train_round(0)
    snap = a.snapshot()
    b = _participant()
    b.restore(snap)
    a.train_round(1)
    b.train_round(1)
    assert torch.equal(a.state(), b.state())
    assert int(b.model[1].num_batches_tracked) == int(a.model[1].num_batches_tracked)


def test_query_returns_probabilities():
    p = _participant()
    probs = p.query(torch.randn(5, 1, 4, 4))
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(1), torch.ones(5))


def reference_batches(seed: int, node_id: int, round_idx: int, n: int, training: TrainingConfig) -> list[torch.Tensor]:
    """local_batches as written first: a shuffled pass split into batches, per epoch, cut after local_steps."""
    g, bs = torch_generator(seed, LOCAL_TRAIN, node_id, round_idx), training.batch_size
    steps = training.local_steps
    epochs = math.ceil(steps / math.ceil(n / bs)) if steps is not None else training.local_epochs or 1
    out: list[torch.Tensor] = []
    for _ in range(epochs):
        out += list(torch.randperm(n, generator=g).split(bs))
    return out[:steps] if steps is not None else out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), bs=st.integers(1, 20), epochs=st.integers(1, 3), steps=st.none() | st.integers(1, 9),
       node=st.integers(0, 50))
def test_local_batches_are_the_shuffled_passes_split(n: int, bs: int, epochs: int, steps: int | None, node: int) -> None:
    training = TrainingConfig(batch_size=bs, local_epochs=epochs, local_steps=steps)
    got, want = local_batches(3, node, 2, n, training), reference_batches(3, node, 2, n, training)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
