"""``star``: one hub linked to every other node; the leaves talk only to the hub."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error, param_error


class StarParams(BaseModel):
    """``hub``: the id of the centre node."""

    model_config = ConfigDict(extra="forbid")
    hub: int = Field(0, ge=0, description="id of the centre node")


@TOPOLOGIES.register("star", params=StarParams)
def build(n: int, params: StarParams, rng: np.random.Generator) -> nx.Graph:
    """A star: the hub has degree n-1, every other node degree 1.

    ``E = {{hub, i} : i != hub}`` -- the graph of server-based FL, run without a server's privileges.
    """
    if n < 2:
        raise nodes_error(f"star needs at least 2 nodes (a hub and a leaf), got nodes={n}; raise nodes")
    if params.hub >= n:
        raise param_error(
            "hub",
            f"hub node {params.hub} is out of range; ids run from 0 to {n - 1} (nodes={n}); choose a hub below {n}",
        )
    return canonical(n, ((params.hub, i) for i in range(n) if i != params.hub))
