"""dfl.engines.batched: the same science as the serial engine, within float32 rounding; bit-identical with
itself run to run, across chunk sizes and across resume; unsupported settings refused at validate time.

Tolerances (stated in the engine's docstring): per-node parameters after a round within 1e-5 of the serial
engine's, accuracies after 3 rounds within 0.02 and losses within 1e-3. Batched matrix products and the
masked mean reduce in another order than one node's products, so the engines differ in the last bits.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import TINY

from dfl import api
from dfl.engines import BatchedEngine, SerialEngine
from dfl.errors import ConfigError
from dfl.experiment import parse_config
from dfl.federation import Federation
from dfl.federation.population import Population
from dfl.mixing import GossipPlan, gossip, gossip_stacked

PARAM_TOL = 1e-5
ACC_TOL = 0.02
LOSS_TOL = 1e-3


def config(**patch: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["attackers"] = []
    for key, value in patch.items():
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


MODELS = {
    "mlp": {"name": "mlp", "params": {"hidden": [16]}},
    "cnn": {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16}},
}
RECIPES = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
    "momentum+decay": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.001},
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 0.0001},
}


def federation(raw: dict[str, Any], engine: str) -> tuple[Federation, Any]:
    cfg = parse_config(raw)
    population = Population.from_config(cfg)
    eng = (BatchedEngine if engine == "batched" else SerialEngine)(population)
    return Federation(cfg, population, eng), eng


def states(engine: Any) -> torch.Tensor:
    return engine.share().clone() if isinstance(engine, BatchedEngine) else torch.stack([p.flat for p in engine.participants])


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_one_round_gives_the_serial_engines_parameters(model: str, recipe: str) -> None:
    raw = config(model=MODELS[model], rounds=1, training__optimizer=RECIPES[recipe])
    serial, s_eng = federation(raw, "serial")
    batched, b_eng = federation(raw, "batched")
    s_stats, b_stats = s_eng.train(0), b_eng.train(0)
    assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL)
    assert not torch.equal(states(b_eng), torch.stack([b_eng.flat[0]] * 4))  # the nodes did train apart
    for s, b in zip(s_stats, b_stats, strict=True):
        assert s["steps"] == b["steps"] and s["loss"] == pytest.approx(b["loss"], abs=LOSS_TOL)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_three_rounds_give_the_serial_engines_records(model: str) -> None:
    # ragged: nodes of 39, 69, 99 and 93 train samples take different numbers of steps, with short last batches
    raw = config(model=MODELS[model], data__partition={"name": "sizes", "params": {"sizes": [52, 92, 132, 124]}},
                 training__optimizer=RECIPES["momentum+decay"])
    serial, _ = federation(raw, "serial")
    batched, _ = federation(raw, "batched")
    assert serial.run() == batched.run() == "complete"
    steps = {r["steps"] for r in batched.records if r["kind"] == "train"}
    assert len(steps) == 4  # the nodes really do take different step counts
    assert len(serial.records) == len(batched.records)
    for s, b in zip(serial.records, batched.records, strict=True):
        assert (s["round"], s["node"], s["kind"]) == (b["round"], b["node"], b["kind"]) and s.keys() == b.keys()
        for key, value in s.items():
            if key.endswith("_acc"):
                assert b[key] == pytest.approx(value, abs=ACC_TOL), key
            elif key.endswith(("_loss", "loss")) or key == "consensus_distance":
                assert b[key] == pytest.approx(value, rel=LOSS_TOL, abs=LOSS_TOL), key
            else:
                assert b[key] == value, key


def test_local_steps_and_a_step_budget_larger_than_an_epoch() -> None:
    raw = config(training__local_epochs=None, training__local_steps=7, training__batch_size=32)
    serial, _ = federation(raw, "serial")
    batched, _ = federation(raw, "batched")
    serial.run(), batched.run()
    assert [r["steps"] for r in batched.records if r["kind"] == "train"] == [7.0] * 12
    s = [r["mean_test_acc"] for r in serial.records if r["kind"] == "round"]
    b = [r["mean_test_acc"] for r in batched.records if r["kind"] == "round"]
    assert np.allclose(s, b, atol=ACC_TOL)


@pytest.mark.parametrize("rowwise", [False, True])
def test_an_inactive_node_changes_nothing_momentum_included(rowwise: bool) -> None:
    """A node whose batches ran out keeps its parameters and optimizer state through the other nodes' steps
    (with the gradients in one vmap and row by row)."""
    raw = config(data__partition={"name": "sizes", "params": {"sizes": [20, 20, 20, 300]}},
                 training__optimizer=RECIPES["momentum+decay"], training__batch_size=16,
                 engine={"name": "batched", "vmap": not rowwise})
    _, eng = federation(raw, "batched")
    assert eng.trainer.rowwise is rowwise
    eng.train(0)  # nodes 0..2: 15 train samples, 1 step; node 3: 225 samples, 15 steps
    before, buf = eng.flat.clone(), eng.opt.buf.clone()
    plan = torch.full((4, 1, 16), -1, dtype=torch.long)
    plan[3, 0] = torch.arange(16)
    eng._train_chunk(eng.flat, 0, 4, plan)  # one step in which only node 3 is active
    assert torch.equal(eng.flat[:3], before[:3]) and torch.equal(eng.opt.buf[:3], buf[:3])
    assert not torch.equal(eng.flat[3], before[3]) and not torch.equal(eng.opt.buf[3], buf[3])


def test_bit_identical_run_to_run_and_close_across_chunk_sizes() -> None:
    """The chunk size is part of the numerics, as engine.threads is (a convolution over 3 stacked nodes may
    take another kernel than over 4): the same chunk size gives the same bits, another one agrees within
    float32 rounding. The default chunk is a function of the config alone, never of the machine's memory."""
    raw = config(model=MODELS["cnn"])
    runs = []
    for chunk in (None, None, 1, 3):
        r = copy.deepcopy(raw)
        r["engine"] = {"name": "batched", **({"batch_size": chunk} if chunk else {})}
        fed, eng = federation(r, "batched")
        fed.run()
        runs.append((fed.records, states(eng)))
    assert runs[1][0] == runs[0][0] and torch.equal(runs[1][1], runs[0][1])
    for records, s in runs[2:]:
        assert torch.allclose(s, runs[0][1], rtol=0, atol=PARAM_TOL)
        acc = [r["mean_test_acc"] for r in records if r["kind"] == "round"]
        assert np.allclose(acc, [r["mean_test_acc"] for r in runs[0][0] if r["kind"] == "round"], atol=ACC_TOL)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    raw = config(training__optimizer=RECIPES["adam"], output={"plots": False})
    raw["engine"] = {"name": "batched"}
    whole = api.run(parse_config(raw), out_dir=tmp_path / "whole")
    first = api.run(parse_config(raw), out_dir=tmp_path / "parts", stop_after=1)
    assert first.status == "interrupted"
    assert api.resume(first.run_dir).status == "complete"
    assert (first.run_dir / "metrics.jsonl").read_bytes() == (whole.run_dir / "metrics.jsonl").read_bytes()


