"""Search for the defensive-augmentation policy: the best (op, magnitude) per class against DP-SGD.

The defensive-augmentation paper (shared/papers/defensive-augmentation-gradient-inversion.txt) picks,
per class, the augmentation with the best advantage over DP-SGD at a chosen noise level,
``(MA_aug - MA_dp) + (AA_dp - AA_aug)``: MA the model's accuracy on the class's test images, AA the
attack accuracy -- the share of the class's images that the reference classifier recognises after
gradient inversion. This module replaces its manual search: for every candidate (op, magnitude) it

1. trains the experiment's model on the experiment's data recipe (``train_samples`` images drawn from the
   training set, ``epochs`` epochs of the experiment's optimizer and batch size) with the candidate
   applied to every class, and reads MA per class on the test set;
2. inverts, with inverting gradients, the one-image gradient of ``images_per_class`` training images per
   class, augmented, at the model's initial state (the first update a node would share), and reads AA
   per class;

and does the same once for DP-SGD at ``sigma`` (training through Opacus via the ``dp_sgd`` defense; the
attacked gradient clipped to ``max_grad_norm`` and given N(0, sigma^2 C^2) noise, as DP-SGD shares it).
Every class then gets the candidate of highest advantage; the result is a ``policy:`` for the
``defensive_augmentation`` defense, written with the score tables. Centralised by design: the scores
compare augmentations, not topologies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from dfl.adversary.gradients import gradient_of
from dfl.adversary.reference import reference_classifier
from dfl.config import ExperimentConfig
from dfl.data import channel_stats, to_float
from dfl.defense import DefenseContext, TrainingDefense
from dfl.federation.population import Population
from dfl.models import build_model
from dfl.plugins import load_plugins
from dfl.registries import ATTACKS, DEFENSES
from dfl.seeding import SEARCH, derive_seed


def _train(cfg: ExperimentConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, defense: TrainingDefense,
           epochs: int, seed: int) -> nn.Module:
    t = cfg.training
    opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=t.optimizer.lr, momentum=t.optimizer.momentum,
                                                 weight_decay=t.optimizer.weight_decay)
    g = torch.Generator().manual_seed(derive_seed(seed, SEARCH, 1))
    batches = [b for _ in range(epochs) for b in torch.randperm(len(x), generator=g).split(t.batch_size)]
    opt = defense.wrap(model, opt, 0, len(batches), t.batch_size, len(x))
    model.train()
    try:
        for idx in batches:
            xb, yb = defense.batch(x[idx], y[idx], 0.0, g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    finally:
        defense.unwrap(model, 0)
    return model.eval()


def _per_class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> np.ndarray:
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x.split(1000)])
    return np.array([float((pred[y == c] == c).float().mean()) if (y == c).any() else float("nan") for c in range(k)])


def search(cfg: ExperimentConfig, *, sigma: float = 0.5, max_grad_norm: float = 1.0,
           ops: list[str] | None = None, magnitudes: list[int] | None = None, train_samples: int = 2000,
           epochs: int = 5, images_per_class: int = 2, iterations: int = 600,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every (op, magnitude) and DP-SGD at ``sigma`` per class; return the tables and the best policy."""
    load_plugins()
    inverter = ATTACKS.get("inverting_gradients")
    invert = inverter.obj(inverter.parse_params({"iterations": iterations}))
    augmentation, dp_sgd = DEFENSES.get("defensive_augmentation"), DEFENSES.get("dp_sgd")
    pop = Population.from_config(cfg)
    data, k = pop.data, pop.data.num_classes
    mean, std = channel_stats(data.x_train)
    rng = np.random.default_rng(derive_seed(cfg.seed, SEARCH))
    train_idx = np.sort(rng.choice(len(data.x_train), min(train_samples, len(data.x_train)), replace=False))
    x, y = to_float(data.x_train[train_idx], mean, std), torch.from_numpy(data.y_train[train_idx])
    xt, yt = to_float(data.x_test, mean, std), torch.from_numpy(data.y_test)
    probe = np.concatenate([rng.choice(np.flatnonzero(data.y_train == c), images_per_class, replace=False)
                            for c in range(k) if (data.y_train == c).sum() >= images_per_class])
    px, py = to_float(data.x_train[probe], mean, std), torch.from_numpy(data.y_train[probe])
    reference, _ = reference_classifier(data)
    ctx = DefenseContext(node=0, seed=cfg.seed, num_classes=k, mean=mean, std=std, class_names=list(data.classes))
    shape = tuple(data.shape)

    def fresh() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, SEARCH, 2))
            return build_model(cfg.model, shape, k)  # type: ignore[arg-type]

    def attack_accuracy(images: torch.Tensor, noise: float) -> np.ndarray:
        """Per class: the reference classifier's accuracy on reconstructions of each probe's gradient."""
        hits = np.zeros(k)
        counts = np.zeros(k)
        for i in range(len(images)):
            model = fresh()
            grads = [g.detach() for g in gradient_of(model, images[i : i + 1], py[i : i + 1])]
            if noise > 0:  # DP-SGD's share of one sample: clipped to C, plus N(0, sigma^2 C^2)
                norm = torch.cat([g.reshape(-1) for g in grads]).norm()
                scale = min(1.0, max_grad_norm / float(norm))
                gen = torch.Generator().manual_seed(derive_seed(cfg.seed, SEARCH, 3, i))
                grads = [g * scale + torch.randn(g.shape, generator=gen) * noise * max_grad_norm for g in grads]
            rec = invert.reconstruct(model, grads, 1, k, shape,  # type: ignore[arg-type]
                                     torch.Generator().manual_seed(derive_seed(cfg.seed, SEARCH, 4, i)), mean, std,
                                     labels=py[i : i + 1])
            with torch.no_grad():
                ok = int(reference(rec.images).argmax(1)[0] == py[i])
            hits[int(py[i])] += ok
            counts[int(py[i])] += 1
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)

    def say(msg: str) -> None:
        if log:
            log(msg)

    t0 = time.perf_counter()
    dp = dp_sgd.obj(dp_sgd.parse_params({"noise_multiplier": sigma, "max_grad_norm": max_grad_norm}), ctx)
    say(f"DP-SGD sigma {sigma}")
    ma_dp = _per_class_accuracy(_train(cfg, fresh(), x, y, dp, epochs, cfg.seed), xt, yt, k)
    aa_dp = attack_accuracy(px, sigma)
    rows: list[dict[str, Any]] = []
    for op in ops or list(augmentation.obj.OPS):
        for m in magnitudes or [1, 3, 5, 7, 9]:
            say(f"{op} M{m}")
            aug = augmentation.obj(augmentation.parse_params({"op": op, "magnitude": m}), ctx)
            ma = _per_class_accuracy(_train(cfg, fresh(), x, y, aug, epochs, cfg.seed), xt, yt, k)
            augmented, _ = aug.batch(px, py, 0.0, torch.Generator())
            aa = attack_accuracy(augmented, 0.0)
            rows.append({"op": op, "magnitude": m, "ma": ma.tolist(), "aa": aa.tolist(),
                         "advantage": ((ma - ma_dp) + (aa_dp - aa)).tolist()})
    policy: dict[str, list[Any]] = {}
    for c in range(k):
        best = max(rows, key=lambda r: (np.nan_to_num(r["advantage"][c], nan=-np.inf), r["ma"][c]))
        policy[data.classes[c]] = [best["op"], best["magnitude"]]
    return {"sigma": sigma, "max_grad_norm": max_grad_norm, "classes": list(data.classes),
            "dp": {"ma": ma_dp.tolist(), "aa": aa_dp.tolist()}, "candidates": rows, "policy": policy,
            "seconds": round(time.perf_counter() - t0, 1)}


