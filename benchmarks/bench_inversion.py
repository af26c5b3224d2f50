"""Gradient inversion on CIFAR-10: reconstruction quality, label recovery and speed on the CPU.

    python benchmarks/bench_inversion.py [--data ../shared/datasets] [--threads 1] [--quick]

Prints, for one 32x32 CIFAR-10 test image per class:

1. DLG (Zhu et al. 2019), batch 1, sigmoid ``lenet`` with weights from U(-0.5, 0.5): PSNR per image
   after at most 300 L-BFGS iterations (target: >= 30 dB), seconds and iterations per second;
2. iDLG (Zhao et al. 2020) label recovery from the last layer, batch 1 (target: 100%) and a best
   effort for batches of 2 and 4, at initialisation and on a trained ``cnn``;
3. Inverting Gradients (Geiping et al. 2020) on ``cnn`` at initialisation, batch 1, 3,000 signed-Adam
   steps (target: >= 22 dB), seconds and iterations per second;
4. the same on a trained ``cnn``; PSNR against batch size (1, 2, 4; after matching reconstructions to
   originals) and against the victim's local SGD steps (1, 2, 5, turned into a pseudo-gradient).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.dlg import dlg, uniform_init_  # noqa: E402
from attacks.idlg import infer_labels  # noqa: E402
from attacks.inverting_gradients import inverting_gradients  # noqa: E402
from dfl.adversary.gradients import Reconstruction, gradient_of, pseudo_gradient  # noqa: E402
from dfl.config import Spec  # noqa: E402
from dfl.data import channel_stats, load_dataset, to_float  # noqa: E402
from dfl.federation.participant import flatten_into_views  # noqa: E402
from dfl.metrics.images import match, psnr, ssim  # noqa: E402
from dfl.models import build_model  # noqa: E402

SHAPE = (3, 32, 32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(Spec(name="cnn"), SHAPE, 10)


def local_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """The victim's update ``state_after - state_before`` after ``steps`` plain SGD steps on ``(x, y)``; ``model`` is left unchanged."""
    victim = build_model(Spec(name="cnn"), SHAPE, 10)
    victim.load_state_dict(model.state_dict())
    flat = flatten_into_views(victim)
    before = flat.clone()
    opt = torch.optim.SGD(victim.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(victim(x), y).backward()
        opt.step()
    return flat - before


def train_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    model = cnn(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = gen(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((torch.cat([model(b).argmax(1) for b in x.split(500)]) == y).float().mean())


class Quality:
    """PSNR and SSIM of a reconstruction against the originals, after matching (batch > 1)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean, std

    def __call__(self, rec: Reconstruction, truth: torch.Tensor) -> tuple[float, float]:
        order = match(rec.images, truth, self.mean, self.std)
        images = rec.images[torch.as_tensor(order)]
        return (float(np.mean(psnr(images, truth, self.mean, self.std))),
                float(np.mean(ssim(images, truth, self.mean, self.std))))


def row(name: str, rec: Reconstruction, quality: tuple[float, float], extra: str = "") -> str:
    p, s = quality
    return (f"  {name:<28} PSNR {p:6.2f} dB  SSIM {s:5.3f}  {rec.iterations:5d} it  {rec.seconds:6.1f} s  "
            f"{rec.iterations / rec.seconds:7.1f} it/s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dlg-images", type=int, default=5)
    ap.add_argument("--dlg-iterations", type=int, default=300)
    ap.add_argument("--ig-images", type=int, default=3)
    ap.add_argument("--ig-iterations", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=2, help="image sets per point of the batch-size and local-step sweeps")
    ap.add_argument("--local-lr", type=float, default=0.05, help="the victim's SGD learning rate")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs to check the script (numbers not meaningful)")
    args = ap.parse_args()
    if args.quick:
        args.dlg_images, args.dlg_iterations, args.ig_images, args.ig_iterations = 1, 20, 1, 100
        args.trials, args.train_epochs = 1, 1
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    data = load_dataset(Spec(name="cifar10"), args.data if args.data.exists() else None)
    mean, std = channel_stats(data.x_train)
    # test images in rounds of one per class (the test split is stored class by class)
    order = np.array([c * 1000 + 7 + r for r in range(100) for c in range(10)])
    x_all, y_all = to_float(data.x_test[order], mean, std), torch.as_tensor(data.y_test[order])
    quality = Quality(mean, std)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); CIFAR-10 test images {order[:10].tolist()} ...")

    # 1. DLG on the sigmoid LeNet
    print(f"\n1. DLG, lenet with U(-0.5, 0.5) weights, batch 1, <= {args.dlg_iterations} L-BFGS iterations (target >= 30 dB)")
    dlg_psnr, dlg_its, dlg_secs = [], 0, 0.0
    for i in range(args.dlg_images):
        model = uniform_init_(build_model(Spec(name="lenet"), SHAPE, 10), gen(i))
        x, y = x_all[i : i + 1], y_all[i : i + 1]
        rec = dlg(model, gradient_of(model, x, y), 1, 10, SHAPE, iterations=args.dlg_iterations, generator=gen(i))
        q = quality(rec, x)
        dlg_psnr.append(q[0])
        dlg_its, dlg_secs = dlg_its + rec.iterations, dlg_secs + rec.seconds
        label = "label ok" if rec.labels.tolist() == y.tolist() else f"label {rec.labels.item()} != {y.item()}"
        print(row(f"image {int(order[i])} (class {int(y)})", rec, q, f"  {label}"))
    ok = sum(p >= 30 for p in dlg_psnr)
    print(f"  >= 30 dB: {ok}/{len(dlg_psnr)}; median {np.median(dlg_psnr):.2f} dB; "
          f"{dlg_secs / len(dlg_psnr):.1f} s per reconstruction, {dlg_its / dlg_secs:.1f} L-BFGS it/s")

    # 2. iDLG labels
    train_x = to_float(data.x_train[::5], mean, std)  # every fifth: the split is stored class by class
    train_y = torch.as_tensor(data.y_train[::5])
    t = time.perf_counter()
    trained = train_cnn(train_x, train_y, args.train_epochs, seed=0)
    print(f"\n(trained cnn: {args.train_epochs} epochs of SGD on 10,000 training images in {time.perf_counter() - t:.0f} s, "
          f"test accuracy {accuracy(trained, x_all, y_all):.3f})")
    print("\n2. iDLG label recovery from the last layer's gradient (20 images; batches of distinct classes)")
    models: dict[str, Callable[[], nn.Module]] = {
        "lenet U(-0.5, 0.5) at init": lambda: uniform_init_(build_model(Spec(name="lenet"), SHAPE, 10), gen(0)),
        "cnn at init": lambda: cnn(0),
        "cnn trained": lambda: trained,
    }
    for name, make in models.items():
        model = make()
        line = f"  {name:<28}"
        for b in (1, 2, 4):
            hits = total = 0
            for s in range(0, 20, b):
                x, y = x_all[s : s + b], y_all[s : s + b]
                found = infer_labels(model, gradient_of(model, x, y), b).tolist()
                hits += sum(min(found.count(k), y.tolist().count(k)) for k in set(found))
                total += b
            line += f"  batch {b}: {100 * hits / total:5.1f}%"
        print(line)

    # 3 and 4. Inverting Gradients
    def ig(model: nn.Module, grads: list[torch.Tensor], y: torch.Tensor, seed: int) -> Reconstruction:
        return inverting_gradients(model, grads, y, SHAPE, iterations=args.ig_iterations, generator=gen(seed), mean=mean, std=std)

    results: dict[str, list[float]] = {}
    for title, key in (("at initialisation", "init"), ("trained", "trained")):
        print(f"\n{3 if key == 'init' else 4}. Inverting Gradients, cnn {title}, batch 1, {args.ig_iterations} signed-Adam steps"
              + (" (target >= 22 dB)" if key == "init" else ""))
        ps, its, secs = [], 0, 0.0
        for i in range(args.ig_images):
            model = cnn(i) if key == "init" else trained
            x, y = x_all[i : i + 1], y_all[i : i + 1]
            rec = ig(model, gradient_of(model, x, y), y, i)
            q = quality(rec, x)
            ps.append(q[0])
            its, secs = its + rec.iterations, secs + rec.seconds
            print(row(f"image {int(order[i])} (class {int(y)})", rec, q))
        results[key] = ps
        print(f"  mean {np.mean(ps):.2f} dB; {secs / len(ps):.1f} s per reconstruction, {its / secs:.1f} it/s")

    print(f"\n4. PSNR against batch size (cnn at init, labels known, {args.trials} image sets, mean PSNR after matching)")
    for b in (1, 2, 4):
        ps, secs = [], 0.0
        for t_ in range(args.trials):
            x, y = x_all[10 * t_ : 10 * t_ + b], y_all[10 * t_ : 10 * t_ + b]
            model = cnn(100 + t_)
            rec = ig(model, gradient_of(model, x, y), y, t_)
            ps.append(quality(rec, x)[0])
            secs += rec.seconds
        print(f"  batch {b}: PSNR {np.mean(ps):6.2f} dB  ({', '.join(f'{p:.2f}' for p in ps)}; {secs / len(ps):.1f} s each)")

    print(f"\n4. PSNR against the victim's local steps (cnn at init, batch 1, plain SGD lr {args.local_lr}, "
          f"pseudo-gradient -update / (lr * steps), {args.trials} images)")
    for steps in (1, 2, 5):
        ps = []
        for t_ in range(args.trials):
            x, y = x_all[10 * t_ + 5 : 10 * t_ + 6], y_all[10 * t_ + 5 : 10 * t_ + 6]
            model = cnn(200 + t_)
            grads = pseudo_gradient(model, local_update(model, x, y, args.local_lr, steps), args.local_lr, steps)
            exact = gradient_of(model, x, y)
            cos = float(F.cosine_similarity(torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in exact]), dim=0))
            rec = ig(model, grads, y, t_)
            ps.append(quality(rec, x)[0])
        print(f"  {steps} step(s): PSNR {np.mean(ps):6.2f} dB  ({', '.join(f'{p:.2f}' for p in ps)}; "
              f"cosine of the last pseudo-gradient to the true gradient {cos:.4f})")

    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
