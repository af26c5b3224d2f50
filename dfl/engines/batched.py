"""``batched``: every participant of a shard as rows of stacked tensors, trained together with ``torch.func``.

Small models spend their time in Python and the dispatcher, not in arithmetic: one participant at a
time, 10,000 MLP nodes cost a hundred seconds a round. Here the nodes' shared states are one
``(n_nodes, n_state)`` tensor, and each local step is one ``vmap`` over nodes of
``grad(loss)(params, x, y, mask)`` through ``functional_call`` on one shell of the model, by
:class:`dfl.stacked.Trainer` (the trainer the attacks' shadow models use too):

* **Batches** are the serial engine's: node ``i`` draws ``local_batches(seed, i, round, n_i)`` exactly
  as its participant would. Step ``s`` stacks every node's ``s``-th batch, padded to ``batch_size``
  with a mask; a node whose batches ran out (fewer samples, so fewer steps) is inactive at that step,
  and an inactive node's parameters and optimizer state are left exactly as they were.
* **Data** is kept once, as the data set's uint8 images, and each step gathers and normalises only its
  batch (``(x / 255 - mean) / std``, the serial engine's arithmetic).
* **Optimizers** are PyTorch's update rules, per node: SGD with momentum and weight decay, Adam with its
  per-node step count (``training.reset_optimizer`` zeroes the state each round).
* **Evaluation** runs the same way: each node's evaluation subsets, padded and masked, in one ``vmap``.
* **Chunks**: ``engine.batch_size`` nodes at a time (default: as many as fit a fixed working-memory
  budget, :data:`dfl.stacked.CHUNK_BYTES`, computed from the config alone), so a shard larger than memory still
  runs. Like ``engine.threads``, the chunk size is part of the numerics: a convolution over 3 stacked
  nodes may take another kernel than over 4, so another chunk size agrees within float32 rounding.
* **Sharing** is :func:`dfl.mixing.gossip_stacked`, bit-identical to the serial engine's gossip.
  Share-time defenses (``update_pruning``, ``update_noise``) rewrite each defended node's update.

Numerics: the per-node loss is the masked mean of the batch's cross-entropies, and batched matrix
products reduce in another order than one node's; so the metrics equal the serial engine's within
float32 rounding that training then carries (the tests hold parameters after a round to 1e-5 and
accuracies after 3 rounds to 0.02), while a batched run is bit-identical with itself run to run and
across resume.

Training-time defenses run per node under the same ``vmap``, each node with its own defenses: pure
rewrites of the batch or the loss (``batched = True``: label smoothing, weight penalties) as they are, and
those whose random numbers are split from a pure rewrite (``draws = True``: mixup, AdaMixup) with every
node's draws made from its own defense stream in the serial engine's order (:class:`_Draws`). Not
supported (rejected when the config is validated, with the fix): training-time defenses that change the
optimizer or draw per image (DP-SGD, defensive augmentation), BatchNorm (use ``model.params.norm:
group``), dropout (``model.params.dropout: 0``).
"""

from __future__ import annotations

