"""``ring``: node i is linked to i-1 and i+1 (mod n), the cycle graph C_n."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error


class RingParams(BaseModel):
    """No parameters."""

    model_config = ConfigDict(extra="forbid")


@TOPOLOGIES.register("ring", params=RingParams)
def build(n: int, params: RingParams, rng: np.random.Generator) -> nx.Graph:
    """The cycle: each node linked to its two ring neighbours (degree 2).

    ``E = {{i, (i + 1) mod n}}``; needs n >= 3 (with 2 nodes the two ring edges coincide).
    """
    if n < 3:
        raise nodes_error(
            f"ring needs at least 3 nodes, got nodes={n}; use fully_connected for {n} node{'s' * (n != 1)} or raise nodes"
        )
    return canonical(n, nx.cycle_graph(n).edges())
