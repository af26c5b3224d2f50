"""``mode: async``: the events of :mod:`dfl.federation.events` played on an engine, one interval at a time.

A node's iteration ``k`` (its wake) mixes the newest message from each sender that reached it since it
last mixed with its own state, by its row of the configured mixing matrix over itself and those
senders, renormalised (all of them present: exactly the synchronous gossip row, :func:`gossip_row`),
then trains one local budget with the batches of ``local_batches(seed, node, k)``. Its sends, when the
schedule says the iteration is done, carry that trained state; arrivals fill the receivers' inboxes.

Round ``r`` of the records is the interval ``[r * interval, (r + 1) * interval)`` of simulated time,
closed by the arrivals at its end (so with equal speeds, zero latency, ``push_all`` and ``interval`` 1
each round holds exactly one iteration of every node, and every iteration starts from the state the
synchronous round would give it: the training losses are the synchronous ones, bit for bit). At its
end come:

* each node's ``train`` record: ``loss`` and ``steps`` over the iterations that started in the
  interval, ``iterations``, messages ``sent``, ``received`` and ``mixed``, the mixed messages' age in
  simulated time (``staleness_mean``, ``staleness_max``) and how many iterations their senders were
  behind the mixing node's previous one (``lag_mean``, ``lag_max``: 0 in lockstep);
* the observers: an attacker sees, of each neighbour, the newest message that reached it, with the
  time it was sent (``heard``);
* evaluation of every node's current model (its last trained state, before it mixes what has
  arrived: the synchronous loop evaluates after mixing);
* the ``round`` summary with the simulated ``time`` and the ``messages`` delivered.

Consecutive wakes, which cannot depend on one another, train together in one engine call.

Checkpoints at interval ends add each node's inbox, the messages on their way to it and its pending
sends to its snapshot; the schedule itself is regenerated from the seed and skipped to the interval's
end, so a resumed run continues with exactly the events it would have met.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import networkx as nx
import numpy as np
import torch

from dfl.config import ExperimentConfig
from dfl.federation.engine import Engine
from dfl.federation.events import ARRIVE, SEND, WAKE, Event, Timing, lognormal_speeds, schedule
from dfl.mixing import gossip_row
from dfl.records import Record

Message = tuple[torch.Tensor, float, int]  # state, time sent, sender's iteration


def timing(cfg: ExperimentConfig, n_state: int) -> Timing:
    """The :class:`Timing` of ``cfg.async``: speeds (drawn and overridden), links and churn."""
    a = cfg.async_
    base = lognormal_speeds(cfg.nodes, a.speed_sigma, cfg.seed) if a.speed_sigma > 0 else [1.0] * cfg.nodes
    speeds = [a.speeds.get(i, a.speed * s) for i, s in enumerate(base)]
    offline: dict[int, list[tuple[float, float]]] = {}
    for c in a.churn:
        offline.setdefault(c.node, []).append((c.start, c.end))
    return Timing(speeds=speeds, latency=a.latency, bandwidth=a.bandwidth if a.bandwidth else math.inf,
                  message_bytes=4 * n_state, offline={k: sorted(v) for k, v in offline.items()})


def _closes(event: Event, end: float) -> bool:
    """Whether ``event`` belongs to the interval ending at ``end`` (arrivals and sends at ``end`` do)."""
    return event.time < end or (event.time == end and event.kind != WAKE)


class AsyncRounds:
    """The asynchronous state between intervals and the playing of one interval (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, engine: Engine, graph: nx.Graph, W: np.ndarray, n_state: int) -> None:
        self.cfg, self.engine, self.W = cfg, engine, W
        self.timing = timing(cfg, n_state)
        self._events: Iterator[Event] = schedule(graph, self.timing, cfg.async_.protocol, cfg.seed, math.inf)
        self._next: Event | None = next(self._events, None)
        n = cfg.nodes
        self.inbox: list[dict[int, Message]] = [{} for _ in range(n)]
        self.in_flight: list[dict[tuple[int, int], Message]] = [{} for _ in range(n)]
        self.outbox: list[dict[int, torch.Tensor]] = [{} for _ in range(n)]
        self.last_sent: list[torch.Tensor | None] = [None] * n
        self.heard: list[dict[int, Message]] = [{} for _ in range(n)]  # the newest message from each sender, kept
        self.time = 0.0

    def skip_to(self, round_idx: int) -> None:
        """Advance the schedule past the events of the rounds before ``round_idx`` (a resume)."""
        end = round_idx * self.cfg.async_.interval
        while self._next is not None and _closes(self._next, end):
            self._next = next(self._events, None)
        self.time = end

    def play(self, round_idx: int) -> list[Record]:
        """Every event of interval ``round_idx``; returns each node's ``train`` record (kind set by the caller)."""
        end = (round_idx + 1) * self.cfg.async_.interval
        n = self.cfg.nodes
        stats: list[dict[str, Any]] = [{"loss": 0.0, "steps": 0.0, "iterations": 0, "sent": 0, "received": 0,
                                        "mixed": 0, "ages": [], "lags": []} for _ in range(n)]
        wakes: list[Event] = []
        while self._next is not None and _closes(self._next, end):
            event, self._next = self._next, next(self._events, None)
            if event.kind == WAKE:
                if any(w.node == event.node for w in wakes):  # a node without neighbours wakes again at once
                    self._wake(wakes, stats)
                    wakes = []
                wakes.append(event)
                continue
            self._wake(wakes, stats)  # what woke before this event trains first: its sends may follow
            wakes = []
            self._deliver(event, stats)
        self._wake(wakes, stats)
        self.time = end
        out = []
        for s in stats:
            ages, lags = s.pop("ages"), s.pop("lags")
            iterations = s["iterations"]
            s["loss"] = s["loss"] / iterations if iterations else 0.0
            s["staleness_mean"] = float(np.mean(ages)) if ages else 0.0
            s["staleness_max"] = float(max(ages)) if ages else 0.0
            s["lag_mean"] = float(np.mean(lags)) if lags else 0.0
            s["lag_max"] = int(max(lags)) if lags else 0
            out.append(s)
        return out

    def _deliver(self, event: Event, stats: list[dict[str, Any]]) -> None:
        i, k = event.node, event.iteration
        if event.kind == SEND:
            state = self.outbox[i][k]
            self.in_flight[event.peer][(i, k)] = (state, event.time, k)
            self.last_sent[i] = state
            stats[i]["sent"] += 1
        elif event.kind == ARRIVE:
            message = self.in_flight[i].pop((event.peer, k))
            held = self.inbox[i].get(event.peer)
            if held is None or held[2] < k:  # the newest state of each sender
                self.inbox[i][event.peer] = message
            if event.peer not in self.heard[i] or self.heard[i][event.peer][2] < k:
                self.heard[i][event.peer] = message
            stats[i]["received"] += 1

    def _wake(self, wakes: list[Event], stats: list[dict[str, Any]]) -> None:
        """Mix, then train, the nodes of consecutive wakes (one engine call)."""
        if not wakes:
            return
        ids = [e.node for e in wakes]
        current = self.engine.node_states(ids)
        mixed = []
        for row, e in zip(current, wakes, strict=True):
            i = e.node
            self.outbox[i].pop(e.iteration - 1, None)  # its sends are done: they came before this wake
            inbox, self.inbox[i] = self.inbox[i], {}
            if not inbox:
                mixed.append(row)
                continue
            cols = sorted([i, *inbox])
            weights = self.W[i, cols]
            weights = weights / weights.sum()
            states = torch.stack([row if j == i else inbox[j][0] for j in cols])
            mixed.append(gossip_row(states, weights))
            stats[i]["mixed"] += len(inbox)
            stats[i]["ages"] += [e.time - inbox[j][1] for j in inbox]
            stats[i]["lags"] += [e.iteration - 1 - inbox[j][2] for j in inbox]
        self.engine.set_node_states(ids, torch.stack(mixed))
        trained = self.engine.train_nodes(ids, [e.iteration for e in wakes])
        after = self.engine.node_states(ids)  # copies: they stay as sent while the node trains on
        for row, e, st in zip(after, wakes, trained, strict=True):
            self.outbox[e.node][e.iteration] = row
            s = stats[e.node]
            s["loss"] += st["loss"]
            s["steps"] += st["steps"]
            s["iterations"] += 1

    def shared(self, current: torch.Tensor) -> torch.Tensor:
        """Each node's newest sent state (its ``current`` state where it has sent nothing yet)."""
        return torch.stack([s if s is not None else current[i] for i, s in enumerate(self.last_sent)])

    def snapshot(self) -> list[dict[str, Any]]:
        """Per node, what a checkpoint needs beyond the engine's snapshot."""
        return [{"inbox": dict(self.inbox[i]), "in_flight": dict(self.in_flight[i]), "outbox": dict(self.outbox[i]),
                 "last_sent": self.last_sent[i], "heard": dict(self.heard[i])} for i in range(self.cfg.nodes)]

    def restore(self, snaps: list[dict[str, Any]], round_idx: int) -> None:
        for i, s in enumerate(snaps):
            self.inbox[i] = {int(j): (m[0], float(m[1]), int(m[2])) for j, m in s["inbox"].items()}
            self.in_flight[i] = {(int(a), int(b)): (m[0], float(m[1]), int(m[2])) for (a, b), m in s["in_flight"].items()}
            self.outbox[i] = {int(k): v for k, v in s["outbox"].items()}
            self.last_sent[i] = s["last_sent"]
            self.heard[i] = {int(j): (m[0], float(m[1]), int(m[2])) for j, m in s["heard"].items()}
        self.skip_to(round_idx)
