"""Membership-inference trends: attack AUC against local epochs and against data per node.

Runs the MIA ring experiment (CIFAR-10 from ``DFL_SIM_DATA``) with the loss attack at the last round,
varying one knob at a time (the data-size sweep keeps the local steps fixed, so that more data means
fewer passes over each image rather than more training), and prints the mean AUC over the attacker's victims with the victims'
generalisation gap. Expected: AUC rises with local epochs and falls with data per node.

    DFL_SIM_DATA=../shared/datasets python benchmarks/bench_mia_trends.py [--epochs 1 4 10] [--sizes 250 500 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfl.api import run  # noqa: E402


def auc(overrides: list[str], out: str) -> tuple[float, float]:
    res = run(ROOT / "experiments/mia_ring_cifar10.yaml",
              ["attacks=[{name: loss}]", "output.plots=false", "output.checkpoint_every=0", "eval.every=100",
               *overrides], out_dir=out)
    m = res.summary["mia"]
    return m["loss_auc"], m["loss_victim_gap"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", nargs="+", type=int, default=[1, 4, 10])
    ap.add_argument("--sizes", nargs="+", type=int, default=[250, 500, 1000], help="train images per node")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=160, help="local steps per round in the data-size sweep")
    ap.add_argument("--skip-epochs", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        print(f"loss attack, 6-node ring, {args.rounds} rounds; 500 train images per node:")
        for e in [] if args.skip_epochs else args.epochs:
            a, g = auc([f"training.local_epochs={e}", f"rounds={args.rounds}"], out)
            print(f"  local epochs {e:3d}: AUC {a:.3f}  (victims' gap {g:.3f})")
        print(f"{args.steps} local steps per round (10 epochs of 500 images; the same training for every size), "
              f"{args.rounds} rounds:")
        for n in args.sizes:
            a, g = auc([f"data.samples_per_node={int(n / 0.8)}", f"rounds={args.rounds}",
                        f"training.local_steps={args.steps}"], out)
            print(f"  {n:5d} train images per node: AUC {a:.3f}  (victims' gap {g:.3f})")


if __name__ == "__main__":
    main()
