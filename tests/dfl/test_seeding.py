"""dfl.seeding: the one table of stream tags."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfl.seeding as seeding

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ["TOPOLOGY", "LINK_FAILURE", "ATTACKER_PLACEMENT", "MODEL_INIT", "LOCAL_TRAIN", "EVAL_SUBSET", "QUERY",
           "TRAIN_DEFENSE", "SHARE_NOISE", "ADVERSARY_VIEW", "MIA_SAMPLE", "DP_AUDIT", "EVASION", "REFERENCE", "INVERSION", "SEARCH", "ASYNC_SCHEDULE",
           "MEMGUARD_FIT"]


def test_stream_tags_are_distinct() -> None:
    """Two generator paths never share a first tag (AUGMIXCLOAK_TUNE seeds through derive_seed, not a path)."""
    values = [getattr(seeding, name) for name in STREAMS]
    assert len(set(values)) == len(values)
    assert seeding.derive_seed(7, seeding.AUGMIXCLOAK_TUNE, 0) != int(
        seeding.numpy_rng(7, seeding.ADVERSARY_VIEW, 0).integers(2**62))


def test_no_module_defines_a_tag_of_its_own() -> None:
    """Stream tags live in dfl/seeding.py only: no other module assigns an upper-case name that it then
    passes to derive_seed / torch_generator / numpy_rng."""
    offenders = []
    for pkg in ("dfl", "topologies", "defenses", "attacks"):
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name == "seeding.py":
                continue
            tree = ast.parse(f.read_text(encoding="utf-8"))
            consts = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                      if isinstance(t, ast.Name) and t.id.isupper() and isinstance(n.value, ast.Constant)
                      and isinstance(n.value.value, int)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                        "derive_seed", "torch_generator", "numpy_rng"):
                    used = {a.id for a in node.args if isinstance(a, ast.Name)}
                    offenders += [f"{f.relative_to(ROOT)}: {name}" for name in used & consts]
    assert offenders == []


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tags=st.lists(st.integers(0, 2**32 - 1), max_size=6),
       column=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5), at=st.integers(0, 6))
def test_derive_seeds_is_derive_seed_for_every_path(seed: int, tags: list[int], column: list[int], at: int) -> None:
    """The vectorised SeedSequence against numpy's, with the varying tag at any position and paths shorter
    and longer than the 4-word pool."""
    at = min(at, len(tags))
    paths = [[*tags[:at], c, *tags[at:]] for c in column]
    assert seeding.derive_seeds(seed, *tags[:at], np.array(column, dtype=np.int64), *tags[at:]) == [
        seeding.derive_seed(seed, *p) for p in paths]
    assert seeding.derive_seeds(seed, *tags) == [seeding.derive_seed(seed, *tags)]


def test_derive_seeds_takes_numpy_itself_beyond_32_bits() -> None:
    big = [2**32, 2**40 + 3]
    assert seeding.derive_seeds(2**33, 1, np.array([0, 5])) == [seeding.derive_seed(2**33, 1, v) for v in (0, 5)]
    assert seeding.derive_seeds(0, np.array(big, dtype=np.uint64)) == [seeding.derive_seed(0, v) for v in big]
    with pytest.raises(ValueError, match="one length"):
        seeding.derive_seeds(0, np.arange(2), np.arange(3))
