"""Asynchronous gossip on the batched engine against the synchronous rounds, in one process.

    python benchmarks/bench_async.py [--nodes 1000] [--rounds 4] [--threads 2]

The workload is ``bench_scale``'s (``mlp`` [64] on generated 1x28x28 images, 48 training samples per
node, batch 16, a ring). Each mode runs ``--rounds`` rounds (intervals of one time unit) on the batched
engine; printed per mode: seconds per round over rounds 2.. (the first round's one-time costs left
out), the iterations (wakes) and messages of those rounds, the engine calls that trained them (waves),
the cost per iteration and its ratio to the synchronous rounds' cost per iteration, and the cost per
event (wakes, sends and arrivals; sync: one wake per node and round).

Modes: ``sync``; ``lockstep`` (equal speeds, no latency, push to all: one wave a round); ``uneven``
(log-normal speeds with sigma 0.5, latency 0.2, push gossip to one neighbour); ``pairwise`` (the same
with AD-PSGD's pairwise averaging).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from bench_scale import config  # noqa: E402

from dfl.engines import BatchedEngine  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation import Federation  # noqa: E402
from dfl.federation.population import Population  # noqa: E402

UNEVEN = {"protocol": "push_one", "speed_sigma": 0.5, "latency": 0.2}
MODES: dict[str, dict[str, Any] | None] = {
    "sync": None,
    "lockstep": {},
    "uneven": UNEVEN,
    "pairwise": {**UNEVEN, "protocol": "pairwise"},
}


def measure(nodes: int, rounds: int, threads: int, asynchronous: dict[str, Any] | None) -> dict[str, float]:
    raw = config(nodes, rounds, "batched", threads)
    if asynchronous is not None:
        raw.update(mode="async", **{"async": asynchronous})
    cfg = parse_config(raw)
    population = Population.from_config(cfg)
    engine = BatchedEngine(population)
    laps: list[float] = []
    waves: list[int] = []

    def lap(*_: Any) -> None:
        laps.append(time.perf_counter())
        waves.append(fed._async.waves if fed._async is not None else 1)

    fed = Federation(cfg, population, engine, progress=lap)
    t0 = time.perf_counter()
    fed.run(t0=t0)
    engine.close()
    later = [r for r in fed.records if r["round"] > 1 and r["kind"] == "train"]
    seconds = [b - a for a, b in zip([t0, *laps], laps, strict=False)][1:]
    iterations = sum(r.get("iterations", 1) for r in later)
    events = iterations + sum(r.get("sent", 0) + r.get("received", 0) for r in later)  # wakes, sends, arrivals
    return {"s_per_round": sum(seconds) / len(seconds), "iterations": iterations,
            "messages": sum(r.get("received", 0) for r in later), "waves": sum(waves[1:]),
            "ms_per_iteration": 1000 * sum(seconds) / iterations, "us_per_event": 1e6 * sum(seconds) / events}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{args.nodes} nodes, bench_scale's mlp workload, batched engine with {args.threads} thread(s), "
          f"rounds 2..{args.rounds}")
    print(f"{'mode':<9} {'s/round':>8} {'iterations':>10} {'messages':>9} {'waves':>6} {'ms/iter':>8} {'vs sync':>8} "
          f"{'us/event':>9}")
    base = None
    for name in args.modes:
        m = measure(args.nodes, args.rounds, args.threads, MODES[name])
        base = base or (m["ms_per_iteration"] if name == "sync" else None)
        ratio = f"{m['ms_per_iteration'] / base:7.2f}x" if base else ""
        print(f"{name:<9} {m['s_per_round']:8.2f} {m['iterations']:10d} {m['messages']:9d} {m['waves']:6d} "
              f"{m['ms_per_iteration']:8.2f} {ratio:>8} {m['us_per_event']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
