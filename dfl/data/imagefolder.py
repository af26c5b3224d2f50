"""``imagefolder``: images in ``train/<class>/*`` and ``test/<class>/*``, from a directory or an archive.

The layout may sit below one top-level folder (``cifar10/train/airplane/0001.jpg``). Archives
(``.tar.gz``, ``.tgz``, ``.tar``, ``.tar.bz2``, ``.tar.xz``, ``.zip``) are read in place, never extracted:
a tar is streamed once in archive order (seeking in a gzip stream re-decompresses it), so the images
are decoded in that order and sorted afterwards by (split, class, path). Classes are the sorted class
folders of ``train``; ``test`` must use a subset of them. Large sources are decoded by a pool of forked
worker processes fed while the archive is still being read. The decoded uint8 arrays are cached
(:mod:`dfl.data.cache`), so a second load only reads one ``.npz`` file.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.pool
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from dfl.data.base import ImageData
from dfl.data.cache import cached
from dfl.errors import DataError
from dfl.registries import DATASETS

SPLITS = ("train", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"})
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
LAYOUT = "train/<class>/<image> and test/<class>/<image>, optionally below one top-level folder"

CHUNK = 1000  # images per decode task
POOL_MIN_IMAGES = 4000  # below this a pool costs more than it saves
POOL_MIN_ARCHIVE_BYTES = 4 << 20  # a tar's image count is unknown before streaming; guess from its size


class ImageFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="directory or .tar.gz/.tgz/.tar/.zip archive; relative paths resolve against the data root")
    image_size: int | None = Field(None, ge=1, description="resize every image to this square size; else all must share one size")
    grayscale: bool = Field(False, description="decode to 1 channel (L) instead of 3 (RGB)")


def source_kind(path: Path) -> str | None:
    """``"dir"``, ``"tar"`` or ``"zip"`` by the path's type and suffix; ``None`` if unsupported."""
    if path.is_dir():
        return "dir"
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


