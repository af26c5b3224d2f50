from __future__ import annotations

import pytest
import yaml

from dfl.config import ExperimentConfig
from dfl.errors import ConfigError
from dfl.experiment import apply_override, dump_config, load_config, parse_config, parse_override


def test_minimal_config_fills_defaults(tiny):
    cfg = parse_config(tiny)
    assert cfg.rounds == 3 and cfg.nodes == 4
    # plugin params are resolved with their defaults written out
    assert cfg.model.params == {"hidden": [16], "dropout": 0.0}
    assert "noise" in cfg.data.dataset.params


def _shipped_configs():
    """Every experiment file, and every cell of every defense table, as ``(label, path, overrides)``."""
    from dfl.studies.tables import ROOT, TABLES

    yield from ((p.name, p, []) for p in sorted((ROOT / "experiments").rglob("*.yaml"))
                if not p.name.endswith(".table.yaml"))  # table definitions, not experiments
    for name, table in TABLES.items():
        for row, row_sets in table.rows:
            for phase, phase_sets in table.phases:
                yield (f"{name}: {row}, {phase}", ROOT / "experiments" / "tables" / "cifar10.yaml",
                       [f"attacks={table.attacks}", *phase_sets, *row_sets])


def test_resolved_config_round_trips(tiny):
    cfg = parse_config(tiny)
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_every_shipped_config_reads_back_from_its_saved_form():
    """What a run directory's config.yaml holds parses to the same config (resume and init depend on it)."""
    for label, path, overrides in _shipped_configs():
        cfg = load_config(path, overrides)
        assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg, label


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [("rounds=5", "rounds", 5), ("topology.name=star", "topology.name", "star"),
     ("attackers=[0, 2]", "attackers", [0, 2]), ("data.holdout_fraction=0.5", "data.holdout_fraction", 0.5),
     ("output.plots=false", "output.plots", False)],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_override_nested_and_list_index(tiny):
    cfg = parse_config(tiny, ["data.partition.name=dirichlet", "data.partition.params.alpha=0.5", "attackers.0=2"])
    assert cfg.data.partition.params["alpha"] == 0.5
    assert cfg.attackers == [2]
    with pytest.raises(ConfigError, match=r"attackers.5"):
        apply_override(tiny, "attackers.5", 1)
    with pytest.raises(ConfigError, match="--set"):
        parse_override("rounds")


def test_errors_are_collected_with_dotted_paths(tiny):
    tiny["rounds"] = -1
    tiny["training"]["optimizer"]["lr"] = 0
    tiny["model"]["params"]["hiden"] = [3]
    tiny["bogus"] = 1
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny)
    paths = [p for p, _ in exc.value.errors]
    assert "rounds" in paths and "training.optimizer.lr" in paths and "bogus" in paths
    assert "Input should be greater than 0 (got -1)" in str(exc.value)


def test_plugin_params_errors_use_their_path(tiny):
    tiny["data"]["partition"] = {"name": "dirichlet", "params": {"alpha": 0}}
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny)
    assert exc.value.errors[0][0] == "data.partition.params.alpha"


def test_unknown_plugin_lists_known_names(tiny):
    tiny["topology"]["name"] = "hypercube"
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny)
    msg = str(exc.value)
    assert "topology.name" in msg and "ring" in msg and "star" in msg and "fully_connected" in msg


def test_attackers_checked_against_nodes(tiny):
    tiny["attackers"] = [1, 4, 1]
    with pytest.raises(ConfigError) as exc:
        parse_config(tiny)
    msgs = dict(exc.value.errors)
    assert "out of range" in msgs["attackers.1"] and "twice" in msgs["attackers.2"]


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rounds: 3\nnodes: [1, 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(p)


def test_schema_forbids_extra_everywhere():
    def walk(model):
        assert model.model_config.get("extra") == "forbid", model
        for f in model.model_fields.values():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, ExperimentConfig.__mro__[1]):
                walk(ann)

    walk(ExperimentConfig)
