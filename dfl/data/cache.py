"""On-disk cache of decoded data sets as uint8 ``.npz`` files.

An entry's key hashes the source's absolute path, size and modification time (for a directory: every
file's relative path, size and mtime), the loader's name and its load params, so a changed source or
different params miss the cache. Entries are written atomically (temp file + rename) and read with
``allow_pickle=False``; an unreadable entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dfl.data.base import ImageData
from dfl.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def cache_dir() -> Path:
    """``$DFL_SIM_CACHE`` or ``~/.cache/dfl-sim/cache``."""
    env = os.environ.get("DFL_SIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dfl-sim" / "cache"


def source_fingerprint(source: Path) -> dict[str, Any]:
    """Absolute path, size and mtime of a file; for a directory, a hash over all files below it."""
    path = source.expanduser().resolve()
    if path.is_dir():
        h = hashlib.sha256()
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                st = os.stat(full)
                h.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                count += 1
        return {"path": str(path), "files": count, "listing": h.hexdigest()}
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(source: Path, loader: str, params: Mapping[str, Any]) -> str:
    """A hex digest over the source fingerprint, the loader name, its params and the cache format."""
    blob = json.dumps(
        {"v": FORMAT_VERSION, "loader": loader, "source": source_fingerprint(source), "params": dict(params)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(source: Path, loader: str, params: Mapping[str, Any]) -> Path:
    """Where the decoded arrays of ``source`` loaded with ``params`` are cached."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name) or "data"
    return cache_dir() / f"{loader}-{stem}-{cache_key(source, loader, params)}.npz"


def read_entry(path: Path) -> ImageData | None:
    """The cached data at ``path``, or ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return ImageData(
                name=str(z["name"]),
                x_train=z["x_train"],
                y_train=z["y_train"],
                x_test=z["x_test"],
                y_test=z["y_test"],
                classes=[str(c) for c in z["classes"]],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, DataError) as exc:
        log.warning("ignoring unreadable cache entry %s (%s); it will be rewritten", path, exc)
        return None


def write_entry(path: Path, data: ImageData) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                name=np.array(data.name),
                x_train=data.x_train,
                y_train=data.y_train,
                x_test=data.x_test,
                y_test=data.y_test,
                classes=np.array(data.classes, dtype=str),
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the entry ordinary file permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(source: Path, loader: str, params: Mapping[str, Any], build: Callable[[], ImageData]) -> ImageData:
    """Return the cached decode of ``source`` with ``params``, calling ``build()`` and storing it on a miss.

    A cache folder that cannot be written only costs the speed-up: the error is logged, the data returned.
    """
    path = cache_path(source, loader, params)
    hit = read_entry(path)
    if hit is not None:
        log.debug("cache hit %s", path)
        return hit
    data = build()
    try:
        write_entry(path, data)
    except OSError as exc:
        log.warning("could not write the data cache %s (%s); set DFL_SIM_CACHE to a writable folder", path, exc)
    return data