def strip_archive_suffix(name: str) -> str:
    """``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``."""
    low = name.lower()
    for suffix in TAR_SUFFIXES + ZIP_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def iter_files(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(relative posix path, read)`` for each regular file; call ``read()`` before advancing."""
    kind = source_kind(path)
    if kind == "dir":
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(path)
            for fname in sorted(filenames):
                full = Path(dirpath) / fname
                yield (rel / fname).as_posix(), full.read_bytes
    elif kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    yield info.filename, partial(zf.read, info)
    elif kind == "tar":
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile():
                    yield member.name, partial(_read_member, tf, member)
    else:
        raise DataError(
            f"{path} is neither a directory nor a supported archive; allowed: a directory or a file ending in "
            f"{', '.join(TAR_SUFFIXES + ZIP_SUFFIXES)}"
        )


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(member)
    if fh is None:  # not a regular file; callers only pass regular files
        raise DataError(f"cannot read {member.name!r} from the archive {tf.name!r}; it is not a regular file")
    return fh.read()


def classify(relpath: str) -> tuple[str, str, str] | None:
    """``(top, split, class)`` of an image path in the layout, or ``None`` for any other file.

    ``train/cat/1.png`` -> ``("", "train", "cat")``; ``cifar10/test/cat/1.png`` -> ``("cifar10", "test", "cat")``.
    Hidden files and macOS ``__MACOSX`` folders are skipped.
    """
    parts = [p for p in relpath.strip("/").split("/") if p not in ("", ".")]
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if len(parts) >= 3 and parts[0] in SPLITS:
        return "", parts[0], parts[1]
    if len(parts) >= 4 and parts[1] in SPLITS:
        return parts[0], parts[1], parts[2]
    return None


def decode_image(blob: bytes, name: str, image_size: int | None, grayscale: bool) -> np.ndarray:
    """Decode one image to uint8 ``(H, W, C)`` (C = 1 if ``grayscale`` else 3), resized if ``image_size``."""
    mode = "L" if grayscale else "RGB"
    try:
        with Image.open(io.BytesIO(blob)) as im:
            img = im if im.mode == mode else im.convert(mode)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name!r} ({exc}); remove or replace the file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(
    blobs: list[bytes], names: list[str], image_size: int | None, grayscale: bool
) -> np.ndarray:
    """Decode a batch to uint8 ``(n, H, W, C)``; without ``image_size`` all must share the first one's size."""
    first = decode_image(blobs[0], names[0], image_size, grayscale)
    out = np.empty((len(blobs), *first.shape), dtype=np.uint8)
    out[0] = first
    for i in range(1, len(blobs)):
        arr = decode_image(blobs[i], names[i], image_size, grayscale)
        if arr.shape != first.shape:
            raise size_mismatch(names[i], arr.shape, names[0], first.shape)
        out[i] = arr
    return out


def size_mismatch(name: str, shape: tuple[int, ...], ref: str, ref_shape: tuple[int, ...]) -> DataError:
    """The error for an image whose size differs from the first one's."""
    return DataError(
        f"image {name!r} is {shape[1]}x{shape[0]} but {ref!r} is {ref_shape[1]}x{ref_shape[0]} (width x height); "
        "all images must share one size: set image_size in the dataset params (e.g. "
        "data.dataset.params.image_size: 32) to resize them to a square"
    )


def _decode_task(task: tuple[list[bytes], list[str], int | None, bool]) -> np.ndarray:
    """Decode one chunk to ``(n, C, H, W)`` (the transpose is done here, in the worker)."""
    return np.ascontiguousarray(decode_images(*task).transpose(0, 3, 1, 2))


def _fork_pool(workers: int) -> multiprocessing.pool.Pool | None:
    """A pool of forked workers, or ``None`` where fork is unavailable or only one core is."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork").Pool(workers)


def worth_a_pool(path: Path) -> bool:
    """Whether a source is big enough that decoding in worker processes beats their start-up."""
    kind = source_kind(path)
    if kind is None:
        return False
    if kind == "tar":
        return path.stat().st_size >= POOL_MIN_ARCHIVE_BYTES
    return sum(1 for _ in _quick_count(path)) >= POOL_MIN_IMAGES


def default_workers() -> int:
    """Decode processes: the usable cores, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def read_imagefolder(
    path: Path, image_size: int | None = None, grayscale: bool = False, name: str | None = None,
    workers: int | None = None,
) -> ImageData:
    """Decode an imagefolder directory or archive (no cache); images sorted by (split, class, path).

    ``workers``: decode processes (1 = in this process); by default up to 4 for large sources, else 1.
    """
    if not path.exists():
        raise DataError(f"imagefolder source {path} does not exist; give a directory or an archive with {LAYOUT}")
    keys: list[tuple[int, str, str]] = []  # (split index, class, path), in decode order
    tops: list[str] = []
    seen_top_level: set[str] = set()

    def tasks() -> Iterator[tuple[list[bytes], list[str], int | None, bool]]:
        blobs: list[bytes] = []
        names: list[str] = []
        for rel, read in iter_files(path):
            where = classify(rel)
            if where is None:
                if len(seen_top_level) < 12:
                    seen_top_level.add(rel.strip("/").split("/")[0])
                continue
            top, split, cls = where
            if not tops:
                tops.append(top)
            elif top != tops[0]:
                raise DataError(
                    f"{path} holds the layout under two top-level folders, {_folder(tops[0])} and "
                    f"{_folder(top)} (at {rel!r}); keep one: {LAYOUT}"
                )
            keys.append((SPLITS.index(split), cls, rel))
            blobs.append(read())
            names.append(rel)
            if len(blobs) == CHUNK:
                yield blobs, names, image_size, grayscale
                blobs, names = [], []
        if blobs:
            yield blobs, names, image_size, grayscale

    pool = None
    chunks: list[np.ndarray] = []  # (n, C, H, W) each, in decode order
    try:  # the quick count of worth_a_pool already opens an archive: inside, so a broken one is a DataError
        if workers is None:
            workers = default_workers() if worth_a_pool(path) else 1
        pool = _fork_pool(workers)
        decoded: Iterable[np.ndarray] = pool.imap(_decode_task, tasks()) if pool else map(_decode_task, tasks())
        for arr in decoded:
            if chunks and arr.shape[1:] != chunks[0].shape[1:]:
                hwc = (*arr.shape[2:], arr.shape[1])
                ref = (*chunks[0].shape[2:], chunks[0].shape[1])
                raise size_mismatch(keys[sum(map(len, chunks))][2], hwc, keys[0][2], ref)
            chunks.append(arr)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); check that the archive is complete and not "
            "corrupt (copy or download it again)"
        ) from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    counts = {s: sum(1 for k in keys if k[0] == i) for i, s in enumerate(SPLITS)}
    if not keys or not all(counts.values()):
        found = ", ".join(sorted(seen_top_level)) or "nothing"
        raise DataError(
            f"{path} has {counts['train']} train and {counts['test']} test images in the layout {LAYOUT} "
            f"(e.g. cifar10/train/airplane/0001.jpg); other top-level entries found: {found}. "
            "Put the images in that layout, with both splits"
        )
    classes = sorted({k[1] for k in keys if k[0] == 0})
    extra = sorted({k[1] for k in keys if k[0] == 1} - set(classes))
    if extra:
        raise DataError(
            f"{path}: test classes {extra} have no train folder; the train class folders are {classes}. "
            "Give both splits the same class folders"
        )
    # Scatter the chunks into one buffer in (split, class, path) order: train rows first, then test.
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = np.empty(len(keys), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(keys))
    x = np.empty((len(keys), *chunks[0].shape[1:]), dtype=np.uint8)
    start = 0
    for arr in chunks:
        x[rank[start : start + len(arr)]] = arr
        start += len(arr)
    class_id = {c: i for i, c in enumerate(classes)}
    y = np.array([class_id[keys[i][1]] for i in order], dtype=np.int64)
    n_train = counts["train"]
    return ImageData(
        name=name or strip_archive_suffix(path.name),
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        classes=classes,
    )


