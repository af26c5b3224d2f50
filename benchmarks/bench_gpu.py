"""``experiments/ring_cifar10.yaml`` on a GPU: the serial engine against the Ray engine with fractional GPUs.

Runs the same config (``device: cuda``) on the serial engine and on the Ray engine with
``engine.ray.gpus_per_actor`` of 1, 0.5 and 0.25 (1, 2 and 4 actors sharing one GPU), prints the
time of the first round and the rounds per second after it, the final mean test accuracy, and whether
each run's metrics.jsonl is byte-identical to the serial engine's. A CPU serial run of the first
rounds gives the GPU speed-up.

    DFL_SIM_DATA=../shared/datasets python benchmarks/bench_gpu.py [--rounds 20] [--shares 1 0.5 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_flower import Clock  # noqa: E402  (the same folder)

from dfl.api import run  # noqa: E402

CONFIG = ROOT / "experiments" / "ring_cifar10.yaml"


def timed(overrides: list[str], out: Path) -> dict[str, Any]:
    clock = Clock()
    result = run(CONFIG, overrides + ["output.plots=false", "output.progress=false"], out_dir=out,
                 progress=clock, t0=clock.t0)
    e = clock.ends
    return {"first_round_s": e[0], "rounds_per_s": (len(e) - 1) / (e[-1] - e[0]) if len(e) > 1 else float("nan"),
            "test_acc": float(clock.last.get("mean_test_acc", float("nan"))),
            "metrics": (Path(result.run_dir) / "metrics.jsonl").read_bytes()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cpu-rounds", type=int, default=2, help="rounds of the CPU reference run (0: skip)")
    ap.add_argument("--shares", nargs="+", type=float, default=[1.0, 0.5, 0.25], help="gpus_per_actor values")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; this benchmark needs a GPU")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    base = [f"rounds={args.rounds}", "device=cuda"]
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        serial = timed(base + ["engine.name=serial"], Path(tmp) / "serial")
        rows.append(("serial, cuda", serial))
        print("serial", {k: v for k, v in serial.items() if k != "metrics"}, flush=True)
        for share in args.shares:
            r = timed(base + ["engine.name=ray", f"engine.ray.gpus_per_actor={share}", "engine.ray.cpus_per_actor=1"],
                      Path(tmp) / f"ray{share}")
            rows.append((f"ray, {share:g} GPU per actor ({int(round(1 / share))} actors)", r))
            print(f"ray {share}", {k: v for k, v in r.items() if k != "metrics"}, flush=True)
        cpu = None
        if args.cpu_rounds:
            cpu = timed([f"rounds={args.cpu_rounds + 1}", "device=cpu", "engine.name=serial",
                         f"engine.threads={min(os.cpu_count() or 1, 16)}"], Path(tmp) / "cpu")
            print("cpu", {k: v for k, v in cpu.items() if k != "metrics"}, flush=True)
    print()
    print("| engine | first round | rounds/s after it | final mean test acc | metrics == serial cuda |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['first_round_s']:.1f} s | {r['rounds_per_s']:.3f} | {r['test_acc']:.3f} "
              f"| {'yes' if r['metrics'] == serial['metrics'] else 'no'} |")
    for name, r in rows:
        diff = [(a, b) for a, b in zip(serial["metrics"].splitlines(), r["metrics"].splitlines(), strict=False) if a != b]
        if diff:
            print(f"{name}: first differing record\n  serial: {diff[0][0][:300]!r}\n  this:   {diff[0][1][:300]!r}")
    if cpu is not None:
        print(f"| serial, cpu ({min(os.cpu_count() or 1, 16)} threads, {args.cpu_rounds + 1} rounds) "
              f"| {cpu['first_round_s']:.1f} s | {cpu['rounds_per_s']:.3f} | - | - |")


if __name__ == "__main__":
    main()
