"""Mixing rules and gossip (dfl.mixing and the aggregator plugins): properties over random graphs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies  # noqa: F401  (registers the built-in aggregators)
from dfl.mixing import (
    adjacency_matrix,
    check_mixing_matrix,
    consensus_distance,
    gossip,
    gossip_row,
    gossip_rows,
    is_doubly_stochastic,
    is_row_stochastic,
    metropolis_hastings_matrix,
    neighbourhood_mean_matrix,
    sample_weighted_matrix,
)
from dfl.registries import AGGREGATORS
from dfl.registry import NoParams

FAST = settings(max_examples=40, deadline=None)


@st.composite
def connected_graphs(draw: st.DrawFn, max_nodes: int = 12) -> nx.Graph:
    """A random connected graph on 0..n-1: a random spanning tree plus random extra edges."""
    n = draw(st.integers(1, max_nodes))
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for v in range(1, n):
        graph.add_edge(draw(st.integers(0, v - 1)), v)
    if n > 1:
        pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] != e[1])
        graph.add_edges_from(draw(st.lists(pairs, max_size=2 * n)))
    return graph


@st.composite
def regular_graphs(draw: st.DrawFn) -> nx.Graph:
    """A random k-regular graph (possibly disconnected)."""
    n = draw(st.integers(2, 14))
    k = draw(st.integers(1, n - 1).filter(lambda k: n * k % 2 == 0))
    return nx.random_regular_graph(k, n, seed=draw(st.integers(0, 2**31 - 1)))


def states_for(n: int, p: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, p)).astype(np.float32))


def mh(graph: nx.Graph) -> np.ndarray:
    return metropolis_hastings_matrix(adjacency_matrix(graph))


# -------------------------------------------------------------------------------------- mixing matrices


@pytest.mark.parametrize("name", AGGREGATORS.names())
@FAST
@given(graph=connected_graphs(), data=st.data())
def test_every_aggregator_is_row_stochastic_on_self_and_neighbours(
    name: str, graph: nx.Graph, data: st.DataObject
) -> None:
    n = graph.number_of_nodes()
    counts = np.array(data.draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)))
    entry = AGGREGATORS.get(name)
    W = entry.obj(graph, counts, entry.parse_params({}, "aggregator.params"))
    assert W.shape == (n, n) and W.dtype == np.float64
    assert is_row_stochastic(W)
    support = adjacency_matrix(graph) | np.eye(n, dtype=bool)
    assert np.all(W[~support] == 0)
    check_mixing_matrix(W, adjacency_matrix(graph))


@FAST
@given(graph=regular_graphs())
def test_neighbourhood_mean_on_regular_graphs_is_doubly_stochastic_and_symmetric(graph: nx.Graph) -> None:
    W = AGGREGATORS.get("neighbourhood_mean").obj(graph, np.ones(graph.number_of_nodes()), NoParams())
    assert is_doubly_stochastic(W)
    assert np.array_equal(W, W.T)


@FAST
@given(graph=connected_graphs())
def test_metropolis_hastings_is_doubly_stochastic_and_symmetric(graph: nx.Graph) -> None:
    W = AGGREGATORS.get("metropolis_hastings").obj(graph, np.ones(graph.number_of_nodes()), NoParams())
    assert is_doubly_stochastic(W)
    assert np.array_equal(W, W.T)
    assert np.all(np.diag(W) > 0)


def test_matrices_on_a_star() -> None:
    star = nx.star_graph(3)  # hub 0, leaves 1..3
    adj = adjacency_matrix(star)
    np.testing.assert_allclose(neighbourhood_mean_matrix(adj)[0], [0.25] * 4)
    np.testing.assert_allclose(neighbourhood_mean_matrix(adj)[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(metropolis_hastings_matrix(adj)[1], [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(metropolis_hastings_matrix(adj)[0], [0.25] * 4)
    W = sample_weighted_matrix(adj, [10, 30, 0, 60])
    np.testing.assert_allclose(W[0], [0.1, 0.3, 0.0, 0.6])
    np.testing.assert_allclose(W[1], [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(W[2], [1.0, 0, 0, 0])
    assert not is_doubly_stochastic(neighbourhood_mean_matrix(adj))


def test_sample_weighted_equal_counts_is_the_neighbourhood_mean_and_zero_counts_fall_back() -> None:
    adj = adjacency_matrix(nx.path_graph(5))
    np.testing.assert_allclose(sample_weighted_matrix(adj, np.full(5, 7)), neighbourhood_mean_matrix(adj))
    np.testing.assert_allclose(sample_weighted_matrix(adj, np.zeros(5)), neighbourhood_mean_matrix(adj))
    with pytest.raises(ValueError, match="shape"):
        sample_weighted_matrix(adj, np.ones(4))
    with pytest.raises(ValueError, match=">= 0"):
        sample_weighted_matrix(adj, [1, 1, -1, 1, 1])


def test_check_mixing_matrix_rejects_weight_outside_the_neighbourhood() -> None:
    adj = adjacency_matrix(nx.path_graph(3))
    W = np.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"W\[0, 2\]"):
        check_mixing_matrix(W, adj)
    with pytest.raises(ValueError, match="row 0 sums to"):
        check_mixing_matrix(np.diag([0.5, 1.0, 1.0]), adj)
    assert not is_row_stochastic(np.array([[1.5, -0.5], [0.5, 0.5]]))


# ----------------------------------------------------------------------------------------------- gossip


@FAST
@given(graph=connected_graphs(), seed=st.integers(0, 1000))
def test_gossip_with_doubly_stochastic_w_preserves_the_mean(graph: nx.Graph, seed: int) -> None:
    X = states_for(graph.number_of_nodes(), seed=seed)
    Y = gossip(X, mh(graph))
    torch.testing.assert_close(Y.double().mean(0), X.double().mean(0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS.names())
@FAST
@given(graph=connected_graphs(), seed=st.integers(0, 1000))
def test_gossip_matches_the_matrix_product(name: str, graph: nx.Graph, seed: int) -> None:
    n = graph.number_of_nodes()
    W = AGGREGATORS.get(name).obj(graph, np.arange(1, n + 1), NoParams())
    X = states_for(n, seed=seed)
    reference = torch.from_numpy(W) @ X.double()
    Y = gossip(X, W)
    assert Y.dtype == torch.float32 and Y.shape == X.shape
    torch.testing.assert_close(Y.double(), reference, rtol=1e-5, atol=1e-6)


@FAST
@given(graph=connected_graphs(), seed=st.integers(0, 1000), data=st.data())
def test_gossip_of_row_shards_is_bit_identical(graph: nx.Graph, seed: int, data: st.DataObject) -> None:
    n = graph.number_of_nodes()
    W = mh(graph)
    X = states_for(n, p=33, seed=seed)
    full = gossip(X, W)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=4)) + [0, n]))
    shards = [gossip(X, W[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert torch.equal(torch.cat(shards), full)
    # a node needs only its own row and its neighbours' states
    for i in range(n):
        cols = np.flatnonzero(W[i])
        neighbours = X[torch.from_numpy(cols)].clone()
        assert torch.equal(gossip_row(neighbours, W[i, cols]), full[i])


def test_gossip_is_independent_of_thread_count_and_tensor_offsets() -> None:
    graph = nx.connected_watts_strogatz_graph(12, 4, 0.3, seed=1)
    W = AGGREGATORS.get("sample_weighted").obj(graph, np.arange(3, 15), NoParams())
    X = states_for(12, p=200_003, seed=2)  # large and odd, so kernels split it into threads and tails
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = gossip(X, W)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(gossip(X, W), single)
    # the same rows at a different memory offset (shifted by one element) give the same bits
    shifted = torch.empty(12 * 200_003 + 1, dtype=torch.float32)[1:].view(12, 200_003)
    shifted.copy_(X)
    assert torch.equal(gossip(shifted, W), single)
    assert torch.equal(torch.cat([gossip(X, W[:5]), gossip(X, W[5:])]), single)


def test_gossip_row_validates_shapes() -> None:
    with pytest.raises(ValueError, match="at least one"):
        gossip_row(torch.zeros(0, 3), [])
    with pytest.raises(ValueError, match="k = len"):
        gossip_row(torch.zeros(2, 3), [1.0])
    with pytest.raises(ValueError, match="matching n_nodes"):
        gossip(torch.zeros(3, 2), np.eye(4))


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 5), min_size=1, max_size=6), width=st.integers(1, 300),
       scale=st.floats(-3, 3), seed=st.integers(0, 2**16))
def test_gossip_rows_equals_gossip_row_on_each_row(counts: list[int], width: int, scale: float, seed: int) -> None:
    """Rows that mix different numbers of states, over several orders of magnitude: bit for bit."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    states = [[torch.randn(width, generator=g) * 10**scale for _ in range(c)] for c in counts]
    weights = [rng.dirichlet(np.ones(c)) for c in counts]
    want = torch.stack([gossip_row(torch.stack(s), w) for s, w in zip(states, weights, strict=True)])
    assert torch.equal(gossip_rows(states, weights), want)


