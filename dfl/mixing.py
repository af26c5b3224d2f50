"""Mixing matrices and gossip: the math of decentralized aggregation, as pure functions over arrays.

One synchronous round of gossip is ``X <- W @ X`` where ``X`` stacks the nodes' parameter vectors,
``(n_nodes, n_params)``, and ``W`` is an ``(n_nodes, n_nodes)`` row-stochastic mixing matrix whose
support is each node itself plus its neighbours in the round's graph. Rules (Xiao & Boyd, "Fast linear
iterations for distributed averaging", 2004; Boyd et al., "Randomized gossip algorithms", 2006):

- neighbourhood mean:   ``W_ij = 1 / (deg_i + 1)`` for ``j in N(i) + {i}``;
- sample weighted:      ``W_ij = s_j / sum_{k in N(i) + {i}} s_k`` (FedAvg weights over the neighbourhood);
- Metropolis-Hastings:  ``W_ij = 1 / (1 + max(deg_i, deg_j))`` for edges, ``W_ii = 1 - sum_{j != i} W_ij``
  (symmetric and doubly stochastic on any undirected graph, so gossip preserves the mean).

``gossip`` does not call a matrix product: it accumulates each row as ``sum_j W_ij * x_j`` over the
row's nonzero ``j`` in increasing order with elementwise tensor ops, so a node's result depends only on
its row and its neighbours' states -- never on BLAS blocking, thread count, or which process or shard
computes it. A sharded engine that calls ``gossip(states, W[rows])`` gets bit-identical rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------------------------- matrices


def adjacency_matrix(graph: nx.Graph) -> BoolArray:
    """The ``(n, n)`` boolean adjacency of a graph on nodes ``0..n-1``, diagonal False (self loops dropped)."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError(f"graph nodes must be 0..{n - 1}, got {sorted(graph.nodes)[:10]}...")
    adj = np.zeros((n, n), dtype=bool)
    for u, v in graph.edges:
        if u != v:
            adj[u, v] = adj[v, u] = True
    return adj


def _check_adjacency(adjacency: BoolArray) -> BoolArray:
    adj = np.asarray(adjacency, dtype=bool)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be a square (n, n) matrix, got shape {adj.shape}")
    if not np.array_equal(adj, adj.T):
        raise ValueError("adjacency must be symmetric (an undirected graph)")
    adj = adj.copy()
    np.fill_diagonal(adj, False)
    return adj


def neighbourhood_mean_matrix(adjacency: BoolArray) -> FloatArray:
    """Uniform mixing over self and neighbours.

    ``W_ij = 1 / (deg_i + 1)`` for ``j == i`` or ``j in N(i)``, else 0. Row-stochastic; doubly stochastic
    and symmetric exactly when the graph is regular.
    """
    adj = _check_adjacency(adjacency)
    support = adj | np.eye(adj.shape[0], dtype=bool)
    return support / support.sum(axis=1, keepdims=True, dtype=np.float64)


def sample_weighted_matrix(adjacency: BoolArray, sample_counts: npt.ArrayLike) -> FloatArray:
    """Mixing over self and neighbours weighted by each node's train sample count (FedAvg per neighbourhood).

    ``W_ij = s_j / sum_{k in N(i) + {i}} s_k`` for ``j == i`` or ``j in N(i)``, else 0 (McMahan et al.,
    "Communication-efficient learning of deep networks from decentralized data", 2017, applied to each
    neighbourhood). A neighbourhood whose counts are all 0 falls back to the uniform neighbourhood mean.
    """
    adj = _check_adjacency(adjacency)
    n = adj.shape[0]
    s = np.asarray(sample_counts, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"sample_counts must have shape ({n},), got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sample_counts must be finite and >= 0, got {s.tolist()}")
    support = adj | np.eye(n, dtype=bool)
    raw = support * s[None, :]
    totals = raw.sum(axis=1, keepdims=True)
    empty = totals[:, 0] == 0
    raw[empty] = support[empty]
    totals[empty] = support[empty].sum(axis=1, keepdims=True)
    return raw / totals


