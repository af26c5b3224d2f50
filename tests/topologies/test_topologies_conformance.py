"""Conformance of every registered topology: defaults, config, ``dfl-sim list`` and untouched inputs.

One parametrised test per property over ``TOPOLOGIES.names()``, so a topology added later (built in or
from an entry-point plugin) is checked without touching this file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
from conformance import check_defaults, check_listed, defaults_fail, list_rows
from conftest import TINY

from dfl.experiment import parse_config
from dfl.plugins import load_plugins
from dfl.registries import TOPOLOGIES

load_plugins()

NODES = 9  # the smallest torus (3 x 3); every example below is a connected graph on 9 nodes
EDGE_LIST = "ring9.edges"  # written into the working directory of each test (see _in_tmp)

# Topologies whose params have a field without a default, with the smallest params that validate. A
# topology missing from this list must validate with ``params: {}``; a new one that does not fails below.
REQUIRED: dict[str, dict[str, Any]] = {
    "edges": {"edges": [[i, (i + 1) % NODES] for i in range(NODES)]},  # the graph itself
    "erdos_renyi": {"p": 1.0},  # the edge probability
    "from_file": {"path": EDGE_LIST},  # the file to read
    "grid": {"rows": 3},  # the lattice's shape
    "k_regular": {"k": 4},  # the degree (k = 2 may give two cycles: disconnected)
    "small_world": {"k": 2, "p": 0.0},  # the lattice degree and the rewiring probability
    "torus": {"rows": 3},  # the lattice's shape
}



@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder holding the edge list ``from_file`` reads (a 9-node ring)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / EDGE_LIST).write_text("".join(f"{i} {(i + 1) % NODES}\n" for i in range(NODES)))
    return tmp_path


@pytest.fixture(scope="module")
def listing() -> dict[str, list[str]]:
    return list_rows("topologies")


@pytest.mark.parametrize("name", TOPOLOGIES.names())
def test_default_params_validate(name: str) -> None:
    check_defaults(TOPOLOGIES, REQUIRED, name)


def test_topologies_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in TOPOLOGIES if defaults_fail(e)} == set(REQUIRED)


@pytest.mark.parametrize("name", TOPOLOGIES.names())
def test_config_validates(name: str) -> None:
    raw = copy.deepcopy(TINY)
    raw["nodes"] = NODES
    raw["topology"] = {"name": name, "params": REQUIRED.get(name, {})}
    cfg = parse_config(raw)
    assert cfg.topology.name == name
    assert cfg.topology.params == TOPOLOGIES.get(name).parse_params(REQUIRED.get(name, {})).model_dump(mode="json")


@pytest.mark.parametrize("name", TOPOLOGIES.names())
def test_is_listed(listing: dict[str, list[str]], name: str) -> None:
    check_listed(listing, "topologies", TOPOLOGIES.get(name))


@pytest.mark.parametrize("name", TOPOLOGIES.names())
def test_builder_leaves_its_params_and_files_unchanged(name: str, _in_tmp: Path) -> None:
    entry = TOPOLOGIES.get(name)
    params = entry.parse_params(copy.deepcopy(REQUIRED.get(name, {})))
    before = copy.deepcopy(params.model_dump())
    file_before = (_in_tmp / EDGE_LIST).read_bytes()
    graph = entry.obj(NODES, params, np.random.default_rng(0))
    assert isinstance(graph, nx.Graph) and sorted(graph.nodes) == list(range(NODES))
    assert params.model_dump() == before
    assert (_in_tmp / EDGE_LIST).read_bytes() == file_before
    again = entry.obj(NODES, params, np.random.default_rng(0))
    graph.add_edge(0, NODES + 1)  # the caller owns what it gets: a second build must not see this
    assert NODES + 1 not in again
