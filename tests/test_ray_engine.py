"""The Ray engine: same numbers as the serial engine, placement, faults, participant errors."""

from __future__ import annotations

import json
import os
import signal
import sys

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl import api
from dfl.engines.ray import place, require_ray
from dfl.errors import ConfigError, ParticipantError
from dfl.experiment import parse_config
from dfl.federation.population import Population
from dfl.records import record_errors
from dfl.rundir import RunDir

pytest.importorskip("ray")
ray = require_ray(local=True)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False, namespace="dfl-sim-tests")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _cnn_ring(tiny):
    tiny["rounds"] = 3
    tiny["model"] = {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16}}
    return tiny


def _metrics(d, drop_faults=False) -> list[str]:
    lines = (d / "metrics.jsonl").read_text().splitlines()
    return [ln for ln in lines if not (drop_faults and '"kind": "fault"' in ln)]


def test_ray_and_serial_engines_give_identical_metrics(local_ray, tiny, write_cfg):
    cfg = write_cfg(_cnn_ring(tiny))
    serial = api.run(cfg)
    on_ray = api.run(cfg, ["engine.name=ray"])
    assert on_ray.status == "complete"
    assert (on_ray.run_dir / "metrics.jsonl").read_bytes() == (serial.run_dir / "metrics.jsonl").read_bytes()


def test_ray_actors_train_batched_shards_as_the_batched_engine_does(local_ray, tiny, write_cfg):
    """engine.ray.batched: each actor trains its shard with the batched engine. One node per chunk on both
    sides gives the same kernels, so the metrics are byte-identical to the in-process batched engine's."""
    tiny["attackers"] = []
    cfg = write_cfg(_cnn_ring(tiny))
    in_process = api.run(cfg, ["engine.name=batched", "engine.batch_size=1"])
    on_ray = api.run(cfg, ["engine.name=ray", "engine.ray.batched=true", "engine.batch_size=1"])
    assert on_ray.status == "complete"
    assert _metrics(on_ray.run_dir) == _metrics(in_process.run_dir)
    refused = api.validate
    with pytest.raises(ConfigError, match="defenses.0.name"):
        refused(cfg, ["engine.name=ray", "engine.ray.batched=true",
                      "defenses=[{name: defensive_augmentation, params: {preset: cifar10}}]"])


def test_engines_agree_on_every_record_kind_with_the_driver_on_other_threads(local_ray, tiny, write_cfg):
    """Six rounds with membership (loss, correctness, shadow model), inversion and defense records, and the
    driver's torch left at 2 threads (as the CLI leaves it): byte-identical metrics on both engines. The
    attacks run in the driver, so before the engines set its threads too, the loss threshold differed
    in the 7th digit between them."""
    import torch

    tiny["rounds"] = 6
    tiny["data"]["auxiliary_fraction"] = 0.2
    tiny["attacks"] = [{"name": "loss", "every": 2}, {"name": "correctness", "every": 3},
                       {"name": "shadow_model"},
                       {"name": "idlg", "rounds": [2, 6], "params": {"iterations": 3}}]
    tiny["defenses"] = [{"name": "augmixcloak", "params": {"tune": True, "tune_samples": 40}}]
    cfg = write_cfg(tiny)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = api.run(cfg)
        on_ray = api.run(cfg, ["engine.name=ray"])
    finally:
        torch.set_num_threads(threads)
    def records(run_dir):  # every field but an inversion's wall-clock `seconds`, the one timing in the records
        return [{k: v for k, v in json.loads(ln).items() if not (k == "seconds" and '"inversion"' in ln)}
                for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert {r["kind"] for r in records(serial.run_dir)} == {"train", "eval", "round", "mia", "inversion", "defense"}
    assert records(on_ray.run_dir) == records(serial.run_dir)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 40), shards=st.integers(1, 8), p=st.floats(0.05, 0.6), seed=st.integers(0, 100))
def test_placement_covers_every_node_once(n, shards, p, seed):
    g = nx.gnp_random_graph(n, p, seed=seed)
    blocks = place(g, shards)
    flat = sorted(i for b in blocks for i in b)
    assert flat == list(range(n))
    assert len(blocks) == min(shards, n)
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_placement_keeps_ring_neighbours_together():
    g = nx.cycle_graph(12)
    blocks = place(g, 2)
    cut = sum(1 for u, v in g.edges if (u in blocks[0]) != (v in blocks[0]))
    assert cut == 2  # two arcs: only the two edges where the arcs meet cross actors