def test_a_batched_checkpoint_loads_into_a_serial_participant() -> None:
    """The snapshot holds a PyTorch optimizer state_dict: a serial participant restores it and takes the
    same next step."""
    raw = config(training__optimizer=RECIPES["momentum+decay"])
    _, b_eng = federation(raw, "batched")
    b_eng.train(0)
    snaps = b_eng.snapshot()
    _, s_eng = federation(raw, "serial")
    s_eng.restore(snaps)
    assert torch.equal(states(s_eng), states(b_eng))
    s_eng.train(1), b_eng.train(1)
    assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL)


def test_share_time_defenses_rewrite_the_batched_update() -> None:
    raw = config(defenses=[{"name": "update_noise", "params": {"sigma": 0.5}}], rounds=2)
    serial, _ = federation(raw, "serial")
    batched, _ = federation(raw, "batched")
    serial.run(), batched.run()
    plain, _ = federation(config(rounds=2), "batched")
    plain.run()
    s = [r["train_loss"] for r in serial.records if r["kind"] == "round"]
    b = [r["train_loss"] for r in batched.records if r["kind"] == "round"]
    p = [r["train_loss"] for r in plain.records if r["kind"] == "round"]
    assert np.allclose(s, b, atol=LOSS_TOL) and not np.allclose(b, p, atol=LOSS_TOL)


