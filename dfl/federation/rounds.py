"""``Federation``: the synchronous round loop, written once for every engine.

Round r (0-based inside, reported 1-based): every node trains locally -> shares its state with its
neighbours in the round-r graph -> observers (attackers) see what was shared -> every node aggregates
``x_i <- sum_j W_ij x_j`` with the configured mixing rule -> evaluation every ``eval.every`` rounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import networkx as nx
import numpy as np
import torch

from dfl.config import ExperimentConfig
from dfl.federation.engine import Engine
from dfl.federation.participant import shared_tensors
from dfl.federation.population import Population
from dfl.mixing import consensus_distance
from dfl.topology import build_graph, build_mixing

Record = dict[str, Any]


class Observer(Protocol):
    """Sees the states shared in a round (attackers hook in here); returns extra metric records.

    ``shared``: ``(n_nodes, n_params)``, what every node shared after its local training in round
    ``round_idx``; ``starts``: the states the nodes began that round from (the truth that an attacker
    with exact knowledge is granted; an observer must not leak it into what attackers are given).
    """

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor) -> list[Record]: ...


class Federation:
    """Runs rounds on an engine and turns what happens into metric records."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        population: Population,
        engine: Engine,
        observers: list[Observer] | None = None,
        starts: torch.Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self.population = population
        self.engine = engine
        self.observers = observers or []
        self._counts = population.sample_counts()
        self.starts = starts  # the nodes' states at the start of the next round (None: the initial model)

    def _starts(self) -> torch.Tensor:
        if self.starts is None:
            flat = torch.cat([t.detach().reshape(-1).float() for t in shared_tensors(self.population.template())])
            self.starts = flat.expand(self.cfg.nodes, -1)
        return self.starts

    def mixing_matrix(self, graph: nx.Graph) -> np.ndarray:
        """``W: (n_nodes, n_nodes)`` of the configured aggregator on ``graph``."""
        return build_mixing(self.cfg, graph, self._counts)

    def is_eval_round(self, round_idx: int) -> bool:
        r = round_idx + 1
        return r % self.cfg.eval.every == 0 or r == self.cfg.rounds

    def run_round(self, round_idx: int) -> list[Record]:
        """One synchronous round; returns its metric records in a fixed order."""
        r = round_idx + 1
        graph = build_graph(self.cfg, round_idx)
        stats = self.engine.train(round_idx)
        shared = self.engine.share()
        records: list[Record] = [{"round": r, "node": i, "kind": "train", **s} for i, s in enumerate(stats)]
        for obs in self.observers:
            records += obs.observe(round_idx, graph, shared, self._starts())
        new = self.engine.mix(self.mixing_matrix(graph), shared)
        if self.observers:
            self.starts = new
        summary: Record = {
            "round": r,
            "node": None,
            "kind": "round",
            "edges": graph.number_of_edges(),
            "train_loss": float(np.mean([s["loss"] for s in stats])),
            "consensus_distance": consensus_distance(new),
        }
        if self.is_eval_round(round_idx):
            evals = self.engine.evaluate(list(self.cfg.eval.splits), round_idx)
            records += [{"round": r, "node": i, "kind": "eval", **e} for i, e in enumerate(evals)]
            for key in evals[0]:
                summary[f"mean_{key}"] = float(np.mean([e[key] for e in evals]))
        records.append(summary)
        return records

    def rounds(self, start: int = 0) -> Iterator[tuple[int, list[Record]]]:
        """Yield ``(round_idx, records)`` for rounds ``start .. rounds-1``."""
        for round_idx in range(start, self.cfg.rounds):
            yield round_idx, self.run_round(round_idx)
