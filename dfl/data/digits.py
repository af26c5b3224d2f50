"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), works offline.

Pixel values 0..16 are scaled to uint8 0..255; images are ``(N, 1, 8, 8)``. The set has no official
split, so a stratified train/test split is drawn with a fixed seed (``split_seed``, default 0).

The decoded split is kept in the data cache (:mod:`dfl.data.cache`), keyed on scikit-learn's own copy
of the data, its version and the params: a later run reads it back without importing scikit-learn,
which saves about a second of start-up.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.data.base import ImageData
from dfl.data.cache import cached
from dfl.registries import DATASETS


class DigitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of the 1,797 images in the test split")
    split_seed: int = Field(0, ge=0, description="seed of the stratified train/test split (fixed, not the run seed)")


def scale_digits(images: np.ndarray) -> np.ndarray:
    """Map ``(N, 8, 8)`` values in 0..16 to uint8 ``(N, 1, 8, 8)`` in 0..255 (``round(v * 255 / 16)``)."""
    return np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]


@DATASETS.register("digits", params=DigitsParams)
class Digits:
    """scikit-learn's 8x8 handwritten digits with a seeded stratified split."""

    def __init__(self, params: DigitsParams, root: Path) -> None:
        self.params = params
        self.root = root

    def locate(self) -> None:
        """Always available: the data ship with scikit-learn."""

    def load(self) -> ImageData:
        spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
        source = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
        if source is None or not source.is_file():
            return self._split()
        params = {**self.params.model_dump(), "scikit-learn": importlib.metadata.version("scikit-learn")}
        return cached(source, "digits", params, self._split)

    def _split(self) -> ImageData:
        # here, not at the top: scikit-learn costs about a second of start-up, and a cached split needs none
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = scale_digits(bunch.images)
        y = np.asarray(bunch.target, dtype=np.int64)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=self.params.test_fraction, stratify=y, random_state=self.params.split_seed
        )
        return ImageData(
            name="digits",
            x_train=np.ascontiguousarray(x_tr),
            y_train=y_tr,
            x_test=np.ascontiguousarray(x_te),
            y_test=y_te,
            classes=[str(int(c)) for c in bunch.target_names],
        )
