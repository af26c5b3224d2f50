"""Per-sample membership signals of a model's output: what metric attacks threshold and what AugMixCloak's
tuner simulates (Song & Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning Models",
USENIX Security 2021).

Each takes probabilities ``p: (N, K)`` and labels ``y: (N,)`` and returns float64 scores ``(N,)``,
higher for members. Pure: torch in, torch out.
"""

from __future__ import annotations

import torch

EPS = 1e-30


def correctness(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1[argmax p = y]``."""
    return (p.argmax(1) == y).double()


def confidence(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y``."""
    return p.gather(1, y[:, None]).squeeze(1).double()


def entropy(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-H(p) = sum_i p_i log p_i`` (members are predicted with lower entropy)."""
    q = p.double()
    return (q * q.clamp_min(EPS).log()).sum(1)


def modified_entropy(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-Mentr(p, y)`` with ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``."""
    q = p.double()
    py = q.gather(1, y[:, None]).squeeze(1)
    others = q * (1 - q).clamp_min(EPS).log()
    others_sum = others.sum(1) - others.gather(1, y[:, None]).squeeze(1)
    mentr = -(1 - py) * py.clamp_min(EPS).log() - others_sum
    return -mentr


def loss(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p_y`` = minus the cross-entropy loss (members have lower loss)."""
    return confidence(p, y).clamp_min(EPS).log()


def top1(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_i p_i``: the top-one confidence, no label needed."""
    return p.max(1).values.double()
