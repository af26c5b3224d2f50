"""The engine contract: the few bulk operations ``Federation`` needs from wherever participants live."""

from __future__ import annotations

import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

from dfl.errors import ParticipantError
from dfl.federation.population import Population
from dfl.mixing import gossip_rows

R = TypeVar("R")


Mix = tuple[list[torch.Tensor | None], Any] | None  # a wake's states to mix (None: the node's own) and weights


class NodeHost(Protocol):
    """What hosts nodes for ``mode: async``: an :class:`Engine`, or a Ray actor's shard."""

    def node_states(self, ids: list[int]) -> torch.Tensor: ...
    def set_node_states(self, ids: list[int], states: torch.Tensor) -> None: ...
    def train_nodes(self, ids: list[int], iterations: list[int]) -> list[dict[str, float]]: ...


def wake_nodes(host: NodeHost, ids: list[int], iterations: list[int],
               mixes: list[Mix]) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Wake nodes ``ids`` of ``host`` together: node ``ids[k]`` loads the mix ``mixes[k]`` of its own
    state and the given ones (:func:`dfl.mixing.gossip_rows`; ``None``: it mixes nothing), then trains
    its iteration ``iterations[k]``. Returns the per-node stats and the trained states (copies)."""
    if any(m is not None for m in mixes):
        host.set_node_states(ids, mixed(host.node_states(ids), mixes))
    stats = host.train_nodes(ids, iterations)
    return stats, host.node_states(ids)


def mixed(current: torch.Tensor, mixes: list[Mix]) -> torch.Tensor:
    """Row ``k`` of ``current`` mixed by ``mixes[k]`` (:func:`dfl.mixing.gossip_rows`, the given states on
    the rows' device); a row without a mix comes back as it is (times 1)."""
    return gossip_rows([[row] if m is None else [row if x is None else x.to(row.device) for x in m[0]]
                        for row, m in zip(current, mixes, strict=True)],
                       [[1.0] if m is None else m[1] for m in mixes])


def guarded(what: str, node: int, round_idx: int | None, fn: Callable[[], R]) -> R:
    """Run ``fn``; an exception becomes a ``ParticipantError`` naming the node, the round and where it came from."""
    try:
        return fn()
    except ParticipantError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the node and round attached
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        when = f" in round {round_idx + 1}" if round_idx is not None else ""
        raise ParticipantError(
            f"participant {node} failed while {what}{when}: {type(exc).__name__}: {exc} "
            f"(at {frame.filename}:{frame.lineno})"
        ) from exc


def default_threads(cfg_threads: int | str | None, parallel_kernels: bool = False) -> int:
    """Torch intra-op threads per worker: ``engine.threads``, 1 by default; ``auto``: the CPUs this process
    may use where the engine's kernels are large enough to share (``parallel_kernels``: the batched
    engine), else 1 (a small model per participant only waits on more threads: 19x slower with 2 on
    the overhead-bound FedAvg benchmark).

    Part of the numerics, not only of the speed: CPU convolution kernels split their reductions by
    thread count, so two engines give bit-identical metrics only with the same value (``auto`` on the
    batched engine follows the machine's cores).
    """
    if cfg_threads == "auto":
        return available_cpus() if parallel_kernels else 1
    return int(cfg_threads or 1)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Engine(ABC):
    """Hosts the participants of a population and runs bulk operations on them, node ids ``0..n-1``.

    ``checkpoints``: whether ``snapshot``/``restore`` work (the round loop checkpoints only then).
    """

    checkpoints: ClassVar[bool] = True
    parallel_kernels: ClassVar[bool] = False  # large kernels that more threads speed up (engine.threads: auto)

    def __init__(self, population: Population) -> None:
        self.population = population
        self.n = population.cfg.nodes
        # The driver computes too (attacks, evaluation of shared states, metrics): with the workers' thread
        # count on every engine, so its reductions match whichever engine hosts the participants.
        self._driver_threads = torch.get_num_threads()
        self.threads = default_threads(population.cfg.engine.threads, self.parallel_kernels)
        torch.set_num_threads(self.threads)

    @abstractmethod
    def train(self, round_idx: int) -> list[dict[str, float]]:
        """Local training of every node; per-node stats in node order."""

    @abstractmethod
    def share(self) -> torch.Tensor:
        """The states the nodes send their neighbours this round, ``(n_nodes, n_params)``."""

    @abstractmethod
    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        """Each node i loads ``sum_j W_ij shared_j``; returns the new states ``(n_nodes, n_params)``."""

    @abstractmethod
    def evaluate(self, splits: list[str], round_idx: int | None = None) -> list[dict[str, float]]:
        """Per node, ``{f"{split}_acc", f"{split}_loss"}`` for each split."""

    @abstractmethod
    def snapshot(self) -> list[dict[str, Any]]:
        """Per-node checkpoint state."""

    @abstractmethod
    def restore(self, snaps: list[dict[str, Any]]) -> None: ...

    # ``mode: async`` (dfl.federation.asynchronous) works node by node through these three, and
    # ``wake``, which an engine whose nodes live elsewhere does in one trip.

    def wake(self, ids: list[int], iterations: list[int], mixes: list[Mix]) -> tuple[list[dict[str, float]], torch.Tensor]:
        """:func:`wake_nodes` on this engine."""
        return wake_nodes(self, ids, iterations, mixes)

    def node_states(self, ids: list[int]) -> torch.Tensor:
        """The current states of nodes ``ids``, ``(len(ids), n_params)`` (copies)."""
        raise NotImplementedError(f"{type(self).__name__} does not run mode: async")

    def set_node_states(self, ids: list[int], states: torch.Tensor) -> None:
        """Load ``states[k]`` into node ``ids[k]``."""
        raise NotImplementedError(f"{type(self).__name__} does not run mode: async")

    def train_nodes(self, ids: list[int], iterations: list[int]) -> list[dict[str, float]]:
        """One local budget of each node ``ids[k]``, with the batches and streams of its iteration
        ``iterations[k]`` (what ``train(round_idx)`` gives round ``round_idx``); per-node stats."""
        raise NotImplementedError(f"{type(self).__name__} does not run mode: async")

    def recover(self, fault: Exception) -> None:
        """Replace the workers lost in ``fault``; the caller then restores every node from a checkpoint."""
        raise fault

    def close(self) -> None:
        """Release processes or devices; subclasses call this last (it restores the driver's threads)."""
        torch.set_num_threads(self._driver_threads)
