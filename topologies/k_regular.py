"""``k_regular``: a uniformly random graph in which every node has exactly k neighbours."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error, seed_from

CONNECT_HINT = "raise k (k >= 3 is connected with high probability)"


class KRegularParams(BaseModel):
    """``k``: the degree of every node."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(gt=0, description="degree of every node")


@TOPOLOGIES.register("k_regular", params=KRegularParams)
def build(n: int, params: KRegularParams, rng: np.random.Generator) -> nx.Graph:
    """A random k-regular graph on n nodes (needs k < n and n*k even).

    Drawn uniformly-ish with networkx's ``random_regular_graph`` (Steger & Wormald 1999), seeded from ``rng``.
    With neighbourhood_mean, W is symmetric and doubly stochastic (every row is ``1/(k+1)`` on its support).
    """
    k = params.k
    if k >= n:
        raise nodes_error(
            f"k_regular needs k < nodes, got k={k}, nodes={n}; lower topology.params.k or raise nodes"
            " (k = nodes-1 is fully_connected)"
        )
    if (n * k) % 2:
        raise nodes_error(
            f"k_regular needs nodes*k even (each edge has two ends), got nodes={n}, k={k}; make nodes or k even"
        )
    return canonical(n, nx.random_regular_graph(k, n, seed=seed_from(rng)).edges())
