"""Batched pHash against ``imagehash.phash`` called per image, on the same CIFAR-10 test images.

    DFL_SIM_DATA=../shared/datasets python benchmarks/bench_phash.py [--images 10000] [--repeats 5]

Prints images per second of both, their agreement (bit for bit) and the speed-up (target: >= 10x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagehash  # noqa: E402

from defenses.phash import phash  # noqa: E402
from dfl.config import Spec  # noqa: E402
from dfl.data import load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x = np.ascontiguousarray(load_dataset(Spec(name="cifar10")).x_test[: args.images])
    pil = [Image.fromarray(im.transpose(1, 2, 0)) for im in x]  # decoding is not part of either side
    best_ref, best_ours = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate, keep the best of each
        t = time.perf_counter()
        ref = np.array([int(str(imagehash.phash(im)), 16) for im in pil], dtype=np.uint64)
        best_ref = min(best_ref, time.perf_counter() - t)
        t = time.perf_counter()
        ours = phash(x)
        best_ours = min(best_ours, time.perf_counter() - t)
    n = len(x)
    print(f"{n} CIFAR-10 test images, best of {args.repeats}:")
    print(f"  imagehash.phash per image: {n / best_ref:10.0f} images/s")
    print(f"  batched phash:             {n / best_ours:10.0f} images/s")
    print(f"  agreement: {np.mean(ours == ref):.4f} bit for bit; speed-up {best_ref / best_ours:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
