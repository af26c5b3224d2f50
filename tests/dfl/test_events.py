"""dfl.federation.events: the asynchronous schedule is a pure function of seed, graph and timing."""

from __future__ import annotations

import math

import networkx as nx
import pytest

import topologies  # noqa: F401  (registers the built-in protocols)
from dfl.errors import ConfigError
from dfl.federation.events import ARRIVE, LOST, SEND, WAKE, Timing, lognormal_speeds, make_protocol, schedule


def events(graph: nx.Graph, timing: Timing, protocol: str = "push_all", seed: int = 0, until: float = 3.5):
    return list(schedule(graph, timing, make_protocol(protocol), seed, until))


def test_equal_speeds_no_latency_and_push_all_is_the_synchronous_round() -> None:
    ring = nx.cycle_graph(4)
    evs = events(ring, Timing(speeds=[1.0] * 4))
    for k in range(4):
        at = [e for e in evs if e.time == k]
        wakes = [e for e in at if e.kind == WAKE]
        assert [(e.node, e.iteration) for e in wakes] == [(i, k) for i in range(4)]
        if k:  # before anyone wakes at t = k, each node holds both neighbours' iteration k - 1
            first_wake = at.index(wakes[0])
            arrived = {(e.node, e.peer, e.iteration) for e in at[:first_wake] if e.kind == ARRIVE}
            assert arrived == {(i, j, k - 1) for i in range(4) for j in ring.neighbors(i)}
    times = [e.time for e in evs]
    assert times == sorted(times)  # in time; at one instant a send precedes the arrival it causes


def test_a_straggler_wakes_ten_times_less_often() -> None:
    evs = events(nx.cycle_graph(4), Timing(speeds=[0.1, 1, 1, 1]), until=25)
    assert [e.time for e in evs if e.kind == WAKE and e.node == 0] == [0.0, 10.0, 20.0]
    assert sum(e.kind == WAKE and e.node == 1 for e in evs) == 25
    # its neighbours hear from it twice, it hears from each of them 24 times
    assert sum(e.kind == ARRIVE and e.peer == 0 for e in evs) == 2 * 2
    assert sum(e.kind == ARRIVE and e.node == 0 and e.peer == 1 for e in evs) == 24


def test_messages_take_latency_plus_size_over_bandwidth() -> None:
    timing = Timing(speeds=[1.0, 1.0], latency=0.25, bandwidth=1000.0, message_bytes=500)
    evs = events(nx.path_graph(2), timing, until=2)
    sends = [e for e in evs if e.kind == SEND]
    arrivals = {(e.node, e.peer, e.iteration): e.time for e in evs if e.kind == ARRIVE}
    assert sends and all(arrivals[(s.peer, s.node, s.iteration)] == s.time + 0.75 for s in sends if s.time + 0.75 < 2)
    assert math.isinf(Timing(speeds=[1.0]).bandwidth) and Timing(speeds=[1.0], message_bytes=10**9).transit(0) == 0.0
    own = Timing(speeds=[1.0, 1.0], latency=0.25, bandwidth=1000.0, message_bytes=500, latencies={1: 1.0},
                 bandwidths={1: 250.0})  # node 1's messages: 1.0 + 500 / 250
    evs = events(nx.path_graph(2), own, until=6)
    arrivals = {(e.node, e.peer, e.iteration): e.time for e in evs if e.kind == ARRIVE}
    sends = [e for e in evs if e.kind == SEND]
    assert all(arrivals[(s.peer, s.node, s.iteration)] == s.time + (3.0 if s.node == 1 else 0.75)
               for s in sends if s.time + 3.0 < 6)


def test_an_offline_node_sleeps_and_loses_what_arrives_meanwhile() -> None:
    timing = Timing(speeds=[1.0] * 3, offline={1: [(1.5, 3.5)]})
    evs = events(nx.path_graph(3), timing, until=5)
    assert [e.time for e in evs if e.kind == WAKE and e.node == 1] == [0.0, 1.0, 3.5, 4.5]
    lost = [(e.time, e.peer) for e in evs if e.kind == LOST]
    assert lost == [(2.0, 0), (2.0, 2), (3.0, 0), (3.0, 2)]  # in the arrivals' place, every one of them
    assert not [e for e in evs if e.kind == ARRIVE and e.node == 1 and 1.5 <= e.time < 3.5]
    assert [e.time for e in evs if e.kind == ARRIVE and e.node == 1] == [1.0, 1.0, 4.0, 4.0]


def test_push_one_picks_one_neighbour_per_iteration_from_the_seed() -> None:
    g = nx.complete_graph(5)
    a, b = events(g, Timing(speeds=[1.0] * 5), "push_one", seed=1, until=6), events(
        g, Timing(speeds=[1.0] * 5), "push_one", seed=1, until=6)
    assert a == b
    sends = [e for e in a if e.kind == SEND]
    assert len(sends) == 5 * 5 and all(e.peer != e.node for e in sends)
    other = events(g, Timing(speeds=[1.0] * 5), "push_one", seed=2, until=6)
    assert [e.peer for e in other if e.kind == SEND] != [e.peer for e in sends]
    assert len(set(lognormal_speeds(5, 0.5, 0))) == 5 and lognormal_speeds(5, 0.5, 0) == lognormal_speeds(5, 0.5, 0)


def test_pairwise_sends_are_answered_by_the_partners_newest_finished_state() -> None:
    speeds = [1.0, 0.4, 2.5, 1.0]
    evs = events(nx.cycle_graph(4), Timing(speeds=speeds, latency=0.1, offline={3: [(1.5, 2.5)]}), "pairwise",
                 seed=1, until=6)
    sends = [e for e in evs if e.kind == SEND]
    wakes = [e for e in evs if e.kind == WAKE]
    asks, answers, at = [], [], 0
    while at < len(sends):  # an answer comes right after the send it answers, back over the same link
        ask = sends[at]
        asks.append(ask)
        nxt = sends[at + 1] if at + 1 < len(sends) else None
        answered = nxt is not None and nxt.time == ask.time and (nxt.node, nxt.peer) == (ask.peer, ask.node)
        if answered:
            answers.append(nxt)
        at += 2 if answered else 1
    for b in answers:  # the partner's last iteration finished by then, never one it is still training
        finished = [w.iteration for w in wakes if w.node == b.node and w.time + 1 / speeds[b.node] <= b.time]
        assert b.iteration == max(finished)
    assert answers and len(answers) < len(asks)  # node 1 is slow and node 3 away: some asks find no answer
    for i in range(4):  # one ask per finished iteration
        mine = [e.iteration for e in asks if e.node == i]
        assert mine == list(range(len(mine)))
    arrivals = [e for e in evs if e.kind == ARRIVE]
    assert all(any(s.time == pytest.approx(e.time - 0.1) and (s.node, s.peer, s.iteration) == (e.peer, e.node, e.iteration)
                   for s in sends) for e in arrivals)


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'flood'"):
        events(nx.path_graph(2), Timing(speeds=[1.0, 1.0]), "flood")
    with pytest.raises(ValueError, match="2 positive numbers"):
        events(nx.path_graph(2), Timing(speeds=[1.0, 0.0]))
