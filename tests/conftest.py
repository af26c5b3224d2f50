from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

torch.set_num_threads(1)

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
