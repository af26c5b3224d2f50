"""Data sets, partitioners and per-node splits.

Importing this package registers the data sources (``digits``, ``synthetic``, ``imagefolder``, ``mnist``,
``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``) in ``DATASETS`` and the partitioners (``iid``,
``dirichlet``, ``shards``, ``sizes``) in ``PARTITIONERS``.
"""

from __future__ import annotations

from dfl.data import digits, imagefolder, synthetic, torchvision_sets  # noqa: F401  (register sources)
from dfl.data.base import DataSource, ImageData, load_dataset, locate_dataset, resolve_root
from dfl.data.cache import cache_dir
from dfl.data.imagefolder import load_imagefolder, read_imagefolder
from dfl.data.partition import partition
from dfl.data.splits import NodeSplit, Splits, channel_stats, derive_rng, make_splits, to_float

__all__ = [
    "DataSource",
    "ImageData",
    "NodeSplit",
    "Splits",
    "cache_dir",
    "channel_stats",
    "derive_rng",
    "load_dataset",
    "load_imagefolder",
    "locate_dataset",
    "make_splits",
    "partition",
    "read_imagefolder",
    "resolve_root",
    "to_float",
]
