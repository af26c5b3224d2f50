from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dfl.config import Spec
from dfl.models import build_model
from dfl.models.base import AvgPoolTo
from dfl.registries import MODELS


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_every_model_builds_and_trains_one_step(name, shape):
    """Conformance over the registry: output shape, finite loss, every parameter gets a gradient."""
    torch.manual_seed(0)
    model = build_model(Spec(name=name), shape, 10)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_small_models_take_8px_digits():
    for name in ("mlp", "cnn", "lenet"):
        assert build_model(Spec(name=name), (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_lenet_is_sigmoid_dlg_net():
    model = build_model(Spec(name="lenet"), (3, 32, 32), 10)
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_resnet18_group_norm_has_no_batchnorm():
    model = build_model(Spec(name="resnet18", params={"norm": "group"}), (3, 32, 32), 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_vgg11_has_a_single_linear_layer():
    model = build_model(Spec(name="vgg11"), (3, 32, 32), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8


@given(side=st.integers(1, 4), mult=st.integers(1, 4), extra=st.integers(0, 3), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_avg_pool_to_equals_adaptive_pool_with_gradients(side, mult, extra, seed):
    """The deterministic pool is the adaptive pool: outputs and input gradients, divisible sizes or not."""
    h = side * mult + extra
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, h, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, side, side, generator=g, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = AvgPoolTo(side)(xa), nn.AdaptiveAvgPool2d(side)(xb)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(xa.grad, xb.grad)
