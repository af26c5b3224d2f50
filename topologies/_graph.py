"""Helpers shared by the topology builders: canonical graphs and size errors."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import networkx as nx
import numpy as np

from dfl.errors import ConfigError


def canonical(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    """A simple undirected graph on nodes ``0..n-1`` (inserted in order) with sorted edges, no self loops."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(sorted({(min(u, v), max(u, v)) for u, v in edges if u != v}))
    return graph


def relabel(graph: nx.Graph, order: list[Hashable]) -> nx.Graph:
    """``graph`` with node ``order[i]`` renamed ``i``, made canonical (simple, undirected, no self loops)."""
    index = {node: i for i, node in enumerate(order)}
    return canonical(len(order), ((index[u], index[v]) for u, v in graph.edges()))


def nodes_error(message: str) -> ConfigError:
    """A ``ConfigError`` at ``nodes``: the graph cannot be built with this many nodes."""
    return ConfigError([("nodes", message)])


def param_error(name: str, message: str) -> ConfigError:
    """A ``ConfigError`` at ``topology.params.<name>``."""
    return ConfigError([(f"topology.params.{name}", message)])


def seed_from(rng: np.random.Generator) -> int:
    """A networkx seed drawn from a numpy ``Generator``: ``int(rng.integers(2**31))``."""
    return int(rng.integers(2**31))
