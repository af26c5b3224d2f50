"""``neighbourhood_mean``: each node averages itself and its neighbours uniformly."""

from __future__ import annotations

import networkx as nx
import numpy as np

from dfl.mixing import FloatArray, adjacency_matrix, neighbourhood_mean_matrix
from dfl.registries import AGGREGATORS
from dfl.registry import NoParams


@AGGREGATORS.register("neighbourhood_mean", params=NoParams)
def weights(graph: nx.Graph, sample_counts: np.ndarray, params: NoParams) -> FloatArray:
    """Uniform mixing over self and neighbours: ``W_ij = 1 / (deg_i + 1)`` for ``j in N(i) + {i}``.

    Row-stochastic; doubly stochastic (so gossip preserves the average) only on regular graphs
    (ring, torus, k_regular, fully_connected). ``sample_counts`` is ignored.
    """
    return neighbourhood_mean_matrix(adjacency_matrix(graph))
