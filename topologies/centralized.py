"""``centralized``: a server and its clients -- federated averaging through Flower, not gossip.

A run with ``topology.name: centralized`` does not go through dfl-sim's gossip round loop: it runs
through Flower's simulation engine (``flwr.simulation.run_simulation`` on its Ray backend, see
:mod:`dfl.engines.flower`). Every round each client trains locally from the global model and a server
replaces the global model by the sample-weighted average of the clients' models (FedAvg:
``x <- sum_i n_i x_i / sum_i n_i``, McMahan et al., "Communication-efficient learning of deep
networks from decentralized data", 2017); every client then holds the same model. The graph
registered here is the complete graph on the ``n`` clients -- in one round every client's model
reaches every other through the server -- and is used for drawing and for ``check_topology``;
``aggregator`` is not used (the server always averages weighted by sample counts).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error


class CentralizedParams(BaseModel):
    """No parameters."""

    model_config = ConfigDict(extra="forbid")


@TOPOLOGIES.register("centralized", params=CentralizedParams)
def build(n: int, params: CentralizedParams, rng: np.random.Generator) -> nx.Graph:
    """FedAvg through a Flower server (needs the flower extra); drawn as the complete graph K_n.

    ``E = {{i, j} : 0 <= i < j < n}``: one server round mixes every client's model into every other's.
    """
    if n < 1:
        raise nodes_error(f"centralized needs at least 1 client, got nodes={n}; raise nodes")
    return canonical(n, nx.complete_graph(n).edges())


def config_errors(cfg: object) -> list[tuple[str, str]]:
    """What a centralized config asks for that a Flower run cannot do (:func:`dfl.engines.flower.centralized_errors`),
    as ``(dotted.path, message)``; the config loader asks every topology for these."""
    # here, not at the top: dfl.engines.flower is only needed by centralized runs
    from dfl.engines.flower import centralized_errors

    return centralized_errors(cfg)  # type: ignore[arg-type]


build.config_errors = config_errors  # type: ignore[attr-defined]
