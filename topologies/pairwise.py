"""``pairwise``: AD-PSGD's pairwise averaging -- each finished iteration is exchanged with one neighbour."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dfl.federation.events import Protocol
from dfl.registries import PROTOCOLS
from dfl.registry import NoParams


@PROTOCOLS.register("pairwise", params=NoParams)
class Pairwise(Protocol):
    """AD-PSGD's pairwise averaging: each finished iteration is swapped with one neighbour's.

    Node ``i`` picks one neighbour ``j`` uniformly (stream of seed, ``i``, iteration) and the two
    swap states: ``i`` sends its new state, ``j`` answers at once with its newest finished one. Each
    mixes what it got with equal weights, ``x <- (x + x') / 2`` (with ``m`` messages waiting,
    ``1 / (m + 1)`` each): with equal speeds and no latency, AD-PSGD's atomic average (Lian et al., "Asynchronous decentralized parallel stochastic gradient descent", ICML 2018,
    Algorithm 1: ``x_i, x_j <- (x_i + x_j) / 2``).

    Differences, by design of the event model: the average is taken at each node's next wake, not the
    instant of the exchange, and ``j`` answers with the state of its last *finished* iteration (the
    one it trains on has not been sent): in AD-PSGD the averaging writes into ``j``'s model while ``j``
    computes a gradient on what it read before, which is the same staleness seen from the other side.
    The mixing matrix (``aggregator``) is not used.
    """

    exchange = True
    uniform = True

    def targets(self, neighbours: list[int], rng: Callable[[], np.random.Generator]) -> list[int]:
        return [neighbours[int(rng().integers(len(neighbours)))]]
