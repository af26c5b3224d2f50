"""``batched``: every participant of a shard as rows of stacked tensors, trained together with ``torch.func``.

Small models spend their time in Python and the dispatcher, not in arithmetic: one participant at a
time, 10,000 MLP nodes cost a hundred seconds a round. Here the nodes' shared states are one
``(n_nodes, n_params)`` tensor, and each local step is one ``vmap`` over nodes of
``grad(loss)(params, x, y, mask)`` through ``functional_call`` on one shell of the model:

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
  budget, :data:`CHUNK_BYTES`, computed from the config alone), so a shard larger than memory still
  runs. Like ``engine.threads``, the chunk size is part of the numerics: a convolution over 3 stacked
  nodes may take another kernel than over 4, so another chunk size agrees within float32 rounding.
* **Sharing** is :func:`dfl.mixing.gossip_stacked`, bit-identical to the serial engine's gossip.
  Share-time defenses (``update_pruning``, ``update_noise``) rewrite each defended node's update.

Numerics: the per-node loss is the masked mean of the batch's cross-entropies, and batched matrix
products reduce in another order than one node's; so the metrics equal the serial engine's within
float32 rounding that training then carries (the tests hold parameters after a round to 1e-5 and
accuracies after 3 rounds to 0.02), while a batched run is bit-identical with itself run to run and
across resume.

Not supported (rejected when the config is validated, with the fix): training-time defenses and DP-SGD,
BatchNorm (use ``model.params.norm: group``), dropout (``model.params.dropout: 0``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from dfl.defense import ShareDefense
from dfl.federation.engine import Engine
from dfl.federation.participant import local_batches, shared_tensors
from dfl.federation.population import Population
from dfl.mixing import gossip_stacked

CHUNK_BYTES = 1 << 30  # working memory a chunk of nodes may take when engine.batch_size is not set


class BatchedEngine(Engine):
    """The participants of a population as stacked tensors; see the module docstring."""

    def __init__(self, population: Population) -> None:
        super().__init__(population)
        cfg = population.cfg
        self.cfg, self.training = cfg, cfg.training
        self.device = population.device
        self.model = copy.deepcopy(population.template()).to(self.device)  # a shell for functional_call
        named = [(n, p) for n, p in self.model.named_parameters()]
        named += [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]
        self.names = [n for n, _ in named]
        self.shapes = [tuple(t.shape) for _, t in named]
        self.sizes = [t.numel() for _, t in named]
        self.n_params = sum(p.numel() for p in self.model.parameters())  # the trained part of a state
        flat = torch.cat([t.detach().reshape(-1).float() for t in shared_tensors(self.model)]).to(self.device)
        self.flat = flat.expand(self.n, -1).clone()  # (n_nodes, n_state): every node's shared state
        data = population.data
        self.x_u8 = torch.from_numpy(np.ascontiguousarray(data.x_train)).to(self.device)
        self.y_all = torch.from_numpy(data.y_train).to(self.device)
        self.x_test_u8 = torch.from_numpy(np.ascontiguousarray(data.x_test)).to(self.device)
        self.y_test = torch.from_numpy(data.y_test).to(self.device)
        self.mean = torch.as_tensor(np.array(population.mean, dtype=np.float32)).reshape(-1, 1, 1).to(self.device)
        std = np.where(np.asarray(population.std) > 0, population.std, 1.0).astype(np.float32)
        self.std = torch.as_tensor(std).reshape(-1, 1, 1).to(self.device)
        self.train_idx = [torch.from_numpy(ns.train).to(self.device) for ns in population.splits.nodes]
        self.eval_idx = self._eval_indices(population)
        self.share_defenses = {i: d for i in range(self.n) if (d := population.defenses(i, ShareDefense))}
        self.opt = _Optimizer(self.training, self.n, self.n_params, self.device)
        self.chunk = cfg.engine.batch_size or self._auto_chunk(data.shape)
        self._param_groups = _param_groups(self.model, self.training)

    # ------------------------------------------------------------------ setup

    def _eval_indices(self, population: Population) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """Per split, each node's evaluation subset (indices into the train set; test: one shared subset)."""
        out: dict[str, Any] = {"test": torch.from_numpy(population._subset(population.splits.test, 0)).to(self.device)}
        for tag, name in enumerate(("train", "holdout")):
            out[name] = [torch.from_numpy(population._subset(getattr(ns, name), 1 + tag, i)).to(self.device)
                         for i, ns in enumerate(population.splits.nodes)]
        return out

    def _auto_chunk(self, shape: tuple[int, ...]) -> int:
        """Nodes per chunk: a node's step holds its state, gradient, optimizer state and a few copies
        (about 6 state-sized tensors) and its batch's images (input and about 4 activation-sized copies)."""
        per_node = 4 * (6 * self.flat.shape[1] + 5 * self.training.batch_size * math.prod(shape))
        return max(1, min(self.n, CHUNK_BYTES // max(per_node, 1)))

    def _images(self, u8: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images of a uint8 batch, the serial engine's ``to_float`` arithmetic."""
        return u8.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)

    def _tensors(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (k, *shape)}`` views of the rows ``(k, n_state)`` for ``functional_call``."""
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = rows[:, offset : offset + size].view(rows.shape[0], *shape)
            offset += size
        return out

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        """One node's masked mean cross-entropy on its (padded) batch."""
        logits = functional_call(self.model, params, (x,))
        ce = F.cross_entropy(logits, y, reduction="none")
        return (ce * mask).sum() / mask.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ training

    def train(self, round_idx: int) -> list[dict[str, float]]:
        if self.training.reset_optimizer:
            self.opt.reset()
        batches = [local_batches(self.cfg.seed, i, round_idx, len(self.train_idx[i]), self.training)
                   for i in range(self.n)]
        new = self.flat.clone()  # the states mix() returned stay as they were (observers may hold them)
        start = {i: new[i].clone() for i in self.share_defenses}
        losses = torch.zeros(self.n, dtype=torch.float64)
        for lo in range(0, self.n, self.chunk):
            hi = min(lo + self.chunk, self.n)
            losses[lo:hi] = self._train_chunk(new, lo, hi, batches[lo:hi])
        for i, defenses in self.share_defenses.items():
            update = new[i] - start[i]
            for d in defenses:
                update = d.rewrite(update, round_idx)
            new[i] = start[i] + update
        self.flat = new
        steps = [len(b) for b in batches]
        return [{"loss": float(losses[i]) if steps[i] else 0.0, "steps": float(steps[i])} for i in range(self.n)]

    def _train_chunk(self, flat: torch.Tensor, lo: int, hi: int, batches: list[list[torch.Tensor]]) -> torch.Tensor:
        """Every local step of nodes ``lo..hi-1``, in place in ``flat``; returns their mean losses."""
        k, bs = hi - lo, self.training.batch_size
        steps = max((len(b) for b in batches), default=0)
        step_grad = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, 0))
        loss_sum = torch.zeros(k, dtype=torch.float32, device=self.device)
        counts = torch.tensor([len(b) for b in batches], dtype=torch.float32, device=self.device)
        train_idx = self.train_idx[lo:hi]
        for s in range(steps):
            idx = torch.zeros((k, bs), dtype=torch.long, device=self.device)
            mask = torch.zeros((k, bs), dtype=torch.float32, device=self.device)
            active = torch.zeros(k, dtype=torch.bool, device=self.device)
            for j, b in enumerate(batches):
                if s < len(b):
                    rows = train_idx[j][b[s].to(self.device)]
                    idx[j, : len(rows)] = rows
                    mask[j, : len(rows)] = 1.0
                    active[j] = True
            x = self._images(self.x_u8[idx])  # (k, bs, C, H, W)
            y = self.y_all[idx]
            rows = flat[lo:hi]
            grads, loss = step_grad(self._tensors(rows), x, y, mask)
            g = torch.cat([grads[n].reshape(k, -1) for n in self.names], dim=1)[:, : self.n_params]
            params = rows[:, : self.n_params]
            flat[lo:hi, : self.n_params] = self.opt.step(lo, hi, params, g, active)
            loss_sum += torch.where(active, loss.detach(), torch.zeros_like(loss))
        return (loss_sum / counts.clamp_min(1.0)).double().cpu()

    # ------------------------------------------------------------------ sharing, evaluation

    def share(self) -> torch.Tensor:
        return self.flat

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        self.flat = gossip_stacked(shared, W)
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
        params = self._tensors(self.flat[lo:hi])
        forward = vmap(lambda p, x: functional_call(self.model, p, (x,)), in_dims=(0, None if split == "test" else 0))
        if split == "test":
            idx_all = self.eval_idx["test"]
            n = torch.full((k,), float(len(idx_all)), device=self.device)
        else:
            subsets = self.eval_idx[split][lo:hi]
            n = torch.tensor([float(len(s)) for s in subsets], device=self.device)
        correct = torch.zeros(k, device=self.device)
        loss = torch.zeros(k, device=self.device)
        width = int(n.max().item()) if k else 0
        for a in range(0, width, eb):
            if split == "test":
                sel = idx_all[a : a + eb]
                x = self._images(self.x_test_u8[sel])
                y = self.y_test[sel].expand(k, -1)
                mask = torch.ones_like(y, dtype=torch.float32)
            else:
                b = min(eb, width - a)
                idx = torch.zeros((k, b), dtype=torch.long, device=self.device)
                mask = torch.zeros((k, b), dtype=torch.float32, device=self.device)
                for j, s in enumerate(subsets):
                    part = s[a : a + b]
                    idx[j, : len(part)] = part
                    mask[j, : len(part)] = 1.0
                x = self._images(self.x_u8[idx])
                y = self.y_all[idx]
            logits = forward(params, x)  # (k, b, classes)
            ce = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), reduction="none").view_as(mask)
            loss += (ce * mask).sum(1)
            correct += ((logits.argmax(2) == y).float() * mask).sum(1)
        n = n.clamp_min(1.0)
        return (correct / n).cpu(), (loss / n).cpu()

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> list[dict[str, Any]]:
        """Per node, the serial engine's checkpoint layout: the state, no integer buffers, and a PyTorch
        optimizer ``state_dict`` (so a checkpoint reads as one of the serial engine's)."""
        return [{"state": self.flat[i].cpu().clone(), "int_buffers": {},
                 "optimizer": self.opt.state_dict(i, self._param_shapes(), self._param_groups)}
                for i in range(self.n)]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        self.flat = torch.stack([s["state"] for s in snaps]).to(self.device)
        for i, s in enumerate(snaps):
            self.opt.load_state_dict(i, s["optimizer"], self._param_shapes())

    def _param_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in self.model.parameters()]


