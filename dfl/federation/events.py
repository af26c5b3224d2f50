"""The discrete-event schedule of asynchronous gossip: when every node trains, sends and mixes.

Time is simulated, never read from the wall clock. Each node repeats one *iteration*: it wakes, mixes
the messages that have reached it since it last mixed, trains for its local budget, and when that is
done sends its state to the neighbours its protocol chooses, then wakes again at once. What decides
the times is a model, not the training:

* **compute**: iteration ``k`` of node ``i`` takes ``1 / speed_i`` time units (``speed``: a constant,
  one speed per node drawn from a log-normal with the run's seed, or speeds given per node);
* **links**: a message sent at ``t`` over a link arrives at ``t + latency + size / bandwidth``;
* **churn**: a node is offline in given intervals ``[start, end)``: it does not wake then (an
  iteration under way finishes and sends; the next one starts at ``end``), and messages that arrive
  while it is offline are lost;
* **protocol**: ``push_one`` sends to one neighbour chosen uniformly from a stream of (seed, node,
  iteration) (push gossip, as in gossipy), ``push_all`` to every neighbour.

So the whole order of events is a pure function of the seed, the graph and these parameters: an engine
replays it and the run is byte-identical whatever executes it, and across resume (the schedule
position is all a checkpoint needs besides states and inboxes). Events come in time order; at one
instant, sends come by node id, each followed by the arrivals it causes there (zero latency), and
every arrival comes before any wake, so that a message that arrives exactly when its receiver wakes
is mixed: with equal speeds, zero latency and ``push_all`` every node wakes at
``t = k`` with every neighbour's iteration ``k - 1`` state in its inbox, the synchronous round.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from dfl.seeding import ASYNC_SCHEDULE, numpy_rng

ARRIVE, SEND, WAKE = 0, 1, 2  # the order of events at one instant
KINDS = {ARRIVE: "arrive", SEND: "send", WAKE: "wake"}
PROTOCOLS = ("push_one", "push_all")


@dataclass(frozen=True, order=True)
class Event:
    """One event: ``kind`` (:data:`ARRIVE`, :data:`SEND`, :data:`WAKE`) at ``time`` for ``node``.

    ``iteration``: the node's iteration that wakes or sends, or for an arrival the sender's iteration
    whose state the message carries; ``peer``: the receiver of a send, the sender of an arrival."""

    time: float
    kind: int
    node: int
    peer: int = -1
    iteration: int = 0


@dataclass(frozen=True)
class Timing:
    """What decides the times (see the module docstring). ``speeds``: per node, iterations per time
    unit; ``latency`` and ``bandwidth`` per message (bandwidth ``inf``: size costs nothing);
    ``offline``: per node, sorted ``(start, end)`` intervals."""

    speeds: Sequence[float]
    latency: float = 0.0
    bandwidth: float = math.inf
    message_bytes: int = 0
    offline: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def transit(self) -> float:
        return self.latency + (0.0 if math.isinf(self.bandwidth) else self.message_bytes / self.bandwidth)

    def online_from(self, node: int, t: float) -> float:
        """The first instant at or after ``t`` when ``node`` is online."""
        for start, end in self.offline.get(node, []):
            if start <= t < end:
                t = end
        return t

    def is_online(self, node: int, t: float) -> bool:
        return self.online_from(node, t) == t


def lognormal_speeds(n: int, sigma: float, seed: int) -> list[float]:
    """One speed per node, ``exp(N(0, sigma^2))``: median 1, drawn from the run's seed."""
    return np.exp(numpy_rng(seed, ASYNC_SCHEDULE, 0).normal(0.0, sigma, n)).tolist()


def schedule(graph: nx.Graph, timing: Timing, protocol: str, seed: int, until: float) -> Iterator[Event]:
    """Every event with ``time < until``, in order (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    n = graph.number_of_nodes()
    if len(timing.speeds) != n or any(not s > 0 for s in timing.speeds):
        raise ValueError(f"speeds must be {n} positive numbers, got {list(timing.speeds)[:5]}...")
    neighbours = {i: sorted(graph.neighbors(i)) for i in graph.nodes}
    # the queue holds plain tuples in Event's field order: they compare as the events would, faster
    queue: list[tuple[float, int, int, int, int]] = [(timing.online_from(i, 0.0), WAKE, i, -1, 0) for i in range(n)]
    heapq.heapify(queue)
    transit = timing.transit()
    while queue:
        t, kind, i, peer, k = heapq.heappop(queue)
        if t >= until:
            return
        if kind == ARRIVE and not timing.is_online(i, t):
            continue  # lost: its receiver is offline
        yield Event(t, kind, i, peer, k)
        if kind == WAKE:
            done = t + 1.0 / timing.speeds[i]
            for j in _targets(neighbours[i], protocol, seed, i, k):
                heapq.heappush(queue, (done, SEND, i, j, k))
            heapq.heappush(queue, (timing.online_from(i, done), WAKE, i, -1, k + 1))
        elif kind == SEND:
            heapq.heappush(queue, (t + transit, ARRIVE, peer, i, k))


def _targets(neighbours: list[int], protocol: str, seed: int, node: int, iteration: int) -> list[int]:
    if not neighbours:
        return []
    if protocol == "push_all":
        return neighbours
    pick = numpy_rng(seed, ASYNC_SCHEDULE, 1, node, iteration).integers(len(neighbours))
    return [neighbours[int(pick)]]
