"""``fully_connected``: every node is a neighbour of every other (the complete graph K_n)."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error


class FullyConnectedParams(BaseModel):
    """No parameters."""

    model_config = ConfigDict(extra="forbid")


@TOPOLOGIES.register("fully_connected", params=FullyConnectedParams)
def build(n: int, params: FullyConnectedParams, rng: np.random.Generator) -> nx.Graph:
    """The complete graph: every pair of nodes is an edge (degree n-1).

    ``E = {{i, j} : 0 <= i < j < n}``; with neighbourhood_mean, one gossip round reaches the exact average.
    """
    if n < 1:
        raise nodes_error(f"fully_connected needs at least 1 node, got nodes={n}; raise nodes")
    return canonical(n, nx.complete_graph(n).edges())
