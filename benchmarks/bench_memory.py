"""Memory of many participants in one serial run: 1,000 MNIST-sized CNN nodes, one local step each.

Prints resident memory per participant against what it must hold: parameters + optimizer state
(SGD momentum) + its data.

    python benchmarks/bench_memory.py [--nodes 1000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfl.engines.serial import SerialEngine  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation.population import Population  # noqa: E402
from dfl.federation.rounds import Federation  # noqa: E402


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--per-node", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(2)
    n = args.nodes
    cfg = parse_config({
        "name": "memory", "rounds": 2, "nodes": n,
        "data": {"dataset": {"name": "synthetic", "params": {"num_classes": 10, "image_size": 28, "channels": 1,
                                                               "train_size": n * args.per_node, "test_size": 200}},
                 "holdout_fraction": 0.2},
        "model": {"name": "cnn"},
        "training": {"local_steps": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "topology": {"name": "ring"}, "eval": {"every": 1, "splits": ["test"], "max_samples": 100},
        "output": {"plots": False, "progress": False, "checkpoint_every": 0},
    })
    pop = Population.from_config(cfg)
    pop.template()
    pop.test_split()
    gc.collect()
    base = rss()
    t = time.perf_counter()
    engine = SerialEngine(pop)
    build_s = time.perf_counter() - t
    fed = Federation(cfg, pop, engine)
    t = time.perf_counter()
    fed.run_round(0)
    round_s = time.perf_counter() - t
    gc.collect()
    used = rss() - base
    p = engine.participants[0]
    params = p.flat.numel() * 4
    momentum = sum(s["momentum_buffer"].numel() * 4 for s in p.optimizer.state.values() if "momentum_buffer" in s)
    data = sum(s.x.numel() * 4 + s.y.numel() * 8 for s in p.data.values())
    need = params + momentum + data
    print(f"{n} participants (cnn, {p.flat.numel()} params, {len(p.data['train'])} train samples each): "
          f"build {build_s:.1f} s, one round {round_s:.1f} s")
    print(f"resident memory {used / 2**30:.2f} GiB = {used / n / 2**20:.2f} MiB per participant; "
          f"params {params / 2**20:.2f} + momentum {momentum / 2**20:.2f} + data {data / 2**20:.2f} "
          f"= {need / 2**20:.2f} MiB; ratio {used / n / need:.2f}")


if __name__ == "__main__":
    main()
