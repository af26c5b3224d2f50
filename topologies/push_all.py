"""``push_all``: each finished iteration goes to every neighbour (synchronous gossip's messages)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dfl.federation.events import Protocol
from dfl.registries import PROTOCOLS
from dfl.registry import NoParams


@PROTOCOLS.register("push_all", params=NoParams)
class PushAll(Protocol):
    """Each finished iteration goes to every neighbour (synchronous gossip's messages).

    Node ``i`` sends the state of every iteration to all its neighbours; a wake mixes
    ``x_i <- sum_{j in {i} + S} W_ij x_j / sum_{j in {i} + S} W_ij`` over the senders ``S`` it heard
    (all of them: exactly the synchronous gossip row ``x_i <- sum_j W_ij x_j``).

    D-PSGD's gossip step (Lian et al., "Can decentralized algorithms outperform centralized
    algorithms?", NeurIPS 2017) played asynchronously, with each neighbour's newest state however old.
    """

    def targets(self, neighbours: list[int], rng: Callable[[], np.random.Generator]) -> list[int]:
        return neighbours