def test_gossip_rows_in_blocks_of_rows_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows go through in cache-sized blocks; blocks of two rows give gossip_row's bits too."""
    import dfl.mixing

    g = torch.Generator().manual_seed(3)
    counts = [3, 1, 2, 3, 1, 2, 2]
    states = [[torch.randn(50, generator=g) for _ in range(c)] for c in counts]
    weights = [np.random.default_rng(c).dirichlet(np.ones(c)) for c in counts]
    want = torch.stack([gossip_row(torch.stack(s), w) for s, w in zip(states, weights, strict=True)])
    monkeypatch.setattr(dfl.mixing, "GOSSIP_BLOCK_BYTES", 2 * 50 * 4)
    assert torch.equal(gossip_rows(states, weights), want)


def test_gossip_rows_validates_its_rows() -> None:
    with pytest.raises(ValueError, match="pair up"):
        gossip_rows([[torch.zeros(3)], []], [[1.0], []])
    with pytest.raises(ValueError, match="pair up"):
        gossip_rows([[torch.zeros(3)]], [[0.5, 0.5]])


# ------------------------------------------------------------------------------------ consensus distance


def test_consensus_distance_values() -> None:
    assert consensus_distance(torch.ones(5, 3) * 2.5) == 0.0
    assert consensus_distance(torch.tensor([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    # distances to the mean (1, 1): sqrt(2), sqrt(2), 0, 0 -> mean sqrt(2) / 2
    X = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [1.0, 1.0]])
    assert consensus_distance(X) == pytest.approx(2**0.5 / 2)


@FAST
@given(graph=connected_graphs(), seed=st.integers(0, 1000))
def test_consensus_distance_is_zero_for_equal_states(graph: nx.Graph, seed: int) -> None:
    row = states_for(1, seed=seed)
    X = row.repeat(graph.number_of_nodes(), 1)
    assert consensus_distance(X) == 0.0
    assert consensus_distance(gossip(X, mh(graph))) == pytest.approx(0.0, abs=1e-6)


@FAST
@given(graph=connected_graphs().filter(lambda g: g.number_of_nodes() >= 2), seed=st.integers(0, 1000))
def test_consensus_distance_decreases_under_metropolis_hastings_gossip(graph: nx.Graph, seed: int) -> None:
    W = mh(graph)
    X = states_for(graph.number_of_nodes(), seed=seed)
    distances = [consensus_distance(X)]
    for _ in range(30):
        X = gossip(X, W)
        distances.append(consensus_distance(X))
    assert all(b <= a + 1e-6 for a, b in zip(distances, distances[1:], strict=False))
    assert distances[-1] < 0.9 * distances[0]


@pytest.mark.parametrize("block", [64, 1 << 12, 1 << 26])
def test_consensus_distance_in_blocks_is_the_one_piece_formula_to_the_bit(block: int, monkeypatch) -> None:
    import dfl.mixing as mixing

    monkeypatch.setattr(mixing, "CONSENSUS_BLOCK_BYTES", block)
    for n, p, seed in ((1, 5, 0), (4, 1000, 1), (37, 513, 2), (200, 70, 3)):
        x = torch.randn(n, p, generator=torch.Generator().manual_seed(seed)) * 10.0 ** seed
        x64 = x.double()
        total = torch.zeros(p, dtype=torch.float64)
        for r in range(0, n, mixing.CONSENSUS_ROWS):  # the definition: the sum of row-block sums
            total += x64[r : r + mixing.CONSENSUS_ROWS].sum(dim=0)
        reference = float(torch.linalg.vector_norm(x64 - total / n, dim=1).mean().item())
        assert mixing.consensus_distance(x) == reference
        plain = float(torch.linalg.vector_norm(x64 - x64.mean(dim=0, keepdim=True), dim=1).mean().item())
        assert mixing.consensus_distance(x) == pytest.approx(plain, rel=1e-12)
