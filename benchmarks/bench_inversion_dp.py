"""Inverting gradients against DP-SGD on CIFAR-10, under the two readings of "a DP-SGD-defended model".

    python benchmarks/bench_inversion_dp.py [--data ../shared/datasets] [--images 10] [--runs RUN_DIR ...]

1. **Noisy update** (what ``dfl-sim table inversion`` measures, and what a DFL neighbour sees): one
   image, one DP-SGD step at initialisation -- the per-sample gradient clipped to norm ``C`` and
   Gaussian noise of std ``sigma * C`` added to every coordinate, as Opacus does for a batch of one --
   inverted with inverting gradients (600 signed-Adam steps). Printed per sigma: PSNR, attack accuracy
   (the reference classifier's accuracy on the reconstructions) and the signal-to-noise ratio of the
   update, ``||clipped g|| / (sigma * C * sqrt(P))``, for the table's CIFAR-10 ``cnn`` (32, 64, hidden 128,
   group norm).
2. **DP-trained model, clean gradient** (``--runs``): for each run directory (e.g. the ``model`` phase
   runs of a table, trained with DP-SGD at some sigma or undefended), node 0's final state is loaded and
   the plain gradient of one image is inverted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.inverting_gradients import inverting_gradients  # noqa: E402
from dfl.adversary.gradients import gradient_of  # noqa: E402
from dfl.adversary.reference import recognisability, reference_classifier  # noqa: E402
from dfl.config import Spec  # noqa: E402
from dfl.data import channel_stats, load_dataset, to_float  # noqa: E402
from dfl.federation.participant import flatten_into_views  # noqa: E402
from dfl.metrics.images import psnr  # noqa: E402
from dfl.models import build_model  # noqa: E402
from dfl.rundir import RunDir  # noqa: E402

SHAPE = (3, 32, 32)
TABLE_CNN = {"channels": [32, 64], "hidden": 128, "norm": "group"}


def dp_step_gradient(grads: list[torch.Tensor], sigma: float, clip: float, generator: torch.Generator) -> list[torch.Tensor]:
    """One example's DP-SGD gradient: ``grads`` clipped to norm ``clip`` plus N(0, (sigma * clip)^2) per coordinate."""
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    scale = min(1.0, clip / max(norm, 1e-12))
    return [g * scale + sigma * clip * torch.randn(g.shape, generator=generator) for g in grads]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--images", type=int, default=10, help="test images, one per class in turn")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--sigmas", default="0,0.1,0.5,1.0")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="run directories whose node 0 to attack (part 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    data = load_dataset(Spec(name="cifar10"), args.data if args.data.exists() else None)
    mean, std = channel_stats(data.x_train)
    reference, ref_acc = reference_classifier(data)
    order = np.array([(i % 10) * 1000 + 7 + i // 10 for i in range(args.images)])
    x_all, y_all = to_float(data.x_test[order], mean, std), torch.as_tensor(data.y_test[order])

    def attack(model: torch.nn.Module, grads: list[torch.Tensor], i: int) -> tuple[torch.Tensor, float]:
        x = x_all[i : i + 1]
        rec = inverting_gradients(model, grads, y_all[i : i + 1], SHAPE, iterations=args.iterations,
                                  generator=torch.Generator().manual_seed(i), mean=mean, std=std)
        return rec.images, float(psnr(rec.images, x, mean, std)[0])

    print(f"reference classifier: {ref_acc:.3f} test accuracy; {args.images} images, {args.iterations} steps each")
    print(f"\n1. noisy update: one DP-SGD step (C {args.clip}) on one image, cnn {TABLE_CNN} at initialisation")
    for sigma in (float(s) for s in args.sigmas.split(",") if s):
        images, ps, snr = [], [], []
        for i in range(args.images):
            torch.manual_seed(i)
            model = build_model(Spec(name="cnn", params=TABLE_CNN), SHAPE, 10)
            clean = gradient_of(model, x_all[i : i + 1], y_all[i : i + 1])
            grads = dp_step_gradient(clean, sigma, args.clip, torch.Generator().manual_seed(1000 + i))
            n_params = sum(g.numel() for g in clean)
            signal = min(args.clip, float(torch.sqrt(sum(g.pow(2).sum() for g in clean))))
            snr.append(signal / (sigma * args.clip * math.sqrt(n_params)) if sigma else math.inf)
            rec, p = attack(model, grads, i)
            images.append(rec)
            ps.append(p)
        aa = recognisability(reference, torch.cat(images), y_all)
        print(f"  sigma {sigma:<4}  attack acc {aa:.2f}  PSNR {np.mean(ps):5.2f} dB  update SNR {np.mean(snr):.3f}")

    if args.runs:
        print("\n2. DP-trained (or undefended) model, clean gradient of one image; node 0's final state of each run")
    for run in args.runs:
        source = RunDir.open(run)
        config = source.config()
        model = build_model(config.model, SHAPE, 10)
        with torch.no_grad():
            flatten_into_views(model).copy_(source.final_state(0))
        images, ps = [], []
        for i in range(args.images):
            rec, p = attack(model, gradient_of(model, x_all[i : i + 1], y_all[i : i + 1]), i)
            images.append(rec)
            ps.append(p)
        aa = recognisability(reference, torch.cat(images), y_all)
        with torch.no_grad():
            own = float((model(x_all).argmax(1) == y_all).float().mean())
        defenses = ", ".join(d.name + (f" sigma {d.params['noise_multiplier']}" if d.name == "dp_sgd" else "")
                             for d in config.defenses) or "none"
        print(f"  {run.name}: defenses {defenses}; model acc on these images {own:.2f}; attack acc {aa:.2f}  PSNR {np.mean(ps):5.2f} dB")


if __name__ == "__main__":
    main()
