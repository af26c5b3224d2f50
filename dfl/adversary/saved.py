"""Train once, attack many: the shared and start states of attacked rounds, kept for replays.

With ``output.save_shared: true`` a :class:`StateSaver` observer writes, for every round in which an
attack of the config is scheduled (every round when the config has none), the states the nodes shared
and the states they started the round from, as exact float32, to ``shared/round-NNNN.npz`` (arrays
``shared`` and ``starts``, ``(n_nodes, n_state)``; read with ``np.load(..., allow_pickle=False)``).
``dfl-sim attack RUN_DIR`` (:func:`dfl.runner.attack`) hands them to the attacks of another
``attacks`` list, with the graph of each round rebuilt from the config, so the attacks see exactly what
they would have seen in the live run and write the same records.

In ``mode: async`` a round's file also keeps, per attacker ``a``, the newest message it heard from each
sender (what its attacks attack): ``heard_a_senders``, ``_times``, ``_iterations``, ``_states``, the
states the senders began those iterations from (``_starts``) and the messages heard before them
(``_previous``, with ``_has_previous``); the live run keeps the starts for that (``needs_starts``).
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
from dfl.federation.asynchronous import Message

SHARED = "shared"


def saved_rounds(cfg: ExperimentConfig) -> list[int]:
    """The 1-based rounds whose states ``output.save_shared`` keeps: those in which an attack of ``cfg`` runs,
    or every round when it has none."""
    if not cfg.attacks:
        return list(range(1, cfg.rounds + 1))
    return [r for r in range(1, cfg.rounds + 1) if any(scheduled(spec, r, cfg.rounds) for spec in cfg.attacks)]


def shared_bytes(cfg: ExperimentConfig, n_state: int, graph: nx.Graph | None = None) -> int:
    """What the kept states take on disk: two ``(n_nodes, n_state)`` float32 arrays per saved round, and in
    ``mode: async`` (given the graph) at most three states per attacker and neighbour."""
    heard = 3 * sum(graph.degree(a) for a in cfg.attacker_ids) if graph is not None and cfg.mode == "async" else 0
    return len(saved_rounds(cfg)) * (2 * cfg.nodes + heard) * n_state * 4


def path(directory: Path, round_no: int) -> Path:
    return directory / f"round-{round_no:04d}.npz"


class StateSaver:
    """A round observer that keeps the shared and start states of :func:`saved_rounds` under ``directory``."""

    def __init__(self, cfg: ExperimentConfig, directory: Path) -> None:
        self.rounds = set(saved_rounds(cfg))
        self.directory = directory
        self.attackers = cfg.attacker_ids
        self.needs_starts = cfg.mode == "async"  # a replayed inversion needs the heard messages' starts

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor,
                heard: list[dict[int, Message]] | None = None) -> list[Any]:
        r = round_idx + 1
        if r in self.rounds:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = path(self.directory, r)
            tmp = target.with_name(f".{target.name}.tmp")
            arrays = {"shared": _array(shared), "starts": _array(starts)}
            for a in self.attackers if heard is not None else []:
                arrays.update(_heard(a, heard[a], shared.shape[1]))  # type: ignore[index]
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, target)  # a round's file is whole or absent
        return []


def _heard(a: int, messages: dict[int, Message], n_state: int) -> dict[str, np.ndarray]:
    senders = sorted(messages)

    def stack(states: list[torch.Tensor | None]) -> np.ndarray:
        return np.stack([_array(x) if x is not None else np.zeros(n_state, np.float32) for x in states]) \
            if states else np.zeros((0, n_state), np.float32)

    return {f"heard_{a}_senders": np.asarray(senders, np.int64),
            f"heard_{a}_times": np.asarray([messages[j].time for j in senders], np.float64),
            f"heard_{a}_iterations": np.asarray([messages[j].iteration for j in senders], np.int64),
            f"heard_{a}_states": stack([messages[j].state for j in senders]),
            f"heard_{a}_starts": stack([messages[j].start for j in senders]),
            f"heard_{a}_has_start": np.asarray([messages[j].start is not None for j in senders], bool),
            f"heard_{a}_previous": stack([messages[j].previous for j in senders]),
            f"heard_{a}_has_previous": np.asarray([messages[j].previous is not None for j in senders], bool)}


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def load(directory: Path, round_no: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[int, Message]] | None]:
    """The shared and start states of 1-based round ``round_no``, and in ``mode: async`` what each node
    heard (the attackers' messages; every other node's dict empty), else ``None``."""
    with np.load(path(directory, round_no), allow_pickle=False) as z:
        shared = torch.from_numpy(z["shared"].copy())
        attackers = sorted({int(k.split("_")[1]) for k in z.files if k.startswith("heard_")})
        if not attackers:
            return shared, torch.from_numpy(z["starts"].copy()), None
        heard: list[dict[int, Message]] = [{} for _ in range(shared.shape[0])]
        for a in attackers:
            def part(name: str, a: int = a) -> np.ndarray:
                return z[f"heard_{a}_{name}"]
            states, begun, previous = (torch.from_numpy(part(n).copy()) for n in ("states", "starts", "previous"))
            for k, j in enumerate(part("senders").tolist()):
                heard[a][j] = Message(states[k], float(part("times")[k]), int(part("iterations")[k]),
                                      begun[k] if bool(part("has_start")[k]) else None,
                                      previous[k] if bool(part("has_previous")[k]) else None)
        return shared, torch.from_numpy(z["starts"].copy()), heard


def available(directory: Path) -> list[int]:
    """The 1-based rounds kept under ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("round-*.npz"))
