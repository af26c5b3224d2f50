"""dfl.metrics.graph: the graph context of attack records and the spectral gap of mixing matrices."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

import dfl.metrics.graph as graph_metrics
from dfl.metrics.graph import GraphContext, spectral_gap
from dfl.mixing import metropolis_hastings_matrix, neighbourhood_mean_matrix


def test_pair_context_is_networkx_on_a_path_with_an_island() -> None:
    g = nx.path_graph(5)
    g.add_node(9)
    ctx = GraphContext(g)
    rec = ctx.pair(0, 3)
    assert rec["hops"] == 3 and rec["attacker_degree"] == 1 and rec["victim_degree"] == 2
    assert rec["victim_betweenness"] == pytest.approx(nx.betweenness_centrality(g)[3])
    assert rec["attacker_closeness"] == pytest.approx(nx.closeness_centrality(g)[0])
    assert "betweenness_pivots" not in rec
    assert ctx.pair(0, 9)["hops"] is None and ctx.pair(0, 9)["victim_closeness"] == 0.0


def test_betweenness_is_estimated_from_seeded_pivots_on_large_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_metrics, "BETWEENNESS_EXACT_NODES", 20)
    monkeypatch.setattr(graph_metrics, "BETWEENNESS_PIVOTS", 30)
    g = nx.cycle_graph(60)
    a, b = GraphContext(g, seed=3).pair(0, 1), GraphContext(g, seed=3).pair(0, 1)
    assert a == b and a["betweenness_pivots"] == 30
    assert a["attacker_betweenness"] != nx.betweenness_centrality(g)[0]  # estimated ...
    assert a["attacker_betweenness"] == pytest.approx(nx.betweenness_centrality(g)[0], rel=0.1)  # ... closely


@pytest.mark.parametrize("n", [3, 8, 36])
def test_the_spectral_gap_of_a_ring_is_its_closed_form(n: int) -> None:
    W = metropolis_hastings_matrix(nx.to_numpy_array(nx.cycle_graph(n)) > 0)
    # W = I/3 + (shift + shift^T)/3: eigenvalues 1/3 + 2/3 cos(2 pi k / n)
    moduli = sorted((abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(n)), reverse=True)
    assert spectral_gap(W) == pytest.approx(1 - moduli[1], rel=1e-5)


def test_spectral_gap_extremes_and_non_symmetric_matrices() -> None:
    assert spectral_gap(np.full((5, 5), 0.2)) == 1.0  # one round reaches consensus
    two = nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(3))
    assert spectral_gap(neighbourhood_mean_matrix(nx.to_numpy_array(two) > 0)) == 0.0  # never mixes
    star = neighbourhood_mean_matrix(nx.to_numpy_array(nx.star_graph(4)) > 0)  # not symmetric
    moduli = np.sort(np.abs(np.linalg.eigvals(star)))[::-1]
    assert spectral_gap(star) == pytest.approx(1 - moduli[1], rel=1e-5)
    assert spectral_gap(np.eye(graph_metrics.SPECTRAL_NODES + 1)) is None
