"""The discrete-event schedule of asynchronous gossip: when every node trains, sends and mixes.

Time is simulated, never read from the wall clock. Each node repeats one *iteration*: it wakes, mixes
the messages that have reached it since it last mixed, trains for its local budget, and when that is
done sends its state to the neighbours its protocol chooses, then wakes again at once. What decides
the times is a model, not the training:

* **compute**: iteration ``k`` of node ``i`` takes ``1 / speed_i`` time units (``speed``: a constant,
  one speed per node drawn from a log-normal with the run's seed, or speeds given per node, in the
  config or a device trace);
* **links**: a message sent at ``t`` from node ``i`` to ``j`` arrives at ``t + latency + size / bandwidth``,
  with the link's own values where given, else the sender's (its access link: the receiver's is taken
  as unlimited), else everyone's;
* **churn**: a node is offline in given intervals ``[start, end)``: it does not wake then (an
  iteration under way finishes and sends; the next one starts at ``end``), and messages that arrive
  while it is offline are lost (a ``LOST`` event in the arrival's place);
* **protocol** (a :class:`Protocol` of the ``protocols`` registry, ``topologies/``): whom a node sends
  to when an iteration is done, drawn from a stream of (seed, node, iteration); an *exchange* protocol
  (pairwise averaging) has the partner answer at once with its newest finished state.

So the whole order of events is a pure function of the seed, the graph and these parameters: an engine
replays it and the run is byte-identical whatever executes it, and across resume (the schedule
position is all a checkpoint needs besides states and inboxes). Events come in time order; at one
instant, sends come by node id, each followed by its answer (an exchange) and the arrivals they cause
there (zero latency), and
every arrival comes before any wake, so that a message that arrives exactly when its receiver wakes
is mixed: with equal speeds, zero latency and ``push_all`` every node wakes at
``t = k`` with every neighbour's iteration ``k - 1`` state in its inbox, the synchronous round.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import networkx as nx
import numpy as np
from pydantic import BaseModel

from dfl.registries import PROTOCOLS
from dfl.seeding import ASYNC_SCHEDULE, numpy_rng

ARRIVE, SEND, WAKE = 0, 1, 2  # the order of events at one instant
LOST = 3  # an arrival at a receiver that is offline: the message is dropped (at its arrival's place)
KINDS = {ARRIVE: "arrive", SEND: "send", WAKE: "wake", LOST: "lost"}


class Protocol:
    """A gossip protocol of ``mode: async``: whom a node sends its state to when an iteration is done,
    and how a wake weighs what it mixes. Registered, with a params model, into
    ``dfl.registries.PROTOCOLS`` (the built-in ones live in ``topologies/``) and built with its params.

    ``exchange``: each send is answered at the same instant by the receiver's newest *finished* state
    (the state its last completed iteration trained), which travels back over the same link; nothing
    is answered by a node that is offline or has finished no iteration yet.
    ``uniform``: a wake mixes its own state and the ``m`` messages with weight ``1 / (m + 1)`` each,
    instead of its row of the configured mixing matrix renormalised over them.
    """

    exchange: ClassVar[bool] = False
    uniform: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def targets(self, neighbours: list[int], rng: Callable[[], np.random.Generator]) -> list[int]:
        """The receivers of one iteration's sends among ``neighbours`` (sorted ids, never empty);
        ``rng()`` gives the stream of this node and iteration (made only when called)."""
        raise NotImplementedError


def make_protocol(name: str) -> Protocol:
    """The registered protocol ``name``, with its default params."""
    entry = PROTOCOLS.get(name, "async.protocol")
    return entry.obj(entry.parse_params(None, "async.protocol"))


@dataclass(frozen=True, order=True)
class Event:
    """One event: ``kind`` (:data:`ARRIVE`, :data:`SEND`, :data:`WAKE`, :data:`LOST`) at ``time`` for ``node``.

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
    unit; ``latency`` and ``bandwidth`` per message (bandwidth ``inf``: size costs nothing), replaced
    for the messages of the nodes in ``latencies`` and ``bandwidths``; ``offline``: per node, sorted
    ``(start, end)`` intervals."""

    speeds: Sequence[float]
    latency: float = 0.0
    bandwidth: float = math.inf
    message_bytes: int = 0
    offline: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    latencies: dict[int, float] = field(default_factory=dict)
    bandwidths: dict[int, float] = field(default_factory=dict)
    links: dict[tuple[int, int], tuple[float | None, float | None]] = field(default_factory=dict)

    def transit(self, sender: int, receiver: int = -1) -> float:
        """How long a message from ``sender`` to ``receiver`` takes (``links`` holds both directions of a
        link: ``(latency, bandwidth)``, ``None`` where the sender's value holds)."""
        latency, bandwidth = self.links.get((sender, receiver), (None, None))
        latency = self.latencies.get(sender, self.latency) if latency is None else latency
        bandwidth = self.bandwidths.get(sender, self.bandwidth) if bandwidth is None else bandwidth
        return latency + (0.0 if math.isinf(bandwidth) else self.message_bytes / bandwidth)

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


def schedule(graph: nx.Graph, timing: Timing, protocol: Protocol, seed: int, until: float) -> Iterator[Event]:
    """Every event with ``time < until``, in order (see the module docstring).

    An exchange's answer is yielded right after the send it answers: a ``SEND`` from the receiver
    back to the sender, with the receiver's newest finished iteration (``started[j]``, its latest wake,
    tells which: that wake's iteration if it is done by now, else the one before)."""
    n = graph.number_of_nodes()
    if len(timing.speeds) != n or any(not s > 0 for s in timing.speeds):
        raise ValueError(f"speeds must be {n} positive numbers, got {list(timing.speeds)[:5]}...")
    neighbours = {i: sorted(graph.neighbors(i)) for i in graph.nodes}
    # the queue holds plain tuples in Event's field order: they compare as the events would, faster
    queue: list[tuple[float, int, int, int, int]] = [(timing.online_from(i, 0.0), WAKE, i, -1, 0) for i in range(n)]
    heapq.heapify(queue)
    transit = {(i, j): timing.transit(i, j) for i, j in graph.edges} | {(j, i): timing.transit(j, i) for i, j in graph.edges}
    started = [(-math.inf, -1)] * n  # each node's latest wake: (time, iteration)
    while queue:
        t, kind, i, peer, k = heapq.heappop(queue)
        if t >= until:
            return
        if kind == ARRIVE and not timing.is_online(i, t):
            kind = LOST  # its receiver is offline
        yield Event(t, kind, i, peer, k)
        if kind == WAKE:
            started[i] = (t, k)
            done = t + 1.0 / timing.speeds[i]
            for j in _targets(protocol, neighbours[i], seed, i, k):
                heapq.heappush(queue, (done, SEND, i, j, k))
            heapq.heappush(queue, (timing.online_from(i, done), WAKE, i, -1, k + 1))
        elif kind == SEND:
            heapq.heappush(queue, (t + transit[i, peer], ARRIVE, peer, i, k))
            if protocol.exchange and timing.is_online(peer, t):
                began, m = started[peer]
                m = m if began + 1.0 / timing.speeds[peer] <= t else m - 1
                if m >= 0:
                    yield Event(t, SEND, peer, i, m)
                    heapq.heappush(queue, (t + transit[peer, i], ARRIVE, i, peer, m))


def _targets(protocol: Protocol, neighbours: list[int], seed: int, node: int, iteration: int) -> list[int]:
    if not neighbours:
        return []
    return protocol.targets(neighbours, lambda: numpy_rng(seed, ASYNC_SCHEDULE, 1, node, iteration))
