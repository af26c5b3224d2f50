"""The communication graph of each round and its mixing matrix, derived statelessly from the config.

Round ``r`` (0-based) uses the registered topology's base graph for epoch ``e = r // resample_every``
(``e = 0`` without resampling), built with ``rng = default_rng([seed, 1, e])``, minus the edges that
are down in that round: each edge fails independently with probability ``link_failure``, drawn with
``default_rng([seed, 2, r])`` over the edges in sorted order. Nothing depends on earlier rounds, so a
resumed run -- or another engine process -- rebuilds the same graphs.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import networkx as nx
import numpy as np

from dfl.config import ExperimentConfig
from dfl.errors import ConfigError
from dfl.mixing import FloatArray, adjacency_matrix, check_mixing_matrix
from dfl.plugins import load_plugins
from dfl.registries import AGGREGATORS, TOPOLOGIES
from dfl.seeding import LINK_FAILURE, TOPOLOGY

#: epochs of a resampled topology that ``check_topology`` builds and checks for connectivity
CHECKED_EPOCHS = 5


def _registries() -> tuple[Any, Any]:

    load_plugins()
    return TOPOLOGIES, AGGREGATORS


def epoch_of(cfg: ExperimentConfig, round_idx: int) -> int:
    """The topology epoch of a round: ``round_idx // resample_every``, or 0 without resampling."""
    every = cfg.topology.resample_every
    return round_idx // every if every else 0


@functools.lru_cache(maxsize=32)
def _base_graph(name: str, params_json: str, n: int, seed: int, epoch: int) -> nx.Graph:
    topologies, _ = _registries()
    entry = topologies.get(name, "topology.name")
    params = entry.parse_params(json.loads(params_json), "topology.params")
    graph = entry.obj(n, params, np.random.default_rng([seed, TOPOLOGY, epoch]))
    return nx.freeze(graph)


def base_graph(cfg: ExperimentConfig, epoch: int = 0) -> nx.Graph:
    """The graph of a topology epoch before link failures (cached; frozen -- copy it to modify it)."""
    params_json = json.dumps(cfg.topology.params, sort_keys=True, default=str)
    return _base_graph(cfg.topology.name, params_json, cfg.nodes, cfg.seed, epoch)


def build_graph(cfg: ExperimentConfig, round_idx: int) -> nx.Graph:
    """The communication graph of round ``round_idx`` (0-based): base graph of its epoch minus failed links.

    Each edge ``{u, v}`` (``u < v``, sorted) is down with probability ``link_failure``:
    ``down = default_rng([seed, 2, round_idx]).random(n_edges) < link_failure``. Returns a frozen graph
    on nodes ``0..n-1``; raises ``ConfigError`` if the topology cannot be built for this config.
    """
    if round_idx < 0:
        raise ValueError(f"round_idx must be >= 0, got {round_idx}")
    graph = base_graph(cfg, epoch_of(cfg, round_idx))
    p = cfg.topology.link_failure
    if p <= 0 or graph.number_of_edges() == 0:
        return graph
    edges = sorted((min(u, v), max(u, v)) for u, v in graph.edges())
    down = np.random.default_rng([cfg.seed, LINK_FAILURE, round_idx]).random(len(edges)) < p
    live = nx.Graph()
    live.add_nodes_from(range(cfg.nodes))
    live.add_edges_from(e for e, d in zip(edges, down, strict=True) if not d)
    return nx.freeze(live)


def build_mixing(cfg: ExperimentConfig, graph: nx.Graph, sample_counts: np.ndarray) -> FloatArray:
    """The ``(n, n)`` mixing matrix of ``cfg.aggregator`` on ``graph``, checked row-stochastic on self + neighbours.

    ``sample_counts``: ``(n,)`` train samples per node. A plugin that returns an invalid matrix raises
    ``ValueError`` (a bug in the plugin, not in the config).
    """
    _, aggregators = _registries()
    entry = aggregators.get(cfg.aggregator.name, "aggregator.name")
    params = entry.parse_params(cfg.aggregator.params, "aggregator.params")
    W = np.asarray(entry.obj(graph, np.asarray(sample_counts), params), dtype=np.float64)
    try:
        check_mixing_matrix(W, adjacency_matrix(graph))
    except ValueError as exc:
        raise ValueError(f"aggregator {cfg.aggregator.name!r} returned an invalid mixing matrix: {exc}") from None
    return W


def _describe(cfg: ExperimentConfig) -> str:
    """``the erdos_renyi graph with nodes=10, p=0.1`` (long parameter values shortened)."""
    parts = [f"nodes={cfg.nodes}"]
    for key, value in cfg.topology.params.items():
        if value is None:
            continue
        text = str(value)
        parts.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return f"the {cfg.topology.name} graph with {', '.join(parts)}"


def _connect_hint(obj: object) -> str:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    hint = getattr(module, "CONNECT_HINT", None)
    return f"{hint}, choose" if isinstance(hint, str) else "choose denser parameters or"


def check_topology(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Errors in the topology for ``cfg`` as ``(dotted.path, message)`` pairs; ``[]`` when it is fine.

    Builds the round-0 base graph (no link failures) -- and with ``resample_every`` the base graphs of
    the first ``CHECKED_EPOCHS`` epochs within ``rounds`` -- and reports a builder's size errors and,
    unless ``topology.allow_disconnected``, the first disconnected graph. An unknown topology name or
    invalid params yield ``[]`` here: ``dfl.experiment.resolve_plugins`` reports those.
    """
    topologies, _ = _registries()
    try:
        entry = topologies.get(cfg.topology.name, "topology.name")
        entry.parse_params(cfg.topology.params, "topology.params")
    except ConfigError:
        return []
    epochs = 1
    if cfg.topology.resample_every:
        epochs = min(CHECKED_EPOCHS, -(-cfg.rounds // cfg.topology.resample_every))
    for epoch in range(epochs):
        try:
            graph = base_graph(cfg, epoch)
        except ConfigError as exc:
            return list(exc.errors)
        if cfg.topology.allow_disconnected or graph.number_of_nodes() == 0 or nx.is_connected(graph):
            continue
        components = nx.number_connected_components(graph)
        when = "" if epoch == 0 else f" when resampled for round {epoch * (cfg.topology.resample_every or 0)}"
        return [
            (
                "topology",
                f"{_describe(cfg)} is disconnected{when} ({components} components); {_connect_hint(entry.obj)}"
                " a connected topology, or set topology.allow_disconnected: true",
            )
        ]
    return []
