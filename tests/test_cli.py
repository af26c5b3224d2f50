"""The CLI: commands, and a corpus of broken inputs that must give one message and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfl.cli import main


def test_run_prints_report_path(tiny, write_cfg, capsys):
    assert main(["run", str(write_cfg(tiny)), "--quiet", "--set", "rounds=1"]) == 0
    out = capsys.readouterr().out
    report = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    assert report.name == "report.md" and report.is_file()


def test_validate_and_list(tiny, write_cfg, capsys):
    assert main(["validate", str(write_cfg(tiny))]) == 0
    assert "valid" in capsys.readouterr().err
    assert main(["list", "topologies"]) == 0
    out = capsys.readouterr().out
    assert "ring" in out and "erdos_renyi" in out and "p=" in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for fam in ("datasets", "partitioners", "models", "topologies", "aggregators", "attacks", "defenses"):
        assert fam in out
    assert "cifar10" in out and "dirichlet" in out and "resnet18" in out and "metropolis_hastings" in out


BROKEN = {
    "unknown key": ({"roundz": 3}, "roundz"),
    "wrong type": ({"rounds": "many"}, "rounds"),
    "negative rounds": ({"rounds": -2}, "rounds"),
    "ring of 2 nodes": ({"nodes": 2, "attackers": []}, "ring needs at least 3 nodes"),
    "attacker out of range": ({"attackers": [7]}, "attackers.0"),
    "missing dataset": ({"data": {"dataset": {"name": "cifar10"}, "root": "/nonexistent-dfl-data"}}, "cifar10"),
    "disconnected graph": ({"nodes": 8, "topology": {"name": "edges", "params": {"edges": [[0, 1], [2, 3]]}}},
                           "disconnected"),
    "dirichlet alpha 0": ({"data": {"partition": {"name": "dirichlet", "params": {"alpha": 0}}}},
                          "data.partition.params.alpha"),
    "unknown model": ({"model": {"name": "transformer"}}, "model.name"),
    "unknown model param": ({"model": {"name": "mlp", "params": {"depth": 3}}}, "model.params.depth"),
}


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "dataset" else v
    return out


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_broken_config_exits_2_with_one_message(case, command, tiny, write_cfg, capsys, tmp_path):
    patch, needle = BROKEN[case]
    path = write_cfg(_merge(tiny, patch))
    assert main([command, str(path)] + (["--quiet"] if command == "run" else [])) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_yaml_syntax_error_exits_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("rounds: 3\n  nodes: 4\n")
    assert main(["validate", str(p)]) == 2
    assert "YAML syntax error at line" in capsys.readouterr().err


def test_bad_cli_input_exits_2(tiny, write_cfg, capsys, tmp_path):
    cfg = str(write_cfg(tiny))
    assert main(["run", cfg, "--set", "rounds"]) == 2
    assert main(["run", cfg, "--set", "nodes.x=1"]) == 2
    assert main(["run"]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert main(["compare", cfg, "--over", "topology.name"]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "does not exist" in err and "Traceback" not in err


def test_subprocess_gives_no_traceback(tiny, write_cfg):
    tiny["rounds"] = 0
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "dfl", "validate", str(write_cfg(tiny))], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "rounds" in out.stderr and "greater than 0" in out.stderr and "Traceback" not in out.stderr
