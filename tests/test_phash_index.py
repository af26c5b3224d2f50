"""The pHash index against a brute-force linear scan."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.phash import hamming
from defenses.phash_index import PHashIndex


def brute(hashes: np.ndarray, labels: np.ndarray, q: np.ndarray, d: int):
    out = []
    for x in q:
        dd = hamming(hashes, x)
        ok = np.flatnonzero(dd <= d)
        if not len(ok):
            out.append((False, -1, -1))
            continue
        best = min(ok, key=lambda i: (dd[i], hashes[i], labels[i]))
        out.append((True, int(labels[best]), int(dd[best])))
    return out


def _flip(h: np.ndarray, rng: np.random.Generator, bits: int) -> np.ndarray:
    out = h.copy()
    for i in range(len(out)):
        for b in rng.choice(64, size=bits, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(int(b))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), d=st.integers(0, 6), flips=st.integers(0, 8))
def test_lookup_equals_a_linear_scan(seed, n, d, flips):
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    labels = rng.integers(0, 10, n)
    members = hashes[rng.integers(0, n, 20)]
    queries = np.concatenate([members, _flip(members, rng, flips), rng.integers(0, 2**63, 20, dtype=np.uint64)])
    m = PHashIndex(hashes, labels).lookup(queries, d)
    assert list(zip(m.found.tolist(), m.label.tolist(), m.distance.tolist(), strict=True)) == brute(hashes, labels, queries, d)


def test_every_indexed_hash_is_found_and_merge_keeps_all():
    rng = np.random.default_rng(0)
    a = PHashIndex(rng.integers(0, 2**63, 500, dtype=np.uint64), rng.integers(0, 10, 500))
    b = PHashIndex(rng.integers(0, 2**63, 300, dtype=np.uint64), rng.integers(0, 10, 300))
    both = PHashIndex.merge([a, b])
    assert len(both) == 800 and np.all(np.diff(both.hashes.astype(np.float64)) >= 0)
    m = both.lookup(np.concatenate([a.hashes, b.hashes]))
    assert m.found.all() and (m.distance == 0).all()
    assert np.array_equal(m.label[:500], a.labels)
