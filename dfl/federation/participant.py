"""``Participant``: one node of the federation — a model, its optimizer, its local data, its streams.

Plain Python and PyTorch, no Ray. The model's parameters and floating-point buffers are views into
one flat vector, so sharing a state is one copy and loading a neighbourhood average is one copy.
BatchNorm's ``num_batches_tracked`` is an integer buffer and stays local (it is not averaged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfl.config import TrainingConfig
from dfl.defense import defended_query
from dfl.mixing import gossip_row
from dfl.seeding import LOCAL_TRAIN, QUERY, TRAIN_DEFENSE, derive_seed, torch_generator


@dataclass
class Split:
    """Normalised images and labels of one split, already on the participant's device."""

    x: torch.Tensor  # (N, C, H, W) float32
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])


def flatten_into_views(model: nn.Module) -> torch.Tensor:
    """Move every parameter and float buffer of ``model`` into one flat tensor; return it.

    Afterwards ``p.data`` of each tensor is a view into the returned ``(n_params,)`` vector, in
    ``named_parameters()`` then ``named_buffers()`` order.
    """
    tensors = shared_tensors(model)
    total = sum(t.numel() for t in tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    flat = torch.empty(total, dtype=torch.float32, device=device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            flat[offset : offset + n].copy_(t.reshape(-1))
            t.data = flat[offset : offset + n].view_as(t)
            offset += n
    return flat


def shared_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors of a model's shared state, in flat-vector order: parameters, then float buffers."""
    return [p for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]


@torch.no_grad()
def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat shared state (as :meth:`Participant.state` returns it) into ``model``."""
    offset = 0
    for t in shared_tensors(model):
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"a state of {flat.numel()} values does not fit a model of {offset}")


def local_batches(seed: int, node_id: int, round_idx: int, n: int, training: TrainingConfig) -> list[torch.Tensor]:
    """Index batches into node ``node_id``'s ``n`` training samples for round ``round_idx``:
    ``local_steps`` batches, or ``local_epochs`` shuffled passes (a pure function of its arguments)."""
    order, lengths = local_order(derive_seed(seed, LOCAL_TRAIN, node_id, round_idx), n, training)
    return list(order.split(lengths))


def local_order(stream: int, n: int, training: TrainingConfig) -> tuple[torch.Tensor, list[int]]:
    """:func:`local_batches` as one index vector and the batches' lengths, from the node's derived seed
    ``stream`` (``derive_seed(seed, LOCAL_TRAIN, node_id, round_idx)``; a batched engine derives every
    node's at once with :func:`dfl.seeding.derive_seeds`). Each epoch is one ``randperm`` cut into
    batches, the last one short; ``local_steps`` cuts the concatenation after that many batches."""
    g = torch.Generator()
    g.manual_seed(stream)
    epochs, lengths = _epochs(n, training), local_lengths(n, training)
    perms = [torch.randperm(n, generator=g) for _ in range(epochs)]
    order = perms[0] if epochs == 1 else torch.cat(perms)
    return order[: sum(lengths)], lengths


def _epochs(n: int, training: TrainingConfig) -> int:
    """Shuffled passes a round draws: ``local_epochs``, or as many as ``local_steps`` batches need."""
    if training.local_steps is not None:
        return math.ceil(training.local_steps / math.ceil(n / training.batch_size))
    return training.local_epochs or 1


def local_lengths(n: int, training: TrainingConfig) -> list[int]:
    """The lengths of a round's local batches over ``n`` samples (the same every round): each epoch's
    full batches and its short last one, cut after ``local_steps`` batches."""
    bs = training.batch_size
    epoch = [bs] * (n // bs) + ([n % bs] if n % bs or n == 0 else [])  # randperm(0).split: one empty batch
    lengths = epoch * _epochs(n, training)
    return lengths[: training.local_steps] if training.local_steps is not None else lengths


class Participant:
    """A DFL node: ``train_round()``, ``state()``/``load_state()``, ``aggregate()``, ``evaluate()``, ``query()``."""

    def __init__(
        self,
        node_id: int,
        model: nn.Module,
        splits: dict[str, Split],
        training: TrainingConfig,
        seed: int,
        *,
        eval_splits: dict[str, Split] | None = None,
        eval_batch_size: int = 1000,
        device: torch.device | str = "cpu",
        query_defenses: list[Any] | None = None,
        training_defenses: list[Any] | None = None,
        share_defenses: list[Any] | None = None,
        total_rounds: int = 1,
    ) -> None:
        self.node_id = node_id
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.flat = flatten_into_views(self.model)
        self.data = splits
        self.eval_data = eval_splits if eval_splits is not None else splits
        self.training = training
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.optimizer = self._make_optimizer()
        self.query_defenses = query_defenses or []
        self.training_defenses = training_defenses or []
        self.share_defenses = share_defenses or []
        self.total_rounds = total_rounds
        self._queries = 0

    # ------------------------------------------------------------------ training

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.training.optimizer
        params = list(self.model.parameters())
        if o.name == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    @property
    def num_samples(self) -> int:
        return len(self.data["train"])

    def batches(self, round_idx: int) -> list[torch.Tensor]:
        """Index batches of round ``round_idx`` (see :func:`local_batches`), on the participant's device."""
        out = local_batches(self.seed, self.node_id, round_idx, self.num_samples, self.training)
        return [b.to(self.device) for b in out] if self.device.type != "cpu" else out

    def train_round(self, round_idx: int) -> dict[str, float]:
        """Local training of round ``round_idx``, then the share-time defenses' rewrite of the update;
        returns the mean training loss, the step count and whatever the training-time defenses report
        (e.g. ``dp_epsilon``)."""
        for q in self.query_defenses:
            q.start_round(round_idx)
        if self.training.reset_optimizer:
            self.optimizer = self._make_optimizer()
        model, opt, data = self.model, self.optimizer, self.data["train"]
        model.train()
        losses = []
        batches = self.batches(round_idx)
        defenses = self.training_defenses
        g = torch_generator(self.seed, TRAIN_DEFENSE, self.node_id, round_idx) if defenses else None
        stats: dict[str, float] = {}
        start = self.flat.detach().clone() if self.share_defenses else None
        for d in defenses:  # the node's own optimizer keeps its state; a wrapper lives for this round only
            opt = d.wrap(model, opt, round_idx, len(batches), self.training.batch_size, self.num_samples)
        try:
            for step, idx in enumerate(batches):
                opt.zero_grad(set_to_none=True)
                if defenses:
                    loss = self._defended_loss(data.x[idx], data.y[idx], (round_idx + step / len(batches)) / self.total_rounds, g)
                else:
                    loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            opt.zero_grad(set_to_none=True)
        finally:
            for d in reversed(defenses):
                stats.update(d.unwrap(model, round_idx))
        if start is not None:  # share-time defenses rewrite the round's update
            update = self.flat.detach() - start
            for d in self.share_defenses:
                update = d.rewrite(update, round_idx)
            with torch.no_grad():
                self.flat.copy_(start + update)
        mean = float(torch.stack(losses).mean()) if losses else 0.0
        return {"loss": mean, "steps": float(len(batches)), **stats}

    def _defended_loss(self, x: torch.Tensor, target: torch.Tensor, progress: float, g: Any) -> torch.Tensor:
        """Cross-entropy on the batch as the training-time defenses rewrite it, plus their penalties."""
        for d in self.training_defenses:
            x, target = d.batch(x, target, progress, g)
        loss = F.cross_entropy(self.model(x), target)
        for d in self.training_defenses:
            extra = d.penalty(self.model)
            if extra is not None:
                loss = loss + extra
        return loss

    # ------------------------------------------------------------------ states

    def state(self) -> torch.Tensor:
        """A copy of the shared state: parameters and float buffers as one ``(n_params,)`` vector."""
        return self.flat.detach().clone()

    def load_state(self, state: torch.Tensor) -> None:
        with torch.no_grad():
            self.flat.copy_(state)

    def aggregate(self, neighbour_states: torch.Tensor, weights: Sequence[float] | np.ndarray) -> None:
        """Replace the state by ``sum_j w_j * x_j`` over ``neighbour_states: (k, n_params)`` (self included)."""
        self.load_state(gossip_row(neighbour_states, weights))

    # ------------------------------------------------------------------ evaluation and queries

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``split`` (its evaluation subset)."""
        data = self.eval_data[split]
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for xb, yb in zip(data.x.split(self.eval_batch_size), data.y.split(self.eval_batch_size), strict=True):
            logits = self.model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        n = max(len(data), 1)
        return {"acc": float(correct) / n, "loss": float(loss) / n}

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The black-box prediction API: class probabilities ``(B, num_classes)`` through the query-time defenses.

        Randomised defenses draw from a stream of ``(seed, node, query number)``.
        """
        self._queries += 1
        g = torch_generator(self.seed, QUERY, self.node_id, self._queries)
        return defended_query(self.model, images.to(self.device), self.query_defenses, g)

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs: the state, integer buffers and the optimizer state."""
        ints = {k: b.clone() for k, b in self.model.named_buffers() if not b.is_floating_point()}
        return {"state": self.state().cpu(), "int_buffers": ints, "optimizer": self.optimizer.state_dict()}

    def restore(self, snap: dict[str, Any]) -> None:
        self.load_state(snap["state"].to(self.device))
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for k, v in snap["int_buffers"].items():
                buffers[k].copy_(v)
        self.optimizer.load_state_dict(snap["optimizer"])
