"""Per-node splits of a data set: who trains on what, what nobody trains on, and the attackers' pool.

:func:`make_splits` works in a fixed order, each step with its own Generator derived from the seed:

1. shuffle the train pool (``"split"``) and take ``auxiliary_fraction`` of it as the attackers' pool;
2. partition the rest with the configured partitioner (``"partition"``);
3. cap each node's share at ``samples_per_node`` (``"cap"``, per node);
4. split each share into ``holdout`` (``holdout_fraction``) and ``train`` (``"holdout"``, per node);
5. take all of ``x_test`` or a seeded subset of ``test_samples`` (``"test"``).

All index sets are pairwise disjoint; the same seed gives identical splits in any process.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dfl.config import DataConfig
from dfl.data.base import ImageData
from dfl.data.partition import partition
from dfl.errors import DataError

if TYPE_CHECKING:
    import torch


def derive_rng(seed: int, tag: str, *more: int) -> np.random.Generator:
    """A Generator for one purpose: ``default_rng([seed, crc32(tag), *more])``; stable across processes."""
    return np.random.default_rng([seed, zlib.crc32(tag.encode()), *more])


@dataclass
class NodeSplit:
    """One node's data: ``train`` (its members) and ``holdout`` (never trained on); indices into ``x_train``."""

    train: np.ndarray
    holdout: np.ndarray


@dataclass
class Splits:
    """Every node's split, the attackers' auxiliary pool (indices into ``x_train``) and the test indices."""

    nodes: list[NodeSplit]
    auxiliary: np.ndarray
    test: np.ndarray

    def label_histograms(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """``(n_nodes, num_classes)`` int64 counts of each node's ``train`` labels; ``labels``: ``y_train``."""
        return np.stack([np.bincount(labels[n.train], minlength=num_classes) for n in self.nodes]).astype(np.int64)


def holdout_count(share: int, fraction: float) -> int:
    """``round(fraction * share)``, at least 1 if ``fraction > 0`` and ``share >= 2``, leaving at least 1 to train."""
    if fraction <= 0 or share < 2:
        return 0
    return int(min(max(1, round(fraction * share)), share - 1))


def make_splits(data: ImageData, cfg: DataConfig, n_nodes: int, seed: int) -> Splits:
    """Deal ``data``'s train pool out to ``n_nodes`` nodes as configured by ``cfg`` (see the module doc)."""
    n = len(data.y_train)
    pool = derive_rng(seed, "split").permutation(n).astype(np.int64)
    n_aux = int(round(cfg.auxiliary_fraction * n))
    auxiliary, rest = np.sort(pool[:n_aux]), pool[n_aux:]
    if len(rest) < n_nodes:
        raise DataError(
            f"{len(rest)} training samples remain after data.auxiliary_fraction={cfg.auxiliary_fraction} of {n} "
            f"({data.name!r}) but nodes={n_nodes}; every node needs at least one: lower data.auxiliary_fraction "
            "or use fewer nodes"
        )
    parts = partition(data.y_train[rest], n_nodes, cfg.partition, derive_rng(seed, "partition"))
    nodes: list[NodeSplit] = []
    for i, part in enumerate(parts):
        share = rest[part]
        if cfg.samples_per_node is not None and len(share) > cfg.samples_per_node:
            share = derive_rng(seed, "cap", i).choice(share, cfg.samples_per_node, replace=False)
        share = derive_rng(seed, "holdout", i).permutation(share)
        k = holdout_count(len(share), cfg.holdout_fraction)
        train, holdout = np.sort(share[k:]), np.sort(share[:k])
        if len(train) < 1:
            raise DataError(
                f"node {i} has no training sample (share of {len(share)}, data.holdout_fraction="
                f"{cfg.holdout_fraction}); use fewer nodes, a larger data set, or change data.partition"
            )
        nodes.append(NodeSplit(train=train, holdout=holdout))
    m = len(data.y_test)
    if cfg.test_samples is not None and cfg.test_samples < m:
        test = np.sort(derive_rng(seed, "test").choice(m, cfg.test_samples, replace=False)).astype(np.int64)
    else:
        test = np.arange(m, dtype=np.int64)
    return Splits(nodes=nodes, auxiliary=auxiliary, test=test)


def channel_stats(x_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 ``(N, C, H, W)`` images on the [0, 1] scale: two float32 ``(C,)``.

    ``mean = S1 / n``, ``std = sqrt(S2 / n - mean^2)`` from exact integer sums ``S1 = sum x``,
    ``S2 = sum x^2`` taken over blocks of rows, so large sets need no full float copy.
    """
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 (N, C, H, W) images, got {x.dtype} {x.shape}")
    c = x.shape[1]
    s1 = np.zeros(c, dtype=np.uint64)
    s2 = np.zeros(c, dtype=np.uint64)
    for start in range(0, len(x), 2048):
        block = x[start : start + 2048].astype(np.uint32)
        s1 += block.sum(axis=(0, 2, 3), dtype=np.uint64)
        s2 += (block * block).sum(axis=(0, 2, 3), dtype=np.uint64)
    n = max(1, x.size // max(c, 1))
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


def to_float(x_uint8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel as float32; ``x_uint8``: ``(N, C, H, W)`` or ``(C, H, W)``.

    A channel with ``std == 0`` (constant) is only centred, not scaled.
    """
    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).to(torch.float32).div_(255.0)
    m = torch.as_tensor(np.array(mean, dtype=np.float32)).reshape(-1, 1, 1)
    s = torch.as_tensor(np.where(np.asarray(std) > 0, std, 1.0).astype(np.float32)).reshape(-1, 1, 1)
    return x.sub_(m).div_(s)
