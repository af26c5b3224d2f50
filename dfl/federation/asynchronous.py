"""``mode: async``: the events of :mod:`dfl.federation.events` played on an engine, one interval at a time.

A node's iteration ``k`` (its wake) mixes the newest message from each sender that reached it since it
last mixed with its own state, by its row of the configured mixing matrix over itself and those
senders, renormalised (all of them present: exactly the synchronous gossip row, :func:`dfl.mixing.gossip_row`;
a protocol with ``uniform`` weights, such as ``pairwise``, weighs them all equally), then trains one local budget with the batches of ``local_batches(seed, node, k)``. Its sends, when the
schedule says the iteration is done, carry that trained state; arrivals fill the receivers' inboxes.

Round ``r`` of the records is the interval ``[r * interval, (r + 1) * interval)`` of simulated time,
closed by the arrivals at its end (so with equal speeds, zero latency, ``push_all`` and ``interval`` 1
each round holds exactly one iteration of every node, and every iteration starts from the state the
synchronous round would give it: the training losses are the synchronous ones, bit for bit). At its
end come:

* each node's ``train`` record: ``loss`` and ``steps`` over the iterations that started in the
  interval, ``iterations``, messages ``sent``, ``received``, ``lost`` (arrived while it was offline)
  and ``mixed``, the mixed messages' age in
  simulated time (``staleness_mean``, ``staleness_max``) and how many iterations their senders were
  behind the mixing node's previous one (``lag_mean``, ``lag_max``: 0 in lockstep);
* the observers: an attacker sees, of each neighbour, the newest message that reached it, with the
  time it was sent (``heard``);
* evaluation of every node's current model (its last trained state, before it mixes what has
  arrived: the synchronous loop evaluates after mixing);
* the ``round`` summary with the simulated ``time`` and the ``messages`` delivered;
* with ``async.log_mixes``, every mix of the interval (:data:`MIX_COLUMNS`: the wake's time, node and
  iteration, the sender and the iteration its message carried, when it was sent, its age and lag) in
  ``mixes/round-NNNN.csv`` of the run directory, a file per round so that a resumed run rewrites
  exactly the rounds it replays.

Wakes train in *waves*, one engine call each: a wave holds every wake of the interval whose inputs the
waves before it have trained (so in lockstep a round is one wave, and uneven speeds cost a few waves an
interval, not one call per wake).

Checkpoints at interval ends add each node's inbox, the messages on their way to it and the states they
carry to its snapshot; the schedule itself is regenerated from the seed and skipped to the interval's
end, so a resumed run continues with exactly the events it would have met.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import networkx as nx
import numpy as np
import torch

from dfl.config import ExperimentConfig
from dfl.federation.engine import Engine, Mix, mixed
from dfl.federation.events import LOST, SEND, WAKE, Event, Timing, lognormal_speeds, make_protocol, schedule
from dfl.records import Record


class Message(NamedTuple):
    """A message as an attacker heard it: the ``state`` the sender's ``iteration`` trained, sent at
    ``time``. For the attackers an observer watches (gradient inversion): the state the sender began
    that iteration from (``start``, the truth an attacker with exact knowledge is granted) and the
    message it heard from that sender before (``previous``, or ``None``)."""

    state: torch.Tensor
    time: float
    iteration: int
    start: torch.Tensor | None = None
    previous: torch.Tensor | None = None


Key = tuple[int, int]  # (node, iteration): the state node's iteration trained, which its messages carry


@dataclass
class _Wake:
    """One planned wake: what it mixes (the messages' keys and renormalised weights, its own state
    where the key is ``None``) and the wave of the interval it trains in."""

    node: int
    iteration: int
    sources: list[Key | None]
    weights: np.ndarray | None
    wave: int


MIX_COLUMNS = ("time", "node", "iteration", "sender", "sender_iteration", "sent", "age", "lag")


def timing(cfg: ExperimentConfig, n_state: int) -> Timing:
    """The :class:`Timing` of ``cfg.async``: speeds (drawn and overridden), links (per node where given) and churn."""
    a = cfg.async_
    base = lognormal_speeds(cfg.nodes, a.speed_sigma, cfg.seed) if a.speed_sigma > 0 else [1.0] * cfg.nodes
    speeds = [a.speeds.get(i, a.speed * s) for i, s in enumerate(base)]
    offline: dict[int, list[tuple[float, float]]] = {}
    for c in a.churn:
        offline.setdefault(c.node, []).append((c.start, c.end))
    return Timing(speeds=speeds, latency=a.latency, bandwidth=a.bandwidth if a.bandwidth else math.inf,
                  message_bytes=4 * n_state, offline={k: sorted(v) for k, v in offline.items()},
                  latencies=dict(a.latencies), bandwidths=dict(a.bandwidths),
                  links={pair: (link.latency, link.bandwidth) for link in a.links
                         for pair in ((link.u, link.v), (link.v, link.u))})


def _compact(states: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """``states`` with the rows that keep a mostly unused buffer alive copied out into one new buffer.

    A wave's trained states come back as one ``(wakes, n_state)`` tensor whose rows are kept as views;
    a row still referred to long after the others were dropped would hold the whole wave's memory (and
    write it into checkpoints). Rows whose buffer is more than half unused move; the others stay."""
    rows: dict[int, list[Key]] = {}
    for key, state in states.items():
        rows.setdefault(state.untyped_storage().data_ptr(), []).append(key)
    moved = [key for keys in rows.values()
             if states[keys[0]].untyped_storage().nbytes() > 2 * len(keys) * states[keys[0]].nbytes for key in keys]
    if not moved:
        return states
    return {**states, **dict(zip(moved, torch.stack([states[key] for key in moved]), strict=True))}


def _closes(event: Event, end: float) -> bool:
    """Whether ``event`` belongs to the interval ending at ``end`` (arrivals and sends at ``end`` do)."""
    return event.time < end or (event.time == end and event.kind != WAKE)


class AsyncRounds:
    """The asynchronous state between intervals and the playing of one interval (see the module docstring).

    Messages are held as keys: a message from ``j`` of iteration ``m`` carries the state ``j`` trained in
    that iteration, kept once in ``states`` as long as a message, a pending send or a wake refers to it."""

    def __init__(self, cfg: ExperimentConfig, engine: Engine, graph: nx.Graph, W: np.ndarray, n_state: int,
                 watched: Sequence[int] = ()) -> None:
        """``watched``: attackers whose heard messages carry ``start`` and ``previous`` (:class:`Message`)."""
        self.cfg, self.engine, self.W = cfg, engine, W
        self.watched = frozenset(watched)
        self.victims = frozenset(j for a in self.watched for j in graph.neighbors(a))
        self.timing = timing(cfg, n_state)
        self.protocol = make_protocol(cfg.async_.protocol)
        self._events: Iterator[Event] = schedule(graph, self.timing, self.protocol, cfg.seed, math.inf)
        self._next: Event | None = next(self._events, None)
        n = cfg.nodes
        self.states: dict[Key, torch.Tensor] = {}
        self.inbox: list[dict[int, tuple[float, int]]] = [{} for _ in range(n)]  # sender -> (time sent, iteration)
        # (sender, iteration) -> the times it was sent, oldest first (pairwise may send one state twice)
        self.in_flight: list[dict[Key, list[float]]] = [{} for _ in range(n)]
        self.heard: list[dict[int, tuple[float, int]]] = [{} for _ in range(n)]  # the newest from each sender, kept
        self.last_sent: list[int | None] = [None] * n  # the iteration of each node's newest sent state
        self.trained: list[int | None] = [None] * n  # each node's latest iteration (its sends may be pending)
        self.begun: dict[Key, torch.Tensor] = {}  # watched attackers' neighbours: the state each wake trained from
        self.previous: dict[int, dict[int, tuple[float, int]]] = {a: {} for a in self.watched}  # heard before the newest
        self.time = 0.0
        self.waves = 0  # the engine calls that trained the last interval
        self.mixes: list[tuple[float, int, int, int, int, float, float, int]] = []  # the last interval's (MIX_COLUMNS)

    def skip_to(self, round_idx: int) -> None:
        """Advance the schedule past the events of the rounds before ``round_idx`` (a resume)."""
        end = round_idx * self.cfg.async_.interval
        while self._next is not None and _closes(self._next, end):
            self._next = next(self._events, None)
        self.time = end

    def play(self, round_idx: int) -> list[Record]:
        """Every event of interval ``round_idx``; returns each node's ``train`` record (kind set by the caller).

        The interval's events are first walked in order with messages as keys, which plans every wake:
        what it mixes, and its *wave*, one more than the latest wave of the wakes it depends on (the
        node's previous wake and the wakes that trained the states it mixes). Then the waves train in
        order, each one engine call: a wave's wakes depend on none of each other, and every state a wake
        reads is the one the event order gives it, so the results do not depend on how wakes are grouped."""
        end = (round_idx + 1) * self.cfg.async_.interval
        n = self.cfg.nodes
        stats: list[dict[str, Any]] = [{"loss": 0.0, "steps": 0.0, "iterations": 0, "sent": 0, "received": 0,
                                        "lost": 0, "mixed": 0, "ages": [], "lags": []} for _ in range(n)]
        waves: dict[Key, int] = {}  # the wave of each wake planned in this interval
        plan: list[_Wake] = []
        self.mixes = []
        while self._next is not None and _closes(self._next, end):
            event, self._next = self._next, next(self._events, None)
            if event.kind == WAKE:
                plan.append(self._plan(event, waves, stats[event.node]))
            else:
                self._deliver(event, stats)
        self._train(plan, stats)
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
            self.in_flight[event.peer].setdefault((i, k), []).append(event.time)
            self.last_sent[i] = k
            stats[i]["sent"] += 1
        else:  # ARRIVE or LOST
            times = self.in_flight[i][(event.peer, k)]
            message = (times.pop(0), k)  # a link's messages all take the same time: FIFO
            if not times:
                del self.in_flight[i][(event.peer, k)]
            if event.kind == LOST:
                stats[i]["lost"] += 1
                return
            held = self.inbox[i].get(event.peer)
            if held is None or held[1] < k:  # the newest state of each sender
                self.inbox[i][event.peer] = message
            before = self.heard[i].get(event.peer)
            if before is None or before[1] < k:
                self.heard[i][event.peer] = message
                if before is not None and i in self.watched:
                    self.previous[i][event.peer] = before
            stats[i]["received"] += 1

    def _plan(self, event: Event, waves: dict[Key, int], s: dict[str, Any]) -> _Wake:
        """The wake ``event``: it takes its inbox, and comes one wave after what it depends on."""
        i, k = event.node, event.iteration
        inbox, self.inbox[i] = self.inbox[i], {}
        self.trained[i] = k
        wave = 1 + max([waves.get((i, k - 1), 0), *(waves.get((j, m), 0) for j, (_, m) in inbox.items())])
        waves[(i, k)] = wave
        if not inbox:
            return _Wake(i, k, [], None, wave)
        cols = sorted([i, *inbox])
        weights = np.ones(len(cols)) if self.protocol.uniform else self.W[i, cols]
        s["mixed"] += len(inbox)
        s["ages"] += [event.time - inbox[j][0] for j in inbox]
        s["lags"] += [k - 1 - inbox[j][1] for j in inbox]
        if self.cfg.async_.log_mixes:
            self.mixes += [(event.time, i, k, j, inbox[j][1], inbox[j][0], event.time - inbox[j][0], k - 1 - inbox[j][1])
                           for j in sorted(inbox)]
        return _Wake(i, k, [None if j == i else (j, inbox[j][1]) for j in cols], weights / weights.sum(), wave)

    def _kept(self) -> set[Key]:
        """The states still referred to once the interval's events are planned: messages in inboxes, on
        their way or heard, each node's newest sent state and its latest one (sends may be pending)."""
        keep = {(j, m) for box in (*self.inbox, *self.heard) for j, (_, m) in box.items()}
        keep |= {key for flight in self.in_flight for key in flight}
        keep |= {(i, k) for ks in (self.last_sent, self.trained) for i, k in enumerate(ks) if k is not None}
        if self.protocol.exchange:  # an answer carries the newest finished iteration: maybe the one before
            keep |= {(i, k - 1) for i, k in enumerate(self.trained) if k}
        keep |= {(j, m) for a in self.watched for j, (_, m) in self.previous[a].items()}
        return keep

    def _train(self, plan: list[_Wake], stats: list[dict[str, Any]]) -> None:
        """Mix, then train, the planned wakes, wave by wave (one engine call each); then forget every
        state nothing refers to any more."""
        keep = self._kept()
        last_read: dict[Key, int] = {}
        for w in plan:
            for key in w.sources:
                if key is not None:
                    last_read[key] = max(last_read.get(key, 0), w.wave)
        by_wave: dict[int, list[_Wake]] = {}
        for w in plan:
            by_wave.setdefault(w.wave, []).append(w)
        done_after: dict[int, list[Key]] = {}  # the states no later wave reads, by the wave that reads them last
        for key, last in last_read.items():
            if key not in keep:
                done_after.setdefault(last, []).append(key)
        self.waves = len(by_wave)
        for wave, wakes in sorted(by_wave.items()):
            mixes: list[Mix] = [None if w.weights is None else
                                ([None if key is None else self.states[key] for key in w.sources], w.weights)
                                for w in wakes]
            self._begin([(w, m) for w, m in zip(wakes, mixes, strict=True) if w.node in self.victims])
            trained, after = self.engine.wake([w.node for w in wakes], [w.iteration for w in wakes], mixes)
            for row, w, st in zip(after, wakes, trained, strict=True):
                key = (w.node, w.iteration)
                if key in keep or key in last_read:
                    self.states[key] = row
                s = stats[w.node]
                s["loss"] += st["loss"]
                s["steps"] += st["steps"]
                s["iterations"] += 1
            for key in done_after.get(wave, []):
                del self.states[key]
        self.states = _compact({key: self.states[key] for key in keep})
        self.begun = _compact({key: state for key, state in self.begun.items() if key in keep})

    def _begin(self, wakes: list[tuple[_Wake, Mix]]) -> None:
        """Keep the states the watched attackers' neighbours start these wakes from: their current
        states mixed as the engine mixes them (:func:`dfl.federation.engine.mixed`, so the very same bits)."""
        if not wakes:
            return
        begun = mixed(self.engine.node_states([w.node for w, _ in wakes]), [m for _, m in wakes])
        for (w, _), row in zip(wakes, begun, strict=True):
            self.begun[(w.node, w.iteration)] = row

    def shared(self, current: torch.Tensor) -> torch.Tensor:
        """Each node's newest sent state (its ``current`` state where it has sent nothing yet)."""
        return torch.stack([current[i] if k is None else self.states[(i, k)] for i, k in enumerate(self.last_sent)])

    def heard_messages(self) -> list[dict[int, Message]]:
        """Per node, the newest message it received from each sender (with ``start`` and ``previous``
        for the watched attackers)."""
        out: list[dict[int, Message]] = []
        for i, box in enumerate(self.heard):
            before = self.previous.get(i, {})
            out.append({j: Message(self.states[(j, m)], t, m, self.begun.get((j, m)),
                                   self.states[(j, before[j][1])] if j in before else None)
                        for j, (t, m) in box.items()})
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Per node, what a checkpoint needs beyond the engine's snapshot: the states of its iterations
        still referred to, and its inbox, messages on their way to it, what it heard and sent."""
        mine: list[dict[int, torch.Tensor]] = [{} for _ in range(self.cfg.nodes)]
        begun: list[dict[int, torch.Tensor]] = [{} for _ in range(self.cfg.nodes)]
        for store, per in ((self.states, mine), (self.begun, begun)):
            for (i, k), state in store.items():
                per[i][k] = state
        return [{"states": mine[i], "inbox": dict(self.inbox[i]), "in_flight": {key: list(t) for key, t in self.in_flight[i].items()},
                 "heard": dict(self.heard[i]), "last_sent": self.last_sent[i], "trained": self.trained[i],
                 "begun": begun[i], "previous": dict(self.previous.get(i, {}))}
                for i in range(self.cfg.nodes)]

    def restore(self, snaps: list[dict[str, Any]], round_idx: int) -> None:
        def message(m: tuple[Any, Any]) -> tuple[float, int]:
            return float(m[0]), int(m[1])

        def optional(k: Any) -> int | None:
            return None if k is None else int(k)

        self.states = {(i, int(k)): v for i, s in enumerate(snaps) for k, v in s["states"].items()}
        self.begun = {(i, int(k)): v for i, s in enumerate(snaps) for k, v in s["begun"].items()}
        self.previous = {a: {int(j): message(m) for j, m in snaps[a]["previous"].items()} for a in self.watched}
        for i, s in enumerate(snaps):
            self.inbox[i] = {int(j): message(m) for j, m in s["inbox"].items()}
            self.in_flight[i] = {(int(a), int(b)): [float(x) for x in t] for (a, b), t in s["in_flight"].items()}
            self.heard[i] = {int(j): message(m) for j, m in s["heard"].items()}
            self.last_sent[i], self.trained[i] = optional(s["last_sent"]), optional(s["trained"])
        self.skip_to(round_idx)
