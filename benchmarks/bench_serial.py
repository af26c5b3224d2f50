"""Serial engine against a plain PyTorch loop, per-participant overhead, and time to the first round.

Prints ratios measured in one process (absolute times on shared machines are not comparable):
  1. serial engine / plain loop: the same models trained on the same batches, with the same
     neighbourhood averaging, 10 nodes on a ring (targets: <= 1.10);
  2. fixed overhead per participant-round with a no-op local step (target: <= 0.5 ms);
  3. `dfl-sim run experiments/ring_digits.yaml` until the end of round 1 (target: <= 5 s after the
     first import).

    python benchmarks/bench_serial.py [--rounds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfl.engines.serial import SerialEngine  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation.population import Population  # noqa: E402
from dfl.federation.rounds import Federation  # noqa: E402
from dfl.topology import build_graph  # noqa: E402


def config(nodes: int, model: dict, image: int, channels: int, per_node: int, rounds: int = 1000) -> dict:
    return {
        "name": "bench", "rounds": rounds, "nodes": nodes,
        "data": {"dataset": {"name": "synthetic", "params": {"num_classes": 10, "image_size": image, "channels": channels,
                                                               "train_size": nodes * per_node, "test_size": 100}},
                 "holdout_fraction": 0.0},
        "model": model,
        "training": {"local_epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "topology": {"name": "ring"}, "eval": {"every": rounds},
        "output": {"plots": False, "progress": False, "checkpoint_every": 0},
    }


def plain_loop(engine: SerialEngine, cfg, rounds: int) -> float:
    """What a researcher would write by hand: models, SGD, the same batches, ring averaging of state_dicts."""
    models = [copy.deepcopy(engine.population.template()) for _ in range(cfg.nodes)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    data = [p.data["train"] for p in engine.participants]
    t = time.perf_counter()
    for r in range(rounds):
        for m, opt, d, p in zip(models, opts, data, engine.participants, strict=True):
            m.train()
            for idx in p.batches(r):  # the same shuffled batches the engine draws
                opt.zero_grad()
                F.cross_entropy(m(d.x[idx]), d.y[idx]).backward()
                opt.step()
        graph = build_graph(cfg, r)
        sds = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
        for i, m in enumerate(models):
            hood = [i, *sorted(graph.neighbors(i))]
            m.load_state_dict({k: sum(sds[j][k] for j in hood) / len(hood) if v.is_floating_point() else v
                               for k, v in sds[i].items()})
    return time.perf_counter() - t


def engine_loop(engine: SerialEngine, cfg, rounds: int) -> float:
    fed = Federation(cfg, engine.population, engine)
    t = time.perf_counter()
    for r in range(rounds):
        fed.run_round(r)
    return time.perf_counter() - t


def ratio(name: str, raw: dict, rounds: int, repeats: int) -> float:
    cfg = parse_config(raw)
    pop = Population.from_config(cfg)
    best_e, best_p = float("inf"), float("inf")
    for _ in range(repeats):  # alternate to share the machine's noise; keep the best of each
        best_p = min(best_p, plain_loop(SerialEngine(pop), cfg, rounds))
        best_e = min(best_e, engine_loop(SerialEngine(pop), cfg, rounds))
    r = best_e / best_p
    print(f"{name:<44} plain {best_p:7.3f} s  engine {best_e:7.3f} s  ratio {r:5.3f}")
    return r


def overhead(nodes: int, rounds: int) -> float:
    cfg = parse_config(config(nodes, {"name": "cnn", "params": {"channels": [8], "hidden": 16}}, 8, 1, 4))
    pop = Population.from_config(cfg)
    engine = SerialEngine(pop)
    for p in engine.participants:
        p.train_round = lambda r: {"loss": 0.0, "steps": 0.0}  # type: ignore[method-assign]
    fed = Federation(cfg, pop, engine)
    fed.run_round(0)
    t = time.perf_counter()
    for r in range(1, rounds + 1):
        fed.run_round(r)
    per = (time.perf_counter() - t) / (rounds * nodes)
    n_params = engine.participants[0].flat.numel()
    print(f"fixed overhead per participant-round ({nodes} nodes, {n_params} params, no-op step): {per * 1e3:.3f} ms")
    return per


def first_round() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).with_name("dfl-sim")), "run", "experiments/ring_digits.yaml", "--quiet",
               "--out", out]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ})
        wall = time.perf_counter() - t
        timings = json.loads(next(Path(out).glob("*/timings.json")).read_text())
    return timings["to_first_round_s"], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    ratio("cnn, 10 nodes, 3x32x32, 256 samples/node", config(10, {"name": "cnn"}, 32, 3, 256), args.rounds, args.repeats)
    ratio("mlp, 10 nodes, 1x8x8, 144 samples/node", config(10, {"name": "mlp", "params": {"hidden": [64]}}, 8, 1, 144),
          args.rounds * 5, args.repeats)
    overhead(100, 20)
    first_round()  # warm the import caches once
    to_first, wall = first_round()
    print(f"`dfl-sim run experiments/ring_digits.yaml`: end of round 1 after {to_first:.2f} s "
          f"(whole run of 10 rounds with report: {wall:.2f} s)")


if __name__ == "__main__":
    main()
