"""mode: async on the serial engine: the synchronous result in lockstep, stragglers in the records,
byte-identical reruns and resumes."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch

from dfl import api
from dfl.cli import main
from dfl.engines import BatchedEngine, SerialEngine
from dfl.experiment import parse_config
from dfl.federation import Federation
from dfl.federation.asynchronous import AsyncRounds
from dfl.federation.engine import wake_nodes
from dfl.federation.population import Population
from dfl.mixing import adjacency_matrix, consensus_distance, metropolis_hastings_matrix
from dfl.rundir import RunDir


def records(raw: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = parse_config(raw)
    population = Population.from_config(cfg)
    fed = Federation(cfg, population, SerialEngine(population))
    fed.run()
    return fed.records


def test_lockstep_async_trains_exactly_as_the_synchronous_rounds(tiny: dict[str, Any]) -> None:
    """Equal speeds, no latency, push to all: every iteration starts from the synchronous round's mixed
    state, so the training losses agree to the bit."""
    tiny["attackers"] = []
    sync, asyn = records(tiny), records({**tiny, "mode": "async"})
    losses = [[(r["round"], r["node"], r["loss"]) for r in recs if r["kind"] == "train"] for recs in (sync, asyn)]
    assert losses[0] == losses[1]
    train = [r for r in asyn if r["kind"] == "train"]
    assert all(r["iterations"] == 1 and r["sent"] == r["received"] == 2 and r["lag_max"] == 0 for r in train)
    assert all(r["mixed"] == (0 if r["round"] == 1 else 2) and r["staleness_max"] == 0.0 for r in train)
    assert [r["time"] for r in asyn if r["kind"] == "round"] == [1.0, 2.0, 3.0]


def test_a_straggler_shows_in_the_records(tiny: dict[str, Any]) -> None:
    tiny.update(attackers=[], rounds=6, mode="async", **{"async": {"speeds": {0: 0.1}, "latency": 0.25}})
    train = [r for r in records(tiny) if r["kind"] == "train"]
    mine = [r for r in train if r["node"] == 0]
    assert [r["iterations"] for r in mine] == [1, 0, 0, 0, 0, 0]  # it wakes at 0 and next at 10
    assert all(r["iterations"] == 1 for r in train if r["node"] != 0)
    # a message sent at t arrives at t + 0.25, after its receiver woke at t: mixed one iteration later
    late = [r for r in train if r["node"] == 2 and r["round"] >= 3]
    assert all(r["staleness_max"] == 1.0 and r["lag_max"] == 1 and r["mixed"] == 2 for r in late)
    # the straggler's first iteration ends at t = 10: its neighbours hear only node 2 (arrivals at 1.25 .. 5.25)
    assert [r["sent"] for r in mine] == [0] * 6
    assert sum(r["received"] for r in train if r["node"] in (1, 3)) == 2 * 5


@pytest.mark.parametrize("protocol", ["push_one", "pairwise"])
def test_async_reruns_and_resumes_byte_identically(tiny: dict[str, Any], write_cfg, tmp_path: Path, protocol: str) -> None:
    tiny.update(rounds=4, mode="async", eval={"every": 2},
                **{"async": {"protocol": protocol, "speed_sigma": 0.5, "latency": 0.3, "bandwidth": 4000.0,
                             "churn": [{"node": 2, "start": 1.5, "end": 2.5}], "log_mixes": True}})
    tiny["attacks"] = [{"name": "loss", "access": "params", "every": 2},  # and one that needs the senders' starts
                       {"name": "idlg", "every": 2, "params": {"iterations": 2, "knowledge": "observed"}}]
    tiny["data"]["auxiliary_fraction"] = 0.2
    path = write_cfg(tiny)
    whole, again = api.run(path), api.run(path)
    first = api.run(path, stop_after=2)
    resumed = api.resume(first.run_dir)

    def metrics(run: Any) -> bytes:  # an inversion's wall-clock seconds is the one field that is not the config's
        return re.sub(rb'"seconds": [0-9.eE+-]+', b'"seconds": 0', (run.run_dir / "metrics.jsonl").read_bytes())

    want = metrics(whole)
    assert metrics(again) == want and metrics(resumed) == want
    assert b'"kind": "mia"' in want and b'"lag_mean"' in want and b'"kind": "inversion"' in want

    def mixes(run: Any) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((run.run_dir / "mixes").iterdir())}

    assert list(mixes(whole)) == [f"round-000{r}.csv" for r in range(1, 5)] and mixes(resumed) == mixes(whole)
    train = [r for r in RunDir(whole.run_dir).records() if r["kind"] == "train"]
    for r in train:  # every mix of the interval, one line each: the train records' counts and ages
        with open(whole.run_dir / "mixes" / f"round-{r['round']:04d}.csv") as f:
            rows = [row for row in csv.DictReader(f) if int(row["node"]) == r["node"]]
        assert len(rows) == r["mixed"]
        if rows:
            assert float(np.mean([float(x["age"]) for x in rows])) == pytest.approx(r["staleness_mean"])
            assert max(int(x["lag"]) for x in rows) == r["lag_max"]
            assert all(float(x["age"]) == pytest.approx(float(x["time"]) - float(x["sent"])) for x in rows)
    mia = [r for r in RunDir(whole.run_dir).records() if r["kind"] == "mia"]
    assert mia and all(r["message_time"] <= r["round"] * 1.0 - 0.3 for r in mia)  # sent before it could arrive


def test_the_batched_engine_plays_the_schedule_as_the_serial_engine_does(tiny: dict[str, Any]) -> None:
    """In lockstep the batched engine's async losses are its synchronous ones to the bit; with a straggler,
    latency and push_one it agrees with the serial engine within the batched engine's tolerance."""
    tiny.update(attackers=[], engine={"name": "batched"})
    sync, asyn = records(tiny), records({**tiny, "mode": "async"})
    losses = [[(r["round"], r["node"], r["loss"]) for r in recs if r["kind"] == "train"] for recs in (sync, asyn)]
    assert losses[0] == losses[1]
    uneven = {**tiny, "mode": "async", "async": {"protocol": "push_one", "speeds": {0: 0.5}, "latency": 0.3}}
    batched, serial = records(uneven), records({**uneven, "engine": {"name": "serial"}})
    for b, s in zip(batched, serial, strict=True):
        assert b.keys() == s.keys() and b["kind"] == s["kind"]
        if b["kind"] == "train":
            assert b["loss"] == pytest.approx(s["loss"], abs=1e-3) and b["iterations"] == s["iterations"]
            assert b["lag_max"] == s["lag_max"] and b["received"] == s["received"]
        if b["kind"] == "eval":
            assert b["test_acc"] == pytest.approx(s["test_acc"], abs=0.02)


