"""The defense tables: one command runs the grid over seeds and writes report.md."""

from __future__ import annotations

import csv

import pytest

from dfl.cli import main
from dfl.tables import TABLES

FAST = ["rounds=1", "training.local_epochs=2", "nodes=4", "data.samples_per_node=100"]


def test_perturbation_table_on_digits(tmp_path, capsys):
    assert main(["table", "perturbation", "--dataset", "digits", "--seeds", "2", "--out", str(tmp_path),
                 *[a for s in FAST for a in ("--set", s)]]) == 0
    (out,) = tmp_path.glob("table-perturbation-digits-*")
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == len(TABLES["perturbation"].rows) * 2
    assert {r["seed"] for r in rows} == {"0", "1"}
    by = {(r["row"], r["seed"]): r for r in rows}
    # no defense: the answered labels are the model's; regularization clips logits but keeps every label
    for seed in ("0", "1"):
        assert by[("confidence regularization (r 1)", seed)]["target acc"] == by[("no defense", seed)]["target acc"]
        assert float(by[("no defense", seed)]["top-one attack acc"]) >= 0.0
    report = (out / "report.md").read_text()
    assert "| defense | target acc | top-one attack acc | top-one AUC |" in report
    n = len(TABLES["perturbation"].rows)
    assert report.count(" ± ") == 2 + n * 3 + (n - 1) * 3  # two captions, every cell, every change
    # the change table pairs runs by seed: clipping keeps every label, so target accuracy moves by exactly 0
    change = report.split("Change against no defense")[1]
    line = next(x for x in change.splitlines() if x.startswith("| confidence regularization (r 1) |"))
    assert line.split(" | ")[1] == "+0.000 ± 0.000"
    attack = [float(by[("all three", s)]["top-one attack acc"]) - float(by[("no defense", s)]["top-one attack acc"])
              for s in ("0", "1")]
    line = next(x for x in change.splitlines() if x.startswith("| all three |"))
    assert line.split(" | ")[2] == f"{sum(attack) / 2:+.3f} ± {abs(attack[0] - attack[1]) / 2:.3f}"
    assert "report.md" in capsys.readouterr().out
    assert len(list((out / "runs").iterdir())) == len(rows)


def test_a_table_run_with_jobs_has_the_same_figures(tmp_path, capsys):
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        assert main(["table", "perturbation", "--dataset", "digits", "--seeds", "1", "--out", str(out), "--jobs", jobs,
                     *[a for s in FAST for a in ("--set", s)]]) == 0
        (d,) = out.glob("table-perturbation-digits-*")
        rows = list(csv.DictReader(open(d / "table.csv")))
        tables.append([{k: v for k, v in r.items() if k != "run_dir"} for r in rows])
    assert tables[0] == tables[1] and len(tables[0]) == len(TABLES["perturbation"].rows)


def test_a_table_runs_on_any_registered_data_set_with_a_base_experiments_settings(tmp_path):
    assert main(["table", "perturbation", "--dataset", "synthetic", "--base", "digits", "--seeds", "1",
                 "--out", str(tmp_path), *[a for s in FAST for a in ("--set", s)]]) == 0
    (out,) = tmp_path.glob("table-perturbation-synthetic-*")
    report = (out / "report.md").read_text()
    assert "on `experiments/tables/digits.yaml` with `data.dataset={name: synthetic}`" in report
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == len(TABLES["perturbation"].rows)
    from dfl.rundir import RunDir

    cfg = RunDir(runs[0]).config()
    assert cfg.data.dataset.name == "synthetic" and cfg.training.local_epochs == 2  # the digits base, then --set


@pytest.mark.parametrize(("args", "needle"), [
    (["table", "perturbation", "--dataset", "svhn", "--base", "mnist"], "--base"),
    (["table", "perturbation", "--jobs", "0"], "--jobs"),
    (["table", "nosuch"], "unknown table 'nosuch'"),
    (["table", "adamixup", "--dataset", "imagenet"], "unknown dataset 'imagenet'; known: cifar10, cifar100"),
    (["table", "adamixup", "--seeds", "0"], "--seeds"),
    (["table", "adamixup", "--set", "rounds=-1"], "rounds"),
])
def test_bad_table_input_exits_2(args, needle, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_every_table_cell_is_a_valid_experiment():
    from dfl import api
    from dfl.tables import ROOT

    for table in TABLES.values():
        for row, row_sets in table.rows:
            for _, col_sets in table.columns:
                for _, phase_sets in table.phases:
                    for dataset in ("digits", "cifar10"):
                        if dataset not in table.only.get(row, (dataset,)):
                            continue
                        cfg = api.load_config(ROOT / "experiments" / "tables" / f"{dataset}.yaml",
                                              [f"attacks={table.attacks}", *phase_sets, *row_sets, *col_sets])
                        assert cfg.defenses is not None


def test_a_policy_naming_a_missing_class_exits_2(tiny, write_cfg, capsys):
    tiny["defenses"] = [{"name": "defensive_augmentation", "params": {"preset": "cifar10"}}]
    assert main(["run", str(write_cfg(tiny)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "defenses.0.params" in err and "neither a class name" in err
