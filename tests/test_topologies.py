"""Topology builders (one conformance test over the registry, then per-topology shapes) and dfl.topology."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest

import topologies  # noqa: F401  (registers the built-in topologies and aggregators)
from dfl.config import ExperimentConfig, TopologyConfig
from dfl.errors import ConfigError
from dfl.mixing import is_row_stochastic
from dfl.registries import TOPOLOGIES
from dfl.topology import base_graph, build_graph, build_mixing, check_topology


def build(name: str, n: int, params: dict[str, Any] | None = None, seed: int = 0) -> nx.Graph:
    entry = TOPOLOGIES.get(name)
    return entry.obj(n, entry.parse_params(params or {}, "topology.params"), np.random.default_rng(seed))


def config(name: str, nodes: int, params: dict[str, Any] | None = None, **topology: Any) -> ExperimentConfig:
    topology.setdefault("allow_disconnected", False)
    return ExperimentConfig(
        name="topology-test",
        rounds=topology.pop("rounds", 20),
        nodes=nodes,
        seed=topology.pop("seed", 0),
        topology=TopologyConfig(name=name, params=params or {}, **topology),
    )


def edge_set(graph: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in graph.edges()}


# ------------------------------------------------------------------------------------ conformance test


def _examples(tmp_path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    """A valid (nodes, params) for every built-in topology; a new topology must add one here."""
    edge_list = tmp_path / "ring.txt"
    edge_list.write_text("".join(f"{i} {(i + 1) % 7}\n" for i in range(7)))
    return {
        "fully_connected": (6, {}),
        "centralized": (6, {}),
        "ring": (7, {}),
        "star": (7, {"hub": 2}),
        "erdos_renyi": (12, {"p": 0.4}),
        "k_regular": (10, {"k": 3}),
        "small_world": (12, {"k": 4, "p": 0.2}),
        "grid": (12, {"rows": 3}),
        "torus": (12, {"rows": 3, "cols": 4}),
        "from_file": (7, {"path": str(edge_list)}),
        "edges": (5, {"edges": [[0, 1], [1, 2], [2, 3], [3, 4]]}),
    }


@pytest.mark.parametrize("name", TOPOLOGIES.names())
def test_every_topology_builds_a_simple_graph_on_0_to_n_minus_1(name: str, tmp_path: Path) -> None:
    examples = _examples(tmp_path)
    assert name in examples, f"add a valid example for topology {name!r} to _examples"
    n, params = examples[name]
    graph = build(name, n, params)
    assert type(graph) is nx.Graph  # undirected, no parallel edges
    assert list(graph.nodes) == list(range(n))
    assert nx.number_of_selfloops(graph) == 0
    assert nx.is_connected(graph)
    assert edge_set(build(name, n, params)) == edge_set(graph), "same rng seed must give the same graph"
    entry = TOPOLOGIES.get(name)
    assert entry.summary, "the builder needs a one-line docstring"
    with pytest.raises(ConfigError) as err:
        entry.parse_params({**params, "bogus": 1}, "topology.params")
    assert err.value.errors == [("topology.params.bogus", "unknown key; remove it or check its spelling")]


# ----------------------------------------------------------------------------------- shapes per topology


def test_fully_connected_is_complete() -> None:
    graph = build("fully_connected", 6)
    assert graph.number_of_edges() == 15
    assert build("fully_connected", 1).number_of_nodes() == 1


def test_ring_degrees_are_two() -> None:
    graph = build("ring", 9)
    assert all(d == 2 for _, d in graph.degree)
    assert nx.is_connected(graph)
    assert edge_set(build("ring", 3)) == {(0, 1), (1, 2), (0, 2)}


@pytest.mark.parametrize("hub", [0, 3])
def test_star_hub_has_degree_n_minus_1(hub: int) -> None:
    graph = build("star", 7, {"hub": hub})
    assert graph.degree[hub] == 6
    assert all(d == 1 for v, d in graph.degree if v != hub)


def test_star_hub_defaults_to_node_0() -> None:
    assert build("star", 5).degree[0] == 4


def test_star_hub_out_of_range() -> None:
    with pytest.raises(ConfigError) as err:
        build("star", 5, {"hub": 5})
    assert err.value.errors[0][0] == "topology.params.hub"
    assert "ids run from 0 to 4" in err.value.errors[0][1]


@pytest.mark.parametrize(("n", "k"), [(10, 3), (8, 2), (9, 4), (6, 5)])
def test_k_regular_degrees_are_k(n: int, k: int) -> None:
    graph = build("k_regular", n, {"k": k}, seed=3)
    assert all(d == k for _, d in graph.degree)


def test_erdos_renyi_extremes() -> None:
    assert build("erdos_renyi", 8, {"p": 0.0}).number_of_edges() == 0
    assert build("erdos_renyi", 8, {"p": 1.0}).number_of_edges() == 28


def test_small_world_keeps_the_lattice_edge_count_and_is_connected() -> None:
    for seed in range(5):
        graph = build("small_world", 20, {"k": 4, "p": 0.3}, seed=seed)
        assert graph.number_of_edges() == 40
        assert nx.is_connected(graph)
    lattice = build("small_world", 10, {"k": 2, "p": 0.0})
    assert edge_set(lattice) == edge_set(build("ring", 10))


def test_grid_shape() -> None:
    graph = build("grid", 12, {"rows": 3})  # 3 x 4
    assert graph.number_of_edges() == 3 * 3 + 4 * 2
    assert set(graph[0]) == {1, 4}
    assert set(graph[5]) == {1, 4, 6, 9}
    assert sorted(d for _, d in graph.degree).count(2) == 4  # the corners
    assert edge_set(build("grid", 12, {"rows": 3, "cols": 4})) == edge_set(graph)
    assert edge_set(build("grid", 4, {"rows": 1})) == {(0, 1), (1, 2), (2, 3)}


def test_torus_shape() -> None:
    graph = build("torus", 12, {"rows": 3, "cols": 4})
    assert all(d == 4 for _, d in graph.degree)
    assert graph.number_of_edges() == 24
    assert set(graph[0]) == {1, 3, 4, 8}
    assert edge_set(build("torus", 12, {"rows": 3})) == edge_set(graph)


# ------------------------------------------------------------------------------------ files and edges


def test_from_file_edge_list(tmp_path: Path) -> None:
    path = tmp_path / "graph.edges"
    path.write_text("# a comment\n0 1\n1 2 0.5  # weight ignored\n2,3\n\n10\n3 1\n")
    graph = build("from_file", 5, {"path": str(path)})
    # labels 0, 1, 2, 3, 10 sort numerically: 10 -> 4 (isolated)
    assert list(graph.nodes) == [0, 1, 2, 3, 4]
    assert edge_set(graph) == {(0, 1), (1, 2), (2, 3), (1, 3)}


def test_from_file_graphml_maps_labels_in_sorted_order(tmp_path: Path) -> None:
    source = nx.DiGraph()
    source.add_edges_from([("n10", "n2"), ("n2", "n1"), ("n1", "n10"), ("n1", "n1"), ("n3", "n2")])
    path = tmp_path / "graph.graphml"
    nx.write_graphml(source, path)
    graph = build("from_file", 4, {"path": str(path)})
    # natural order: n1 -> 0, n2 -> 1, n3 -> 2, n10 -> 3; directed edges become undirected, self loop dropped
    assert type(graph) is nx.Graph
    assert edge_set(graph) == {(0, 1), (0, 3), (1, 3), (1, 2)}


def test_from_file_node_count_must_match(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text("0 1\n1 2\n")
    with pytest.raises(ConfigError) as err:
        build("from_file", 4, {"path": str(path)})
    assert err.value.errors == [
        ("nodes", f"the graph in {str(path)!r} has 3 nodes, got nodes=4; set nodes: 3 or use another file")
    ]


def test_from_file_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build("from_file", 3, {"path": str(tmp_path / "nope.txt")})
    assert err.value.errors[0][0] == "topology.params.path"
    assert "does not exist" in err.value.errors[0][1]
    bad = tmp_path / "bad.graphml"
    bad.write_text("<graphml><not closed")
    with pytest.raises(ConfigError) as err:
        build("from_file", 3, {"path": str(bad)})
    assert err.value.errors[0][0] == "topology.params.path"
    assert "cannot read" in err.value.errors[0][1] and "GraphML" in err.value.errors[0][1]


def test_edges_inline() -> None:
    graph = build("edges", 4, {"edges": [[0, 1], [2, 1], [1, 2], [3, 0]]})
    assert list(graph.nodes) == [0, 1, 2, 3]
    assert edge_set(graph) == {(0, 1), (1, 2), (0, 3)}


@pytest.mark.parametrize(("edges", "fragment"), [([[0, 1], [1, 4]], "names node 4"), ([[0, 1], [2, 2]], "self loop")])
def test_edges_rejects_bad_edges(edges: list[list[int]], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("edges", 4, {"edges": edges})
    assert err.value.errors[0][0] == "topology.params.edges.1"
    assert fragment in err.value.errors[0][1]


# ---------------------------------------------------------------------------------------- size errors


def test_ring_of_two_is_a_size_error_naming_nodes() -> None:
    with pytest.raises(ConfigError) as err:
        build("ring", 2)
    assert err.value.errors == [
        ("nodes", "ring needs at least 3 nodes, got nodes=2; use fully_connected for 2 nodes or raise nodes")
    ]


@pytest.mark.parametrize(
    ("name", "n", "params", "fragment"),
    [
        ("star", 1, {}, "at least 2 nodes"),
        ("k_regular", 4, {"k": 4}, "k < nodes"),
        ("k_regular", 5, {"k": 3}, "nodes*k even"),
        ("small_world", 4, {"k": 4, "p": 0.1}, "k < nodes"),
        ("grid", 10, {"rows": 3}, "divisible by 3"),
        ("grid", 10, {"rows": 3, "cols": 4}, "set nodes: 12"),
        ("torus", 8, {"rows": 2}, "at least 3 rows and 3 columns"),
    ],
)
def test_size_errors_name_nodes(name: str, n: int, params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(name, n, params)
    [(path, message)] = err.value.errors
    assert path == "nodes"
    assert f"nodes={n}" in message and fragment in message


@pytest.mark.parametrize(
    ("name", "params", "path"),
    [
        ("erdos_renyi", {"p": 1.5}, "topology.params.p"),
        ("erdos_renyi", {}, "topology.params.p"),
        ("k_regular", {"k": 0}, "topology.params.k"),
        ("small_world", {"k": 3, "p": 0.1}, "topology.params.k"),
        ("small_world", {"k": 4, "p": -0.1}, "topology.params.p"),
        ("grid", {"rows": 0}, "topology.params.rows"),
    ],
)
def test_params_are_validated(name: str, params: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        TOPOLOGIES.get(name).parse_params(params, "topology.params")
    assert [p for p, _ in err.value.errors] == [path]


# ---------------------------------------------------------------------------------------- build_graph


def test_build_graph_is_deterministic_per_seed() -> None:
    cfg = config("erdos_renyi", 20, {"p": 0.3})
    assert edge_set(build_graph(cfg, 0)) == edge_set(build_graph(config("erdos_renyi", 20, {"p": 0.3}), 0))
    assert edge_set(build_graph(cfg, 0)) != edge_set(build_graph(config("erdos_renyi", 20, {"p": 0.3}, seed=1), 0))
    # without resample_every every round uses the same graph
    assert all(edge_set(build_graph(cfg, r)) == edge_set(build_graph(cfg, 0)) for r in range(1, 10))


def test_resample_every_changes_random_graphs_across_epochs_only() -> None:
    cfg = config("erdos_renyi", 30, {"p": 0.3}, resample_every=5)
    epoch0 = [edge_set(build_graph(cfg, r)) for r in range(5)]
    epoch1 = [edge_set(build_graph(cfg, r)) for r in range(5, 10)]
    assert all(g == epoch0[0] for g in epoch0)
    assert all(g == epoch1[0] for g in epoch1)
    assert epoch0[0] != epoch1[0]
    ring = config("ring", 8, resample_every=2)
    assert edge_set(build_graph(ring, 0)) == edge_set(build_graph(ring, 7))


def test_build_graph_returns_frozen_graphs_on_all_nodes() -> None:
    graph = build_graph(config("ring", 6, link_failure=0.5), 3)
    assert list(graph.nodes) == list(range(6))
    assert nx.is_frozen(graph)
    with pytest.raises(nx.NetworkXError):
        graph.add_edge(0, 3)
    with pytest.raises(ValueError):
        build_graph(config("ring", 6), -1)


def test_link_failure_removes_about_p_of_the_edges() -> None:
    p, rounds = 0.2, 60
    cfg = config("fully_connected", 30, link_failure=p, rounds=rounds)
    base = edge_set(base_graph(cfg))
    kept = []
    for r in range(rounds):
        live = edge_set(build_graph(cfg, r))
        assert live <= base
        assert live == edge_set(build_graph(cfg, r)), "a round's failures are a function of (seed, round)"
        kept.append(live)
    down = 1 - np.mean([len(k) for k in kept]) / len(base)
    assert abs(down - p) < 0.02  # std of the estimate is about 0.002
    assert len({frozenset(k) for k in kept}) == rounds  # failures differ between rounds
    assert edge_set(build_graph(config("fully_connected", 30), 5)) == base


def test_build_mixing_uses_the_configured_aggregator() -> None:
    cfg = config("star", 5)
    cfg.aggregator.name = "metropolis_hastings"
    W = build_mixing(cfg, build_graph(cfg, 0), np.ones(5))
    assert is_row_stochastic(W)
    assert W[0, 1] == pytest.approx(1 / 5) and W[1, 1] == pytest.approx(4 / 5)


# ------------------------------------------------------------------------------------- check_topology


def test_check_topology_reports_a_disconnected_graph() -> None:
    cfg = config("erdos_renyi", 10, {"p": 0.1})
    [(path, message)] = check_topology(cfg)
    components = nx.number_connected_components(base_graph(cfg))
    assert path == "topology"
    assert message == (
        f"the erdos_renyi graph with nodes=10, p=0.1 is disconnected ({components} components); raise p,"
        " choose a connected topology, or set topology.allow_disconnected: true"
    )
    assert check_topology(config("erdos_renyi", 10, {"p": 0.1}, allow_disconnected=True)) == []


def test_check_topology_accepts_connected_graphs_and_reports_size_errors() -> None:
    assert check_topology(config("ring", 5)) == []
    assert check_topology(config("torus", 9, {"rows": 3})) == []
    assert check_topology(config("ring", 2)) == [
        ("nodes", "ring needs at least 3 nodes, got nodes=2; use fully_connected for 2 nodes or raise nodes")
    ]
    assert check_topology(config("edges", 3, {"edges": [[0, 1]]}))[0][0] == "topology"
    # unknown names and bad params are reported by resolve_plugins, not twice
    assert check_topology(config("no_such_topology", 5)) == []
    assert check_topology(config("erdos_renyi", 5, {"p": 2})) == []


def test_check_topology_checks_resampled_epochs() -> None:
    def connected(cfg: ExperimentConfig, epoch: int) -> bool:
        return nx.is_connected(base_graph(cfg, epoch))

    # find a seed whose round-0 graph is connected but a later epoch's is not
    for seed in range(200):
        cfg = config("erdos_renyi", 20, {"p": 0.2}, resample_every=10, rounds=50, seed=seed)
        if connected(cfg, 0) and not all(connected(cfg, e) for e in range(1, 5)):
            break
    else:
        pytest.fail("no seed with a disconnected later epoch in 200 tries")
    [(path, message)] = check_topology(cfg)
    assert path == "topology" and "disconnected when resampled for round" in message
    static = config("erdos_renyi", 20, {"p": 0.2}, rounds=50, seed=seed)
    assert check_topology(static) == []


def test_neighbours_until_is_the_union_over_the_epochs_so_far_in_any_call_order() -> None:
    from dfl.federation.population import Population

    cfg = config("erdos_renyi", 12, {"p": 0.25}, resample_every=3, rounds=30, seed=4)
    pop = Population(cfg, None, None, None, None)  # type: ignore[arg-type]  # only the topology is read

    def union(node: int, r: int) -> tuple[int, ...]:
        return tuple(sorted(set().union(*(base_graph(cfg, e).neighbors(node) for e in range(r // 3 + 1)))))

    rounds = [0, 1, 5, 4, 13, 2, 29, 7, 29]  # forwards, backwards, skipping epochs, repeating
    for node in (0, 5):
        got = [pop.neighbours_until(node, r) for r in rounds]
        assert got == [union(node, r) for r in rounds]
    assert pop.neighbours_until(0, 29) != tuple(sorted(base_graph(cfg, 0).neighbors(0)))  # resampling added some
    static = Population(config("ring", 8), None, None, None, None)  # type: ignore[arg-type]
    assert static.neighbours_until(3, 19) == (2, 4)
