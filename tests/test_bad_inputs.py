"""The bad-input corpus: broken configs, ``--set`` values, data, topology files, run directories, checkpoints.

Every case goes through the CLI (``dfl.cli.main``) in a fresh folder and must end the same way: exit code 2,
one ``error:`` message that names the field (or flag) at fault, no traceback, no run left ``complete`` that
was not complete before, and no hostile pickle ever executed (its marker file never appears).

A case is a function ``(Corpus) -> argv`` registered with the text its message must contain.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY
from PIL import Image

from dfl import api
from dfl.cli import main

MARKER = "PWNED"


class Corpus:
    """A case's folder and the ways to fill it."""

    def __init__(self, tmp: Path, runs: dict[str, Path]) -> None:
        self.tmp, self._runs = tmp, runs

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, data: bytes | str) -> str:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    def config(self, patch: dict[str, Any] | None = None, *, name: str = "exp.yaml", drop: tuple[str, ...] = ()) -> str:
        """The tiny 4-node experiment, merged with ``patch``, writing its runs below this case's folder."""
        raw = merge(copy.deepcopy(TINY), patch or {})
        raw["output"].setdefault("dir", str(self.tmp / "runs"))
        for key in drop:
            raw.pop(key)
        return self.write(name, yaml.safe_dump(raw))

    def run(self, kind: str = "interrupted") -> Path:
        """A copy of a real run directory of the tiny experiment: ``interrupted`` after round 1 of 3, or ``complete``."""
        dst = self.tmp / f"run-{kind}"
        shutil.copytree(self._runs[kind], dst)
        return dst

    def hostile_pickle(self) -> bytes:
        """A pickle whose loading would run ``touch <marker>`` (protocol 2, so the unpickler reaches the GLOBAL)."""
        return pickle.dumps(_Hostile(str(self.tmp / MARKER)), protocol=2)

    def hostile_checkpoint(self) -> bytes:
        """A torch zip checkpoint whose ``data.pkl`` is the hostile pickle."""
        buf = io.BytesIO()
        torch.save({"round": 1}, buf)
        src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for info in src.infolist():
                data = src.read(info.filename)
                z.writestr(info, self.hostile_pickle() if info.filename.endswith("data.pkl") else data)
        return out.getvalue()

    def images(self, name: str, layout: dict[str, int], size: int = 8, odd: str | None = None) -> Path:
        """An imagefolder tree ``name/<split>/<class>/<i>.png`` with ``layout['split/class']`` images each;
        ``odd`` names one image written at another size."""
        root = self.tmp / name
        rng = np.random.default_rng(0)
        for where, count in layout.items():
            (root / where).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                s = size + 3 if odd == f"{where}/{i}" else size
                Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(root / where / f"{i}.png")
        return root


class _Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for k, v in patch.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "dataset" else v
    return base


CASES: dict[str, tuple[Callable[[Corpus], list[str]], str]] = {}


def case(name: str, needle: str) -> Callable[[Callable[[Corpus], list[str]]], Callable[[Corpus], list[str]]]:
    def deco(fn: Callable[[Corpus], list[str]]) -> Callable[[Corpus], list[str]]:
        assert name not in CASES, name
        CASES[name] = (fn, needle)
        return fn

    return deco


def config_case(name: str, patch: dict[str, Any], needle: str, command: str = "run") -> None:
    """A config that is wrong in itself: rejected by ``run`` before anything is written."""
    case(name, needle)(lambda c: [command, c.config(patch), *(["--quiet"] if command == "run" else [])])


def set_case(name: str, sets: list[str], needle: str) -> None:
    case(name, needle)(lambda c: ["run", c.config(), *[w for s in sets for w in ("--set", s)], "--quiet"])


# ------------------------------------------------------------------------------------- config files

case("config: random bytes", "not UTF-8")(lambda c: ["run", c.write("x.yaml", bytes(range(128, 256)) * 4)])
case("config: latin-1 text", "save it as UTF-8")(
    lambda c: ["validate", c.write("x.yaml", "name: caf\xe9\nrounds: 2\nnodes: 4\n".encode("latin-1"))])
