"""Graph context of privacy numbers: where an attacker and its victim stand, and how fast the graph mixes.

* Per node: degree, betweenness centrality (normalised, Brandes 2001; exact up to
  :data:`BETWEENNESS_EXACT_NODES` nodes, estimated from :data:`BETWEENNESS_PIVOTS` seeded pivots beyond,
  Brandes and Pich 2007) and closeness centrality (Wasserman-Faust's variant for graphs that are not
  connected, networkx's default).
* Per attacker-victim pair: the hop distance (``None`` when no path joins them).
* Per mixing matrix: the spectral gap ``1 - |lambda_2|``, with ``lambda_2`` the eigenvalue of second
  largest modulus (Boyd et al., "Randomized gossip algorithms", 2006: gossip's error contracts like
  ``|lambda_2|^t``; 0 on a disconnected graph), up to :data:`SPECTRAL_NODES` nodes. Rounded to
  :data:`GAP_DIGITS` significant digits: the eigensolver's last bits differ between CPU kernels, and no
  more digits than that are meaningful.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

BETWEENNESS_EXACT_NODES = 1000
BETWEENNESS_PIVOTS = 256
SPECTRAL_NODES = 1000
GAP_DIGITS = 6


class GraphContext:
    """The graph context of the attack records of one round's ``graph``: betweenness once for the whole
    graph (when first asked), closeness and degree per node asked for, hop distance per pair."""

    def __init__(self, graph: nx.Graph, seed: int = 0) -> None:
        """``seed``: the pivots' seed where betweenness is estimated (graphs above
        :data:`BETWEENNESS_EXACT_NODES` nodes)."""
        self.graph, self.seed = graph, seed
        self._betweenness: dict[Any, float] | None = None
        self._nodes: dict[Any, dict[str, float]] = {}
        n = graph.number_of_nodes()
        self.pivots = None if n <= BETWEENNESS_EXACT_NODES else min(BETWEENNESS_PIVOTS, n)

    def node(self, u: Any) -> dict[str, float]:
        """``degree``, ``betweenness``, ``closeness`` of node ``u``."""
        if u not in self._nodes:
            if self._betweenness is None:
                self._betweenness = nx.betweenness_centrality(self.graph, k=self.pivots,
                                                              seed=self.seed if self.pivots else None)
            self._nodes[u] = {"degree": int(self.graph.degree(u)), "betweenness": float(self._betweenness[u]),
                              "closeness": float(nx.closeness_centrality(self.graph, u=u))}
        return self._nodes[u]

    def pair(self, attacker: Any, victim: Any) -> dict[str, Any]:
        """The record fields of an attack of ``attacker`` on ``victim``: ``hops`` (``None`` without a path)
        and ``attacker_`` / ``victim_`` ``degree``, ``betweenness``, ``closeness`` (and
        ``betweenness_pivots`` where betweenness is estimated)."""
        try:
            hops: int | None = int(nx.shortest_path_length(self.graph, attacker, victim))
        except nx.NetworkXNoPath:
            hops = None
        out: dict[str, Any] = {"hops": hops}
        for role, u in (("attacker", attacker), ("victim", victim)):
            for key, value in self.node(u).items():
                out[f"{role}_{key}"] = value
        if self.pivots is not None:
            out["betweenness_pivots"] = self.pivots
        return out


def spectral_gap(W: np.ndarray) -> float | None:
    """``1 - |lambda_2|`` of a row-stochastic mixing matrix of at most :data:`SPECTRAL_NODES` nodes
    (``None`` beyond: a dense eigendecomposition per distinct matrix, and sparse solvers converge slowly
    exactly where the gap is tiny); see the module docstring."""
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    if n > SPECTRAL_NODES:
        return None
    if n < 2:
        return 1.0
    values = np.linalg.eigvalsh(W) if np.array_equal(W, W.T) else np.linalg.eigvals(W)
    moduli = np.sort(np.abs(values))[::-1]
    gap = max(0.0, 1.0 - float(moduli[1]))
    return float(f"{gap:.{GAP_DIGITS}g}")