def metropolis_hastings_matrix(adjacency: BoolArray) -> FloatArray:
    """Metropolis-Hastings weights: symmetric and doubly stochastic on any undirected graph.

    ``W_ij = 1 / (1 + max(deg_i, deg_j))`` for ``{i, j}`` an edge, ``W_ii = 1 - sum_{j != i} W_ij``
    (Xiao & Boyd 2004; Xiao, Boyd & Lall, "A scheme for robust distributed sensor fusion based on
    average consensus", 2005).
    """
    adj = _check_adjacency(adjacency)
    deg = adj.sum(axis=1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


# ------------------------------------------------------------------------------------------ diagnostics


def is_row_stochastic(W: FloatArray, atol: float = 1e-12) -> bool:
    """Whether ``W`` is nonnegative with every row summing to 1 (within ``atol``)."""
    W = np.asarray(W, dtype=np.float64)
    return bool(W.ndim == 2 and np.all(W >= 0) and np.allclose(W.sum(axis=1), 1.0, rtol=0.0, atol=atol))


def is_doubly_stochastic(W: FloatArray, atol: float = 1e-12) -> bool:
    """Whether ``W`` is square, nonnegative, and its rows and columns each sum to 1 (within ``atol``)."""
    W = np.asarray(W, dtype=np.float64)
    return bool(
        W.ndim == 2
        and W.shape[0] == W.shape[1]
        and is_row_stochastic(W, atol)
        and np.allclose(W.sum(axis=0), 1.0, rtol=0.0, atol=atol)
    )


def check_mixing_matrix(W: FloatArray, adjacency: BoolArray, atol: float = 1e-9) -> None:
    """Raise ``ValueError`` unless ``W`` is ``(n, n)`` row-stochastic with support on self + neighbours."""
    adj = _check_adjacency(adjacency)
    n = adj.shape[0]
    W = np.asarray(W)
    if W.shape != (n, n):
        raise ValueError(f"mixing matrix must have shape ({n}, {n}), got {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("mixing matrix has non-finite entries")
    if not is_row_stochastic(W, atol):
        sums = W.sum(axis=1)
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(
            f"mixing matrix must be nonnegative with rows summing to 1; row {bad} sums to {sums[bad]!r}"
            f" (min entry {W.min()!r})"
        )
    outside = (W != 0) & ~(adj | np.eye(n, dtype=bool))
    if outside.any():
        i, j = (int(x) for x in np.argwhere(outside)[0])
        raise ValueError(f"mixing matrix has weight W[{i}, {j}] = {W[i, j]!r} but {j} is not a neighbour of {i}")


# ----------------------------------------------------------------------------------------------- gossip


def _accumulate(xs: Sequence[torch.Tensor], w: FloatArray, out: torch.Tensor) -> torch.Tensor:
    """``out <- sum_k w[k] * xs[k]`` in order ``k = 0, 1, ...``: one mul and one add per term."""
    with torch.no_grad():  # aggregation is not differentiated; out= ops refuse tensors that need grad
        torch.mul(xs[0], float(w[0]), out=out)
        term = torch.empty_like(out)
        for k in range(1, len(xs)):
            torch.mul(xs[k], float(w[k]), out=term)
            out.add_(term)
    return out


def gossip_row(states_of_neighbours: torch.Tensor, weights: Sequence[float] | FloatArray) -> torch.Tensor:
    """One node's new state ``sum_k weights[k] * states_of_neighbours[k]``, accumulated in the given order.

    ``states_of_neighbours``: ``(k, n_params)``; ``weights``: ``(k,)``; returns ``(n_params,)`` of the
    states' dtype. Each term is ``torch.mul(x_k, w_k)`` then ``out.add_(term)``: two correctly rounded
    elementwise ops (no fused multiply-add, which ATen uses in its vectorised ``add(alpha=)`` kernel but
    not necessarily in the scalar tail), so the result is bitwise independent of thread count, tensor
    chunking and CPU vector width. Weights are rounded to the states' dtype before multiplying.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if states_of_neighbours.ndim != 2 or states_of_neighbours.shape[0] != w.shape[0]:
        raise ValueError(
            f"states_of_neighbours must be (k, n_params) with k = len(weights) = {w.shape[0]},"
            f" got shape {tuple(states_of_neighbours.shape)}"
        )
    if w.shape[0] == 0:
        raise ValueError("gossip_row needs at least one state (the node's own)")
    out = torch.empty_like(states_of_neighbours[0])
    return _accumulate(list(states_of_neighbours), w, out)


def gossip_rows(states: Sequence[Sequence[torch.Tensor]], weights: Sequence[Sequence[float] | FloatArray]) -> torch.Tensor:
    """Many :func:`gossip_row` at once: row ``r`` of the ``(len(states), n_params)`` result is
    ``gossip_row(torch.stack(states[r]), weights[r])``, bit for bit.

    Rows may mix different numbers of states. Term ``k`` of every row that has one is one ``mul`` and
    one ``add`` over those rows together: the same correctly rounded operations on each element, in the
    same order, as row by row, with far fewer calls when many rows mix few states each.
    """
    if len(states) != len(weights) or any(len(s) != len(w) or not len(s) for s, w in zip(states, weights, strict=False)):
        raise ValueError("states and weights must pair up row by row, with at least one state a row")
    first = states[0][0]
    out = torch.empty((len(states), first.numel()), dtype=first.dtype, device=first.device)
    block = max(1, GOSSIP_BLOCK_BYTES // max(1, out[0].nbytes))  # rows whose sum stays in cache across its terms
    with torch.no_grad():
        for lo in range(0, len(states), block):
            _accumulate_rows(states[lo:lo + block], weights[lo:lo + block], out[lo:lo + block])
    return out


def _accumulate_rows(states: Sequence[Sequence[torch.Tensor]], weights: Sequence[Sequence[float] | FloatArray],
                     out: torch.Tensor) -> None:
    """:func:`gossip_rows` of a block of rows into ``out``: term ``k`` of every row that has one at once."""
    for k in range(max(len(s) for s in states)):
        rows = [r for r, s in enumerate(states) if len(s) > k]
        xs = torch.stack([states[r][k] for r in rows])
        w = torch.tensor([float(weights[r][k]) for r in rows], dtype=torch.float64).to(out.device, out.dtype).unsqueeze(1)
        if k == 0:
            torch.mul(xs, w, out=out)
        elif len(rows) == len(states):
            out.add_(xs.mul_(w))
        else:
            index = torch.tensor(rows, device=out.device)
            out.index_copy_(0, index, out.index_select(0, index).add_(xs.mul_(w)))


def gossip(states: torch.Tensor | Mapping[int, torch.Tensor], W: FloatArray) -> torch.Tensor:
    """One round of gossip ``X <- W @ X``, row by row over each row's nonzero weights in increasing ``j``.

    ``states``: ``(n_nodes, n_params)``, or a mapping ``j -> (n_params,)`` holding at least the states the
    rows of ``W`` need (a shard that received only its neighbours' states); ``W``: ``(n_rows, n_nodes)`` --
    the full ``(n, n)`` mixing matrix, or a block of its rows for a shard. Returns ``(n_rows, n_params)``
    with row ``r`` equal to ``gossip_row(states[J], W[r, J])`` for ``J`` the sorted nonzero columns of row
    ``r``; so the result for a node is bit-identical however the rows are split across shards, threads or
    processes.
    """
    W = np.asarray(W, dtype=np.float64)
    if isinstance(states, torch.Tensor):
        if W.ndim != 2 or states.ndim != 2 or W.shape[1] != states.shape[0]:
            raise ValueError(
                f"W must be (n_rows, n_nodes) and states (n_nodes, n_params) with matching n_nodes,"
                f" got W {W.shape} and states {tuple(states.shape)}"
            )
        like = states[0]
    else:
        if W.ndim != 2 or not states:
            raise ValueError(f"W must be (n_rows, n_nodes) and states a non-empty mapping, got W {W.shape}")
        like = next(iter(states.values()))
    out = torch.empty((W.shape[0], like.shape[0]), dtype=like.dtype, device=like.device)
    for r in range(W.shape[0]):
        cols = np.flatnonzero(W[r])
        if cols.size == 0:
            out[r].zero_()
        else:
            _accumulate([states[int(j)] for j in cols], W[r, cols], out[r])
    return out


def consensus_distance(states: torch.Tensor) -> float:
    """Mean distance of the nodes' states to their average (0 at consensus).

    ``d(X) = (1/n) sum_i || x_i - x_bar ||_2`` with ``x_bar = (1/n) sum_j x_j``, ``X``: ``(n_nodes,
    n_params)``; computed in float64, ``x_bar`` as the sum of :data:`CONSENSUS_ROWS`-row block sums.
    Non-increasing under gossip with a doubly stochastic ``W``:
    ``sum_i ||sum_j W_ij (x_j - x_bar)|| <= sum_j (sum_i W_ij) ||x_j - x_bar||`` and ``x_bar`` is unchanged.
    """
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"states must be (n_nodes, n_params) with n_nodes >= 1, got {tuple(states.shape)}")
    # In float64 pieces of at most CONSENSUS_BLOCK_BYTES, read row by row (a column slice of every row
    # would touch every row's memory pages for each slice: seconds at thousands of nodes). The mean is
    # the sum of CONSENSUS_ROWS-row block sums, accumulated in row order; each column of a block is
    # reduced as over the whole block whatever the width of the piece it is in. So the result depends on
    # CONSENSUS_ROWS (a constant) and not on the memory budget: bit-identical at any block size (tested).
    x, (n, p) = states.detach(), states.shape
    total = torch.zeros(p, dtype=torch.float64)
    cols = max(1, CONSENSUS_BLOCK_BYTES // (8 * CONSENSUS_ROWS))
    for r in range(0, n, CONSENSUS_ROWS):
        for c in range(0, p, cols):
            total[c : c + cols] += x[r : r + CONSENSUS_ROWS, c : c + cols].to("cpu", torch.float64).sum(dim=0)
    mean = total / n
    rows = max(1, CONSENSUS_BLOCK_BYTES // (8 * max(p, 1)))
    norms = [torch.linalg.vector_norm(x[r : r + rows].to("cpu", torch.float64) - mean, dim=1) for r in range(0, n, rows)]
    return float(torch.cat(norms).mean().item())


CONSENSUS_BLOCK_BYTES = 1 << 22  # small enough that the float64 temporaries stay in cache (bit-identical at any size)
CONSENSUS_ROWS = 64  # the mean's row blocks: part of the metric's arithmetic (changing it changes last bits)


GOSSIP_BLOCK_BYTES = 1 << 22  # gossip_stacked's rows per block: a block's output and scratch stay in cache
GOSSIP_MIN_RUN = 16  # runs of at least this many rows with consecutive columns are read in place, not gathered


class GossipPlan:
    """A mixing matrix's nonzero weights laid out for :func:`gossip_stacked`, computed once per matrix.

    Row ``i``'s nonzero weights, in increasing column order, are slots ``k = 0, 1, ...``; slot ``k``
    holds every row that has a ``k``-th nonzero weight (rows increasing), its column and its weight.
    Within a slot, a run of at least :data:`GOSSIP_MIN_RUN` consecutive rows whose columns are
    consecutive too (a ring's or a torus's neighbours) is a slice of the states, read in place; the rest
    is gathered. Finding them scans the dense ``(n_rows, n_nodes)`` matrix, which at thousands of nodes
    costs more than the gossip itself: an engine keeps the plan while the matrix stays the same.
    """

    def __init__(self, W: FloatArray) -> None:
        W = np.asarray(W, dtype=np.float64)
        if W.ndim != 2:
            raise ValueError(f"W must be (n_rows, n_nodes), got shape {W.shape}")
        self.shape: tuple[int, int] = (int(W.shape[0]), int(W.shape[1]))
        rows, cols = np.nonzero(W)  # row-major: each row's columns in increasing order
        counts = np.bincount(rows, minlength=W.shape[0])
        self.complete = bool(len(counts) == 0 or counts.min() > 0)  # every row has a weight
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.slots: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # per slot: starts and ends of the runs read in place
        for k in range(int(counts.max()) if len(counts) else 0):
            pick = slot == k
            r, c = rows[pick], cols[pick]
            self.slots.append((r, c, W[r, c]))
            step = (np.diff(r) == 1) & (np.diff(c) == 1)
            breaks = np.flatnonzero(~step) + 1
            starts, ends = np.r_[0, breaks], np.r_[breaks, len(r)]
            long = ends - starts >= GOSSIP_MIN_RUN
            self.runs.append((starts[long], ends[long]))


def gossip_stacked(states: torch.Tensor, W: FloatArray | GossipPlan, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`gossip` for all nodes at once, bit-identical to it: ``(n_nodes, n_params) -> (n_rows, n_params)``.

    ``W``: the mixing matrix, or its :class:`GossipPlan` (which an engine keeps while ``W`` is unchanged).
    For each slot of the plan, each row takes one multiply by its weight and (after the first slot) one
    add, so each row sees exactly :func:`gossip_row`'s operations in its order, in a few tensor
    operations per block of rows where :func:`gossip` makes a few per node (what the batched engine needs
    for thousands of nodes). Blocks of rows stay under :data:`GOSSIP_BLOCK_BYTES`, so the block's output
    stays in cache across slots and memory is read about once per neighbour.
    ``out``: a ``(n_rows, n_params)`` tensor to write into (not ``states``), or ``None`` for a new one.
    """
    plan = W if isinstance(W, GossipPlan) else GossipPlan(W)
    n_rows, n_nodes = plan.shape
    if states.ndim != 2 or n_nodes != states.shape[0]:
        raise ValueError(f"W must be (n_rows, n_nodes) and states (n_nodes, n_params) with matching n_nodes,"
                         f" got W {plan.shape} and states {tuple(states.shape)}")
    if out is None:
        out = torch.empty((n_rows, states.shape[1]), dtype=states.dtype, device=states.device)
    elif out.shape != (n_rows, states.shape[1]) or out.data_ptr() == states.data_ptr():
        raise ValueError(f"out must be a ({n_rows}, {states.shape[1]}) tensor other than states")
    if not plan.complete:
        out.zero_()  # rows without a nonzero weight stay 0, as in gossip
    block = max(1, GOSSIP_BLOCK_BYTES // max(1, states.shape[1] * states.element_size()))
    weights = [torch.from_numpy(w).to(states.dtype).to(states.device)[:, None] for _, _, w in plan.slots]
    with torch.no_grad():
        term = torch.empty((min(block, n_rows), states.shape[1]), dtype=states.dtype, device=states.device)
        for r0 in range(0, n_rows, block):
            r1 = min(r0 + block, n_rows)
            for k in range(len(plan.slots)):
                _gossip_slot(states, plan, k, weights[k], r0, r1, out, term)
    return out


def _gossip_slot(states: torch.Tensor, plan: GossipPlan, k: int, weights: torch.Tensor, r0: int, r1: int,
                 out: torch.Tensor, term: torch.Tensor) -> None:
    """Slot ``k`` of rows ``r0..r1-1`` into ``out``: ``out[i] = w x_j`` for the first slot, else
    ``out[i] += w x_j`` (the product rounded first, as in :func:`gossip_row`); ``term``: scratch rows.
    ``weights``: the slot's weights in the states' dtype (rounded as ``torch.mul(x, float(w))`` rounds)."""
    rows, cols, _ = plan.slots[k]
    a, b = (int(i) for i in np.searchsorted(rows, (r0, r1)))
    if a == b:
        return
    starts, ends = plan.runs[k]
    gathered, at = [], a
    for j in range(int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(starts, b))):
        s0, s1 = max(int(starts[j]), a), min(int(ends[j]), b)  # a run that overlaps [a, b): read in place
        gathered.append((at, s0))
        at = s1
        x, i = states[int(cols[s0]) : int(cols[s0]) + s1 - s0], int(rows[s0])
        if k == 0:
            torch.mul(x, weights[s0:s1], out=out[i : i + s1 - s0])
        else:
            out[i : i + s1 - s0].add_(torch.mul(x, weights[s0:s1], out=term[: s1 - s0]))
    gathered.append((at, b))
    for g0, g1 in gathered:
        if g0 >= g1:
            continue
        c = torch.from_numpy(cols[g0:g1]).to(states.device)
        x = torch.index_select(states, 0, c, out=term[: g1 - g0])
        r = rows[g0:g1]
        target: torch.Tensor | slice = (slice(int(r[0]), int(r[-1]) + 1) if r[-1] - r[0] == g1 - g0 - 1
                                        else torch.from_numpy(r).to(states.device))
        if k == 0 and isinstance(target, slice):
            torch.mul(x, weights[g0:g1], out=out[target])
        elif k == 0:
            out[target] = x.mul_(weights[g0:g1])
        elif isinstance(target, slice):
            out[target].add_(x.mul_(weights[g0:g1]))
        else:
            out[target] += x.mul_(weights[g0:g1])
