"""``init``: every node starts from one node's final state in a complete run."""

from __future__ import annotations

import copy

import pytest
import torch

from dfl import api
from dfl.cli import main
from dfl.config import parse_config
from dfl.population import Population
from dfl.rundir import CHECKPOINT


@pytest.fixture
def source(tiny, write_cfg):
    """A complete 3-round tiny run."""
    return api.run(write_cfg(tiny, "source.yaml")).run_dir


def _final(run_dir, node):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["participants"][node]["state"]


def test_every_node_starts_from_the_chosen_nodes_final_state(tiny, source):
    raw = copy.deepcopy(tiny)
    raw["init"] = {"run": str(source), "node": 2}
    pop = Population.from_config(parse_config(raw))
    expected = _final(source, 2)
    assert not torch.equal(expected, _final(source, 0))  # a ring: the nodes end apart
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
