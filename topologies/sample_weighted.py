"""``sample_weighted``: each node averages itself and its neighbours weighted by train sample counts."""

from __future__ import annotations

import networkx as nx
import numpy as np

from dfl.mixing import FloatArray, adjacency_matrix, sample_weighted_matrix
from dfl.registries import AGGREGATORS
from dfl.registry import NoParams


@AGGREGATORS.register("sample_weighted", params=NoParams)
def weights(graph: nx.Graph, sample_counts: np.ndarray, params: NoParams) -> FloatArray:
    """FedAvg over the neighbourhood: ``W_ij = s_j / sum_{k in N(i) + {i}} s_k`` for ``j in N(i) + {i}``.

    ``sample_counts``: ``(n,)`` train samples per node (McMahan et al. 2017). A neighbourhood with no
    samples at all falls back to the uniform mean. Row-stochastic, not doubly stochastic in general.
    """
    return sample_weighted_matrix(adjacency_matrix(graph), sample_counts)
