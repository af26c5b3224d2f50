"""The plugin families of dfl-sim, one ``Registry`` each.

Core entries (datasets, partitioners, models) register from ``dfl``; topologies, aggregators,
gossip protocols (``mode: async``), defenses and attacks register from their plugin packages, loaded by :func:`dfl.plugins.load_plugins`.
"""

from __future__ import annotations

from typing import Any

from dfl.registry import Registry

DATASETS: Registry[Any] = Registry("dataset")
PARTITIONERS: Registry[Any] = Registry("partitioner")
MODELS: Registry[Any] = Registry("model")
TOPOLOGIES: Registry[Any] = Registry("topology", "topologies")
AGGREGATORS: Registry[Any] = Registry("aggregator")
PROTOCOLS: Registry[Any] = Registry("protocol")
DEFENSES: Registry[Any] = Registry("defense")
ATTACKS: Registry[Any] = Registry("attack")

FAMILIES: dict[str, Registry[Any]] = {
    "datasets": DATASETS,
    "partitioners": PARTITIONERS,
    "models": MODELS,
    "topologies": TOPOLOGIES,
    "aggregators": AGGREGATORS,
    "protocols": PROTOCOLS,
    "attacks": ATTACKS,
    "defenses": DEFENSES,
}
