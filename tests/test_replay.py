"""Train once, attack many: ``output.save_shared`` keeps the attacked rounds' states, and ``dfl-sim attack``
on them writes the records a live run with the same attacks writes, byte for byte; bad replays exit 2."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import TINY

from dfl import api
from dfl.adversary.saved import available, load, saved_rounds
from dfl.cli import main
from dfl.experiment import parse_config

ATTACKS = [{"name": "loss", "every": 1, "samples": 60}, {"name": "rmia", "samples": 60, "params": {"shadow_models": 2}},
           {"name": "confidence", "access": "params", "rounds": [1], "samples": 60}]


def raw(**patch: Any) -> dict[str, Any]:
    out = copy.deepcopy(TINY)
    out["data"]["auxiliary_fraction"] = 0.2
    out["rounds"] = 2
    out["defenses"] = [{"name": "memguard", "nodes": [0]}]  # query-time: its records replay too
    out.update(patch)
    return out


def attack_lines(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["kind"] in ("mia", "defense", "inversion")]


def test_replay_writes_the_live_runs_attack_records_byte_for_byte(tmp_path: Path) -> None:
    trained = api.run(parse_config(raw(attacks=[{"name": "loss"}], output={"save_shared": True, "plots": False})),
                      out_dir=tmp_path / "runs").run_dir
    assert available(trained / "shared") == [2]  # the rounds the config's attacks run in
    live = api.run(parse_config(raw(attacks=ATTACKS, output={"plots": False})), out_dir=tmp_path / "live").run_dir
    # the replayed attacks run in rounds 1 and 2: keep every round
    every = api.run(parse_config(raw(attacks=[], output={"save_shared": True, "plots": False})),
                    out_dir=tmp_path / "every").run_dir
    assert available(every / "shared") == [1, 2]
    replay = api.attack(every, [f"attacks={json.dumps(ATTACKS)}"])
    assert replay.run_dir.parent == every / "attacks"
    expected = attack_lines(live)
    assert expected and attack_lines(replay.run_dir) == expected
    for r in (json.loads(line) for line in expected if '"signals"' in line):  # the exports too
        assert (replay.run_dir / r["signals"]).read_bytes() == (live / r["signals"]).read_bytes()


def test_kept_states_are_the_rounds_shared_and_start_states(tmp_path: Path) -> None:
    cfg = parse_config(raw(attacks=[], output={"save_shared": True, "plots": False}))
    run = api.run(cfg, out_dir=tmp_path).run_dir
    shared1, starts1, heard = load(run / "shared", 1)
    shared2, starts2, _ = load(run / "shared", 2)
    assert heard is None  # what the attackers heard: mode: async only
    assert shared1.shape == starts1.shape == (cfg.nodes, shared1.shape[1])
    assert bool((starts1 == starts1[0]).all())  # round 1 starts from the one initial model
    assert not np.array_equal(shared1.numpy(), starts1.numpy())  # training moved them
    assert not np.array_equal(starts2.numpy(), shared1.numpy())  # round 2 starts from the mixed states
    assert saved_rounds(parse_config(raw(attacks=[{"name": "loss", "every": 2}], rounds=5))) == [2, 4, 5]


def test_a_replay_without_kept_states_exits_2_saying_what_to_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = api.run(parse_config(raw(attacks=[{"name": "loss"}], output={"plots": False})), out_dir=tmp_path).run_dir
    assert main(["attack", str(run), "--set", "attacks=[{name: loss}]"]) == 2
    assert "output.save_shared: true" in capsys.readouterr().err


def test_a_replay_may_change_only_the_attacks_and_only_in_kept_rounds(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = raw(attacks=[{"name": "loss"}], output={"save_shared": True, "plots": False})
    run = api.run(parse_config(cfg), out_dir=tmp_path).run_dir
    assert main(["attack", str(run), "--set", "rounds=5"]) == 2
    assert "changes only the attacks" in capsys.readouterr().err
    assert main(["attack", str(run), "--set", "attacks=[{name: loss, rounds: [1]}]"]) == 2
    err = capsys.readouterr().err
    assert "attacks.0" in err and "round 1" in err and "kept: rounds 2" in err
    assert main(["attack", str(run), "--set", "attacks=[{name: confidence}]"]) == 0
    out = next((run / "attacks").iterdir())
    assert yaml.safe_load((out / "config.yaml").read_text())["attacks"][0]["name"] == "confidence"
    assert all(json.loads(line)["kind"] in ("mia", "defense") for line in (out / "metrics.jsonl").read_text().splitlines())


def test_inversion_attacks_replay_on_the_kept_start_states(tmp_path: Path) -> None:
    """Gradient inversion reads the round's start states too: the replay's records equal the live run's
    (their ``seconds`` aside, wall time)."""
    import re

    attacks = [{"name": "idlg", "params": {"iterations": 4}}]

    def one_image(**patch: Any) -> dict[str, Any]:
        out = copy.deepcopy(TINY)
        out["rounds"] = 2
        out["training"].update(local_epochs=None, local_steps=1, batch_size=1)
        out.update(patch)
        return out

    live = api.run(parse_config(one_image(attacks=attacks, output={"plots": False})), out_dir=tmp_path / "l").run_dir
    kept = api.run(parse_config(one_image(attacks=[], output={"save_shared": True, "plots": False})),
                   out_dir=tmp_path / "k").run_dir
    replay = api.attack(kept, [f"attacks={json.dumps(attacks)}"]).run_dir
    seconds = re.compile(r'"seconds": [0-9.e+-]+')
    lines = [[seconds.sub('"seconds": 0', line) for line in attack_lines(d)] for d in (live, replay)]
    assert len(lines[0]) == 2 and lines[0] == lines[1]


def test_async_replays_attack_the_messages_each_attacker_heard(tmp_path: Path) -> None:
    """mode: async: a kept round holds what every attacker heard (messages, times, iterations, their
    senders' starts and the messages before), so membership and inversion replays write the live run's
    records (inversion ``seconds`` aside)."""
    import re

    attacks = [{"name": "loss", "every": 1, "samples": 40}, {"name": "loss", "access": "params", "every": 1, "samples": 40},
               {"name": "idlg", "every": 2, "params": {"iterations": 3}},
               {"name": "dlg", "every": 2, "params": {"iterations": 2, "knowledge": "observed"}}]
    uneven = {"mode": "async", "rounds": 3, "defenses": [],
              "async": {"protocol": "push_one", "speed_sigma": 0.6, "latency": 0.2, "speeds": {0: 2.0}}}
    live = api.run(parse_config(raw(attacks=attacks, output={"plots": False}, **uneven)), out_dir=tmp_path / "l").run_dir
    kept = api.run(parse_config(raw(attacks=[], output={"save_shared": True, "plots": False}, **uneven)),
                   out_dir=tmp_path / "k").run_dir
    _, _, heard = load(kept / "shared", 3)
    assert heard is not None and heard[1] and all(not heard[i] for i in (0, 2, 3))  # the attacker's only
    replay = api.attack(kept, [f"attacks={json.dumps(attacks)}"]).run_dir
    seconds = re.compile(r'"seconds": [0-9.e+-]+')
    lines = [[seconds.sub('"seconds": 0', line) for line in attack_lines(d)] for d in (live, replay)]
    assert any('"message_time"' in line and '"inversion"' in line for line in lines[0]) and lines[0] == lines[1]
