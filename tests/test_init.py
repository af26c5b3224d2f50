"""``init``: every node starts from one node's final state in a complete run."""

from __future__ import annotations

import copy

import pytest
import torch

from dfl import api
from dfl.cli import main
from dfl.experiment import parse_config
from dfl.federation.population import Population
from dfl.rundir import RunDir


@pytest.fixture
def source(tiny, write_cfg):
    """A complete 3-round tiny run."""
    return api.run(write_cfg(tiny, "source.yaml")).run_dir


def test_every_node_starts_from_the_chosen_nodes_final_state(tiny, source):
    raw = copy.deepcopy(tiny)
    raw["init"] = {"run": str(source), "node": 2}
    pop = Population.from_config(parse_config(raw))
    expected = RunDir(source).final_state(2)
    assert not torch.equal(expected, RunDir(source).final_state(0))  # a ring: the nodes end apart
    for node in range(raw["nodes"]):
        torch.testing.assert_close(pop.participant(node).state(), expected, rtol=0, atol=0)


def test_a_run_from_a_trained_model_starts_where_that_model_is(tiny, write_cfg, source):
    raw = copy.deepcopy(tiny)
    raw["rounds"] = 1
    raw["init"] = {"run": str(source), "node": 0}
    fresh = copy.deepcopy(raw)
    del fresh["init"]
    first = api.run(write_cfg(raw, "from.yaml")).summary["final"]["mean_test_acc"]
    again = api.run(write_cfg(raw, "again.yaml")).summary["final"]["mean_test_acc"]
    scratch = api.run(write_cfg(fresh, "fresh.yaml")).summary["final"]["mean_test_acc"]
    assert first == again  # deterministic
    assert first > scratch + 0.1, (first, scratch)  # one more round on a trained model beats one from scratch


@pytest.mark.parametrize("change, field", [
    (lambda raw, src, tmp: raw.update(init={"run": str(tmp / "nowhere")}), "init.run"),
    (lambda raw, src, tmp: raw.update(init={"run": str(src), "node": 9}), "init.node"),
    (lambda raw, src, tmp: (raw.update(init={"run": str(src)}), raw["model"]["params"].update(hidden=[8])), "init.run"),
])
def test_an_unfit_source_exits_2_before_anything_is_written(tiny, write_cfg, source, tmp_path, capsys, change, field):
    raw = copy.deepcopy(tiny)
    change(raw, source, tmp_path)
    before = sorted(source.parent.iterdir())
    assert main(["run", str(write_cfg(raw, "bad.yaml")), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert sorted(source.parent.iterdir()) == before


def test_an_unfinished_source_exits_2_naming_init_run(tiny, write_cfg, tmp_path, capsys):
    partial = api.run(write_cfg(tiny, "partial.yaml"), stop_after=1).run_dir
    raw = copy.deepcopy(tiny)
    raw["init"] = {"run": str(partial)}
    assert main(["validate", str(write_cfg(raw, "from_partial.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "init.run" in err and "--resume" in err


def test_the_pretrained_dp_script_attacks_each_trained_model(tiny, tmp_path):
    """experiments/gi_pretrained_dp_cifar10.sh on a tiny base: one trained model and one attack run per row."""
    import os
    import subprocess
    import sys

    import yaml

    from dfl.studies.tables import ROOT

    raw = copy.deepcopy(tiny)
    raw["model"] = {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16}}
    raw["output"] = {"plots": False, "progress": False}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "BASE": str(base), "SIGMAS": "0 1.0", "ITERATIONS": "5", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    out = tmp_path / "out"
    subprocess.run(["sh", str(ROOT / "experiments" / "gi_pretrained_dp_cifar10.sh"), str(out)], env=env, cwd=tmp_path,
                   check=True, capture_output=True)
    rows = (out / "summary.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| no defense", "| DP-SGD sigma 1.0"]
    models = sorted((out / "model").iterdir())
    attacks = sorted((out / "attack").iterdir())
    for model, attack in zip(models, attacks, strict=True):
        cfg = yaml.safe_load((attack / "config.yaml").read_text())
        assert cfg["init"]["run"] == str(model) and cfg["defenses"] == []
        state = RunDir(model).final_state(0)
        start = Population.from_config(RunDir(attack).config()).participant(3).state()
        torch.testing.assert_close(start, state, rtol=0, atol=0)
    assert yaml.safe_load((models[1] / "config.yaml").read_text())["defenses"][0]["params"]["noise_multiplier"] == 1.0