@pytest.mark.parametrize("engine", ["serial", "batched"])
def test_pairwise_averaging_of_two_nodes_in_lockstep_is_the_synchronous_average(tiny: dict[str, Any], engine: str) -> None:
    """Two nodes, equal speeds, no latency: each iteration both ask and answer, and each mixes
    ``(x_0 + x_1) / 2``, which synchronous gossip with the neighbourhood mean computes too (to the bit)."""
    tiny.update(nodes=2, attackers=[], topology={"name": "fully_connected"}, engine={"name": engine})
    sync = records(tiny)
    pairwise = records({**tiny, "mode": "async", "async": {"protocol": "pairwise"},
                        "aggregator": {"name": "metropolis_hastings"}})  # not used by pairwise: its weights are 1/2
    assert [(r["node"], r["loss"]) for r in sync if r["kind"] == "train"] == \
        [(r["node"], r["loss"]) for r in pairwise if r["kind"] == "train"]
    train = [r for r in pairwise if r["kind"] == "train"]
    assert all(r["sent"] == r["received"] == 2 and r["mixed"] == (0 if r["round"] == 1 else 1) for r in train)


class StillEngine:
    """Nodes that never change by training: only the protocol's mixing moves their states."""

    def __init__(self, states: torch.Tensor) -> None:
        self.states = states.clone()

    def node_states(self, ids: list[int]) -> torch.Tensor:
        return self.states[ids].clone()

    def set_node_states(self, ids: list[int], states: torch.Tensor) -> None:
        self.states[ids] = states

    def train_nodes(self, ids: list[int], iterations: list[int]) -> list[dict[str, float]]:
        return [{"loss": 0.0, "steps": 0.0} for _ in ids]

    def wake(self, *args: Any) -> Any:
        return wake_nodes(self, *args)


