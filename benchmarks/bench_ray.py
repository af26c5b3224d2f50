"""Ray engine against the serial engine on this machine, and 1,000 participants on the Ray engine.

    python benchmarks/bench_ray.py [--rounds 3] [--big-nodes 1000]

1. Ray / serial wall time for 10 ``cnn`` participants (3x32x32, CIFAR-sized synthetic data), rounds
   timed after set-up. Ray runs one actor per core with one torch thread each; the serial engine is
   timed with 1 thread (the same numerics as Ray) and with all cores (its fastest).
2. 1,000 MNIST-sized ``cnn`` participants, one local step each, on the Ray engine: completes, with
   resident memory per participant summed over the actor processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfl.engines import engine_class  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation.population import Population  # noqa: E402
from dfl.federation.rounds import Federation  # noqa: E402


def cfg_for(nodes: int, image: int, channels: int, per_node: int, engine: str, threads: int, **training) -> dict:
    return {
        "name": "bench", "rounds": 1000, "nodes": nodes,
        "data": {"dataset": {"name": "synthetic", "params": {"num_classes": 10, "image_size": image, "channels": channels,
                                                               "train_size": nodes * per_node, "test_size": 100}},
                 "holdout_fraction": 0.0},
        "model": {"name": "cnn"},
        "training": {"batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, **training},
        "topology": {"name": "ring"}, "eval": {"every": 1000, "splits": ["test"], "max_samples": 100},
        "engine": {"name": engine, "threads": threads},
        "output": {"plots": False, "progress": False, "checkpoint_every": 0},
    }


def timed(raw: dict, rounds: int) -> tuple[float, float, object]:
    cfg = parse_config(raw)
    pop = Population.from_config(cfg)
    t = time.perf_counter()
    engine = engine_class(cfg.engine.name)(pop)
    setup = time.perf_counter() - t
    fed = Federation(cfg, pop, engine)
    fed.run_round(0)  # warm-up round (first-touch allocations), not timed
    t = time.perf_counter()
    for r in range(1, rounds + 1):
        fed.run_round(r)
    wall = time.perf_counter() - t
    return setup, wall, engine


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-nodes", type=int, default=1000)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores, torch {torch.__version__}")

    work = {"local_epochs": 1}
    _, serial_1, e = timed(cfg_for(10, 32, 3, 256, "serial", 1, **work), args.rounds)
    e.close()
    _, serial_n, e = timed(cfg_for(10, 32, 3, 256, "serial", cores, **work), args.rounds)
    e.close()
    setup, ray_wall, e = timed(cfg_for(10, 32, 3, 256, "ray", 1, **work), args.rounds)
    actors = len(e.actors)
    e.close()
    print(f"10 cnn participants, 256 samples each, {args.rounds} rounds after a warm-up round:")
    print(f"  serial, 1 thread         {serial_1:7.2f} s")
    print(f"  serial, {cores} threads        {serial_n:7.2f} s")
    print(f"  ray, {actors} actors x 1 thread {ray_wall:7.2f} s   (actor start-up {setup:.1f} s, not timed)")
    print(f"  ratio ray / serial(1 thread)  = {ray_wall / serial_1:.3f}")
    print(f"  ratio ray / serial({cores} threads) = {ray_wall / serial_n:.3f}   (target <= 0.75)")

    n = args.big_nodes
    setup, wall, e = timed(cfg_for(n, 28, 1, 60, "ray", 1, local_steps=1), 1)
    pids = e.pids()
    total = sum(rss(p) for p in pids)
    p_params = e.population.template()
    n_params = sum(t.numel() for t in p_params.parameters())
    print(f"{n} cnn participants (1x28x28, {n_params} params, 48 train samples, 1 local step) on {len(pids)} actors: "
          f"start-up {setup:.1f} s, one round {wall:.1f} s")
    print(f"  actor resident memory {total / 2**30:.2f} GiB = {total / n / 2**20:.2f} MiB per participant "
          f"(params + momentum = {2 * n_params * 4 / 2**20:.2f} MiB)")
    e.close()


if __name__ == "__main__":
    main()
