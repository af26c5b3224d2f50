"""The defense tables: one command runs the grid over seeds and writes report.md."""

from __future__ import annotations

import csv

import pytest

from dfl.cli import main
from dfl.studies.tables import TABLES

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
    assert "| defense | target acc | top-one attack acc | top-one AUC | top-one TPR@1%FPR |" in report
    n = len(TABLES["perturbation"].rows)
    assert report.count(" ± ") == 2 + n * 4 + (n - 1) * 4  # two captions, every cell, every change
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
    from dfl.studies.tables import ROOT

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


# ---- table files: where they are found, their format, and what a bad one gives ----

MINE = """\
title: My table
attacks: "[]"
rows:
  - {label: no defense, overrides: ["defenses=[]"]}
  - {label: L2, overrides: ["defenses=[{name: weight_penalty, params: {norm: l2, lam: 0.0005}}]"]}
metrics:
  - {header: test acc, key: final.mean_test_acc}
note: a note
"""


def test_the_shipped_table_files_hold_the_tables():
    from dfl.studies.tables import ROOT, SUFFIX, Table

    files = sorted(p.name.removesuffix(SUFFIX) for p in (ROOT / "experiments" / "tables").glob(f"*{SUFFIX}"))
    assert files == sorted(TABLES) == ["adamixup", "augmixcloak", "inversion", "inversion_dp", "memguard",
                                       "perturbation"]
    assert all(isinstance(t, Table) for t in TABLES.values())
    ada = TABLES["adamixup"]
    assert ada.attacks == "[{name: shadow_model}, {name: loss}, {name: label_only}]"
    assert ada.rows[1] == ("dropout 0.5", ["defenses=[]", "model.params.dropout=0.5"])
    assert ada.rows[2] == ("L1", ["defenses=[{name: weight_penalty, params: {norm: l1, lam: 0.00001}}]"])
    assert ada.rows[5] == ("DP-SGD (sigma 1.0, C 1.0)",
                           ["defenses=[{name: dp_sgd, params: {noise_multiplier: 1.0, max_grad_norm: 1.0}}]",
                            "model.params.norm=group"])
    assert [r for r, _ in ada.rows] == ["no defense", "dropout 0.5", "L1", "L2", "Mixup", "DP-SGD (sigma 1.0, C 1.0)",
                                        "MemGuard", "AdaMixup"]
    assert ada.metrics[0] == ("classification acc", "mia.shadow_model_answered_non_member_acc")
    assert ada.columns == [("", [])] and ada.phases == [("", [])] and ada.only == {}
    aug = TABLES["augmixcloak"]
    assert aug.columns == [(t, [f"topology.name={t}"]) for t in ("fully_connected", "ring", "star")]
    assert aug.rows[3] == ("L2 regularization", ["defenses=[{name: weight_penalty, params: {norm: l2, lam: 0.0005}}]"])
    assert aug.note.startswith("F1 of 0.667 is the all-member baseline (it says little where a data set barely leaks")
    assert ("shadow TPR@1%FPR", "mia.shadow_model_tpr_at_1_fpr") in aug.metrics
    assert aug.attacks.endswith("{name: shadow_model, evasion: [{name: jpeg, strength: 75}]}]")
    assert aug.metrics[-4:] == [("shadow detected", "mia.shadow_model_detected"),
                                ("adaptive shadow F1", "mia.shadow_model_evasion_f1"),
                                ("adaptive shadow AUC", "mia.shadow_model_evasion_auc"),
                                ("adaptive detected", "mia.shadow_model_evasion_detected")]
    inv = TABLES["inversion"]
    assert [p for p, _ in inv.phases] == ["model", "attack"] and inv.phases[0] == ("model", ["attackers=[]"])
    assert inv.phases[1][1][-1] == "attacks=[{name: inverting_gradients, params: {iterations: 600}}]"
    assert inv.metrics[3] == ("SSIM", "attack:inversion.inverting_gradients_exact_ssim")
    assert inv.only == {"per-class policy (Table 3)": ("cifar10",)}
    assert inv.note.endswith("as stored. DP-SGD rows use group norm.") and "  " not in inv.note
    dp = TABLES["inversion_dp"]
    assert dp.rows[2] == ("DP-SGD sigma 0.001", ["defenses=[{name: dp_sgd, params: {noise_multiplier: 0.001, "
                                                 "max_grad_norm: 1.0}}]", "model.params.norm=group"])
    assert dp.phases == inv.phases and dp.metrics == inv.metrics and dp.note.startswith(inv.note + " One DP-SGD step")
    per = TABLES["perturbation"]
    assert per.rows[-1] == ("all three", ["defenses=[{name: image_perturbation, params: {r: 0.05}}, "
                                          "{name: confidence_perturbation, params: {r: 1.0}}, "
                                          "{name: confidence_regularization, params: {r: 1.0}}]"])


def test_list_names_every_table(capsys, monkeypatch):
    from dfl.studies.tables import ROOT

    monkeypatch.delenv("DFL_SIM_TABLES", raising=False)
    assert main(["table", "--list"]) == 0
    out = capsys.readouterr().out
    for name, table in TABLES.items():
        assert f"{name}  " in out and table.title in out
        assert f"{ROOT / 'experiments' / 'tables' / name}.table.yaml (checkout)" in out


def _user_dir(d, tiny, name="mine", text=MINE):
    """A folder of one's own: table ``name`` and a tiny base experiment under the digits base's name."""
    import yaml

    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.table.yaml").write_text(text)
    (d / "digits.yaml").write_text(yaml.safe_dump(tiny))
    return d


