"""Gradient inversion in the federation: what the attacker inverts, the knowledge models, the outputs."""

from __future__ import annotations

import copy

import torch

from dfl import api
from dfl.adversary.gradients import gradient_of, pseudo_gradient
from dfl.adversary.inversion import Inverter
from dfl.cli import main
from dfl.experiment import parse_config
from dfl.federation.participant import local_batches
from dfl.federation.population import Population
from dfl.plugins import load_plugins
from dfl.rundir import RunDir

load_plugins()


def _gi(tiny, **attack):
    tiny = copy.deepcopy(tiny)
    tiny["rounds"] = 2
    tiny["training"] = {"local_steps": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0}}
    tiny["attacks"] = [{"name": "idlg", "every": 1, "params": {"iterations": 3, **attack}}]
    return tiny


def _records(res):
    return [r for r in RunDir(res.run_dir).records() if r["kind"] == "inversion"]


def test_the_inverted_update_is_the_victims_batch_gradient(tiny):
    """Exact knowledge, one plain SGD step: the pseudo-gradient is the true gradient of the victim's batch."""
    cfg = parse_config(_gi(tiny))
    pop = Population.from_config(cfg)
    victim = pop.participant(2)
    start = victim.state()
    victim.train_round(0)
    inverter = Inverter(cfg, pop)
    model = inverter._model(start)
    grads = pseudo_gradient(model, victim.state() - start, 0.1, 1)
    (idx,) = local_batches(cfg.seed, 2, 0, len(pop.splits.nodes[2].train), cfg.training)
    batch = pop.train_pool(pop.splits.nodes[2].train[idx.numpy()])
    true = gradient_of(inverter._model(start), batch.x, batch.y)
    for a, b in zip(grads, true, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_observed_knowledge_is_exact_when_fully_connected_and_not_on_a_ring(tiny, write_cfg):
    by_topology = {}
    for name in ("fully_connected", "ring"):
        raw = _gi(tiny, knowledge="observed")
        raw["topology"] = {"name": name}
        by_topology[name] = _records(api.run(write_cfg(raw, f"{name}.yaml")))
    for name, recs in by_topology.items():
        assert {r["round"] for r in recs} == {1, 2}
        assert all(r["start_error"] == 0.0 for r in recs if r["round"] == 1), name  # the initial model is public
    assert all(r["start_error"] < 1e-4 for r in by_topology["fully_connected"] if r["round"] == 2)
    assert all(r["start_error"] > 0.05 for r in by_topology["ring"] if r["round"] == 2)


def test_a_run_writes_records_grids_and_a_report_section(tiny, write_cfg):
    raw = _gi(tiny)
    raw["output"]["plots"] = True
    res = api.run(write_cfg(raw))
    recs = _records(res)
    # attacker 1 inverts its ring neighbours 0 and 2 in both rounds
    assert sorted((r["round"], r["node"]) for r in recs) == [(1, 0), (1, 2), (2, 0), (2, 2)]
    for r in recs:
        assert r["update"] == "gradient" and r["local_steps"] == 1 and r["batch_size"] == 2
        assert 0.0 <= r["label_acc"] <= 1.0 and 0.0 <= r["recognisability"] <= 1.0 and r["psnr"] > 0
        assert (res.run_dir / r["grid"]).exists()
    report = (res.run_dir / "report.md").read_text()
    assert "## Gradient inversion" in report and recs[0]["grid"] in report
    assert (res.run_dir / "tables" / "inversion.csv").exists()
    assert "idlg_exact_psnr" in res.summary["inversion"]
    again = api.run(write_cfg(raw, "again.yaml"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(again)) == strip(recs)


def test_momentum_and_several_steps_are_labelled_pseudo_gradients(tiny, write_cfg):
    raw = _gi(tiny)
    raw["training"] = {"local_steps": 3, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    recs = _records(api.run(write_cfg(raw)))
    assert {r["update"] for r in recs} == {"pseudo-gradient"} and {r["local_steps"] for r in recs} == {3}
    assert all(r["images_trained_on"] == 6 for r in recs)


def test_inversion_needs_params_access(tiny, write_cfg, capsys):
    raw = _gi(tiny)
    raw["attacks"][0]["access"] = "query"
    assert main(["validate", str(write_cfg(raw))]) == 2
    assert "attacks.0.access" in capsys.readouterr().err


def test_dp_sgd_noise_on_the_shared_update_degrades_reconstructions_with_sigma(tiny, write_cfg):
    """One DP-SGD step on one image: the clipped gradient drowns in noise of std sigma * C per parameter."""
    psnr = {}
    for sigma in (0.0001, 0.01, 1.0):
        raw = _gi(tiny)
        raw["rounds"] = 1
        raw["training"]["batch_size"] = 1
        raw["attacks"] = [{"name": "inverting_gradients", "params": {"iterations": 200}}]
        raw["defenses"] = [{"name": "dp_sgd", "params": {"noise_multiplier": sigma, "max_grad_norm": 1.0}}]
        recs = _records(api.run(write_cfg(raw, f"dp{sigma}.yaml")))
        assert len(recs) == 2
        psnr[sigma] = sum(r["psnr"] for r in recs) / len(recs)
    assert psnr[0.0001] > psnr[0.01] + 1 and psnr[0.01] > psnr[1.0] + 1, psnr


def test_an_inversion_run_reads_its_saved_config_back_and_resumes_to_the_same_records(tiny, write_cfg):
    raw = _gi(tiny)
    full = api.run(write_cfg(raw))
    saved = RunDir(full.run_dir).config()
    assert [a.access for a in saved.attacks] == ["params"]
    assert saved == parse_config(raw | {"output": saved.output.model_dump()})
    part = api.run(write_cfg(raw, "part.yaml"), stop_after=1)
    resumed = api.resume(part.run_dir)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(resumed)) == strip(_records(full))
