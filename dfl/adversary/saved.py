"""Train once, attack many: the shared and start states of attacked rounds, kept for replays.

With ``output.save_shared: true`` a :class:`StateSaver` observer writes, for every round in which an
attack of the config is scheduled (every round when the config has none), the states the nodes shared
and the states they started the round from, as exact float32, to ``shared/round-NNNN.npz`` (arrays
``shared`` and ``starts``, ``(n_nodes, n_state)``; read with ``np.load(..., allow_pickle=False)``).
``dfl-sim attack RUN_DIR`` (:func:`dfl.runner.attack`) hands them to the attacks of another
``attacks`` list, with the graph of each round rebuilt from the config, so the attacks see exactly what
they would have seen in the live run and write the same records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from dfl.attack import scheduled
from dfl.config import ExperimentConfig

SHARED = "shared"


def saved_rounds(cfg: ExperimentConfig) -> list[int]:
    """The 1-based rounds whose states ``output.save_shared`` keeps: those in which an attack of ``cfg`` runs,
    or every round when it has none."""
    if not cfg.attacks:
        return list(range(1, cfg.rounds + 1))
    return [r for r in range(1, cfg.rounds + 1) if any(scheduled(spec, r, cfg.rounds) for spec in cfg.attacks)]


def shared_bytes(cfg: ExperimentConfig, n_state: int) -> int:
    """What the kept states take on disk: two ``(n_nodes, n_state)`` float32 arrays per saved round."""
    return len(saved_rounds(cfg)) * 2 * cfg.nodes * n_state * 4


def path(directory: Path, round_no: int) -> Path:
    return directory / f"round-{round_no:04d}.npz"


class StateSaver:
    """A round observer that keeps the shared and start states of :func:`saved_rounds` under ``directory``."""

    def __init__(self, cfg: ExperimentConfig, directory: Path) -> None:
        self.rounds = set(saved_rounds(cfg))
        self.directory = directory

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor,
                heard: Any = None) -> list[Any]:
        r = round_idx + 1
        if r in self.rounds:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = path(self.directory, r)
            tmp = target.with_name(f".{target.name}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, shared=_array(shared), starts=_array(starts))
            os.replace(tmp, target)  # a round's file is whole or absent
        return []


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def load(directory: Path, round_no: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared and start states of 1-based round ``round_no``."""
    with np.load(path(directory, round_no), allow_pickle=False) as z:
        return torch.from_numpy(z["shared"].copy()), torch.from_numpy(z["starts"].copy())


def available(directory: Path) -> list[int]:
    """The 1-based rounds kept under ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("round-*.npz"))
