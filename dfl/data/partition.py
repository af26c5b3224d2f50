"""Partitioners: how a labelled pool is dealt out to ``n_nodes`` nodes (registry ``PARTITIONERS``).

Each is a pure function ``fn(labels, n_nodes, params, rng) -> list[np.ndarray]``: ``labels`` is the
``(N,)`` int label array of the pool, the result holds one int64 index array into ``labels`` per node,
pairwise disjoint, each sorted. All randomness comes from ``rng``. :func:`partition` looks the
partitioner up from a spec and checks that every node got at least one sample.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.config import Spec
from dfl.errors import DataError
from dfl.registries import PARTITIONERS
from dfl.registry import NoParams


def _need(n_samples: int, n_nodes: int, per_node: int, what: str, fix: str) -> None:
    """Raise if ``n_samples`` cannot give ``n_nodes`` nodes ``per_node`` samples each."""
    if n_nodes < 1:
        raise DataError(f"nodes must be at least 1, got {n_nodes}; set nodes to a positive count")
    if n_samples < n_nodes * per_node:
        raise DataError(
            f"{what} needs at least {n_nodes * per_node} samples for {n_nodes} nodes "
            f"({per_node} each) but the pool has {n_samples}; {fix}"
        )


@PARTITIONERS.register("iid", params=NoParams)
def iid(labels: np.ndarray, n_nodes: int, params: NoParams, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and deal out as evenly as possible (sizes differ by at most one)."""
    _need(len(labels), n_nodes, 1, "data.partition iid", "use fewer nodes or a larger data set")
    perm = rng.permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, n_nodes)]


class DirichletParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.5, gt=0.0, description="concentration; small = skewed labels per node, large = near iid")
    min_size: int = Field(10, ge=1, description="resample until every node has at least this many samples")
    max_tries: int = Field(1000, ge=1, description="resampling attempts before giving up")


def dirichlet_once(labels: np.ndarray, n_nodes: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """One draw of the per-class Dirichlet allocation (Hsu et al., 2019; the NIID-Bench variant).

    For each class ``k``: ``p ~ Dir(alpha * 1_n)``; nodes already holding ``>= N/n`` samples get
    ``p_j = 0`` (keeps sizes bounded, Wang et al. 2020 / Li et al. 2022); the shuffled class indices are
    cut at ``cumsum(p) * n_k``.
    """
    n = len(labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
    sizes = np.zeros(n_nodes, dtype=np.int64)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        p = rng.dirichlet(np.full(n_nodes, alpha))
        p = np.where(sizes < n / n_nodes, p, 0.0)
        total = p.sum()
        p = p / total if total > 0 else np.full(n_nodes, 1.0 / n_nodes)
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        for j, chunk in enumerate(np.split(idx, cuts)):
            parts[j].append(chunk)
            sizes[j] += len(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


@PARTITIONERS.register("dirichlet", params=DirichletParams)
def dirichlet(
    labels: np.ndarray, n_nodes: int, params: DirichletParams, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: per-class Dirichlet(alpha) shares, resampled until every node has ``min_size`` samples."""
    _need(
        len(labels), n_nodes, params.min_size, f"data.partition dirichlet with min_size={params.min_size}",
        "lower data.partition.params.min_size, use fewer nodes or a larger data set",
    )
    for _ in range(params.max_tries):
        parts = dirichlet_once(labels, n_nodes, params.alpha, rng)
        if min(len(p) for p in parts) >= params.min_size:
            return parts
    raise DataError(
        f"data.partition dirichlet(alpha={params.alpha}, min_size={params.min_size}) left some of the {n_nodes} "
        f"nodes with fewer than {params.min_size} of {len(labels)} samples in {params.max_tries} draws; raise "
        "data.partition.params.alpha, lower data.partition.params.min_size, or use fewer nodes"
    )


class ShardsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards_per_node: int = Field(2, ge=1, description="label-sorted shards each node receives")


@PARTITIONERS.register("shards", params=ShardsParams)
def shards(labels: np.ndarray, n_nodes: int, params: ShardsParams, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological non-iid (McMahan et al., 2017): sort by label, cut ``n * k`` shards, deal ``k`` to each node."""
    k = params.shards_per_node
    _need(
        len(labels), n_nodes, k, f"data.partition shards with shards_per_node={k}",
        "lower data.partition.params.shards_per_node, use fewer nodes or a larger data set",
    )
    perm = rng.permutation(len(labels))  # random order within each label
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, n_nodes * k)
    deal = rng.permutation(n_nodes * k).reshape(n_nodes, k)
    return [np.sort(np.concatenate([pieces[s] for s in row])).astype(np.int64) for row in deal]


class SizesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sizes: list[int] = Field(description="samples per node, one entry per node (length = nodes)")


@PARTITIONERS.register("sizes", params=SizesParams)
def sizes(labels: np.ndarray, n_nodes: int, params: SizesParams, rng: np.random.Generator) -> list[np.ndarray]:
    """Explicit per-node sizes, iid otherwise; samples beyond ``sum(sizes)`` are left unused."""
    want = params.sizes
    if len(want) != n_nodes:
        raise DataError(
            f"data.partition.params.sizes has {len(want)} entries but nodes={n_nodes}; give one size per node"
        )
    bad = [s for s in want if s < 1]
    if bad:
        raise DataError(f"data.partition.params.sizes must all be at least 1, got {bad}; give every node a sample")
    if sum(want) > len(labels):
        raise DataError(
            f"data.partition.params.sizes sum to {sum(want)} but the pool has {len(labels)} samples; "
            "lower the sizes (or data.auxiliary_fraction), or use a larger data set"
        )
    perm = rng.permutation(len(labels))
    cuts = np.cumsum(want)[:-1]
    return [np.sort(p).astype(np.int64) for p in np.split(perm[: sum(want)], cuts)]


def partition(labels: np.ndarray, n_nodes: int, spec: Spec, rng: np.random.Generator) -> list[np.ndarray]:
    """Run the partitioner named by ``spec``; check the result is disjoint and gives every node a sample."""
    entry = PARTITIONERS.get(spec.name, "data.partition.name")
    params = entry.parse_params(spec.params, "data.partition.params")
    labels = np.asarray(labels)
    parts = entry.obj(labels, n_nodes, params, rng)
    if len(parts) != n_nodes:
        raise RuntimeError(f"partitioner {spec.name!r} returned {len(parts)} parts for {n_nodes} nodes")
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(
            f"data.partition {spec.name!r} left node(s) {empty[:10]} without samples ({len(labels)} samples, "
            f"nodes={n_nodes}); use fewer nodes, a larger data set, or change data.partition"
        )
    flat = np.concatenate(parts)
    if len(np.unique(flat)) != len(flat) or (len(flat) and (flat.min() < 0 or flat.max() >= len(labels))):
        raise RuntimeError(f"partitioner {spec.name!r} returned overlapping or out-of-range indices")
    return parts
