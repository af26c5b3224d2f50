"""Query throughput of a node behind AugMixCloak against the same node undefended, on CIFAR-10.

The node indexes 2,000 CIFAR-10 training images (and a neighbour's 2,000); queries come in batches
of ``--batch`` images of which ``--match`` are indexed training images, the rest test images. Both
sides answer through :func:`dfl.defense.defended_query` with the ``cnn`` of experiments/ring_cifar10.yaml
(channels 32, 64) on one torch thread; the defended side pays for the pHash of every query, the index
lookup, the hash-chosen augmentation of the matches and the prototype fusion. Prints queries per second
of each side and their ratio (target: defended >= 0.5x undefended at 50% matches).

    DFL_SIM_DATA=../shared/datasets python benchmarks/bench_augmixcloak.py [--batch 500] [--match 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defenses.augmixcloak import AugMixCloak, AugMixCloakParams  # noqa: E402
from defenses.phash import phash  # noqa: E402
from dfl.config import Spec  # noqa: E402
from dfl.data import channel_stats, load_dataset, to_float  # noqa: E402
from dfl.defense import DefenseContext, defended_query  # noqa: E402
from dfl.models import build_model  # noqa: E402
from dfl.plugins import load_plugins  # noqa: E402


def rate(fn, batches: list[torch.Tensor], repeats: int) -> float:
    """Queries per second of ``fn`` over ``batches``, best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t)
    return sum(len(b) for b in batches) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--match", type=float, default=0.5, help="fraction of each batch that is indexed training data")
    ap.add_argument("--intensity", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("DFL_SIM_DATA", "/work/shared/datasets"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_plugins()
    data = load_dataset(Spec(name="cifar10"), Path(args.data_root))
    mean, std = channel_stats(data.x_train)
    own, neighbour = np.arange(0, 2000), np.arange(2000, 4000)
    images = {0: own, 1: neighbour}
    ctx = DefenseContext(node=0, seed=0, num_classes=10, mean=mean, std=std, neighbours=(1,),
                         train_images=lambda j: (data.x_train[images[j]], data.y_train[images[j]]))
    t = time.perf_counter()
    cloak = AugMixCloak(AugMixCloakParams(intensity=args.intensity, alpha=args.alpha), ctx)
    setup = time.perf_counter() - t
    model = build_model(Spec(name="cnn", params={"channels": [32, 64], "hidden": 128}), (3, 32, 32), 10).eval()
    rng = np.random.default_rng(0)
    k = round(args.batch * args.match)
    batches = []
    for _ in range(args.batches):
        members = data.x_train[rng.choice(own, k, replace=False)]
        others = data.x_test[rng.choice(len(data.x_test), args.batch - k, replace=False)]
        batches.append(to_float(np.concatenate([members, others]), mean, std))
    g = torch.Generator()
    plain = rate(lambda b: defended_query(model, b, [], g), batches, args.repeats)
    defended = rate(lambda b: defended_query(model, b, [cloak], g), batches, args.repeats)
    matched = float(np.mean([cloak.index.lookup(phash(ctx.to_uint8(b))).found.mean() for b in batches]))
    print(f"index of {len(cloak.index)} hashes built in {setup:.2f} s; {matched:.1%} of the queries matched")
    print(f"| batch | matched | undefended queries/s | AugMixCloak queries/s (intensity {args.intensity}) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {args.batch} | {matched:.0%} | {plain:,.0f} | {defended:,.0f} | **{defended / plain:.2f}** |")


if __name__ == "__main__":
    main()
