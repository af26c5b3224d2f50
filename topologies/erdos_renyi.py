"""``erdos_renyi``: each pair of nodes is an edge independently with probability p, G(n, p)."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error, seed_from

CONNECT_HINT = "raise p"


class ErdosRenyiParams(BaseModel):
    """``p``: the probability that a pair of nodes is an edge."""

    model_config = ConfigDict(extra="forbid")
    p: float = Field(ge=0.0, le=1.0, description="edge probability")


@TOPOLOGIES.register("erdos_renyi", params=ErdosRenyiParams)
def build(n: int, params: ErdosRenyiParams, rng: np.random.Generator) -> nx.Graph:
    """An Erdos-Renyi random graph G(n, p) (may be disconnected; connected w.h.p. for p > ln(n)/n).

    ``P({i, j} in E) = p`` independently (Erdos & Renyi 1959; Gilbert 1959); drawn with networkx's
    ``fast_gnp_random_graph`` (Batagelj & Brandes 2005) seeded from ``rng``.
    """
    if n < 1:
        raise nodes_error(f"erdos_renyi needs at least 1 node, got nodes={n}; raise nodes")
    graph = nx.fast_gnp_random_graph(n, params.p, seed=seed_from(rng))
    return canonical(n, graph.edges())
