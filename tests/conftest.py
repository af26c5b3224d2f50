from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

torch.set_num_threads(1)


def memorising_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, classes: int, steps: int = 300) -> torch.nn.Module:
    """A seeded 2-layer MLP trained full-batch with Adam until it has memorised ``(x, y)``, in eval mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "rounds": 3,
    "nodes": 4,
    "data": {
        "dataset": {"name": "synthetic", "params": {"num_classes": 4, "image_size": 8, "train_size": 400, "test_size": 80}},
        "partition": {"name": "iid"},
        "holdout_fraction": 0.25,
    },
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "training": {"local_epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
    "topology": {"name": "ring"},
    "attackers": [1],
    "eval": {"every": 1},
    "output": {"plots": False, "progress": False},
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A 4-node ring on synthetic 8x8 images with a 2-layer MLP: runs in well under a second."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_cfg(tmp_path: Path):
    def write(raw: dict[str, Any], name: str = "exp.yaml") -> Path:
        raw = copy.deepcopy(raw)
        raw.setdefault("output", {})["dir"] = str(tmp_path / "runs")
        p = tmp_path / name
        p.write_text(yaml.safe_dump(raw))
        return p

    return write
