"""``synthetic``: generated class-conditional images, for tests and quick runs.

Each class ``k`` has a prototype ``p_k ~ U(0, 1)^(C, H, W)``; a sample of class ``k`` is
``clip(p_k + noise * N(0, I), 0, 1)`` scaled to uint8. With the defaults the classes are far apart
relative to the noise, so a small MLP (or nearest class mean) separates them well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.data.base import ImageData
from dfl.registries import DATASETS


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(10, ge=2)
    channels: int = Field(1, ge=1)
    image_size: int = Field(8, ge=1)
    train_size: int = Field(1000, ge=1)
    test_size: int = Field(200, ge=1)
    noise: float = Field(0.3, ge=0.0, description="std of the gaussian noise, in units of the [0, 1] pixel range")
    seed: int = Field(0, ge=0, description="seed of the prototypes and samples (fixed, not the run seed)")


def class_balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels with class counts differing by at most one, in random order: ``(n,)`` int64."""
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


def sample_images(
    prototypes: np.ndarray, labels: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``clip(prototypes[labels] + noise * N(0, I), 0, 1)`` as uint8; ``prototypes``: ``(K, C, H, W)`` in [0, 1].

    Generated in blocks of :data:`SAMPLE_BLOCK` images, so the float64 temporaries stay small however many
    images there are; the draws come from ``rng`` in the same order as in one piece (the same images)."""
    out = np.empty((len(labels), *prototypes.shape[1:]), dtype=np.uint8)
    for a in range(0, len(labels), SAMPLE_BLOCK):
        part = labels[a : a + SAMPLE_BLOCK]
        x = prototypes[part] + noise * rng.standard_normal((len(part), *prototypes.shape[1:]))
        out[a : a + len(part)] = np.rint(np.clip(x, 0.0, 1.0) * 255.0)
    return out


SAMPLE_BLOCK = 4096


@DATASETS.register("synthetic", params=SyntheticParams)
class Synthetic:
    """Gaussian noise around one random prototype image per class."""

    def __init__(self, params: SyntheticParams, root: Path) -> None:
        self.params = params
        self.root = root

    def locate(self) -> None:
        """Always available: generated on load."""

    def load(self) -> ImageData:
        p = self.params
        rng = np.random.default_rng(p.seed)
        prototypes = rng.uniform(0.0, 1.0, size=(p.num_classes, p.channels, p.image_size, p.image_size))
        y_train = class_balanced_labels(p.train_size, p.num_classes, rng)
        x_train = sample_images(prototypes, y_train, p.noise, rng)
        y_test = class_balanced_labels(p.test_size, p.num_classes, rng)
        x_test = sample_images(prototypes, y_test, p.noise, rng)
        return ImageData(
            name="synthetic",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            classes=[f"class{k}" for k in range(p.num_classes)],
        )
