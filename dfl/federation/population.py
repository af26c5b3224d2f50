"""``Population``: the data side of an experiment, and the factory of its participants.

Holds the loaded data set, the seeded splits and the normalisation, and builds ``Participant(i)`` for
any node id in any process (an engine may build its shard of participants where it runs them).
Every node starts from the same initial model, drawn from the experiment seed (or, with ``init``, one
node's final state in a complete run).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfl.config import ExperimentConfig, InitConfig, defended_nodes
from dfl.data import ImageData, Splits, channel_stats, load_dataset, make_splits, to_float
from dfl.defense import DefenseContext, QueryDefense, ShareDefense, TrainingDefense
from dfl.errors import ConfigError
from dfl.federation.participant import Participant, Split, shared_tensors
from dfl.models import build_model
from dfl.registries import DEFENSES
from dfl.rundir import RunDir
from dfl.seeding import EVAL_SUBSET, MODEL_INIT, derive_seed, numpy_rng
from dfl.topology import base_graph, epoch_of


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. On CUDA, kernels are pinned to deterministic ones."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([("device", "cuda was requested but no CUDA device is visible; use device: auto or cpu")])
        deterministic_cuda()
    return torch.device(name)


def deterministic_cuda() -> None:
    """Same seed, same numbers on a GPU: deterministic cuDNN and cuBLAS kernels, no autotuning.

    cuBLAS reads its workspace setting when its handle is created, so the variable is set before the
    first matrix product of the process (every engine process resolves its device before building models).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Population:
    cfg: ExperimentConfig
    data: ImageData
    splits: Splits
    mean: np.ndarray
    std: np.ndarray
    _template: nn.Module | None = field(default=None, repr=False)
    _test: Split | None = field(default=None, repr=False)
    _met: dict[int, tuple[int, frozenset[int]]] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the per-process caches (the initial model and the test tensors are rebuilt)."""
        return {**self.__dict__, "_template": None, "_test": None, "_met": {}}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Population:
        root = Path(cfg.data.root).expanduser() if cfg.data.root else None
        data = load_dataset(cfg.data.dataset, root)
        splits = make_splits(data, cfg.data, cfg.nodes, cfg.seed)
        mean, std = channel_stats(data.x_train)
        return cls(cfg, data, splits, mean, std)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def initial_state(self) -> torch.Tensor:
        """The initial model's shared state as one flat float32 vector (common knowledge)."""
        return torch.cat([t.detach().reshape(-1).float() for t in shared_tensors(self.template())])

    def template(self) -> nn.Module:
        """The initial model every node starts from (built once per process, seeded)."""
        if self._template is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.cfg.seed, MODEL_INIT))
                self._template = build_model(self.cfg.model, self.data.shape, self.data.num_classes)
            if self.cfg.init is not None:
                self._load_init(self._template, self.cfg.init)
        return self._template

    @staticmethod
    def _load_init(model: nn.Module, init: InitConfig) -> None:
        """Copy node ``init.node``'s final state in run ``init.run`` into ``model`` (its shared tensors)."""
        source, state = RunDir.init_source(init)
        tensors = shared_tensors(model)
        total = sum(t.numel() for t in tensors)
        if state.numel() != total:
            raise ConfigError([("init.run", f"{source.path}'s model has {state.numel():,} parameters and buffers, this "
                                            f"experiment's {total:,}; use the same model settings as that run")])
        with torch.no_grad():
            for t, part in zip(tensors, state.split([t.numel() for t in tensors]), strict=True):
                t.copy_(part.view_as(t))

    def train_pool(self, idx: np.ndarray) -> Split:
        """Normalised tensors of ``x_train[idx]`` on this process's device."""
        return self._split(self.data.x_train, self.data.y_train, idx)

    def _split(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        return Split(to_float(x[idx], self.mean, self.std).to(self.device), torch.from_numpy(y[idx]).to(self.device))

    def _subset(self, idx: np.ndarray, *tags: int) -> np.ndarray:
        """A fixed seeded subset of at most ``eval.max_samples`` of ``idx`` (sorted)."""
        cap = self.cfg.eval.max_samples
        if cap is None or len(idx) <= cap:
            return idx
        return np.sort(numpy_rng(self.cfg.seed, EVAL_SUBSET, *tags).choice(idx, cap, replace=False))

    def test_split(self) -> Split:
        """The shared test set (one copy per process), capped by ``eval.max_samples``."""
        if self._test is None:
            idx = self._subset(self.splits.test, 0)
            self._test = self._split(self.data.x_test, self.data.y_test, idx)
        return self._test

    def participant(self, node_id: int) -> Participant:
        """Build node ``node_id`` with its train/holdout data, eval subsets and the shared initial model."""
        ns = self.splits.nodes[node_id]
        x, y = self.data.x_train, self.data.y_train
        train = self._split(x, y, ns.train)
        holdout = self._split(x, y, ns.holdout)
        evals: dict[str, Split] = {"test": self.test_split()}
        for tag, (name, idx, full) in enumerate((("train", ns.train, train), ("holdout", ns.holdout, holdout))):
            sub = self._subset(idx, 1 + tag, node_id)
            evals[name] = full if len(sub) == len(idx) else self._split(x, y, sub)
        return Participant(
            node_id,
            copy.deepcopy(self.template()),
            {"train": train, "holdout": holdout},
            self.cfg.training,
            self.cfg.seed,
            eval_splits=evals,
            eval_batch_size=self.cfg.eval.batch_size,
            device=self.device,
            query_defenses=self.query_defenses(node_id),
            training_defenses=self.defenses(node_id, TrainingDefense),
            share_defenses=self.defenses(node_id, ShareDefense),
            total_rounds=self.cfg.rounds,
        )

    def defenses(self, node_id: int, kind: type[Any]) -> list[Any]:
        """Node ``node_id``'s defenses of one hook point (a ``dfl.defense`` base class), in config order."""
        if not self.cfg.defenses:
            return []

        neighbours = tuple(sorted(base_graph(self.cfg, 0).neighbors(node_id)))
        ctx = DefenseContext(node_id, self.cfg.seed, self.data.num_classes, self.mean, self.std, neighbours,
                             self.train_images, self.holdout_images, list(self.data.classes),
                             functools.partial(self.neighbours_until, node_id))
        chain = []
        for i, spec in enumerate(self.cfg.defenses):
            if node_id not in defended_nodes(self.cfg, spec):
                continue
            entry = DEFENSES.get(spec.name, f"defenses.{i}.name")
            cls: Any = entry.obj
            if isinstance(cls, type) and issubclass(cls, kind):
                try:
                    defense = cls(entry.parse_params(spec.params, f"defenses.{i}.params"), ctx)
                except ValueError as exc:  # what only the data can tell, e.g. a class name it does not have
                    raise ConfigError([(f"defenses.{i}.params", str(exc))]) from None
                defense.name = spec.name
                chain.append(defense)
        return chain

    def neighbours_until(self, node_id: int, round_idx: int) -> tuple[int, ...]:
        """Sorted ids of every node adjacent to ``node_id`` in the base graph of some topology epoch up to
        round ``round_idx``'s (without resampling: the round-0 neighbours). Kept per node and extended
        epoch by epoch, so a run that calls it every round builds each epoch's graph once."""
        epoch = epoch_of(self.cfg, round_idx)
        seen, met = self._met.get(node_id, (-1, frozenset()))
        earlier = epoch < seen  # a round before the last one asked about: from scratch, not kept
        if earlier:
            seen, met = -1, frozenset()
        met = met.union(*(base_graph(self.cfg, e).neighbors(node_id) for e in range(seen + 1, epoch + 1)))
        if not earlier:
            self._met[node_id] = (epoch, met)
        return tuple(sorted(met))

    def train_images(self, node_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Node ``node_id``'s training images as uint8 ``(N, C, H, W)`` and their labels."""
        idx = self.splits.nodes[node_id].train
        return self.data.x_train[idx], self.data.y_train[idx]

    def holdout_images(self, node_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Node ``node_id``'s holdout images (never trained on) as uint8 ``(N, C, H, W)`` and their labels."""
        idx = self.splits.nodes[node_id].holdout
        return self.data.x_train[idx], self.data.y_train[idx]

    def query_defenses(self, node_id: int) -> list[Any]:
        """Node ``node_id``'s query-time defenses."""
        return self.defenses(node_id, QueryDefense)

    def sample_counts(self) -> np.ndarray:
        """Train samples per node, ``(n_nodes,)``."""
        return np.array([len(n.train) for n in self.splits.nodes], dtype=np.int64)