def _param_groups(model: torch.nn.Module, training: Any) -> list[dict[str, Any]]:
    """The ``param_groups`` of the optimizer a serial participant builds, as its ``state_dict`` holds them."""
    o = training.optimizer
    params = list(copy.deepcopy(model).parameters())
    if o.name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return opt.state_dict()["param_groups"]


class _Optimizer:
    """PyTorch's SGD (momentum, weight decay) and Adam (L2 weight decay), one state row per node.

    ``step`` takes the chunk's parameters ``(k, n_params)`` and gradients and returns the new parameters;
    rows of inactive nodes come back unchanged and their state is not touched.
    """

    def __init__(self, training: Any, n: int, n_params: int, device: torch.device) -> None:
        self.o = training.optimizer
        self.n, self.n_params, self.device = n, n_params, device
        self.reset()

    def reset(self) -> None:
        zeros = (self.n, self.n_params)
        if self.o.name == "adam":
            self.m = torch.zeros(zeros, device=self.device)
            self.v = torch.zeros(zeros, device=self.device)
            self.t = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        else:
            self.buf = torch.zeros(zeros, device=self.device) if self.o.momentum else None
        self.stepped = torch.zeros(self.n, dtype=torch.bool, device=self.device)  # whether any step was taken

    def step(self, lo: int, hi: int, p: torch.Tensor, g: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        o, on = self.o, active[:, None]
        if o.weight_decay:
            g = g + o.weight_decay * p
        self.stepped[lo:hi] |= active
        if o.name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which dfl-sim uses
            t = self.t[lo:hi] + active.double()
            self.t[lo:hi] = t
            m = torch.where(on, self.m[lo:hi].lerp(g, 1 - b1), self.m[lo:hi])
            v = torch.where(on, self.v[lo:hi] * b2 + (1 - b2) * g * g, self.v[lo:hi])
            self.m[lo:hi], self.v[lo:hi] = m, v
            tt = t.clamp_min(1.0)
            step_size = (o.lr / (1 - b1 ** tt)).float()[:, None]
            denom = v.sqrt() / torch.sqrt(1 - b2 ** tt).float()[:, None] + eps
            return torch.where(on, p - step_size * (m / denom), p)
        if self.buf is not None:
            buf = torch.where(on, self.buf[lo:hi] * o.momentum + g, self.buf[lo:hi])
            self.buf[lo:hi] = buf
            g = buf
        return torch.where(on, p - o.lr * g, p)

    def state_dict(self, i: int, shapes: list[tuple[int, ...]], groups: list[dict[str, Any]]) -> dict[str, Any]:
        state: dict[int, dict[str, Any]] = {}
        if bool(self.stepped[i]):
            offset = 0
            for k, shape in enumerate(shapes):
                size = math.prod(shape)
                part = slice(offset, offset + size)
                if self.o.name == "adam":
                    state[k] = {"step": torch.tensor(float(self.t[i])), "exp_avg": self.m[i, part].view(shape).cpu().clone(),
                                "exp_avg_sq": self.v[i, part].view(shape).cpu().clone()}
                elif self.buf is not None:
                    state[k] = {"momentum_buffer": self.buf[i, part].view(shape).cpu().clone()}
                offset += size
        return {"state": state, "param_groups": copy.deepcopy(groups)}

    def load_state_dict(self, i: int, sd: dict[str, Any], shapes: list[tuple[int, ...]]) -> None:
        state = {int(k): v for k, v in sd.get("state", {}).items()}
        self.stepped[i] = bool(state)
        offset = 0
        for k, shape in enumerate(shapes):
            size = math.prod(shape)
            part = slice(offset, offset + size)
            s = state.get(k, {})
            if self.o.name == "adam":
                self.m[i, part] = s["exp_avg"].reshape(-1).to(self.device) if "exp_avg" in s else 0.0
                self.v[i, part] = s["exp_avg_sq"].reshape(-1).to(self.device) if "exp_avg_sq" in s else 0.0
                if "step" in s:
                    self.t[i] = float(s["step"])
            elif self.buf is not None:
                mb = s.get("momentum_buffer")
                self.buf[i, part] = mb.reshape(-1).to(self.device) if mb is not None else 0.0
            offset += size