case("config: UTF-16 without a byte-order mark", "not UTF-8")(
    lambda c: ["validate", c.write("x.yaml", "rounds: 2\nnodes: 4\n".encode("utf-16-le"))])
case("config: YAML syntax", "YAML syntax error at line 2")(lambda c: ["run", c.write("x.yaml", "rounds: 3\n  nodes: 4\n")])
case("config: a list, not a mapping", "mapping")(lambda c: ["validate", c.write("x.yaml", "- rounds: 3\n")])
case("config: missing file", "does not exist")(lambda c: ["run", str(c.path("nope.yaml"))])
case("config: a directory", "does not exist")(lambda c: ["validate", str(c.tmp)])
case("config: missing rounds", "rounds")(lambda c: ["run", c.config(drop=("rounds",)), "--quiet"])
case("config: unclosed alias bomb", "YAML")(lambda c: ["validate", c.write("x.yaml", "a: &a [*a]\n")])


def _alias_bomb(where: str) -> str:
    lines = ["name: bomb", "rounds: 2", "nodes: 4", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines + [where]) + "\n"


case("config: alias bomb in attackers", "expands to more than")(
    lambda c: ["validate", c.write("x.yaml", _alias_bomb("attackers: &a9 [*a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8]"))])
case("config: alias bomb in plugin params", "expands to more than")(
    lambda c: ["validate", c.write("x.yaml", _alias_bomb("model: {name: mlp, params: {hidden: *a8}}"))])

config_case("config: nodes 0", {"nodes": 0}, "nodes")
config_case("config: negative rounds", {"rounds": -1}, "rounds")
config_case("config: negative seed", {"seed": -3}, "seed")
config_case("config: name with a slash", {"name": "../escape"}, "name")
config_case("config: unknown top-level key", {"epochs": 3}, "epochs")
config_case("config: unknown topology", {"topology": {"name": "hypercube"}}, "topology.name")
config_case("config: unknown dataset", {"data": {"dataset": {"name": "imagenet"}}}, "data.dataset.name")
config_case("config: unknown model", {"model": {"name": "gpt"}}, "model.name")
config_case("config: model param of a wrong type", {"model": {"name": "mlp", "params": {"hidden": "wide"}}},
            "model.params.hidden")
config_case("config: lr .inf", {"training": {"optimizer": {"lr": float("inf")}}}, "training.optimizer.lr")
config_case("config: weight_decay .inf", {"training": {"optimizer": {"weight_decay": float("inf")}}},
            "training.optimizer.weight_decay")
config_case("config: lr .nan", {"training": {"optimizer": {"lr": float("nan")}}}, "training.optimizer.lr")
config_case("config: -inf in a plugin param", {"data": {"partition": {"name": "dirichlet", "params": {"alpha": float("-inf")}}}},
            "data.partition.params.alpha")
config_case("config: inf in a defense param", {"defenses": [{"name": "label_smoothing", "params": {"epsilon": float("inf")}}]},
            "defenses.0.params.epsilon")
config_case("config: momentum 1.5", {"training": {"optimizer": {"momentum": 1.5}}}, "training.optimizer.momentum")
config_case("config: holdout fraction 1", {"data": {"holdout_fraction": 1.0}}, "data.holdout_fraction")
config_case("config: link failure 1", {"topology": {"link_failure": 1.0}}, "topology.link_failure")
config_case("config: attacker out of range", {"attackers": [9]}, "attackers.0")
config_case("config: attacker listed twice", {"attackers": [1, 1]}, "attackers.1")
config_case("config: every node an attacker", {"attackers": [0, 1, 2, 3]}, "attackers")
config_case("config: attacks without attackers", {"attackers": [], "attacks": [{"name": "loss"}]}, "attackers")
config_case("config: unknown attack", {"attacks": [{"name": "telepathy"}]}, "attacks.0.name")
config_case("config: attack round past the end", {"attacks": [{"name": "loss", "rounds": [7]}]}, "attacks.0.rounds")
config_case("config: unknown defense", {"defenses": [{"name": "prayer"}]}, "defenses.0.name")
config_case("config: defended node out of range", {"defenses": [{"name": "label_smoothing", "nodes": [5]}]},
            "defenses.0.nodes.0")