import copy
import ctypes
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from dfl.config import defended_nodes
from dfl.defense import ShareDefense, TrainingDefense
from dfl.federation.engine import Engine, Mix, mixed
from dfl.federation.participant import local_order
from dfl.federation.population import Population
from dfl.mixing import GossipPlan, gossip_stacked
from dfl.registries import DEFENSES
from dfl.seeding import LOCAL_TRAIN, TRAIN_DEFENSE, derive_seeds, torch_generator
from dfl.stacked import (
    Layout,
    Optimizer,
    Trainer,
    activation_numel,
    chunk_size,
    cross_entropy,
    masked_mean,
    order_plan,
    padded,
    param_groups,
    vmap_pays,
)


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from its heap and keep what is freed (``mallopt``).

    Each round allocates state-sized tensors (hundreds of MB to GB at thousands of nodes); glibc maps
    allocations that large fresh from the kernel and returns them on free, so every round pays the
    kernel's zeroing of those pages again (about 2 GB/s here, against 10+ GB/s for reused memory). With
    mmap off and trimming off, freed blocks are reused. The process's peak memory is what it was; it is
    only not handed back before the process ends. Returns whether it took effect (glibc on Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


class BatchedEngine(Engine):
    """The participants of a population as stacked tensors; see the module docstring."""

    parallel_kernels = True

    def __init__(self, population: Population, node_ids: list[int] | None = None) -> None:
        """``node_ids``: the nodes this engine hosts (a Ray actor's shard), by default all of them; rows
        are in this order, and each node draws its batches and streams by its own id."""
        super().__init__(population)
        cfg = population.cfg
        self.cfg, self.training = cfg, cfg.training
        self.ids = list(range(cfg.nodes)) if node_ids is None else list(node_ids)
        self.n = len(self.ids)
        if population.device.type == "cpu":
            keep_freed_memory()
        self.device = population.device
        self.model = copy.deepcopy(population.template()).to(self.device)  # a shell for functional_call
        self.layout = Layout(self.model)
        self.flat = self.layout.row(self.model).expand(self.n, -1).clone()  # (n_nodes, n_state): every node's state
        data = population.data
        self.x_u8 = torch.from_numpy(np.ascontiguousarray(data.x_train)).to(self.device)
        self.y_all = torch.from_numpy(data.y_train).to(self.device)
        self.x_test_u8 = torch.from_numpy(np.ascontiguousarray(data.x_test)).to(self.device)
        self.y_test = torch.from_numpy(data.y_test).to(self.device)
        self.mean = torch.as_tensor(np.array(population.mean, dtype=np.float32)).reshape(-1, 1, 1).to(self.device)
        std = np.where(np.asarray(population.std) > 0, population.std, 1.0).astype(np.float32)
        self.std = torch.as_tensor(std).reshape(-1, 1, 1).to(self.device)
        train = [torch.from_numpy(population.splits.nodes[g].train) for g in self.ids]
        self.train_counts = [len(t) for t in train]
        self.train_rows = padded(train).to(self.device)  # (n_nodes, most train samples), -1 padding
        self.eval_idx = self._eval_indices(population)
        self.share_defenses = {j: d for j, g in enumerate(self.ids) if (d := population.defenses(g, ShareDefense))}
        self.train_defenses, self.defended = self._training_defenses(population)
        self.shell = _Shell(self.model, self.train_defenses)
        self.opt = Optimizer(self.training.optimizer, self.n, self.layout.n_params, self.device)
        vm = cfg.engine.vmap
        self.rowwise = not vmap_pays(self.model, self.device) if vm == "auto" else not vm
        self._plain = cross_entropy(self.model)  # the loss of nodes without training-time defenses
        self.trainer = Trainer(self.layout, self.opt, self._loss, rowwise=self.rowwise)
        self.chunk = cfg.engine.batch_size or chunk_size(
            self.n, self.layout.n_state, self.training.batch_size, int(np.prod(data.shape)),
            activation_numel(self.model, tuple(data.shape)), self.rowwise)
        self._spare: torch.Tensor | None = None  # the other state buffer (see train and mix)
        self._plan: tuple[np.ndarray, GossipPlan] | None = None  # the last mixing matrix and its gossip plan
        self._param_groups = param_groups(self.model, self.training.optimizer)

    # ------------------------------------------------------------------ setup

    def _eval_indices(self, population: Population) -> dict[str, torch.Tensor]:
        """Per split, each node's evaluation subset as a padded ``(n_nodes, most)`` index matrix (-1:
        padding; indices into the train set), and for ``test`` the one shared subset ``(m,)``."""
        out = {"test": torch.from_numpy(population._subset(population.splits.test, 0)).to(self.device)}
        for tag, name in enumerate(("train", "holdout")):
            subsets = [torch.from_numpy(population._subset(getattr(population.splits.nodes[g], name), 1 + tag, g))
                       for g in self.ids]
            out[name] = padded(subsets).to(self.device)
        return out

    def _training_defenses(self, population: Population) -> tuple[list[TrainingDefense], torch.Tensor]:
        """One instance per training-time defense of the config (those with ``batched`` or ``draws``; the
        config check refuses the others) and ``(n_nodes, n_defenses)`` flags of the nodes each one defends."""
        cfg, found, flags = self.cfg, [], []
        specs = [(i, spec) for i, spec in enumerate(cfg.defenses)
                 if isinstance(obj := DEFENSES.get(spec.name).obj, type) and issubclass(obj, TrainingDefense)]
        for i, spec in specs:
            nodes = defended_nodes(cfg, spec)
            if not nodes:
                continue
            first = nodes[0]  # its chain holds this spec's instance at the position of the specs before it there
            position = sum(1 for j, other in specs if j < i and first in defended_nodes(cfg, other))
            found.append(population.defenses(first, TrainingDefense)[position])
            flags.append([1.0 if g in set(nodes) else 0.0 for g in self.ids])
        on = torch.tensor(flags, dtype=torch.float32).T.contiguous() if flags else torch.zeros((self.n, 0))
        return found, on.to(self.device)

    def _images(self, u8: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images of a uint8 batch, the serial engine's ``to_float`` arithmetic."""
        return u8.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
              extra: Any) -> torch.Tensor:
        """One node's masked mean cross-entropy on its (padded) batch, as the training-time defenses it runs
        rewrite the batch, plus their penalties. ``extra``: ``(on, drawn)``, one flag per defense and the
        node's draws of this step for the defenses that draw (``{str(j): draw}``)."""
        if not self.train_defenses:
            return self._plain(params, x, y, mask, extra)
        on, drawn = extra
        target = y  # one-hot rows (made before vmap): cross-entropy against them is exactly -log p_y
        for j, d in enumerate(self.train_defenses):
            if d.draws:
                x2, t2 = d.apply(x, target, drawn[str(j)])
            else:
                x2, t2 = d.batch(x, target, 0.0, None)  # type: ignore[arg-type]  # pure: no progress, no draws
            x, target = torch.where(on[j] > 0, x2, x), torch.where(on[j] > 0, t2, target)
        logits, penalties = functional_call(self.shell, {f"model.{k}": v for k, v in params.items()}, (x,))
        loss = masked_mean(F.cross_entropy(logits, target, reduction="none"), mask)
        for j, penalty in enumerate(penalties):
            if penalty is not None:
                loss = loss + on[j] * penalty
        return loss

    # ------------------------------------------------------------------ training

    def train(self, round_idx: int) -> list[dict[str, float]]:
        if self.training.reset_optimizer:
            self.opt.reset()
        seeds = derive_seeds(self.cfg.seed, LOCAL_TRAIN, np.asarray(self.ids, dtype=np.int64), round_idx)
        drawn = [local_order(s, n, self.training) for s, n in zip(seeds, self.train_counts, strict=True)]
        orders, lengths = [o for o, _ in drawn], [ls for _, ls in drawn]  # each node's local_batches, cut
        steps = [len(b) for b in lengths]
        # Train a copy: the states mix() returned stay as they were this round (observers read them as the
        # round's start states). Two buffers take turns: mix() writes into the one training did not use.
        if self._spare is None or self._spare.shape != self.flat.shape:
            self._spare = torch.empty_like(self.flat)
        new = self._spare
        new.copy_(self.flat)
        self._spare = None
        start = {i: new[i].clone() for i in self.share_defenses}
        losses = torch.zeros(self.n, dtype=torch.float64)
        drawer = _Draws(self, list(range(self.n)), [round_idx] * self.n, steps)
        for lo in range(0, self.n, self.chunk):
            hi = min(lo + self.chunk, self.n)
            plan = order_plan(orders[lo:hi], lengths[lo:hi], self.training.batch_size)
            losses[lo:hi] = self._train_chunk(new, lo, hi, plan, drawer)
        for i in self.share_defenses:
            new[i] = self._rewrite(i, start[i], new[i], round_idx)
        self.flat = new
        return [{"loss": float(losses[i]) if steps[i] else 0.0, "steps": float(steps[i])} for i in range(self.n)]

    # ------------------------------------------------------------------ mode: async, node by node

    def node_states(self, ids: list[int]) -> torch.Tensor:
        return self.flat[torch.as_tensor(ids, device=self.device)].cpu()

    def set_node_states(self, ids: list[int], states: torch.Tensor) -> None:
        self.flat[torch.as_tensor(ids, device=self.device)] = states.to(self.device, self.flat.dtype)

    def train_nodes(self, ids: list[int], iterations: list[int]) -> list[dict[str, float]]:
        """One local budget of rows ``ids`` (a non-sharded engine: ids are rows), each with the batches of
        its own iteration, trained together in chunks as :meth:`train` trains a round: their states and
        optimizer rows are gathered, trained and written back. Training-time and share-time defenses
        run with each node's iteration as the round (its defense stream and progress), as the serial
        participant's ``train_round(iteration)`` runs them."""
        rows = torch.as_tensor(ids, device=self.device)
        return self._train_gathered(ids, iterations, self.flat.index_select(0, rows))

    def wake(self, ids: list[int], iterations: list[int], mixes: list[Mix]) -> tuple[list[dict[str, float]], torch.Tensor]:
        """:func:`dfl.federation.engine.wake_nodes` with one gather and one write-back of the rows: the
        mix is made on the gathered rows (the same arithmetic, so the same bits), trained there, written
        back, and the gathered rows are the trained states returned."""
        flat = self.flat.index_select(0, torch.as_tensor(ids, device=self.device))
        if any(m is not None for m in mixes):
            flat = mixed(flat, mixes)
        stats = self._train_gathered(ids, iterations, flat)
        return stats, flat.cpu()

    def _train_gathered(self, ids: list[int], iterations: list[int], flat: torch.Tensor) -> list[dict[str, float]]:
        """:meth:`train_nodes` on ``flat``, rows ``ids``'s states gathered: trained in place and written back."""
        rows = torch.as_tensor(ids, device=self.device)
        seeds = derive_seeds(self.cfg.seed, LOCAL_TRAIN, np.asarray([self.ids[i] for i in ids], dtype=np.int64),
                             np.asarray(iterations, dtype=np.int64))
        drawn = [local_order(s, self.train_counts[i], self.training) for s, i in zip(seeds, ids, strict=True)]
        start = flat.clone() if any(i in self.share_defenses for i in ids) else None
        opt = self.opt.take(rows)
        if self.training.reset_optimizer:
            opt.reset()
        trainer = Trainer(self.layout, opt, self._loss, rowwise=self.rowwise)
        losses = torch.zeros(len(ids), dtype=torch.float64)
        steps = [len(ls) for _, ls in drawn]
        drawer = _Draws(self, ids, iterations, steps)
        flags = self.defended[rows]
        for lo in range(0, len(ids), self.chunk):
            hi = min(lo + self.chunk, len(ids))
            plan = order_plan([o for o, _ in drawn[lo:hi]], [ls for _, ls in drawn[lo:hi]], self.training.batch_size)
            losses[lo:hi] = trainer.train(flat, lo, hi, plan, self._fetch(self.train_rows[rows[lo:hi]], drawer, flags))
        for k, i in enumerate(ids):
            if start is not None and i in self.share_defenses:
                flat[k] = self._rewrite(i, start[k], flat[k], iterations[k])
        self.flat[rows] = flat
        self.opt.put(rows, opt)
        return [{"loss": float(losses[k]) if steps[k] else 0.0, "steps": float(steps[k])} for k in range(len(ids))]

    def _rewrite(self, i: int, start: torch.Tensor, trained: torch.Tensor, round_idx: int) -> torch.Tensor:
        """Row ``i``'s state after its share-time defenses rewrote the update ``trained - start``."""
        update = trained - start
        for d in self.share_defenses[i]:
            update = d.rewrite(update, round_idx)
        return start + update

    def _fetch(self, rows_of: torch.Tensor, draws: _Draws | None = None, flags: torch.Tensor | None = None) -> Any:
        """The trainer's fetch for rows whose training samples are ``rows_of`` (padded indices): each step
        gathers and normalises their batches; with training-time defenses, one-hot targets and each row's
        defense flags (``flags``, the rows' own; default: every node's, in order) and draws."""
        one_hot = bool(self.train_defenses)
        flags = self.defended if flags is None else flags

        def fetch(lo: int, hi: int, step: int, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
            idx = torch.gather(rows_of, 1, local.clamp_min(0))  # global indices (padding: the node's first)
            x, y = self._images(self.x_u8[idx]), self.y_all[idx]  # (k, batch_size, C, H, W), (k, batch_size)
            if not one_hot:
                return x, y, None
            y = F.one_hot(y, self.population.data.num_classes).to(x.dtype)
            return x, y, (flags[lo:hi], draws.step(lo, hi, step, local) if draws is not None else {})

        return fetch

    def _train_chunk(self, flat: torch.Tensor, lo: int, hi: int, plan: torch.Tensor,
                     draws: _Draws | None = None) -> torch.Tensor:
        """Every local step of nodes ``lo..hi-1``, in place in ``flat``; returns their mean losses."""
        return self.trainer.train(flat, lo, hi, plan, self._fetch(self.train_rows[lo:hi], draws))

    # ------------------------------------------------------------------ sharing, evaluation

    def share(self) -> torch.Tensor:
        return self.flat

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        """The new states, written over the round's start states (nobody reads those after the observers).

        The tensors ``share`` and ``mix`` return are the engine's buffers: valid for the round; an observer
        that keeps one past it copies it (as the inversion scorer does)."""
        spare = self.flat if self.flat.data_ptr() != shared.data_ptr() else None
        if self._plan is None or self._plan[0] is not W:  # the loop hands the same W while the graph stays
            self._plan = (W, GossipPlan(W))
        self.flat = gossip_stacked(shared, self._plan[1], out=spare)
        self._spare = shared  # trained into again next round
        return self.flat

    @torch.no_grad()
    def evaluate(self, splits: list[str], round_idx: int | None = None) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in range(self.n)]
        for split in splits:
            for lo in range(0, self.n, self.chunk):
                hi = min(lo + self.chunk, self.n)
                acc, loss = self._evaluate_chunk(split, lo, hi)
                for j in range(hi - lo):
                    out[lo + j][f"{split}_acc"], out[lo + j][f"{split}_loss"] = float(acc[j]), float(loss[j])
        return out

    def _evaluate_chunk(self, split: str, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and mean cross-entropy of nodes ``lo..hi-1`` on their ``split`` subsets, ``(k,)`` each."""
        k, eb = hi - lo, self.cfg.eval.batch_size
        params = self.layout.views(self.flat[lo:hi])
        shared = split == "test"
        forward = self._forward(shared)
        rows = self.eval_idx[split] if shared else self.eval_idx[split][lo:hi]
        width = rows.shape[-1]
        n = torch.full((k,), float(width), device=self.device) if shared else (rows >= 0).sum(1).to(torch.float32)
        correct = torch.zeros(k, device=self.device)
        loss = torch.zeros(k, device=self.device)
        for a in range(0, width, eb):
            part = rows[..., a : a + eb]
            if shared:
                x = self._images(self.x_test_u8[part])
                y = self.y_test[part].expand(k, -1)
                mask = torch.ones(y.shape, device=self.device)
            else:
                mask = (part >= 0).to(torch.float32)
                idx = part.clamp_min(0)
                x = self._images(self.x_u8[idx])
                y = self.y_all[idx]
            logits = forward(params, x)  # (k, b, classes)
            ce = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), reduction="none").view_as(mask)
            loss += (ce * mask).sum(1)
            correct += ((logits.argmax(2) == y).float() * mask).sum(1)
        n = n.clamp_min(1.0)
        return (correct / n).cpu(), (loss / n).cpu()

    def _forward(self, shared: bool) -> Any:
        """``forward(params (k, ...), x) -> (k, b, classes)``: one ``vmap``, or row by row (``rowwise``);
        ``shared``: one batch ``x: (b, ...)`` for every row, else ``x: (k, b, ...)``."""
        if not self.rowwise:
            return vmap(lambda p, x: functional_call(self.model, p, (x,)), in_dims=(0, None if shared else 0))

        def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            k = next(iter(params.values())).shape[0]
            return torch.stack([functional_call(self.model, {n: t[i] for n, t in params.items()}, (x if shared else x[i],))
                                for i in range(k)])

        return forward

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> list[dict[str, Any]]:
        """Per node, the serial engine's checkpoint layout: the state, no integer buffers, and a PyTorch
        optimizer ``state_dict`` (so a checkpoint reads as one of the serial engine's)."""
        return [{"state": self.flat[i].cpu().clone(), "int_buffers": {},
                 "optimizer": self.opt.state_dict(i, self.layout.param_shapes, self._param_groups)}
                for i in range(self.n)]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        self.flat = torch.stack([s["state"] for s in snaps]).to(self.device)
        for i, s in enumerate(snaps):
            self.opt.load_state_dict(i, s["optimizer"], self.layout.param_shapes)


class _Draws:
    """The random numbers of the defenses that draw (``TrainingDefense.draws``), per node and step.

    Position ``p`` trains engine row ``rows[p]`` in round ``rounds[p]`` (``mode: async``: its iteration)
    for ``steps[p]`` steps. It draws from its own defense stream (``TRAIN_DEFENSE``, its id, the round),
    for each of its drawing defenses in chain order, at each step it takes, with its own progress and
    batch size: the serial participant's draws exactly. Nodes that do not run a defense get the identity
    (``lam`` 1, the identity permutation); index draws are padded with the identity to the batch width."""

    def __init__(self, engine: BatchedEngine, rows: list[int], rounds: list[int], steps: list[int]) -> None:
        self.engine, self.rows, self.rounds, self.steps = engine, rows, rounds, steps
        self.draws = [j for j, d in enumerate(engine.train_defenses) if d.draws]
        self.streams = {p: torch_generator(engine.cfg.seed, TRAIN_DEFENSE, engine.ids[r], rounds[p])  # as each participant's
                        for p, r in enumerate(rows) if self.draws and bool(engine.defended[r, self.draws].any())}
        self._idle: dict[tuple[int, int], list[torch.Tensor]] = {}

    def idle(self, j: int, width: int) -> list[torch.Tensor]:
        """The draws of defense ``j`` for a node without it (its row keeps the undefended batch): the right
        shapes and dtypes from a throwaway stream, scalars 1 and index vectors the identity."""
        if (j, width) not in self._idle:
            drawn = self.engine.train_defenses[j].draw(width, 0.0, torch.Generator().manual_seed(0))
            self._idle[j, width] = [torch.ones((), dtype=t.dtype) if t.ndim == 0 else torch.arange(width)
                                    for t in drawn]
        return self._idle[j, width]

    def step(self, lo: int, hi: int, s: int, local: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        eng, width = self.engine, local.shape[1]
        out: dict[str, list[list[torch.Tensor]]] = {}
        sizes = (local >= 0).sum(1).tolist()
        for j in self.draws:
            d, rows, idle = eng.train_defenses[j], out.setdefault(str(j), []), self.idle(j, width)
            for p in range(lo, hi):
                g, size = self.streams.get(p), sizes[p - lo]
                if g is None or size == 0 or not bool(eng.defended[self.rows[p], j]):
                    rows.append(idle)
                    continue
                progress = (self.rounds[p] + s / self.steps[p]) / eng.cfg.rounds
                rows.append([t if t.ndim == 0 else torch.cat([t, torch.arange(size, width)])
                             for t in d.draw(size, progress, g)])
        return {j: tuple(torch.stack(parts).to(eng.device) for parts in zip(*rows, strict=True))
                for j, rows in out.items()}


class _Shell(nn.Module):
    """The model and the penalties of the training-time defenses, in one ``functional_call``: the
    penalties then see the node's parameters in place of the shell's."""

    def __init__(self, model: nn.Module, defenses: list[TrainingDefense]) -> None:
        super().__init__()
        self.model = model
        self.defenses = list(defenses)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        return self.model(x), [d.penalty(self.model) for d in self.defenses]