def test_killed_actor_is_restarted_from_the_last_checkpoint(local_ray, tiny, write_cfg, monkeypatch):
    from dfl.engines.ray import RayEngine

    cfg = write_cfg(_cnn_ring(tiny))
    undisturbed = api.run(cfg, ["engine.name=ray"])
    real_share = RayEngine.share
    calls: list[int] = []

    def share_and_kill_in_round_2(self):
        """Kill actor 0's process in the middle of round 2: after training, before the exchange."""
        shared = real_share(self)
        calls.append(1)
        if len(calls) == 2:
            os.kill(self.pids()[0], signal.SIGKILL)
        return shared

    monkeypatch.setattr(RayEngine, "share", share_and_kill_in_round_2)
    disturbed = api.run(cfg, ["engine.name=ray"])
    assert len(calls) > 3 and disturbed.status == "complete"
    faults = [r for r in RunDir(disturbed.run_dir).records() if r["kind"] == "fault"]
    assert len(faults) == 1 and faults[0]["round"] == 2 and faults[0]["resumed_from_round"] == 1
    assert faults[0]["nodes"] and record_errors(faults[0]) == []
    assert _metrics(disturbed.run_dir, drop_faults=True) == _metrics(undisturbed.run_dir)


ASYNC = {"mode": "async", "async": {"protocol": "pairwise", "speed_sigma": 0.6, "latency": 0.2},
         "attacks": [{"name": "loss", "access": "params"}]}


def test_async_on_ray_is_the_serial_engines_run_and_survives_a_killed_actor(local_ray, tiny, write_cfg, monkeypatch):
    """mode: async: each wave is one call per shard, the shards in parallel; the metrics are the serial
    engine's to the byte (states travel as arrays, the arithmetic is the same). An actor killed in a
    later round rolls every node, and the schedule and messages, back to the round before."""
    from dfl.engines.ray import RayEngine

    tiny.update(nodes=6, **ASYNC)
    tiny["data"]["auxiliary_fraction"] = 0.2
    cfg = write_cfg(tiny)
    serial = api.run(cfg)
    on_ray = api.run(cfg, ["engine.name=ray"])
    assert _metrics(on_ray.run_dir) == _metrics(serial.run_dir)
    real_wake = RayEngine.wake
    waves: list[int] = []

    def wake_and_kill_in_round_2(self, *args):
        waves.append(1)
        if len(waves) == 4:  # in round 2 or 3
            os.kill(self.pids()[0], signal.SIGKILL)
        return real_wake(self, *args)

    monkeypatch.setattr(RayEngine, "wake", wake_and_kill_in_round_2)
    disturbed = api.run(cfg, ["engine.name=ray"])
    faults = [r for r in RunDir(disturbed.run_dir).records() if r["kind"] == "fault"]
    assert disturbed.status == "complete" and len(faults) == 1
    assert faults[0]["round"] > 1 and faults[0]["resumed_from_round"] == faults[0]["round"] - 1
    assert _metrics(disturbed.run_dir, drop_faults=True) == _metrics(serial.run_dir)


class FailingPopulation(Population):
    """Node 2 raises in its second round of training."""

    def participant(self, node_id):
        p = super().participant(node_id)
        if node_id == 2:
            real = p.train_round

            def train_round(round_idx):
                if round_idx == 1:
                    raise ValueError("loss went NaN")
                return real(round_idx)

            p.train_round = train_round
        return p


@pytest.mark.parametrize("engine", ["serial", "ray"])
def test_participant_error_names_node_and_round(local_ray, tiny, engine):
    from dfl.engines import engine_class
    from dfl.federation.rounds import Federation

    tiny["engine"] = {"name": engine}
    cfg = parse_config(tiny)
    pop = FailingPopulation.from_config(cfg)
    eng = engine_class(engine)(pop)
    try:
        fed = Federation(cfg, pop, eng)
        fed.run_round(0)
        with pytest.raises(ParticipantError, match=r"participant 2 failed while training in round 2: ValueError: loss went NaN"):
            fed.run_round(1)
    finally:
        eng.close()


def test_local_ray_listens_on_loopback_only(local_ray):
    """Every socket the local Ray processes listen on is bound to 127.0.0.1."""
    import subprocess

    from ray._private import services

    assert services.get_node_ip_address() == "127.0.0.1"
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("ss is not available")
    session = local_ray._private.worker._global_node
    pids = {str(p.process.pid) for procs in session.all_processes.values() for p in procs}
    mine = [ln for ln in out.stdout.splitlines() if any(f"pid={pid}," in ln for pid in pids)]
    assert mine, "no listening sockets found for this Ray instance"
    assert all("127.0.0.1" in ln.split()[3] for ln in mine), "\n".join(mine)
