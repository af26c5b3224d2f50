"""``edges``: the graph given inline as a list of node-id pairs."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error, param_error

CONNECT_HINT = "add edges that join the components"


class EdgesParams(BaseModel):
    """``edges``: undirected edges ``[[i, j], ...]`` between node ids ``0..nodes-1``."""

    model_config = ConfigDict(extra="forbid")
    edges: list[tuple[NonNegativeInt, NonNegativeInt]] = Field(description="undirected edges as [i, j] pairs")


@TOPOLOGIES.register("edges", params=EdgesParams)
def build(n: int, params: EdgesParams, rng: np.random.Generator) -> nx.Graph:
    """The graph on nodes ``0..n-1`` with exactly the listed edges (duplicates and ``[j, i]`` merge).

    Nodes that appear in no edge are isolated (and make the graph disconnected).
    """
    if n < 1:
        raise nodes_error(f"edges needs at least 1 node, got nodes={n}; raise nodes")
    for idx, (u, v) in enumerate(params.edges):
        if u >= n or v >= n:
            raise param_error(
                f"edges.{idx}",
                f"edge [{u}, {v}] names node {max(u, v)}, but ids run from 0 to {n - 1} (nodes={n});"
                " fix the edge or raise nodes",
            )
        if u == v:
            raise param_error(
                f"edges.{idx}",
                f"edge [{u}, {v}] is a self loop; remove it (every node always mixes in its own state)",
            )
    return canonical(n, params.edges)
