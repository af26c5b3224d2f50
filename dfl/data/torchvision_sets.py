"""``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``: the torchvision sets, found offline.

Lookup under the data root, first match wins:

1. torchvision's own layout (e.g. ``<root>/cifar-10-batches-py/``, ``<root>/MNIST/raw/``), read with
   ``torchvision.datasets.X(root, train=..., download=False)``;
2. an imagefolder directory or archive named after the set: ``<root>/<name>``, ``<root>/<name>-jpeg``,
   each also as ``.tar.gz``, ``.tgz``, ``.tar`` or ``.zip`` (read by :mod:`dfl.data.imagefolder`, cached);
3. with ``download: true``, torchvision's download into the data root (where the network allows).

Otherwise one :class:`~dfl.errors.DataError` names the set, the root searched and both ways to provide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.data.base import ImageData
from dfl.data.imagefolder import has_layout, load_imagefolder
from dfl.errors import DataError
from dfl.registries import DATASETS

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class TorchvisionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    download: bool = Field(False, description="download with torchvision into the data root if not found (needs network)")


@dataclass(frozen=True)
class TvSet:
    """How one torchvision set is stored: its class, layout folder and the files that mark it present."""

    name: str
    tv_class: str  # attribute of torchvision.datasets
    folder: str  # torchvision root below the data root ("" = the data root itself)
    files: tuple[str, ...]  # relative to the torchvision root; all must exist
    channels: int
    split_arg: str  # "train" (train=True/False) or "split" (split="train"/"test")
    classes: tuple[str, ...] = ()  # used when the torchvision class has no ``classes``

    @property
    def layout_hint(self) -> str:
        """The first marker file's folder, as shown in messages (e.g. ``cifar-10-batches-py/``)."""
        first = Path(self.folder) / self.files[0]
        return f"{first.parent.as_posix()}/" if first.parent != Path(".") else self.files[0]


_MNIST_FILES = tuple(
    f"raw/{split}-{kind}"
    for split in ("train", "t10k")
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
)

TV_SETS: dict[str, TvSet] = {
    s.name: s
    for s in (
        TvSet("mnist", "MNIST", "", tuple(f"MNIST/{f}" for f in _MNIST_FILES), 1, "train"),
        TvSet("fashion_mnist", "FashionMNIST", "", tuple(f"FashionMNIST/{f}" for f in _MNIST_FILES), 1, "train"),
        TvSet(
            "cifar10", "CIFAR10", "",
            tuple(f"cifar-10-batches-py/{f}" for f in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))),
            3, "train",
        ),
        TvSet("cifar100", "CIFAR100", "", tuple(f"cifar-100-python/{f}" for f in ("meta", "train", "test")), 3, "train"),
        TvSet(
            "svhn", "SVHN", "svhn", ("train_32x32.mat", "test_32x32.mat"), 3, "split",
            classes=tuple(str(i) for i in range(10)),
        ),
    )
}


def torchvision_root(tv: TvSet, root: Path) -> Path | None:
    """The torchvision root holding ``tv`` in torchvision's layout, or ``None``.

    SVHN's files lie directly in torchvision's root; both ``<root>/svhn/`` and ``<root>/`` are accepted.
    """
    candidates = [root / tv.folder] if tv.folder else [root]
    if tv.folder:
        candidates.append(root)
    for cand in candidates:
        if all((cand / f).is_file() for f in tv.files):
            return cand
    return None


def imagefolder_candidates(name: str, root: Path) -> list[Path]:
    """``<root>/<name>``, ``<root>/<name>-jpeg`` and their archive variants, in lookup order."""
    stems = [name, f"{name}-jpeg"]
    return [root / s for s in stems] + [root / f"{s}{suf}" for s in stems for suf in ARCHIVE_SUFFIXES]


def find_imagefolder(name: str, root: Path) -> Path | None:
    """The first imagefolder candidate that exists with the right shape, or ``None``."""
    for cand in imagefolder_candidates(name, root):
        if cand.exists() and has_layout(cand):
            return cand
    return None


def missing_message(tv: TvSet, root: Path, download_failed: str | None = None) -> str:
    """The one message for a set that is not under ``root``: both options and how to set the root."""
    if download_failed is None:
        tail = ""
        hint = " (or set data.dataset.params.download: true here)"
    else:
        tail = f" The download with torchvision failed: {' '.join(download_failed.split())}"
        hint = ""
    return (
        f"dataset {tv.name!r} was not found under the data root {root}. Provide it in one of two ways: "
        f"(a) torchvision's layout, i.e. {root / tv.layout_hint}{'/' if tv.layout_hint.endswith('/') else ''} "
        f"as written by torchvision.datasets.{tv.tv_class}('{root / tv.folder}', download=True) on a machine "
        f"with network access{hint}; or (b) an imagefolder directory or archive with "
        f"train/<class>/* and test/<class>/* named after the set, e.g. {root / f'{tv.name}-jpeg.tar.gz'} "
        f"(also accepted: {tv.name}/, {tv.name}-jpeg/, {tv.name}.tar.gz, .tgz, .tar, .zip). "
        f"To search another folder set data.root in the config or the DFL_SIM_DATA environment variable.{tail}"
    )


