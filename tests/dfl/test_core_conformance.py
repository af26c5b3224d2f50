"""Conformance of every registered data set, partitioner, model and aggregator.

One parametrised test per property over ``REGISTRY.names()``, so an entry added later (built in or from
an entry-point plugin) is checked without touching this file: its defaults validate, a tiny config
using it validates, ``dfl-sim list`` shows it, and calling it leaves its inputs as they were.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from conformance import check_defaults, check_listed, defaults_fail, list_rows
from conftest import TINY

from dfl.errors import DataError
from dfl.experiment import parse_config
from dfl.plugins import load_plugins
from dfl.registries import AGGREGATORS, DATASETS, MODELS, PARTITIONERS

load_plugins()

# Entries whose params have a field without a default, with the smallest params that validate. An entry
# missing from these lists must validate with ``params: {}``; a new entry that does not fails below.
DATASET_REQUIRED: dict[str, dict[str, Any]] = {
    "imagefolder": {"path": "images"},  # the folder or archive to read: there is nothing to default to
}
PARTITIONER_REQUIRED: dict[str, dict[str, Any]] = {
    "sizes": {"sizes": [40, 40, 40, 40]},  # one size per node (TINY has 4 nodes): no default length exists
}
MODEL_REQUIRED: dict[str, dict[str, Any]] = {}
AGGREGATOR_REQUIRED: dict[str, dict[str, Any]] = {}



@pytest.fixture(scope="module")
def listing() -> dict[str, dict[str, list[str]]]:
    """``dfl-sim list FAMILY`` per family, run in-process on a terminal wide enough that no cell wraps."""
    return {family: list_rows(family) for family in ("datasets", "partitioners", "models", "aggregators")}


def _config(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    return raw


# --------------------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_default_params_validate(name: str) -> None:
    check_defaults(DATASETS, DATASET_REQUIRED, name)


def test_datasets_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in DATASETS if defaults_fail(e)} == set(DATASET_REQUIRED)


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_config_validates(name: str) -> None:
    """Validation reads no data, so the sets kept on disk (torchvision, imagefolder) validate without files."""
    params = DATASET_REQUIRED.get(name, {})
    cfg = parse_config(_config(**{"data.dataset": {"name": name, "params": params}}))
    assert cfg.data.dataset.name == name
    assert cfg.data.dataset.params == DATASETS.get(name).parse_params(params).model_dump(mode="json")


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_is_listed(listing, name: str) -> None:
    check_listed(listing["datasets"], "datasets", DATASETS.get(name))


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_loads_or_reports_missing_files(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an empty data root a source either generates its data or says what is missing with a ``DataError``."""
    monkeypatch.setenv("DFL_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DFL_SIM_DATA", str(tmp_path / "empty-root"))
    entry = DATASETS.get(name)
    source = entry.obj(entry.parse_params(DATASET_REQUIRED.get(name, {})), tmp_path / "empty-root")
    try:
        source.locate()
    except DataError as exc:
        assert str(exc).strip()
        with pytest.raises(DataError):
            source.load()
        return
    data = source.load()
    k = len(data.classes)
    assert k >= 2
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y) > 0
        assert y.min() >= 0 and y.max() < k
    assert data.x_train.shape[1:] == data.x_test.shape[1:]


# ----------------------------------------------------------------------------------------- partitioners


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_default_params_validate(name: str) -> None:
    check_defaults(PARTITIONERS, PARTITIONER_REQUIRED, name)


def test_partitioners_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in PARTITIONERS if defaults_fail(e)} == set(PARTITIONER_REQUIRED)


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_config_validates(name: str) -> None:
    params = PARTITIONER_REQUIRED.get(name, {})
    cfg = parse_config(_config(**{"data.partition": {"name": name, "params": params}}))
    assert cfg.data.partition.name == name
    assert cfg.data.partition.params == PARTITIONERS.get(name).parse_params(params).model_dump(mode="json")


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_is_listed(listing, name: str) -> None:
    check_listed(listing["partitioners"], "partitioners", PARTITIONERS.get(name))


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_deals_disjoint_indices_and_leaves_the_labels(name: str) -> None:
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(4), 60))
    before = labels.copy()
    entry = PARTITIONERS.get(name)
    parts = entry.obj(labels, 4, entry.parse_params(PARTITIONER_REQUIRED.get(name, {})), np.random.default_rng(0))
    np.testing.assert_array_equal(labels, before)
    assert len(parts) == 4
    flat = np.concatenate([np.asarray(p) for p in parts])
    assert np.issubdtype(flat.dtype, np.integer)
    assert len(np.unique(flat)) == len(flat), "a sample was dealt to two nodes"
    assert flat.min() >= 0 and flat.max() < len(labels)


# ----------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODELS.names())
def test_model_default_params_validate(name: str) -> None:
    check_defaults(MODELS, MODEL_REQUIRED, name)


def test_models_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in MODELS if defaults_fail(e)} == set(MODEL_REQUIRED)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_config_validates(name: str) -> None:
    params = MODEL_REQUIRED.get(name, {})
    cfg = parse_config(_config(model={"name": name, "params": params}))
    assert cfg.model.name == name
    assert cfg.model.params == MODELS.get(name).parse_params(params).model_dump(mode="json")


@pytest.mark.parametrize("name", MODELS.names())
def test_model_is_listed(listing, name: str) -> None:
    check_listed(listing["models"], "models", MODELS.get(name))


@pytest.mark.parametrize("name", MODELS.names())
def test_model_leaves_its_input_batch_unchanged(name: str) -> None:
    """A forward pass in training mode (where in-place activations would bite) gives logits and keeps ``x``."""
    entry = MODELS.get(name)
    torch.manual_seed(0)
    model = entry.obj((3, 32, 32), 5, entry.parse_params(MODEL_REQUIRED.get(name, {})))
    x = torch.randn(2, 3, 32, 32)
    before = x.clone()
    model.train()
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert torch.equal(x, before)


# ------------------------------------------------------------------------------------------ aggregators


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_default_params_validate(name: str) -> None:
    check_defaults(AGGREGATORS, AGGREGATOR_REQUIRED, name)


def test_aggregators_needing_params_are_the_listed_ones() -> None:
    assert {e.name for e in AGGREGATORS if defaults_fail(e)} == set(AGGREGATOR_REQUIRED)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_config_validates(name: str) -> None:
    params = AGGREGATOR_REQUIRED.get(name, {})
    cfg = parse_config(_config(aggregator={"name": name, "params": params}))
    assert cfg.aggregator.name == name
    assert cfg.aggregator.params == AGGREGATORS.get(name).parse_params(params).model_dump(mode="json")


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_is_listed(listing, name: str) -> None:
    check_listed(listing["aggregators"], "aggregators", AGGREGATORS.get(name))


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_leaves_graph_and_sample_counts_unchanged(name: str) -> None:
    graph = nx.cycle_graph(6)
    graph.add_edge(0, 3)
    nx.set_node_attributes(graph, {i: f"node-{i}" for i in graph}, "label")
    graph_before = copy.deepcopy(graph)
    counts = np.array([30, 0, 12, 7, 55, 1])
    counts_before = counts.copy()
    entry = AGGREGATORS.get(name)
    w = entry.obj(graph, counts, entry.parse_params(AGGREGATOR_REQUIRED.get(name, {})))
    assert np.asarray(w).shape == (6, 6)
    np.testing.assert_array_equal(counts, counts_before)
    assert counts.dtype == counts_before.dtype
    assert nx.utils.graphs_equal(graph, graph_before)
    assert list(graph.nodes) == list(graph_before.nodes) and list(graph.edges) == list(graph_before.edges)