@pytest.mark.parametrize("protocol", ["pairwise", "push_one", "push_all"])
def test_gossip_alone_reaches_consensus_under_every_protocol(tiny: dict[str, Any], protocol: str) -> None:
    """Uneven speeds, latency, random starting states, no training: exchanges keep pulling the nodes
    together, and pairwise averaging (doubly stochastic in each exchange) keeps them near the start's mean."""
    tiny.update(nodes=6, mode="async", aggregator={"name": "metropolis_hastings"},
                **{"async": {"protocol": protocol, "speed_sigma": 0.5, "latency": 0.05}})
    cfg = parse_config(tiny)
    graph = nx.cycle_graph(6)
    start = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    engine = StillEngine(start)
    rounds = AsyncRounds(cfg, engine, graph, metropolis_hastings_matrix(adjacency_matrix(graph)), 5)  # type: ignore[arg-type]
    for r in range(40):
        rounds.play(r)
    assert consensus_distance(engine.states) < 1e-2 * consensus_distance(start)
    if protocol == "pairwise":
        assert torch.allclose(engine.states.mean(0), start.mean(0), atol=0.3)


@pytest.mark.parametrize("engine", ["serial", "batched"])
def test_kept_states_hold_at_most_twice_their_memory(tiny: dict[str, Any], engine: str) -> None:
    """Kept messages are rows of their wave's buffer; rows kept long after their wave's others were
    dropped (stragglers' pending sends) are copied out, so every buffer alive is at least half in use
    (and checkpoints hold no dead rows). Messages lost to an offline node are forgotten."""
    tiny.update(nodes=8, rounds=6, attackers=[], mode="async", engine={"name": engine},
                topology={"name": "k_regular", "params": {"k": 4}},
                **{"async": {"speeds": {0: 0.1, 1: 0.1, 2: 0.1}, "churn": [{"node": 7, "start": 1.5, "end": 100}]}})
    cfg = parse_config(tiny)
    population = Population.from_config(cfg)
    fed = Federation(cfg, population, (BatchedEngine if engine == "batched" else SerialEngine)(population))
    fed.run()
    rounds = fed._async
    assert rounds is not None
    rows: dict[int, list[torch.Tensor]] = {}
    for t in rounds.states.values():
        rows.setdefault(t.untyped_storage().data_ptr(), []).append(t)
    assert all(2 * len(ts) * ts[0].nbytes >= ts[0].untyped_storage().nbytes() for ts in rows.values())
    assert not rounds.in_flight[7] and sum(r["lost"] for r in fed.records if r["kind"] == "train") > 0


@pytest.mark.parametrize("engine", ["serial", "batched"])
def test_waves_give_the_records_of_one_wake_at_a_time(tiny: dict[str, Any], monkeypatch, engine: str) -> None:
    """The reference: every wake in a wave of its own, in event order. Grouping wakes into waves by
    their dependencies changes no byte (the batched engine: a wave is one call, so this also shows its
    rows do not depend on which other nodes train beside them)."""
    tiny.update(nodes=8, rounds=4, mode="async", engine={"name": engine}, topology={"name": "k_regular", "params": {"k": 4}},
                **{"async": {"protocol": "push_one", "speed_sigma": 0.7, "latency": 0.1, "interval": 2.5}})
    tiny["attackers"] = []
    calls: list[tuple[int, int]] = []  # (waves, wakes) per interval
    train = AsyncRounds._train

    def counting(self: AsyncRounds, plan: list[Any], stats: list[Any]) -> None:
        calls.append((len({w.wave for w in plan}), len(plan)))
        train(self, plan, stats)

    monkeypatch.setattr(AsyncRounds, "_train", counting)
    grouped = records(tiny)
    assert sum(w for w, _ in calls) < sum(n for _, n in calls) / 2  # wakes did share waves
    plan = AsyncRounds._plan

    def alone(self: AsyncRounds, event: Any, waves: dict[Any, int], s: dict[str, Any]) -> Any:
        wake = plan(self, event, waves, s)
        wake.wave = waves[(wake.node, wake.iteration)] = len(waves)
        return wake

    monkeypatch.setattr(AsyncRounds, "_plan", alone)
    assert records(tiny) == grouped


