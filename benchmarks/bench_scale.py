"""Many small participants: the batched engine against the serial engine, in one process.

    python benchmarks/bench_scale.py [--nodes 10000] [--serial-nodes 500] [--rounds 3]

The workload: ``mlp`` (hidden [64]) on generated 1x28x28 images, 60 samples per node of which 48 train,
batch 16 (one local epoch = 3 steps), a ring, test evaluation on 100 samples every 3 rounds. The serial
engine's time grows linearly with the node count (one participant after another), so it runs on
``--serial-nodes`` nodes and its time per round is scaled to ``--nodes``; the batched engine runs on
``--nodes`` with ``--threads`` torch threads (its batched matrix products use them; the serial engine
is fastest with one). Printed: seconds per round (the mean over rounds 2.., so the first round's one-time costs
are left out, and an evaluation round is included), their ratio, the peak resident memory of the
process after the batched run, and what the participants must hold (states, optimizer state, data).

``--workload cifar`` (needs ``DFL_SIM_DATA`` with CIFAR-10, e.g. ``../shared/datasets``): ``cnn``
(channels [32, 64], hidden 128) on CIFAR-10, 50 training images per node (1,000 nodes take the whole
training set), batch 32 (2 local steps), SGD with momentum 0.9, a ring, test evaluation on 100 images
every 2 rounds; the memory per participant is printed beside what it must hold.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dfl.engines import BatchedEngine, SerialEngine  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation import Federation  # noqa: E402
from dfl.federation.population import Population  # noqa: E402


def config(nodes: int, rounds: int, engine: str, threads: int = 1, workload: str = "mlp") -> dict:
    if workload == "cifar":
        return {
            "name": "scale_cifar", "seed": 0, "rounds": rounds, "nodes": nodes,
            "data": {"dataset": {"name": "cifar10"}, "partition": {"name": "iid"}, "samples_per_node": 50,
                     "holdout_fraction": 0.0, "test_samples": 1000},
            "model": {"name": "cnn", "params": {"channels": [32, 64], "hidden": 128}},
            "training": {"local_epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
            "topology": {"name": "ring"},
            "eval": {"every": 2, "splits": ["test"], "max_samples": 100},
            "engine": {"name": engine, "threads": threads},
            "output": {"plots": False},
        }
    return {
        "name": "scale", "seed": 0, "rounds": rounds, "nodes": nodes,
        "data": {"dataset": {"name": "synthetic", "params": {"num_classes": 10, "image_size": 28,
                                                              "train_size": 60 * nodes, "test_size": 100}},
                 "partition": {"name": "iid"}, "holdout_fraction": 0.2, "samples_per_node": 60},
        "model": {"name": "mlp", "params": {"hidden": [64]}},
        "training": {"local_epochs": 1, "batch_size": 16},
        "topology": {"name": "ring"},
        "eval": {"every": 3, "splits": ["test"], "max_samples": 100},
        "engine": {"name": engine, "threads": threads},
        "output": {"plots": False},
    }


def seconds_per_round(nodes: int, rounds: int, engine: str, threads: int = 1,
                      workload: str = "mlp") -> tuple[float, Population]:
    cfg = parse_config(config(nodes, rounds, engine, threads, workload))
    population = Population.from_config(cfg)
    eng = (BatchedEngine if engine == "batched" else SerialEngine)(population)
    times: list[float] = []
    fed = Federation(cfg, population, eng, progress=lambda *_: times.append(time.perf_counter()))
    t0 = time.perf_counter()
    fed.run(t0=t0)
    eng.close()
    laps = [b - a for a, b in zip([t0, *times], times, strict=False)]
    return sum(laps[1:]) / max(len(laps) - 1, 1), population


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["mlp", "cifar"], default="mlp")
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--serial-nodes", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="engine.threads of the batched run (the serial run: 1, "
                    "its fastest: more threads slow one small model down)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    batched, population = seconds_per_round(args.nodes, args.rounds, "batched", args.threads, args.workload)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cfg = population.cfg
    n_state = sum(p.numel() for p in population.template().parameters())
    copies = 1 + (cfg.training.optimizer.momentum > 0) + 2 * (cfg.training.optimizer.name == "adam")
    held_gb = (args.nodes * n_state * 4 * copies + population.data.x_train.nbytes) / 2**30
    serial_small, _ = seconds_per_round(args.serial_nodes, args.rounds, "serial", 1, args.workload)
    serial = serial_small * args.nodes / args.serial_nodes
    t = cfg.training
    print(f"{args.nodes} nodes, {cfg.model.name} {cfg.model.params} on {'x'.join(map(str, population.data.shape))}, "
          f"{len(population.splits.nodes[0].train)} train samples per node, batch {t.batch_size}, ring, "
          f"rounds 2..{args.rounds}")
    print(f"serial : {serial:8.2f} s/round (measured on {args.serial_nodes} nodes: {serial_small:.2f} s)")
    print(f"batched: {batched:8.2f} s/round with {args.threads} thread(s) -> {serial / batched:.1f}x faster")
    print(f"peak resident memory after the batched run: {peak_gb:.2f} GB = {peak_gb * 1024 / args.nodes:.2f} MiB per "
          f"participant; the participants hold {held_gb:.2f} GB (states {args.nodes} x {n_state:,} float32 x {copies} "
          f"with the optimizer's state, + uint8 data)")


if __name__ == "__main__":
    main()
