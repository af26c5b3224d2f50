"""Engines place participants and run a method on many of them; the round logic is in ``Federation``.

``serial`` (every participant in this process, the reference), ``ray`` (participants on Ray actors),
``batched`` (every participant as rows of stacked tensors, trained together through ``torch.func``),
``flower`` (``topology: centralized``: FedAvg on Flower's simulation engine). They know no attack.
"""

from __future__ import annotations

from dfl.config import ExperimentConfig
from dfl.engines.batched import BatchedEngine
from dfl.engines.flower import FlowerEngine
from dfl.engines.ray import RayEngine
from dfl.engines.serial import SerialEngine
from dfl.federation.engine import Engine


def engine_class(name: str) -> type[Engine]:
    """The engine class for ``engine.name``."""
    return {"ray": RayEngine, "batched": BatchedEngine}.get(name, SerialEngine)


def engine_for(cfg: ExperimentConfig) -> type[Engine]:
    """The engine a config runs on: Flower's for ``topology: centralized``, else ``engine.name``'s."""
    return FlowerEngine if cfg.topology.name == "centralized" else engine_class(cfg.engine.name)


__all__ = ["BatchedEngine", "Engine", "FlowerEngine", "RayEngine", "SerialEngine", "engine_class", "engine_for"]