def write(result: dict[str, Any], out: Path) -> None:
    """``policy.yaml`` (ready for ``defensive_augmentation``), ``search.json`` and a ``report.md`` table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2))
    (out / "policy.yaml").write_text(yaml.safe_dump(
        {"defenses": [{"name": "defensive_augmentation", "params": {"policy": result["policy"]}}]}, sort_keys=False))
    classes = result["classes"]
    lines = [f"# Defensive augmentation search against DP-SGD sigma {result['sigma']}", "",
             "Advantage = (MA_aug - MA_dp) + (AA_dp - AA_aug) per class; the chosen augmentation per class:", "",
             "| class | op | M | MA_aug | AA_aug | MA_dp | AA_dp | advantage |", "|---|---|---|---|---|---|---|---|"]
    for c, name in enumerate(classes):
        op, m = result["policy"][name]
        row = next(r for r in result["candidates"] if r["op"] == op and r["magnitude"] == m)
        lines.append(f"| {name} | {op} | {m} | {row['ma'][c]:.3f} | {row['aa'][c]:.3f} | {result['dp']['ma'][c]:.3f} "
                     f"| {result['dp']['aa'][c]:.3f} | {row['advantage'][c]:.3f} |")
    lines += ["", f"{len(result['candidates'])} candidates, {result['seconds']} s; the policy is in `policy.yaml`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


__all__ = ["search", "write"]
