"""``serial``: every participant in this process; the reference engine."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from dfl.federation.engine import Engine, guarded
from dfl.federation.participant import Participant
from dfl.federation.population import Population
from dfl.mixing import gossip


class ParticipantNodes:
    """``mode: async``'s node access over ``participants``, indexed by node id (a list or a dict)."""

    participants: Any

    def node_states(self, ids: list[int]) -> torch.Tensor:
        return torch.stack([self.participants[i].flat.detach() for i in ids])  # stack copies

    def set_node_states(self, ids: list[int], states: torch.Tensor) -> None:
        for i, row in zip(ids, states, strict=True):
            self.participants[i].load_state(row)

    def train_nodes(self, ids: list[int], iterations: list[int]) -> list[dict[str, float]]:
        return [guarded("training", i, k, partial(self.participants[i].train_round, k))
                for i, k in zip(ids, iterations, strict=True)]


class SerialEngine(ParticipantNodes, Engine):
    """Participants as plain objects, run one after another."""

    def __init__(self, population: Population) -> None:
        super().__init__(population)
        self.participants: list[Participant] = [population.participant(i) for i in range(self.n)]

    def train(self, round_idx: int) -> list[dict[str, float]]:
        return [guarded("training", p.node_id, round_idx, partial(p.train_round, round_idx)) for p in self.participants]

    def share(self) -> torch.Tensor:
        return torch.stack([p.flat.detach() for p in self.participants])

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        new = gossip(shared, W)
        for p, row in zip(self.participants, new, strict=True):
            p.load_state(row)
        return new

    def evaluate(self, splits: list[str], round_idx: int | None = None) -> list[dict[str, float]]:
        return [guarded("evaluating", p.node_id, round_idx, partial(evaluate_all, p, splits))
                for p in self.participants]

    def snapshot(self) -> list[dict[str, Any]]:
        return [p.snapshot() for p in self.participants]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        for p, s in zip(self.participants, snaps, strict=True):
            p.restore(s)


def evaluate_all(p: Participant, splits: list[str]) -> dict[str, float]:
    """``{f"{split}_acc", f"{split}_loss"}`` of one participant over ``splits``."""
    return {f"{s}_{k}": v for s in splits for k, v in p.evaluate(s).items()}
