"""``metropolis_hastings``: Metropolis-Hastings weights, doubly stochastic on any graph."""

from __future__ import annotations

import networkx as nx
import numpy as np

from dfl.mixing import FloatArray, adjacency_matrix, metropolis_hastings_matrix
from dfl.registries import AGGREGATORS
from dfl.registry import NoParams


@AGGREGATORS.register("metropolis_hastings", params=NoParams)
def weights(graph: nx.Graph, sample_counts: np.ndarray, params: NoParams) -> FloatArray:
    """``W_ij = 1 / (1 + max(deg_i, deg_j))`` for edges, ``W_ii = 1 - sum_{j != i} W_ij``.

    Symmetric and doubly stochastic, so gossip preserves the average model and converges to it on a
    connected graph (Xiao & Boyd, "Fast linear iterations for distributed averaging", 2004).
    ``sample_counts`` is ignored.
    """
    return metropolis_hastings_matrix(adjacency_matrix(graph))