def test_a_table_file_of_ones_own_is_listed_and_runs(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DFL_SIM_TABLES", raising=False)
    d = _user_dir(tmp_path / "tables", tiny)
    assert main(["table", "--list", "--tables", str(d)]) == 0
    out = capsys.readouterr().out
    assert "mine  " in out and "My table" in out and f"{d / 'mine.table.yaml'} (--tables)" in out
    assert all(name in out for name in TABLES)  # the shipped tables are still there
    assert main(["table", "mine", "--tables", str(d), "--dataset", "digits", "--seeds", "1",
                 "--out", str(tmp_path / "out")]) == 0
    (out_dir,) = (tmp_path / "out").glob("table-mine-digits-*")
    rows = list(csv.DictReader(open(out_dir / "table.csv")))
    assert [r["row"] for r in rows] == ["no defense", "L2"] and float(rows[0]["test acc"]) >= 0.0
    report = (out_dir / "report.md").read_text()
    assert report.startswith("# My table\n")
    assert f"(table file `{d / 'mine.table.yaml'}`) on `{d / 'digits.yaml'}`;" in report
    assert report.rstrip().endswith("a note")
    from dfl.rundir import RunDir

    assert RunDir(sorted((out_dir / "runs").iterdir())[0]).config().data.dataset.name == "synthetic"  # the tiny base


def test_tables_are_found_through_the_environment_and_the_option_comes_first(tiny, tmp_path, capsys, monkeypatch):
    from dfl.studies.tables import find_tables, search_path

    env = _user_dir(tmp_path / "env", tiny)
    (env / "perturbation.table.yaml").write_text(MINE.replace("My table", "My perturbation"))  # shadows the shipped one
    monkeypatch.setenv("DFL_SIM_TABLES", str(env))
    assert main(["table", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{env / 'mine.table.yaml'} (DFL_SIM_TABLES)" in out
    assert f"{env / 'perturbation.table.yaml'} (DFL_SIM_TABLES)" in out and "My perturbation" in out
    assert TABLES["perturbation"].title not in out
    opt = _user_dir(tmp_path / "opt", tiny, text=MINE.replace("My table", "Option's table"))
    assert [s for s, _ in search_path(opt)][:2] == ["--tables", "DFL_SIM_TABLES"]
    assert find_tables(opt)["mine"].path == opt / "mine.table.yaml"
    assert main(["table", "--list", "--tables", str(opt)]) == 0
    assert "Option's table" in capsys.readouterr().out
    # runnable from the environment alone, through validation of every cell
    assert main(["table", "mine", "--dataset", "digits", "--seeds", "2", "--set", "rounds=-1",
                 "--out", str(tmp_path / "out")]) == 2
    assert "rounds" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["table", "mine", "--dataset", "digits", "--seeds", "1", "--set", "rounds=1",
                 "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("table-mine-digits-*/runs/*"))) == 2


@pytest.mark.parametrize(("edit", "field", "needle"), [
    (lambda t: t + "colums: []\n", "colums", "unknown key"),
    (lambda t: t.replace('overrides: ["defenses=[]"]', 'overrides: "defenses=[]"'), "rows.0.overrides", "valid list"),
    (lambda t: t.replace("title: My table", "title: 3"), "title", "valid string"),
    (lambda t: t.replace("{label: L2,", "{labl: L2,"), "rows.1.labl", "unknown key"),
    (lambda t: t.replace("key: final.mean_test_acc", "key: model:final.mean_test_acc"), "metrics.0.key", "phase"),
    (lambda t: t.replace("key: final.mean_test_acc", "key: final"), "metrics.0.key", "part.key"),
    (lambda t: t.replace("label: L2", "label: no defense"), "rows.1.label", "twice"),
    (lambda t: t.replace('"defenses=[]"', '"defenses"'), "rows.0.overrides.0", "key.path=value"),
    (lambda t: t.replace('attacks: "[]"', "attacks: loss"), "attacks", "YAML list"),
    (lambda t: t + "only: {L3: [cifar10]}\n", "only.L3", "not the label of a row"),
    (lambda t: t.replace("metrics:\n  - {header: test acc, key: final.mean_test_acc}\n", "metrics: []\n"),
     "metrics", "at least 1"),
    (lambda t: t.replace("title: My table\n", ""), "title", "Field required"),
    (lambda t: t + "rows: [\n", "", "YAML syntax error"),
])
def test_a_malformed_table_file_exits_2_naming_the_file_and_the_field(edit, field, needle, tiny, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.delenv("DFL_SIM_TABLES", raising=False)
    d = _user_dir(tmp_path / "tables", tiny, text=edit(MINE))
    for args in (["table", "mine", "--tables", str(d), "--out", str(tmp_path / "out")], ["table", "--list", "--tables", str(d)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"in {d / 'mine.table.yaml'}" in err and f" {field}: " * bool(field) in err and needle in err, err
        assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # a bad file stops only itself: the other tables still run (through validation here)
    assert main(["table", "perturbation", "--tables", str(d), "--set", "rounds=-1", "--out", str(tmp_path / "out")]) == 2
    assert "rounds" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["table"], None, "name the table to run"),
    (["table", "--tables", "{tmp}/nosuch"], None, "--tables: '{tmp}/nosuch' is not a directory"),
    (["table", "--list"], "{tmp}/nosuch", "DFL_SIM_TABLES: '{tmp}/nosuch' is not a directory"),
    (["table", "perturbation"], "{tmp}/nosuch", "DFL_SIM_TABLES"),
])
def test_table_usage_errors_exit_2_with_one_message(args, env, needle, tmp_path, capsys, monkeypatch):
    if env is None:
        monkeypatch.delenv("DFL_SIM_TABLES", raising=False)
    else:
        monkeypatch.setenv("DFL_SIM_TABLES", env.format(tmp=tmp_path))
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    if args == ["table"]:
        assert all(name in err for name in TABLES)