config_case("config: unknown engine", {"engine": {"name": "mpi"}}, "engine.name")
config_case("config: unknown eval split", {"eval": {"splits": ["validation"]}}, "eval.splits.0")
config_case("config: unknown device", {"device": "tpu"}, "device")
config_case("config: k_regular with odd degree sum", {"nodes": 5, "topology": {"name": "k_regular", "params": {"k": 3}}},
            "nodes: k_regular")
config_case("config: Ray address without a port", {"engine": {"name": "ray", "ray": {"address": "nohost"}}},
            "engine.ray.address", command="validate")
config_case("config: Ray address nobody answers", {"engine": {"name": "ray", "ray": {"address": "127.0.0.1:1"}}},
            "engine.ray.address")
config_case("config: output.dir is a file", {"output": {"dir": "/dev/null"}}, "output.dir")
config_case("config: init.run missing", {"init": {"run": "/nonexistent-dfl-run"}}, "init.run", command="validate")

# ---------------------------------------------------------------------------------------- --set


set_case("--set: no equals sign", ["rounds"], "--set")
set_case("--set: empty key part", ["training..lr=1"], "--set")
set_case("--set: text for a number", ["rounds=abc"], "rounds")
set_case("--set: .inf", ["training.optimizer.lr=.inf"], "training.optimizer.lr")
set_case("--set: list index out of range", ["attacks.5.name=loss"], "attacks")
set_case("--set: key inside a number", ["rounds.x=1"], "rounds.x")
set_case("--set: alias bomb", ["attackers=" + "[&a [1,1,1,1,1,1,1,1,1,1], " + "*a, " * 9 + "*a]"], "attackers")
set_case("--set: unknown key", ["training.epochz=2"], "training.epochz")
case("--set: with --resume", "--set")(lambda c: ["run", "--resume", str(c.run()), "--set", "rounds=5"])

# ------------------------------------------------------------------------------------------- CLI

case("cli: run with neither config nor --resume", "run")(lambda c: ["run"])
case("cli: run with both config and --resume", "run")(lambda c: ["run", c.config(), "--resume", str(c.run())])
case("cli: --out is a file", "--out")(lambda c: ["run", c.config(), "--out", c.write("f", "x"), "--quiet"])
case("cli: --out below a file", "--out")(lambda c: ["run", c.config(), "--out", c.write("f", "x") + "/sub", "--quiet"])
case("cli: compare --out is a file", "--out")(
    lambda c: ["compare", c.config(), "--over", "topology.name=ring,star", "--out", c.write("f", "x")])
case("cli: compare --seeds 0", "--seeds")(lambda c: ["compare", c.config(), "--over", "seed=1,2", "--seeds", "0"])
case("cli: compare --over without values", "--over")(lambda c: ["compare", c.config(), "--over", "topology.name="])
case("cli: compare --jobs 0", "--jobs")(lambda c: ["compare", c.config(), "--over", "seed=1,2", "--jobs", "0"])
case("cli: table --out below a file", "--out")(lambda c: ["table", "perturbation", "--out", c.write("f", "x") + "/t"])
case("cli: table --seeds 0", "--seeds")(lambda c: ["table", "perturbation", "--seeds", "0"])
case("cli: search-augmentation unknown op", "--ops")(
    lambda c: ["search-augmentation", c.config(), "--ops", "teleport"])

# ------------------------------------------------------------------------------------------ data


def imagefolder(c: Corpus, path: str | Path, **params: Any) -> str:
    return c.config({"data": {"dataset": {"name": "imagefolder", "params": {"path": str(path), **params}}}})


GOOD = {"train/a": 30, "train/b": 30, "test/a": 4, "test/b": 4}


def _tar(c: Corpus, name: str, root: Path) -> Path:
    out = c.tmp / name
    with tarfile.open(out, "w:gz") as t:
        t.add(root, arcname=root.name)
    return out


case("data: imagefolder path missing", "data.dataset")(lambda c: ["run", imagefolder(c, c.path("none")), "--quiet"])
case("data: zip that is not a zip", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.write("imgs.zip", b"PK\x03\x04 not really a zip" * 10)), "--quiet"])
case("data: truncated tar.gz", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.write("t.tar.gz", _tar(c, "full.tar.gz", c.images("imgs", GOOD)).read_bytes()[:300])),
               "--quiet"])
