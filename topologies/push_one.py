"""``push_one``: push gossip -- each finished iteration goes to one neighbour drawn uniformly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dfl.federation.events import Protocol
from dfl.registries import PROTOCOLS
from dfl.registry import NoParams


@PROTOCOLS.register("push_one", params=NoParams)
class PushOne(Protocol):
    """Push gossip: each finished iteration goes to one neighbour drawn uniformly.

    Node ``i`` sends the state of its iteration ``k`` to one neighbour drawn uniformly from the stream
    of (seed, ``i``, ``k``); a wake mixes by its row of the mixing matrix renormalised over itself and
    the senders it heard.

    Push gossip as in randomized gossip (Boyd et al., "Randomized gossip algorithms", IEEE Trans.
    Information Theory 2006) and gossipy's push protocol: one message per iteration, whatever the degree.
    """

    def targets(self, neighbours: list[int], rng: Callable[[], np.random.Generator]) -> list[int]:
        return [neighbours[int(rng().integers(len(neighbours)))]]