def _folder(top: str) -> str:
    return f"{top}/" if top else "the archive root"


def _quick_count(path: Path) -> Iterator[str]:
    """Image paths in the layout, from a directory walk or a zip's central directory (no reads)."""
    if path.is_dir():
        for dirpath, _, filenames in os.walk(path):
            rel = Path(dirpath).relative_to(path)
            for fname in filenames:
                if classify((rel / fname).as_posix()):
                    yield fname
    else:
        with zipfile.ZipFile(path) as zf:
            for n in zf.namelist():
                if classify(n):
                    yield n


def load_imagefolder(
    path: Path, image_size: int | None = None, grayscale: bool = False, name: str | None = None
) -> ImageData:
    """:func:`read_imagefolder` through the on-disk cache (key: source path/size/mtime and load params)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise DataError(f"imagefolder source {path} does not exist; give a directory or an archive with {LAYOUT}")
    params = {"image_size": image_size, "grayscale": grayscale}
    data = cached(path, "imagefolder", params, lambda: read_imagefolder(path, image_size, grayscale))
    if name is not None and data.name != name:
        data.name = name
    return data


def has_layout(path: Path) -> bool:
    """Cheap check: a directory with ``train/`` and ``test/`` (or one top folder holding them), or an archive file."""
    kind = source_kind(path)
    if kind in ("tar", "zip"):
        return path.is_file()
    if kind != "dir":
        return False
    if (path / "train").is_dir() and (path / "test").is_dir():
        return True
    return any((c / "train").is_dir() and (c / "test").is_dir() for c in path.iterdir() if c.is_dir())


@DATASETS.register("imagefolder", params=ImageFolderParams)
class ImageFolder:
    """Images in train/<class>/* and test/<class>/*, from a directory or a .tar.gz/.tgz/.tar/.zip archive."""

    def __init__(self, params: ImageFolderParams, root: Path) -> None:
        self.params = params
        self.root = root
        given = Path(params.path).expanduser()
        self.path = given if given.is_absolute() else root / given

    def locate(self) -> None:
        """Raise if the path is missing, unsupported, or a directory without train/ and test/."""
        p = self.path
        where = (
            "" if Path(self.params.path).expanduser().is_absolute()
            else f" (relative paths resolve against the data root {self.root}; set data.root or DFL_SIM_DATA)"
        )
        if not p.exists():
            raise DataError(
                f"imagefolder path {self.params.path!r} resolves to {p}, which does not exist{where}; give a "
                f"directory or a .tar.gz/.tgz/.tar/.zip archive with {LAYOUT}"
            )
        if source_kind(p) is None:
            raise DataError(
                f"imagefolder path {p} is a file of an unsupported type; allowed: a directory or an archive ending "
                f"in {', '.join(TAR_SUFFIXES + ZIP_SUFFIXES)}"
            )
        if not has_layout(p):
            raise DataError(f"imagefolder directory {p} has no train/ and test/ folders; expected {LAYOUT}")

    def load(self) -> ImageData:
        self.locate()
        return load_imagefolder(self.path, self.params.image_size, self.params.grayscale)