case("data: directory without the layout", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.images("flat", {"a": 3, "b": 3})), "--quiet"])
case("data: train split only", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.images("trainonly", {"train/a": 3, "train/b": 3})), "--quiet"])
case("data: test class without train folder", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.images("extra", {**GOOD, "test/zebra": 2})), "--quiet"])
case("data: images of two sizes", "data.dataset")(
    lambda c: ["run", imagefolder(c, c.images("sizes", GOOD, odd="train/b/3")), "--quiet"])


def _corrupt_image(c: Corpus) -> list[str]:
    root = c.images("corrupt", GOOD)
    (root / "train" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return ["run", imagefolder(c, root), "--quiet"]


case("data: corrupt image file", "data.dataset")(_corrupt_image)
case("data: unknown imagefolder param", "data.dataset.params.size")(
    lambda c: ["validate", c.config({"data": {"dataset": {"name": "imagefolder", "params": {"path": "x", "size": 3}}}})])
case("data: partition cap of 0 samples", "data.samples_per_node")(
    lambda c: ["run", c.config({"data": {"samples_per_node": 0}}), "--quiet"])

# ------------------------------------------------------------------------------------ topology files


def from_file(c: Corpus, name: str, text: str | bytes) -> list[str]:
    return ["run", c.config({"topology": {"name": "from_file", "params": {"path": c.write(name, text)}}}), "--quiet"]


GRAPHML_HEAD = '<?xml version="1.0"?>\n'
GRAPHML_BODY = ('<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="undirected">'
                '<node id="a"/><node id="b"/><node id="c"/><node id="d"/>'
                '<edge source="a" target="&x;"/></graph></graphml>\n')

case("topology: file missing", "topology.params.path")(
    lambda c: ["run", c.config({"topology": {"name": "from_file", "params": {"path": str(c.path("g.txt"))}}}), "--quiet"])
case("topology: edge list with too few nodes", "nodes")(lambda c: from_file(c, "g.txt", "0 1\n1 2\n"))
case("topology: edge list that is not text", "topology.params.path")(lambda c: from_file(c, "g.txt", b"\xff\xfe\x00\x01" * 50))
case("topology: malformed GraphML", "topology.params.path")(lambda c: from_file(c, "g.graphml", "<graphml><graph>"))
case("topology: GraphML external entity", "topology.params.path")(lambda c: from_file(
    c, "g.graphml", GRAPHML_HEAD + '<!DOCTYPE graphml [<!ENTITY x SYSTEM "file:///etc/hostname">]>\n' + GRAPHML_BODY))
case("topology: GraphML entity bomb", "topology.params.path")(lambda c: from_file(
    c, "g.graphml", GRAPHML_HEAD + "<!DOCTYPE graphml [" + '<!ENTITY x0 "lol">' + "".join(
        f'<!ENTITY x{i} "{("&x" + str(i - 1) + ";") * 10}">' for i in range(1, 10)) + '<!ENTITY x "&x9;">]>\n'
    + GRAPHML_BODY))
case("topology: disconnected edge list", "disconnected")(lambda c: from_file(c, "g.txt", "0 1\n2 3\n"))

# ------------------------------------------------------------------------ run directories and checkpoints


def resume_with(fn: Callable[[Path, Corpus], None]) -> Callable[[Corpus], list[str]]:
    def argv(c: Corpus) -> list[str]:
        run = c.run()
        fn(run, c)
        return ["run", "--resume", str(run), "--quiet"]

    return argv


CKPT = "checkpoints/latest.pt"


def _write(rel: str, data: Callable[[Path, Corpus], bytes]) -> Callable[[Path, Corpus], None]:
    return lambda run, c: (run / rel).write_bytes(data(run, c))


case("resume: no such directory", "not a run directory")(lambda c: ["run", "--resume", str(c.path("nope"))])
case("resume: a folder that is not a run", "not a run directory")(lambda c: ["run", "--resume", str(c.tmp)])
case("resume: a complete run", "already complete")(lambda c: ["run", "--resume", str(c.run("complete"))])
case("resume: truncated checkpoint", "--resume")(resume_with(_write(CKPT, lambda r, c: (r / CKPT).read_bytes()[:500])))
case("resume: empty checkpoint", "--resume")(resume_with(_write(CKPT, lambda r, c: b"")))
case("resume: garbage checkpoint", "--resume")(resume_with(_write(CKPT, lambda r, c: os.urandom(4096))))
case("resume: hostile pickle checkpoint", "--resume")(resume_with(_write(CKPT, lambda r, c: c.hostile_pickle())))
case("resume: hostile pickle in a torch zip", "--resume")(resume_with(_write(CKPT, lambda r, c: c.hostile_checkpoint())))
case("resume: checkpoint of the wrong shape", "--resume")(resume_with(
    lambda r, c: torch.save({"round": "one", "participants": 3}, r / CKPT)))
case("resume: checkpoint missing", "no checkpoint")(resume_with(lambda r, c: (r / CKPT).unlink()))
case("resume: metrics.jsonl shorter than the checkpoint", "metrics.jsonl")(
    resume_with(_write("metrics.jsonl", lambda r, c: (r / "metrics.jsonl").read_bytes()[:40])))
case("resume: metrics.jsonl missing", "metrics.jsonl")(resume_with(lambda r, c: (r / "metrics.jsonl").unlink()))
case("resume: config.yaml not YAML", "YAML syntax")(resume_with(_write("config.yaml", lambda r, c: b"rounds: [\n")))
case("resume: config.yaml not UTF-8", "not UTF-8")(resume_with(_write("config.yaml", lambda r, c: b"\xfa\xfb\xfc" * 30)))
case("resume: config.yaml edited to an invalid value", "rounds")(resume_with(_write(
    "config.yaml", lambda r, c: (r / "config.yaml").read_bytes().replace(b"rounds: 3", b"rounds: -3"))))


def _init_case(mutate: Callable[[Path, Corpus], None], node: int = 0, command: str = "validate") -> Callable[[Corpus], list[str]]:
    def argv(c: Corpus) -> list[str]:
        run = c.run("complete")
        mutate(run, c)
        return [command, c.config({"init": {"run": str(run), "node": node}}), *(["--quiet"] if command == "run" else [])]

    return argv


case("init: garbage checkpoint (validate)", "init.run")(_init_case(_write(CKPT, lambda r, c: b"\x00" * 64)))
case("init: garbage checkpoint (run)", "init.run")(_init_case(_write(CKPT, lambda r, c: b"\x00" * 64), command="run"))
case("init: hostile pickle checkpoint", "init.run")(_init_case(_write(CKPT, lambda r, c: c.hostile_checkpoint())))
case("init: node out of range", "init.node")(_init_case(lambda r, c: None, node=9))
case("init: an interrupted run", "init.run")(
    lambda c: ["validate", c.config({"init": {"run": str(c.run("interrupted")), "node": 0}})])


# ------------------------------------------------------------------------------------------- runner


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base-runs")
    cfg = merge(copy.deepcopy(TINY), {"output": {"dir": str(root)}})
    from dfl.experiment import parse_config

    interrupted = api.run(parse_config(copy.deepcopy(cfg)), stop_after=1).run_dir
    complete = api.run(parse_config(cfg)).run_dir
    assert (interrupted / "STATUS").read_text().strip() == "interrupted"
    assert (complete / "STATUS").read_text().strip() == "complete"
    return {"interrupted": interrupted, "complete": complete}


def statuses(root: Path) -> dict[Path, str]:
    return {p: p.read_text().strip() for p in root.rglob("STATUS")}


def test_the_corpus_is_large_enough() -> None:
    kinds = {name.split(":")[0] for name in CASES}
    assert len(CASES) >= 60 and {"config", "--set", "cli", "data", "topology", "resume", "init"} <= kinds


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, base_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    build, needle = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFL_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "300")
    argv = build(Corpus(tmp_path, base_runs))
    before = statuses(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.count("error:") == 1, err
    assert needle in err, err
    newly_complete = [p for p, s in statuses(tmp_path).items() if s == "complete" and before.get(p) != "complete"]
    assert not newly_complete, newly_complete
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    assert not (tmp_path / MARKER).exists(), "a hostile pickle ran"
