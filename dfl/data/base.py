"""``ImageData``, the in-memory form of every data set, and the two entry points over the ``DATASETS`` registry.

A data source registers a class with ``@DATASETS.register("<key>", params=<Params>)``. The class is built as
``Cls(params, root)`` (``root``: the resolved data root) and offers ``locate()`` (cheap: raises
:class:`~dfl.errors.DataError` when the data are not available, decodes nothing) and ``load()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from dfl.config import Spec, default_data_root
from dfl.errors import DataError
from dfl.registries import DATASETS


@dataclass
class ImageData:
    """A labelled image data set with its train and test split, as uint8 ``(N, C, H, W)`` arrays.

    ``x_train``: ``(N, C, H, W)`` uint8, ``y_train``: ``(N,)`` int64 class ids into ``classes``;
    ``x_test``/``y_test`` likewise with ``M`` rows. Construction checks dtypes, shapes and label range.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        k = len(self.classes)
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
                got = f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
                raise DataError(
                    f"data set {self.name!r}: x_{split} must be a uint8 array of shape (N, C, H, W), got {got}; "
                    "convert the images to uint8 (0..255) in channel-first layout"
                )
            y = np.asarray(y)
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise DataError(
                    f"data set {self.name!r}: y_{split} must be a 1-d integer array, got {y.dtype} {y.shape}; "
                    "store class ids 0..K-1"
                )
            y = y.astype(np.int64, copy=False)
            setattr(self, f"y_{split}", y)
            if len(y) != len(x):
                raise DataError(
                    f"data set {self.name!r}: {len(x)} {split} images but {len(y)} {split} labels; "
                    "give one label per image"
                )
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise DataError(
                    f"data set {self.name!r}: {split} labels range over {int(y.min())}..{int(y.max())} but there "
                    f"are {k} classes (ids 0..{k - 1} allowed); fix the labels or the class list"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"data set {self.name!r}: train images are {self.x_train.shape[1:]} but test images are "
                f"{self.x_test.shape[1:]} (C, H, W); both splits must share one shape"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape ``(C, H, W)``."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (
            f"ImageData({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"shape=({c}, {h}, {w}), classes={self.num_classes})"
        )


class DataSource(Protocol):
    """What a ``DATASETS`` entry builds: ``Cls(params, root)`` with ``locate()`` and ``load()``."""

    def __init__(self, params: Any, root: Path) -> None: ...

    def locate(self) -> None:
        """Raise :class:`DataError` if the data are not available (no decoding)."""

    def load(self) -> ImageData:
        """Read (or generate) the data."""


def resolve_root(root: str | Path | None) -> Path:
    """The data root: ``root`` if given (``~`` expanded), else ``$DFL_SIM_DATA`` or ``~/.cache/dfl-sim/data``."""
    return default_data_root() if root is None else Path(root).expanduser()


def make_source(spec: Spec, root: str | Path | None) -> DataSource:
    """Build the registered source for ``spec``; unknown names and bad params raise ``ConfigError``."""
    entry = DATASETS.get(spec.name, "data.dataset.name")
    params: BaseModel = entry.parse_params(spec.params, "data.dataset.params")
    return entry.obj(params, resolve_root(root))


def load_dataset(spec: Spec, root: str | Path | None = None) -> ImageData:
    """Load the data set named by ``spec`` (``{name, params}``) from the data root."""
    data = make_source(spec, root).load()
    if not isinstance(data, ImageData):
        raise TypeError(f"dataset {spec.name!r} returned {type(data).__name__}, not ImageData")
    return data


def locate_dataset(spec: Spec, root: str | Path | None = None) -> None:
    """Raise :class:`DataError` if the data set named by ``spec`` is not available; decodes nothing."""
    make_source(spec, root).locate()