def from_torchvision(tv: TvSet, tv_root: Path, download: bool = False) -> ImageData:
    """Read both splits with ``torchvision.datasets.<tv_class>`` into uint8 ``(N, C, H, W)`` arrays."""
    # here, not at the top: torchvision's datasets are needed only to read a torchvision-layout folder
    import torchvision.datasets as tvd

    cls = getattr(tvd, tv.tv_class)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    classes: list[str] = list(tv.classes)
    for split in ("train", "test"):
        kwargs: dict[str, Any] = {"train": split == "train"} if tv.split_arg == "train" else {"split": split}
        try:
            ds = cls(str(tv_root), download=download, **kwargs)
        except (RuntimeError, OSError, ValueError, TypeError, AssertionError) as exc:
            if download:
                raise  # the caller reports the failed download
            raise DataError(
                f"torchvision could not read {tv.name!r} from {tv_root} ({exc}); remove the folder and "
                f"download it again, or provide an imagefolder archive instead (e.g. {tv.name}-jpeg.tar.gz)"
            ) from None
        arrays[split] = _arrays_of(ds, tv)
        classes = [str(c) for c in getattr(ds, "classes", None) or classes]
    return ImageData(
        name=tv.name,
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
        classes=classes,
    )


def _arrays_of(ds: Any, tv: TvSet) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a torchvision dataset's ``data`` and ``targets``/``labels``, as (N, C, H, W) uint8."""
    x = np.asarray(ds.data.numpy() if hasattr(ds.data, "numpy") else ds.data)
    raw_y = ds.targets if hasattr(ds, "targets") else ds.labels
    y = np.asarray(raw_y.numpy() if hasattr(raw_y, "numpy") else raw_y, dtype=np.int64)
    if x.ndim == 3:  # MNIST-like (N, H, W)
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] == tv.channels and x.shape[1] != tv.channels:  # CIFAR (N, H, W, C)
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.uint8), y


class TorchvisionSet:
    """A torchvision data set looked up offline under the data root (base of the registered sets)."""

    tv: TvSet

    def __init__(self, params: TorchvisionParams, root: Path) -> None:
        self.params = params
        self.root = root

    def locate(self) -> None:
        """Raise the two-option message if neither layout is present (and download is off)."""
        if torchvision_root(self.tv, self.root) or find_imagefolder(self.tv.name, self.root) or self.params.download:
            return
        raise DataError(missing_message(self.tv, self.root))

    def load(self) -> ImageData:
        tv_root = torchvision_root(self.tv, self.root)
        if tv_root is not None:
            return from_torchvision(self.tv, tv_root)
        folder = find_imagefolder(self.tv.name, self.root)
        if folder is not None:
            return load_imagefolder(folder, grayscale=self.tv.channels == 1, name=self.tv.name)
        if self.params.download:
            target = self.root / self.tv.folder if self.tv.folder else self.root
            try:
                target.mkdir(parents=True, exist_ok=True)
                return from_torchvision(self.tv, target, download=True)
            except (RuntimeError, OSError, ValueError, TypeError, AssertionError) as exc:
                raise DataError(missing_message(self.tv, self.root, str(exc) or type(exc).__name__)) from None
        raise DataError(missing_message(self.tv, self.root))


@DATASETS.register("mnist", params=TorchvisionParams)
class MNIST(TorchvisionSet):
    """MNIST handwritten digits, 28x28 grayscale, 60k/10k (torchvision layout or imagefolder)."""

    tv = TV_SETS["mnist"]


@DATASETS.register("fashion_mnist", params=TorchvisionParams)
class FashionMNIST(TorchvisionSet):
    """Fashion-MNIST clothing images, 28x28 grayscale, 60k/10k (torchvision layout or imagefolder)."""

    tv = TV_SETS["fashion_mnist"]


@DATASETS.register("cifar10", params=TorchvisionParams)
class CIFAR10(TorchvisionSet):
    """CIFAR-10, 32x32 RGB, 10 classes, 50k/10k (torchvision layout or imagefolder, e.g. cifar10-jpeg.tar.gz)."""

    tv = TV_SETS["cifar10"]


@DATASETS.register("cifar100", params=TorchvisionParams)
class CIFAR100(TorchvisionSet):
    """CIFAR-100, 32x32 RGB, 100 classes, 50k/10k (torchvision layout or imagefolder)."""

    tv = TV_SETS["cifar100"]


@DATASETS.register("svhn", params=TorchvisionParams)
class SVHN(TorchvisionSet):
    """SVHN house numbers, 32x32 RGB, 73k/26k (torchvision layout in <root>/svhn/ or imagefolder)."""

    tv = TV_SETS["svhn"]
