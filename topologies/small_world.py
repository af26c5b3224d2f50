"""``small_world``: a Watts-Strogatz graph -- a ring lattice with each edge rewired with probability p."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error, param_error, seed_from

TRIES = 100


class SmallWorldParams(BaseModel):
    """``k``: ring-lattice degree (even); ``p``: rewiring probability."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(gt=0, description="each node starts linked to its k nearest ring neighbours (k even)")
    p: float = Field(ge=0.0, le=1.0, description="probability that each lattice edge is rewired")

    @field_validator("k")
    @classmethod
    def _even(cls, k: int) -> int:
        if k % 2:
            raise ValueError("k must be even: each node links to k/2 ring neighbours on each side; use 2, 4, 6, ...")
        return k


@TOPOLOGIES.register("small_world", params=SmallWorldParams)
def build(n: int, params: SmallWorldParams, rng: np.random.Generator) -> nx.Graph:
    """A connected Watts-Strogatz small-world graph (needs k < n).

    Start from the ring lattice where node i links to i +- 1..k/2 (mod n), then rewire each edge's far end
    to a uniform random node with probability p (Watts & Strogatz, "Collective dynamics of 'small-world'
    networks", 1998). Redrawn up to 100 times until connected (networkx ``connected_watts_strogatz_graph``).
    """
    k, p = params.k, params.p
    if k >= n:
        raise nodes_error(f"small_world needs k < nodes, got k={k}, nodes={n}; lower topology.params.k or raise nodes")
    try:
        graph = nx.connected_watts_strogatz_graph(n, k, p, tries=TRIES, seed=seed_from(rng))
    except nx.NetworkXError:
        raise param_error(
            "p",
            f"no connected small_world graph with nodes={n}, k={k}, p={p} was drawn in {TRIES} tries;"
            " lower p or raise k",
        ) from None
    return canonical(n, graph.edges())
