"""The reference classifier that judges whether reconstructed images are recognisable.

"Attack accuracy" of gradient inversion (shared/papers/defensive-augmentation-gradient-inversion.txt)
is the accuracy of a classifier trained on the whole data set on the reconstructions: a reconstruction
that it labels as its original's class is recognisable. The tool trains that classifier itself -- a
``cnn`` (channels 32, 64, group norm) on every training image with light augmentation (random crop and
flip for images of 32 px and more), SGD with momentum and a cosine schedule -- and caches its weights
per data set and recipe under the data cache (``$DFL_SIM_CACHE``), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfl.config import Spec
from dfl.data import ImageData, channel_stats, to_float
from dfl.data.cache import cache_dir
from dfl.models import build_model
from dfl.seeding import REFERENCE, derive_seed

RECIPE = {"model": {"name": "cnn", "params": {"channels": [32, 64], "hidden": 256, "norm": "group"}},
          "epochs": 8, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}


def _key(data: ImageData, recipe: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for a in (data.x_train, data.y_train):
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()[:16]


def _model(data: ImageData, recipe: dict) -> nn.Module:
    spec = Spec(**recipe["model"])
    return build_model(spec, tuple(data.x_train.shape[1:]), len(data.classes))  # type: ignore[arg-type]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 4-px-padded crop and horizontal flip, per image (only for images of 32 px and more)."""
    if x.shape[-1] < 32:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 7)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 7)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train_reference(data: ImageData, recipe: dict = RECIPE, progress: bool = False) -> nn.Module:
    """Train the reference classifier on every training image of ``data`` (deterministic)."""
    mean, std = channel_stats(data.x_train)
    x, y = to_float(data.x_train, mean, std), torch.from_numpy(data.y_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe["seed"], REFERENCE))
        model = _model(data, recipe)
    g = torch.Generator().manual_seed(derive_seed(recipe["seed"], REFERENCE, 1))
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                          weight_decay=recipe["weight_decay"])
    bs, epochs = recipe["batch_size"], recipe["epochs"]
    steps = epochs * math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(bs):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(_augment(x[idx], g)), y[idx]).backward()
            opt.step()
            sched.step()
        if progress:
            print(f"reference classifier: epoch {epoch + 1}/{epochs}", flush=True)
    return model.eval()


def reference_classifier(data: ImageData, recipe: dict = RECIPE) -> tuple[nn.Module, float]:
    """The cached reference classifier of ``data`` (trained on first use) and its test accuracy."""
    path = cache_dir() / "reference" / f"{data.name}-{_key(data, recipe)}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = _model(data, recipe)
        model.load_state_dict(saved["state"])
        return model.eval(), float(saved["test_acc"])
    model = train_reference(data, recipe)
    mean, std = channel_stats(data.x_train)
    with torch.no_grad():
        xt = to_float(data.x_test, mean, std)
        pred = torch.cat([model(b).argmax(1) for b in xt.split(1000)])
    acc = float((pred == torch.from_numpy(data.y_test)).float().mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": model.state_dict(), "test_acc": acc}, tmp)
    tmp.replace(path)
    return model, acc


def recognisability(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` (normalised as for training) that ``model`` assigns to ``labels``."""
    with torch.no_grad():
        return float((model.eval()(images).argmax(1) == labels).float().mean())


__all__ = ["RECIPE", "recognisability", "reference_classifier", "train_reference"]
