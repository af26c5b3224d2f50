"""Flower's simulation engine against dfl-sim on the same federated-averaging workload: rounds per second.

Both sides run the same config -- model, data, partition, clients, local epochs, optimizer, seed --
on the same CPU budget (``--cpus``, default 2):

- Flower: ``topology.name: centralized`` through :func:`dfl.engines.flower.run_centralized`
  (``flwr.simulation.run_simulation``, Ray backend, ``--cpus`` actors of 1 CPU, 1 torch thread each);
- dfl-sim: ``topology.name: fully_connected`` with ``aggregator.name: sample_weighted`` (one gossip round
  on the complete graph with FedAvg weights is the server's average) through ``dfl.api.run`` on
  ``--engine`` (``ray``: ``--cpus`` actors, 1 thread each; ``serial`` and ``batched``: one process,
  ``--cpus`` threads).

Evaluation runs only after the last round (test split, 100 samples), no checkpoints, so a round is
training + aggregation. The first round (imports of the engine, Ray start, data loading in the
workers, building participants) is reported separately; rounds per second are measured from the end of
round 1 to the end of round R-1 (the last round also evaluates). Workloads:

- ``overhead``: 100 clients, ``mlp`` (hidden 32), synthetic 1x8x8 images, 20 train samples each,
  one SGD step per round: the cost is the engine's, not the model's;
- ``compute``: 10 clients, ``cnn`` (channels 32, 64), CIFAR-10 from ``--data-root``, 500 train
  samples each, one local epoch (16 steps of 32): the cost is the training.

    python benchmarks/bench_flower.py [--workloads overhead compute] [--engine ray|serial|batched] [--rounds 12 6]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfl.api import prepare, run  # noqa: E402
from dfl.engines.flower import run_centralized  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402

COMMON: dict[str, Any] = {
    "seed": 0,
    "training": {"local_epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "attackers": [],
    "output": {"plots": False, "progress": False, "checkpoint_every": 0},
}


def workload(name: str, rounds: int, data_root: str) -> dict[str, Any]:
    """The shared config of a workload (topology and engine are set per side)."""
    raw = copy.deepcopy(COMMON)
    raw.update(name=f"bench-flower-{name}", rounds=rounds,
               eval={"every": rounds, "splits": ["test"], "max_samples": 100})
    if name == "overhead":
        nodes, per_node = 100, 20
        raw.update(nodes=nodes, model={"name": "mlp", "params": {"hidden": [32]}})
        raw["data"] = {"dataset": {"name": "synthetic", "params": {"num_classes": 10, "image_size": 8, "channels": 1,
                                                                   "train_size": nodes * per_node, "test_size": 100}},
                       "holdout_fraction": 0.0}
    elif name == "compute":
        raw.update(nodes=10, model={"name": "cnn", "params": {"channels": [32, 64]}})
        raw["data"] = {"dataset": {"name": "cifar10"}, "root": data_root, "samples_per_node": 500,
                       "holdout_fraction": 0.0, "test_samples": 100}
    else:
        raise SystemExit(f"unknown workload {name!r}; choose overhead or compute")
    return raw


class Clock:
    """End time of each round, from the start of the call that runs them."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ends: list[float] = []
        self.last: dict[str, Any] = {}

    def __call__(self, done: int, total: int, record: dict[str, Any]) -> None:
        self.ends.append(time.perf_counter() - self.t0)
        self.last = record

    def summary(self) -> dict[str, float]:
        e = self.ends
        steady = (len(e) - 2) / (e[-2] - e[0]) if len(e) >= 3 else float("nan")
        return {"first_round_s": e[0], "rounds_per_s": steady, "total_s": e[-1],
                "test_acc": float(self.last.get("mean_test_acc", float("nan")))}


def time_dfl(raw: dict[str, Any], engine: str, cpus: int, out: Path, threads: str | None = None) -> dict[str, float]:
    raw = copy.deepcopy(raw)
    raw["topology"] = {"name": "fully_connected"}
    raw["aggregator"] = {"name": "sample_weighted"}
    default = cpus if engine in ("serial", "batched") else 1
    raw["engine"] = {"name": engine, "threads": default if threads is None else (threads if threads == "auto" else int(threads))}
    if engine == "ray":
        raw["engine"]["ray"] = {"actors": cpus, "cpus_per_actor": 1.0}
    cfg = parse_config(raw)
    clock = Clock()
    run(cfg, out_dir=out, progress=clock, t0=clock.t0)
    return clock.summary()


def time_flower(raw: dict[str, Any], cpus: int) -> dict[str, float]:
    raw = copy.deepcopy(raw)
    raw["topology"] = {"name": "centralized"}
    raw["engine"] = {"name": "serial", "threads": 1}  # torch threads per Flower client
    cfg = parse_config(raw)
    clock = Clock()
    population = prepare(cfg)
    run_centralized(cfg, population, clock, lambda records: None, num_cpus=cpus, cpus_per_client=1.0)
    return clock.summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["overhead", "compute"])
    ap.add_argument("--rounds", nargs="+", type=int, default=[12, 6], help="rounds per workload (at least 3)")
    ap.add_argument("--engine", default="ray", choices=["serial", "ray", "batched"], help="dfl-sim engine")
    ap.add_argument("--cpus", type=int, default=2, help="CPU budget of both sides")
    ap.add_argument("--threads", help="engine.threads of the dfl-sim side (a number or auto; default: --cpus for "
                    "serial and batched, 1 per Ray actor)")
    ap.add_argument("--data-root", default=os.environ.get("DFL_SIM_DATA", "/work/shared/datasets"))
    args = ap.parse_args()
    rounds = dict(zip(args.workloads, args.rounds + [args.rounds[-1]] * len(args.workloads), strict=False))
    torch.set_num_threads(args.cpus)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            raw = workload(name, max(3, rounds[name]), args.data_root)
            dfl = time_dfl(raw, args.engine, args.cpus, Path(tmp), args.threads)
            print(f"{name}: dfl-sim ({args.engine}) {dfl}", flush=True)
            flwr = time_flower(raw, args.cpus)
            print(f"{name}: Flower {flwr}", flush=True)
            rows.append((name, raw["rounds"], dfl, flwr))
    print()
    print(f"| workload | rounds | dfl-sim ({args.engine}) rounds/s | Flower rounds/s | dfl-sim / Flower "
          "| first round dfl-sim / Flower | final test acc dfl-sim / Flower |")
    print("|---|---|---|---|---|---|---|")
    for name, r, dfl, flwr in rows:
        print(f"| {name} | {r} | {dfl['rounds_per_s']:.3f} | {flwr['rounds_per_s']:.3f} "
              f"| **{dfl['rounds_per_s'] / flwr['rounds_per_s']:.2f}** "
              f"| {dfl['first_round_s']:.1f} s / {flwr['first_round_s']:.1f} s "
              f"| {dfl['test_acc']:.3f} / {flwr['test_acc']:.3f} |")


if __name__ == "__main__":
    main()
