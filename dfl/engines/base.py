"""The engine interface: the few bulk operations ``Federation`` needs from wherever participants live."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from dfl.population import Population


class Engine(ABC):
    """Hosts the participants of a population and runs bulk operations on them, node ids ``0..n-1``."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.n = population.cfg.nodes

    @abstractmethod
    def train(self, round_idx: int) -> list[dict[str, float]]:
        """Local training of every node; per-node stats in node order."""

    @abstractmethod
    def share(self) -> torch.Tensor:
        """The states the nodes send their neighbours this round, ``(n_nodes, n_params)``."""

    @abstractmethod
    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        """Each node i loads ``sum_j W_ij shared_j``; returns the new states ``(n_nodes, n_params)``."""

    @abstractmethod
    def evaluate(self, splits: list[str]) -> list[dict[str, float]]:
        """Per node, ``{f"{split}_acc", f"{split}_loss"}`` for each split."""

    @abstractmethod
    def snapshot(self) -> list[dict[str, Any]]:
        """Per-node checkpoint state."""

    @abstractmethod
    def restore(self, snaps: list[dict[str, Any]]) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes or devices."""