@pytest.mark.parametrize(("patch", "field"), [
    ({"defenses": [{"name": "defensive_augmentation", "params": {"preset": "cifar10"}}]}, "defenses.0.name"),
    ({"defenses": [{"name": "dp_sgd"}], "model": {"name": "mlp", "params": {"hidden": [16]}}}, "defenses.0.name"),
    ({"model": {"name": "cnn", "params": {"norm": "batch"}}}, "model.params.norm"),
    ({"model": {"name": "mlp", "params": {"dropout": 0.5}}}, "model.params.dropout"),
])
def test_what_the_batched_engine_cannot_run_is_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    raw = config(**patch)
    raw["engine"] = {"name": "batched"}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert field in [path for path, _ in err.value.errors]
    assert any("engine.name: serial" in msg for _, msg in err.value.errors)
    raw["engine"] = {"name": "serial"}
    parse_config(raw)  # the same config is fine on the serial engine


def test_gossip_stacked_is_bit_identical_to_gossip() -> None:
    g = torch.Generator().manual_seed(0)
    for n, density in ((1, 1.0), (6, 0.5), (40, 0.1)):
        rng = np.random.default_rng(n)
        W = rng.random((n, n)) * (rng.random((n, n)) < density)
        np.fill_diagonal(W, rng.random(n) + 0.1)
        W /= W.sum(1, keepdims=True)
        x = torch.randn(n, 257, generator=g) * 100
        assert torch.equal(gossip_stacked(x, W), gossip(x, W))
        assert torch.equal(gossip_stacked(x, W[: max(1, n // 2)]), gossip(x, W[: max(1, n // 2)]))  # a block of rows


def test_gossip_stacked_in_small_row_blocks_is_still_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    import dfl.mixing as mixing

    monkeypatch.setattr(mixing, "GOSSIP_BLOCK_BYTES", 3000)  # blocks of a few rows
    rng = np.random.default_rng(7)
    W = rng.random((30, 30)) * (rng.random((30, 30)) < 0.3)
    np.fill_diagonal(W, 1.0)
    W /= W.sum(1, keepdims=True)
    x = torch.randn(30, 200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(gossip_stacked(x, W), gossip(x, W))
    plan, out = GossipPlan(W), torch.full((30, 200), 7.0)
    for _ in range(2):  # a kept plan, into a used buffer
        assert torch.equal(gossip_stacked(x, plan, out=out), gossip(x, W))
    ring = np.zeros((30, 30))
    for i in range(30):  # regular: every block row has every slot
        ring[i, [i - 1, i, (i + 1) % 30]] = [0.25, 0.5, 0.25]
    assert torch.equal(gossip_stacked(x, ring), gossip(x, ring))
    W[[4, 11]] = 0.0  # rows without a weight stay 0
    assert torch.equal(gossip_stacked(x, W), gossip(x, W)) and not gossip_stacked(x, W)[4].any()


def test_gossip_stacked_reads_runs_of_consecutive_neighbours_in_place_bit_identically(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dfl.mixing as mixing

    torus = nx.convert_node_labels_to_integers(nx.grid_2d_graph(20, 20, periodic=True))
    W = mixing.metropolis_hastings_matrix(nx.to_numpy_array(torus) > 0)
    plan = GossipPlan(W)
    assert sum(len(starts) for starts, _ in plan.runs) > 0  # the grid's rows are runs; their wrap-arounds are not
    x = torch.randn(400, 37, generator=torch.Generator().manual_seed(3))
    reference = gossip(x, W)
    for block in (1 << 22, 37 * 4 * 7, 37 * 4):  # one block, blocks that cut the runs, one row per block
        monkeypatch.setattr(mixing, "GOSSIP_BLOCK_BYTES", block)
        assert torch.equal(gossip_stacked(x, plan), reference)
        assert torch.equal(gossip_stacked(x, W[100:300]), reference[100:300])  # a shard's rows


def test_attacks_observe_the_batched_federation() -> None:
    """Observers read the round's shared and start states from the engine's buffers: membership and inversion
    attacks run on the batched engine and score what the serial engine's attackers score, within tolerance."""
    raw = config(rounds=2, attackers=[1], data__auxiliary_fraction=0.2,
                 attacks=[{"name": "loss", "samples": 40}, {"name": "idlg", "params": {"iterations": 3}}])
    from dfl.adversary import observers

    out = {}
    for engine in ("serial", "batched"):
        cfg = parse_config(copy.deepcopy(raw))
        population = Population.from_config(cfg)
        eng = (BatchedEngine if engine == "batched" else SerialEngine)(population)
        fed = Federation(cfg, population, eng, observers(cfg, population, None))
        assert fed.run() == "complete"
        out[engine] = fed.records
    # the attacks' inputs agree closely; iDLG's labels, read off signs of tiny gradients, may flip one of 16
    for kind, key, tol in (("mia", "auc", 0.05), ("inversion", "images_trained_on", 0), ("inversion", "label_acc", 0.13)):
        s = [r[key] for r in out["serial"] if r["kind"] == kind]
        b = [r[key] for r in out["batched"] if r["kind"] == kind]
        assert len(s) == len(b) == 2 and np.allclose(s, b, atol=tol), (kind, key, s, b)


def test_pure_training_defenses_run_batched_on_their_own_nodes() -> None:
    """Label smoothing on the honest nodes (node 1 is an attacker) and an L2 penalty on nodes 0 and 2: the
    batched engine trains each node as its serial participant does, within the tolerance."""
    raw = config(attackers=[1], rounds=1, defenses=[
        {"name": "label_smoothing", "params": {"eps": 0.3}},
        {"name": "weight_penalty", "params": {"norm": "l2", "lam": 0.05}, "nodes": [0, 2]}])
    serial, s_eng = federation(raw, "serial")
    batched, b_eng = federation(raw, "batched")
    assert b_eng.defended.tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]
    s_stats, b_stats = s_eng.train(0), b_eng.train(0)
    assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL)
    assert [s["loss"] for s in s_stats] == pytest.approx([b["loss"] for b in b_stats], abs=LOSS_TOL)
    _, plain = federation(config(attackers=[1], rounds=1), "batched")
    plain.train(0)
    moved = (states(plain) - states(b_eng)).abs().amax(1)
    assert moved[1] == 0 and bool((moved[[0, 2, 3]] > 1e-4).all())  # the defenses acted where they run, only there


@pytest.mark.parametrize(("model", "vmap", "rowwise"), [
    ("mlp", "auto", False), ("mlp", False, True), ("cnn", "auto", True), ("cnn", True, False)])
def test_gradients_in_one_vmap_or_row_by_row_give_the_serial_engines_parameters(model: str, vmap: Any,
                                                                                 rowwise: bool) -> None:
    """engine.vmap: auto takes convolutions row by row on a CPU (a vmapped convolution is a slow grouped
    one there) and everything else in one vmap; either path agrees with the serial engine."""
    raw = config(model=MODELS[model], rounds=1, training__optimizer=RECIPES["momentum+decay"],
                 engine={"name": "batched", "vmap": vmap})
    _, s_eng = federation(raw, "serial")
    _, b_eng = federation(raw, "batched")
    assert b_eng.rowwise is rowwise
    s_eng.train(0), b_eng.train(0)
    assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL)
    s_ev, b_ev = s_eng.evaluate(["test", "train"]), b_eng.evaluate(["test", "train"])
    for s_e, b_e in zip(s_ev, b_ev, strict=True):
        assert s_e["test_acc"] == pytest.approx(b_e["test_acc"], abs=ACC_TOL)
        assert s_e["train_loss"] == pytest.approx(b_e["train_loss"], abs=LOSS_TOL)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_drawing_training_defenses_run_batched_with_each_nodes_draws(model: str) -> None:
    """Mixup on nodes 0 and 2, AdaMixup and label smoothing on every node (chain order: mixup, label
    smoothing, AdaMixup), 75 train samples per node (a ragged last batch): each node draws its lambdas and
    permutations from its own stream as its serial participant does, so the engines agree within the
    tolerance over two rounds; without the draws' agreement they would differ by far more."""
    raw = config(model=MODELS[model], rounds=2, defenses=[
        {"name": "mixup", "params": {"alpha": 0.4}, "nodes": [0, 2]},
        {"name": "label_smoothing", "params": {"eps": 0.1}},
        {"name": "adamixup"}])
    serial, s_eng = federation(raw, "serial")
    batched, b_eng = federation(raw, "batched")
    for r in range(2):
        s_stats, b_stats = s_eng.train(r), b_eng.train(r)
        assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL), r
        assert [x["loss"] for x in s_stats] == pytest.approx([x["loss"] for x in b_stats], abs=LOSS_TOL)
    _, other = federation(raw | {"seed": 1}, "batched")  # other draws (and batches): far apart
    other.train(0), other.train(1)
    assert float((states(other) - states(b_eng)).abs().max()) > 1e-2


def test_async_wakes_run_training_and_share_time_defenses_with_each_nodes_iteration() -> None:
    """``train_nodes`` (mode: async): some nodes, each at its own iteration, with mixup on two of them,
    AdaMixup on all (its progress from the iteration) and update noise: each node's draws and noise are
    its serial participant's for that iteration, so the engines agree within the tolerance."""
    raw = config(rounds=4, defenses=[
        {"name": "mixup", "params": {"alpha": 0.4}, "nodes": [0, 2]},
        {"name": "adamixup"},
        {"name": "update_noise", "params": {"sigma": 0.01}, "nodes": [3]}])
    _, s_eng = federation(raw, "serial")
    _, b_eng = federation(raw, "batched")
    for ids, iterations in (([2, 0, 3], [5, 0, 2]), ([1, 2], [0, 6])):
        s_stats, b_stats = s_eng.train_nodes(ids, iterations), b_eng.train_nodes(ids, iterations)
        assert [x["loss"] for x in s_stats] == pytest.approx([x["loss"] for x in b_stats], abs=LOSS_TOL)
        assert torch.allclose(states(s_eng), states(b_eng), rtol=0, atol=PARAM_TOL)
    _, other = federation(raw, "batched")  # the same nodes at other iterations: other draws, far apart
    other.train_nodes([2, 0, 3], [4, 1, 2]), other.train_nodes([1, 2], [0, 5])
    assert float((states(other) - states(b_eng)).abs().max()) > 1e-2


@pytest.mark.parametrize(("threads", "engine", "expected"), [
    (None, "serial", 1), (3, "serial", 3), ("auto", "serial", 1), ("auto", "batched", "cpus"), (2, "batched", 2)])
def test_engine_threads_auto_gives_cores_only_to_the_batched_engine(threads: Any, engine: str, expected: Any) -> None:
    from dfl.federation.engine import available_cpus

    raw = config(rounds=1)
    raw["engine"] = {"name": engine, **({"threads": threads} if threads is not None else {})}
    before = torch.get_num_threads()
    _, eng = federation(raw, engine)
    try:
        want = available_cpus() if expected == "cpus" else expected
        assert eng.threads == want and torch.get_num_threads() == want
    finally:
        eng.close()
    assert torch.get_num_threads() == before  # the driver gets its threads back


@pytest.mark.parametrize("bad", [0, -2, "many"])
def test_engine_threads_must_be_positive_or_auto(bad: Any) -> None:
    raw = config()
    raw["engine"] = {"threads": bad}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert any(path.startswith("engine") for path, _ in err.value.errors)
