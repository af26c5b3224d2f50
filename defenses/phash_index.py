"""A node's perceptual-hash index: sorted ``uint64`` pHashes with labels, exact and radius-d lookup.

Exact lookup is a binary search (``np.searchsorted``) in the sorted array. Lookup within Hamming
distance ``d`` uses multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space
with Multi-Index Hashing", CVPR 2012): the 64 bits are cut into ``d + 1`` disjoint substrings; by the
pigeonhole principle any hash within distance ``d`` of a query equals it exactly on at least one
substring, so exact binary searches in ``d + 1`` sorted substring tables give every candidate, and
candidates are verified by their full distance. No linear scan over the index.
AugMixCloak (shared/papers/augmixcloak-summary.txt) keeps one of these per node, merged with the
arrays its neighbours send over the topology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses.phash import hamming


@dataclass
class Match:
    """Per query: whether a hash lies within the radius, the nearest one's label and its distance (-1 if none)."""

    found: np.ndarray     # (Q,) bool
    label: np.ndarray     # (Q,) int64, -1 where not found
    distance: np.ndarray  # (Q,) int64, -1 where not found


def _blocks(d: int) -> list[tuple[int, int]]:
    """``d + 1`` (shift, width) bit ranges covering the 64 bits, widths differing by at most one."""
    m = d + 1
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _field(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    return (h >> np.uint64(shift)) & mask


class PHashIndex:
    """Sorted hashes ``(n,)`` uint64 with their labels ``(n,)``."""

    def __init__(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        h = np.asarray(hashes, dtype=np.uint64)
        y = np.asarray(labels, dtype=np.int64)
        if h.shape != y.shape or h.ndim != 1:
            raise ValueError(f"hashes and labels must be (n,) of one length, got {h.shape} and {y.shape}")
        order = np.lexsort((y, h))
        self.hashes, self.labels = h[order], y[order]
        self._tables: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def merge(cls, indices: list[PHashIndex]) -> PHashIndex:
        """One index over several (a node's own and those its neighbours sent)."""
        if not indices:
            return cls(np.empty(0, np.uint64), np.empty(0, np.int64))
        return cls(np.concatenate([i.hashes for i in indices]), np.concatenate([i.labels for i in indices]))

    def _table(self, d: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """Per substring: (shift, width, sorted substring values, positions into ``hashes``)."""
        if d not in self._tables:
            tables = []
            for shift, width in _blocks(d):
                f = _field(self.hashes, shift, width)
                order = np.argsort(f, kind="stable")
                tables.append((shift, width, f[order], order))
            self._tables[d] = tables
        return self._tables[d]

    def lookup(self, queries: np.ndarray, d: int = 0) -> Match:
        """The nearest indexed hash within Hamming distance ``d`` of each query (ties: the lowest hash, then label)."""
        q = np.asarray(queries, dtype=np.uint64).reshape(-1)
        found = np.zeros(len(q), dtype=bool)
        label = np.full(len(q), -1, dtype=np.int64)
        dist = np.full(len(q), -1, dtype=np.int64)
        if len(self) == 0 or len(q) == 0:
            return Match(found, label, dist)
        if d < 0 or d > 63:
            raise ValueError(f"the Hamming radius d must be in [0, 63], got {d}")
        lo = np.searchsorted(self.hashes, q, side="left")
        exact = (lo < len(self)) & (self.hashes[np.minimum(lo, len(self) - 1)] == q)
        found[exact], label[exact], dist[exact] = True, self.labels[lo[exact]], 0
        if d == 0:
            return Match(found, label, dist)
        for k in np.flatnonzero(~exact):
            cand: list[np.ndarray] = []
            for shift, width, values, positions in self._table(d):
                v = _field(q[k : k + 1], shift, width)
                a, b = np.searchsorted(values, v, "left")[0], np.searchsorted(values, v, "right")[0]
                if b > a:
                    cand.append(positions[a:b])
            if not cand:
                continue
            pos = np.unique(np.concatenate(cand))
            dd = hamming(self.hashes[pos], q[k])
            ok = dd <= d
            if ok.any():
                best = pos[ok][np.argmin(dd[ok])]  # positions are sorted by (hash, label): argmin takes the lowest
                found[k], label[k], dist[k] = True, self.labels[best], int(dd[ok].min())
        return Match(found, label, dist)
