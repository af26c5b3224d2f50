"""dfl.stacked: the one trainer of many models (the batched engine's participants, the attacks' shadow
models): its two gradient paths against one model trained by torch.optim, and its memory arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfl.config import OptimizerConfig
from dfl.stacked import (
    CHUNK_BYTES,
    Layout,
    Optimizer,
    Trainer,
    activation_numel,
    batch_plan,
    chunk_size,
    cross_entropy,
    order_plan,
    vmap_pays,
)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def test_order_plan_places_every_batch_as_the_loop_does() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [[4, 4, 1], [3], [], [4, 2, 4, 2], [0]]
    orders = [torch.randperm(sum(ls), generator=g) for ls in lengths]
    want = torch.full((5, 4, 4), -1, dtype=torch.long)
    for i, (order, ls) in enumerate(zip(orders, lengths, strict=True)):
        for s, batch in enumerate(order.split(ls) if ls else []):
            want[i, s, : len(batch)] = batch
    assert torch.equal(order_plan(orders, lengths, 4), want)
    assert torch.equal(batch_plan([list(o.split(ls)) if ls else [] for o, ls in zip(orders, lengths, strict=True)], 4),
                       want)
    with pytest.raises(ValueError, match="hold 2 indices"):
        order_plan([torch.arange(2)], [[3]], 4)


def test_activation_numel_counts_every_leaf_output() -> None:
    assert activation_numel(model(), (1, 6, 6)) == 108 + 108 + 108 + 4  # conv, relu, flatten, linear
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    assert activation_numel(mlp, (1, 8, 8)) == 64 + 16 + 16 + 4


def test_chunk_size_stays_within_the_budget_and_rowwise_holds_one_rows_activations() -> None:
    n_state, batch, sample, acts = 150_000, 32, 3072, 100_000
    vmapped = chunk_size(10_000, n_state, batch, sample, acts)
    rowwise = chunk_size(10_000, n_state, batch, sample, acts, rowwise=True)
    assert 1 <= vmapped < rowwise <= 10_000
    assert vmapped * 4 * (6 * n_state + batch * (2 * sample + 3 * acts)) <= CHUNK_BYTES
    assert chunk_size(3, n_state, batch, sample, acts, rowwise=True) == 3  # never more rows than there are
    assert chunk_size(10, 10**9, batch, sample) == 1  # at least one


def test_vmap_pays_except_for_convolutions_on_a_cpu() -> None:
    cpu = torch.device("cpu")
    assert not vmap_pays(model(), cpu)
    assert vmap_pays(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), cpu)
    assert vmap_pays(model(), torch.device("cuda"))


@pytest.mark.parametrize("rowwise", [False, True])
def test_each_row_trains_as_torch_optim_trains_one_model(rowwise: bool) -> None:
    shell = model()
    layout = Layout(shell)
    o = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(3, 10, 1, 6, 6, generator=g), torch.randint(0, 4, (3, 10), generator=g)
    plans = [[torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 10)],  # a ragged last batch
             [torch.arange(5, 9)],                                          # one step only
             [torch.tensor([9, 0, 1, 2]), torch.arange(3, 7)]]
    flat = layout.row(shell).expand(3, -1).clone()
    trainer = Trainer(layout, Optimizer(o, 3, layout.n_params, flat.device), cross_entropy(shell), rowwise=rowwise)

    def fetch(lo: int, hi: int, step: int, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        rows, local = torch.arange(lo, hi)[:, None], local.clamp_min(0)
        return xs[rows, local], ys[rows, local], None

    losses = trainer.train(flat, 0, 3, batch_plan(plans, 4), fetch)
    for i, batches in enumerate(plans):
        one = model()
        opt = torch.optim.SGD(one.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        seen = []
        for idx in batches:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(one(xs[i, idx]), ys[i, idx])
            loss.backward()
            opt.step()
            seen.append(loss.item())
        assert torch.allclose(flat[i], layout.row(one), rtol=0, atol=1e-6)
        assert float(losses[i]) == pytest.approx(sum(seen) / len(seen), abs=1e-6)