def test_a_trace_file_sets_speeds_and_links_and_is_kept_in_the_config(tiny: dict[str, Any], tmp_path: Path) -> None:
    trace = tmp_path / "devices.csv"
    trace.write_text("node,speed,latency,bandwidth\n0,0.1,,\n2,2.0,0.5,1000\n3,,0.25,\n")
    tiny.update(mode="async", attackers=[], **{"async": {"trace": str(trace), "speeds": {3: 0.5}}})
    cfg = parse_config(tiny)
    a = cfg.async_
    assert a.trace is None and a.speeds == {0: 0.1, 2: 2.0, 3: 0.5}  # the config's own entry wins
    assert a.latencies == {2: 0.5, 3: 0.25} and a.bandwidths == {2: 1000.0}
    assert parse_config(cfg.model_dump(mode="json")) == cfg  # the saved config reads back without the file
    trace.unlink()
    by_trace = records(cfg.model_dump(mode="json"))
    by_config = records({**tiny, "async": {"speeds": {0: 0.1, 2: 2.0, 3: 0.5}, "latencies": {2: 0.5, 3: 0.25},
                                           "bandwidths": {2: 1000.0}}})
    assert by_trace == by_config
    # node 2's messages are 4 * n_state bytes over 1000 bytes per time unit after 0.5: late by more than a round
    assert next(r for r in by_trace if r["kind"] == "train" and r["node"] == 2)["sent"] == 4
    assert all(r["received"] == 0 for r in by_trace if r["kind"] == "train" and r["node"] in (1, 3) and r["round"] <= 2)


def test_compare_sets_sync_beside_async_against_simulated_time(tiny: dict[str, Any], write_cfg, tmp_path: Path) -> None:
    tiny.update(attackers=[], output={"plots": True, "progress": False},
                **{"async": {"speeds": {0: 0.25}, "latency": 0.5, "interval": 2.0}})
    res = api.compare(write_cfg(tiny), ["mode=sync,async"], out_dir=tmp_path / "cmp")
    sync, asyn = res.rows
    assert (sync["mode"], asyn["mode"]) == ("sync", "async")
    assert "time" not in sync and asyn["time"] == 6.0 and asyn["messages"] > 0 and asyn["staleness_mean"] > 0
    table = (res.out_dir / "comparison.md").read_text()
    assert "staleness_mean" in table and "–" in table  # the synchronous row has no messages' age
    assert (res.out_dir / "plots" / "accuracy.png").stat().st_size > 0
    asyn_run = res.runs[1].run_dir
    assert (asyn_run / "plots" / "staleness.png").is_file() and not (res.runs[0].run_dir / "plots" / "staleness.png").exists()
    summary = res.runs[1].summary
    assert summary["mode"] == "async" and summary["final"]["staleness_max"] >= 0.5  # the latency at least
    assert "Asynchronous gossip (`push_all`): 3 intervals of 2 simulated time, 6 in all" in (asyn_run / "report.md").read_text()


def test_gradient_inversion_attacks_the_messages_heard(tiny: dict[str, Any], write_cfg) -> None:
    """In lockstep the message heard at an interval's end is the synchronous round's shared state,
    trained from the same start with the same batches: with exact knowledge every inversion record is
    the synchronous one (an observing attacker starts from the message it heard before instead of its
    own mix). With uneven speeds the attacker inverts what reached it, from its sender's true start."""
    tiny.update(rounds=2, attacks=[{"name": "idlg", "every": 1, "params": {"iterations": 4}},
                                   {"name": "dlg", "every": 1, "params": {"iterations": 3, "knowledge": "observed"}}])

    def inversions(raw: dict[str, Any]) -> list[dict[str, Any]]:
        recs = RunDir(api.run(write_cfg(raw)).run_dir).records()
        return [{k: v for k, v in r.items() if k not in ("seconds", "grid")} for r in recs if r["kind"] == "inversion"]

    sync, lockstep = inversions(tiny), inversions({**tiny, "mode": "async"})
    assert len(sync) == len(lockstep) == 8
    assert [{k: v for k, v in r.items() if k not in ("iteration", "message_time")}
            for r in lockstep if r["knowledge"] == "exact"] == [r for r in sync if r["knowledge"] == "exact"]
    assert [(r["iteration"], r["message_time"]) for r in lockstep if r["attack"] == "idlg"] == [(0, 1.0)] * 2 + [(1, 2.0)] * 2
    uneven = inversions({**tiny, "rounds": 4, "mode": "async",
                         "async": {"speeds": {0: 2.0, 2: 1.5}, "latency": 0.1}})
    exact = [r for r in uneven if r["knowledge"] == "exact"]
    assert exact and all(r["start_error"] == 0.0 and r["message_time"] <= r["round"] - 0.1 for r in exact)
    assert any(r["start_error"] > 0 for r in uneven if r["knowledge"] == "observed" and r["iteration"] > 0)


