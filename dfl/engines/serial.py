"""``serial``: every participant in this process; the reference engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dfl.engines.base import Engine
from dfl.mixing import gossip
from dfl.participant import Participant
from dfl.population import Population


class SerialEngine(Engine):
    """Participants as plain objects, run one after another."""

    def __init__(self, population: Population) -> None:
        super().__init__(population)
        self.participants: list[Participant] = [population.participant(i) for i in range(self.n)]

    def train(self, round_idx: int) -> list[dict[str, float]]:
        return [p.train_round(round_idx) for p in self.participants]

    def share(self) -> torch.Tensor:
        return torch.stack([p.flat.detach() for p in self.participants])

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        new = gossip(shared, W)
        for p, row in zip(self.participants, new, strict=True):
            p.load_state(row)
        return new

    def evaluate(self, splits: list[str]) -> list[dict[str, float]]:
        out = []
        for p in self.participants:
            rec: dict[str, float] = {}
            for s in splits:
                for k, v in p.evaluate(s).items():
                    rec[f"{s}_{k}"] = v
            out.append(rec)
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [p.snapshot() for p in self.participants]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        for p, s in zip(self.participants, snaps, strict=True):
            p.restore(s)
