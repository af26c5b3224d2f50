"""The golden corpus: runs whose ``metrics.jsonl`` must stay byte-identical while the core is reshaped.

    python tests/golden.py record [NAME ...]   # (re)write tests/golden/NAME.jsonl from the current code
    python tests/golden.py check [NAME ...]    # run the cases and compare (what tests/test_golden.py does)

A case is a config (the tiny experiment of ``tests/conftest.py``, or a file under ``experiments/`` at a
reduced size) and how it runs: plainly, on the Ray engine, interrupted after round 1 and resumed, or as a
``compare`` grid (its runs' files concatenated in grid order). Every attack and every defense appears in
at least one case. The one field of a record that is not a function of config and seed, an inversion's
wall-clock ``seconds``, is written as 0 before anything is compared. Cases on CIFAR-10 need the data
(``DFL_SIM_DATA`` or ``../shared/datasets``) and are skipped without it.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOLDEN = HERE / "golden"
# the checkout first: tests/dfl, tests/defenses, ... would otherwise stand in for the packages of that name
sys.path[:0] = [str(ROOT), str(HERE)]

from conftest import TINY  # noqa: E402

SECONDS = re.compile(r'"seconds": [0-9.eE+-]+')
SMALL_CIFAR = ["rounds=1", "data.samples_per_node=120", "data.test_samples=200", "eval.max_samples=100",
               "output.plots=false"]
MIA = ["loss", "correctness", "confidence", "entropy", "modified_entropy", "top1_threshold", "label_only",
       "shadow_model", "lira_offline", "rmia", "lira"]
DEFENSES: dict[str, dict[str, Any]] = {
    "adamixup": {}, "augmixcloak": {}, "confidence_masking": {}, "confidence_perturbation": {},
    "confidence_regularization": {}, "defensive_augmentation": {"op": "posterize", "magnitude": 5}, "dp_sgd": {"noise_multiplier": 0.5},
    "image_perturbation": {}, "label_smoothing": {}, "memguard": {}, "mixup": {}, "update_noise": {},
    "update_pruning": {}, "weight_penalty": {},
}

ASYNC: dict[str, Any] = {  # uneven speeds, push gossip, slow links, churn and an attacker hearing messages
    "nodes": 8, "rounds": 4, "mode": "async", "topology": {"name": "small_world", "params": {"k": 4, "p": 0.3}},
    "async": {"protocol": "push_one", "speed_sigma": 0.6, "latency": 0.2, "bandwidth": 20000.0,
              "churn": [{"node": 3, "start": 1.2, "end": 2.6}]},
    "attacks": [{"name": "loss", "access": "params", "every": 2}],
    "data": {**TINY["data"], "auxiliary_fraction": 0.2},
}


@dataclass(frozen=True)
class Case:
    """One golden run: a config file or mapping, overrides, and the way it runs."""

    config: str | dict[str, Any]
    sets: tuple[str, ...] = ()
    mode: str = "run"  # run | resume | compare
    over: tuple[str, ...] = ()
    needs_cifar: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def tiny(**patch: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw.update(patch)
    return raw


CASES: dict[str, Case] = {
    "ring_digits": Case("experiments/ring_digits.yaml", ("rounds=2",)),
    "ring_digits_ray": Case("experiments/ring_digits.yaml", ("rounds=2", "engine.name=ray")),
    "ring_digits_resumed": Case("experiments/ring_digits.yaml", ("rounds=3",), mode="resume"),
    "table_digits_base": Case("experiments/tables/digits.yaml", ("rounds=2", "training.local_epochs=2")),
    "tiny_compare": Case(tiny(), mode="compare", over=("topology.name=ring,star",)),
    "tiny_centralized": Case(tiny(topology={"name": "centralized"}, attackers=[])),
    "tiny_every_mia_attack": Case(tiny(rounds=2, attacks=[{"name": a} for a in MIA]),
                                  ("data.auxiliary_fraction=0.3",)),
    "tiny_inversion": Case(tiny(rounds=2, attacks=[{"name": a, "params": {"iterations": 4}}
                                                    for a in ("dlg", "idlg", "inverting_gradients")])),
    **{f"tiny_defense_{d}": Case(tiny(rounds=2, attacks=[{"name": "loss"}], defenses=[{"name": d, "params": p}]),
                                 ("data.auxiliary_fraction=0.2",))
       for d, p in DEFENSES.items()},
    **{f"tiny_async{suffix}": Case(tiny(**ASYNC), sets, mode=mode)
       for suffix, sets, mode in (("", (), "run"), ("_batched", ("engine.name=batched",), "run"),
                                  ("_resumed", (), "resume"))},
    **{f"cifar10_{Path(f).stem}": Case(f"experiments/{f}", (*SMALL_CIFAR, *more), needs_cifar=True)
       for f, more in (("ring_cifar10.yaml", ()), ("star_cifar10.yaml", ()), ("fully_connected_cifar10.yaml", ()),
                       ("mia_ring_cifar10.yaml", ("training.local_epochs=1", "data.auxiliary_fraction=0.005")),
                       ("gi_ring_cifar10.yaml", tuple(f"attacks.{i}.params.iterations=5" for i in range(3))))},
}


def cifar_root() -> Path | None:
    """Where CIFAR-10 lies, if anywhere: ``$DFL_SIM_DATA`` or the shared data sets beside the checkout."""
    for root in (os.environ.get("DFL_SIM_DATA"), ROOT.parent / "shared" / "datasets"):
        if root and any(Path(root).glob("cifar*10*")):
            return Path(root)
    return None


def canonical(run_dirs: list[Path]) -> bytes:
    """The runs' metrics.jsonl, concatenated, with inversion records' ``seconds`` set to 0."""
    out = []
    for d in run_dirs:
        for line in (d / "metrics.jsonl").read_text().splitlines(keepends=True):
            out.append(SECONDS.sub('"seconds": 0', line) if '"kind": "inversion"' in line else line)
    return "".join(out).encode()


def produce(name: str, workdir: Path) -> bytes:
    """Run case ``name`` in ``workdir``; the canonical bytes of its metrics."""
    from dfl import api

    case = CASES[name]
    if isinstance(case.config, dict):
        raw = copy.deepcopy(case.config)
        raw.setdefault("output", {}).update(plots=False, progress=False)
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
    else:
        path = ROOT / case.config
    sets = [*case.sets, "output.plots=false", "output.progress=false"]
    out = workdir / "runs"
    if case.mode == "compare":
        res = api.compare(path, list(case.over), overrides=sets, out_dir=out)
        return canonical([r.run_dir for r in res.runs])
    if case.mode == "resume":
        first = api.run(path, sets, out_dir=out, stop_after=1)
        return canonical([api.resume(first.run_dir).run_dir])
    return canonical([api.run(path, sets, out_dir=out).run_dir])


def _each(names: list[str], act: Callable[[str, bytes], None]) -> None:
    os.environ.setdefault("DFL_SIM_DATA", str(cifar_root() or ""))
    for name in names:
        if CASES[name].needs_cifar and cifar_root() is None:
            print(f"{name}: skipped (no CIFAR-10)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            act(name, produce(name, Path(tmp)))


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)  # as the test suite runs them
    if not argv or argv[0] not in ("record", "check"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    command, names = argv[0], argv[1:] or sorted(CASES)
    failed: list[str] = []

    def record(name: str, data: bytes) -> None:
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / f"{name}.jsonl").write_bytes(data)
        print(f"{name}: recorded {len(data.splitlines())} records")

    def check(name: str, data: bytes) -> None:
        same = (GOLDEN / f"{name}.jsonl").read_bytes() == data
        print(f"{name}: {'identical' if same else 'DIFFERS'}")
        if not same:
            failed.append(name)

    _each(names, record if command == "record" else check)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