def test_links_take_their_own_latency_and_bandwidth(tiny: dict[str, Any], tmp_path: Path, write_cfg, capsys) -> None:
    links = tmp_path / "links.csv"
    links.write_text("u,v,latency,bandwidth\n0,1,2.5,\n2,1,,1000\n")
    tiny.update(mode="async", attackers=[], **{"async": {"link_trace": str(links), "latency": 0.1,
                                                         "links": [{"u": 1, "v": 2, "latency": 0.0}]}})
    cfg = parse_config(tiny)
    assert cfg.async_.link_trace is None
    assert [(link.u, link.v, link.latency, link.bandwidth) for link in cfg.async_.links] == [(1, 2, 0.0, None), (0, 1, 2.5, None)]
    train = [r for r in records(cfg.model_dump(mode="json")) if r["kind"] == "train"]
    # iteration k is sent at k + 1: over 1 - 2 (the config's entry won over the file's) it is mixed at
    # once, over the other links (latency 0.1) one wake later, and 0 -> 1 arrives at k + 3.5
    at = {(r["round"], r["node"]): r for r in train}
    assert (at[(2, 2)]["mixed"], at[(2, 2)]["staleness_max"], at[(2, 3)]["mixed"]) == (1, 0.0, 0)
    assert (at[(3, 3)]["mixed"], at[(3, 3)]["staleness_max"]) == (2, 1.0)
    assert all(at[(r, 1)]["received"] == at[(r, 1)]["mixed"] == 1 for r in (2, 3))  # nothing of node 0 yet
    tiny["async"] = {"links": [{"u": 0, "v": 2}]}
    assert main(["validate", str(write_cfg(tiny))]) == 2
    assert "async.links.0: 0 - 2 is not a link of the ring graph" in capsys.readouterr().err
    links.write_text("u,latency\n0,1\n")
    tiny["async"] = {"link_trace": str(links)}
    assert main(["validate", str(write_cfg(tiny))]) == 2
    assert "async.link_trace" in (err := capsys.readouterr().err) and "must be u and v and any of latency" in err


@pytest.mark.parametrize(("text", "needle"), [
    (None, "cannot read it"),
    ("node,speed,colour\n0,1,red\n", "unknown: colour"),
    ("speed\n1\n", "must be node and any of speed, latency, bandwidth"),
    ("node,speed\n7,1\n", "line 2: node id 7 is out of range"),
    ("node,speed\n0,1\n0,2\n", "line 3: 0 appears twice"),
    ("node,speed\n1,-2\n", "line 2: speed -2.0 must be positive"),
    ("node,latency\n1,x\n", "line 2 {'node': '1', 'latency': 'x'} is not numbers"),
])
def test_bad_trace_files_exit_2(tiny: dict[str, Any], write_cfg, tmp_path: Path, capsys, text: str | None,
                                needle: str) -> None:
    trace = tmp_path / "trace.csv"
    if text is not None:
        trace.write_text(text)
    tiny.update(mode="async", **{"async": {"trace": str(trace)}})
    assert main(["validate", str(write_cfg(tiny))]) == 2
    err = capsys.readouterr().err
    assert "async.trace" in err and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize(("patch", "needle"), [
    ({"topology": {"name": "ring", "link_failure": 0.1}}, "one fixed graph"),
    ({"async": {"churn": [{"node": 9, "start": 0, "end": 1}]}}, "async.churn.0.node"),
    ({"async": {"speeds": {1: 0.0}}}, "must be positive"),
    ({"attacks": [{"name": "loss", "access": "params", "view": "isolated"}]}, "attacks.0.view: view isolated models"),
    ({"async": {"latencies": {1: -1.0}}}, "async.latencies.1: latency -1.0 must be >= 0"),
    ({"async": {"bandwidths": {4: 10.0}}}, "async.bandwidths: node id 4 is out of range"),
    ({"async": {"protocol": "flood"}}, "async.protocol: unknown protocol 'flood'; known protocols: pairwise, push_all, push_one"),
    ({"async": {"churn": [{"node": 1, "start": 2, "end": 1}]}}, "must come after start"),
])
def test_bad_async_configs_exit_2(tiny: dict[str, Any], write_cfg, capsys, patch: dict[str, Any], needle: str) -> None:
    tiny.update(mode="async", **patch)
    assert main(["validate", str(write_cfg(tiny))]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
