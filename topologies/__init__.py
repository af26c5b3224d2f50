"""Built-in topologies (graph builders) and aggregators (mixing rules) of dfl-sim.

One module per registry key. A topology module registers ``build(n, params, rng) -> nx.Graph`` into
``dfl.registries.TOPOLOGIES``: an undirected simple graph on nodes ``0..n-1``; sizes it cannot build
raise ``ConfigError`` at ``nodes``. It may define ``CONNECT_HINT``, the advice printed when its graph is
disconnected. An aggregator module registers ``weights(graph, sample_counts, params) -> (n, n)`` into
``dfl.registries.AGGREGATORS``: a row-stochastic mixing matrix supported on self + neighbours. A
protocol module registers a ``dfl.federation.events.Protocol`` subclass into ``dfl.registries.PROTOCOLS``:
whom a node of ``mode: async`` sends to, and how it mixes.
"""

from __future__ import annotations

from topologies import (
    centralized,
    edges,
    erdos_renyi,
    from_file,
    fully_connected,
    grid,
    k_regular,
    metropolis_hastings,
    neighbourhood_mean,
    pairwise,
    push_all,
    push_one,
    ring,
    sample_weighted,
    small_world,
    star,
    torus,
)

__all__ = [
    "centralized",
    "edges",
    "erdos_renyi",
    "from_file",
    "fully_connected",
    "grid",
    "k_regular",
    "metropolis_hastings",
    "neighbourhood_mean",
    "pairwise",
    "push_all",
    "push_one",
    "ring",
    "sample_weighted",
    "small_world",
    "star",
    "torus",
]
