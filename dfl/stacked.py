"""Many models of one architecture as the rows of one tensor, trained together through ``torch.func``.

One piece of code trains every model dfl-sim trains in bulk: the batched engine's participants
(:mod:`dfl.engines.batched`) and the attacks' shadow and reference models (``attacks.shadow``). Each
model is one row of a ``(k, n_state)`` float32 tensor -- its parameters, then its floating buffers, in
the order of ``named_parameters()`` and ``named_buffers()`` -- and one local step of every row is one
``vmap`` over rows of ``grad_and_value(loss)(params, x, y, mask, extra)`` through ``functional_call`` on
one shell of the architecture:

* **Plans**: a ``(k, steps, batch_size)`` matrix of each row's sample indices into its own data, -1
  where a batch is short (a ragged last batch) or a row has no batch at that step (fewer samples, so
  fewer steps). The per-row loss is the masked mean of the batch's cross-entropies; a row without a
  batch at a step is inactive, and its parameters and optimizer state stay exactly as they were.
* **Optimizers** are PyTorch's update rules with one state row per model (:class:`Optimizer`): SGD with
  momentum and weight decay, Adam with its per-row step count; their checkpoints read as PyTorch's
  ``state_dict``.
* **Kernels**: one ``vmap`` over rows, or (``rowwise``, for convolutions on a CPU: :func:`vmap_pays`) the
  gradients row by row into one buffer, the optimizer updating every row at once either way.
* **Chunks**: callers train ``lo..hi`` slices of the rows, so ``k`` models larger than memory still
  train (:func:`chunk_size` sizes them from a working-memory budget).

Rows train independently: row ``i``'s result does not depend on the other rows, except through the
kernels a batched product picks (so a chunk size is part of the numerics, within float32 rounding).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

CHUNK_BYTES = 1 << 30  # working memory a chunk of rows may take when no chunk size is given

# loss(params, x, y, mask, extra) of one row: params ``{name: tensor}``, its padded batch, the batch's
# mask (1.0 for real samples) and the row's ``extra`` vector (e.g. which defenses it runs)
Loss = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# fetch(lo, hi, step, local) -> (x, y, extra): the batch of rows lo..hi-1 at step ``step``, from their
# local sample indices ``local: (k, b)`` (-1 where padded: fetch any sample there, it is masked out), and
# the rows' per-step inputs of the loss (a tensor or tuple of tensors with a leading row dimension; None: none)
Fetch = Callable[[int, int, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]


class Layout:
    """Where each parameter and floating buffer of ``model`` sits in a state row."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        named += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
        self.names = [n for n, _ in named]
        self.shapes = [tuple(t.shape) for _, t in named]
        self.sizes = [t.numel() for _, t in named]
        self.n_params = sum(p.numel() for p in model.parameters())  # the trained part of a state
        self.n_state = sum(self.sizes)
        self.param_shapes = [tuple(p.shape) for p in model.parameters()]

    def row(self, model: nn.Module) -> torch.Tensor:
        """``model``'s state as one float32 row ``(n_state,)`` (a copy)."""
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        return torch.cat([tensors[n].detach().reshape(-1).float() for n in self.names])

    def views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (k, *shape)}`` views of the rows ``(k, n_state)`` for ``functional_call``."""
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = rows[:, offset : offset + size].view(rows.shape[0], *shape)
            offset += size
        return out

    def param_parts(self) -> list[tuple[str, slice]]:
        """The trained columns of a row, per parameter: ``(name, columns)``."""
        out, offset = [], 0
        for name, size in zip(self.names, self.sizes, strict=True):
            if offset >= self.n_params:
                break
            out.append((name, slice(offset, offset + size)))
            offset += size
        return out


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over a batch's real samples (``mask`` 1.0; padding 0.0)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def cross_entropy(model: nn.Module) -> Loss:
    """The plain loss of a row: the masked mean cross-entropy of ``model`` (the shell) on its batch."""
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
             extra: torch.Tensor) -> torch.Tensor:
        return masked_mean(F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none"), mask)

    return loss


def padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Index vectors of different lengths as one ``(len(rows), longest)`` int64 matrix, -1 where short."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def batch_plan(plans: list[list[torch.Tensor]], batch_size: int) -> torch.Tensor:
    """Each row's batches (lists of index vectors) as one ``(rows, most steps, batch_size)`` matrix, -1
    where a batch is short or a row has no batch at that step."""
    return order_plan([torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for p in plans],
                      [[len(b) for b in p] for p in plans], batch_size)


def order_plan(orders: list[torch.Tensor], lengths: list[list[int]], batch_size: int) -> torch.Tensor:
    """:func:`batch_plan` of rows given as one index vector each, cut into batches of ``lengths``
    (``dfl.federation.participant.local_order``): one scatter for all rows."""
    steps = max((len(ls) for ls in lengths), default=0)
    out = torch.full((len(orders), steps, batch_size), -1, dtype=torch.long)
    flat = np.fromiter((v for ls in lengths for v in ls), dtype=np.int64)
    if flat.sum() == 0:
        return out
    per_row = np.fromiter((len(ls) for ls in lengths), dtype=np.int64, count=len(lengths))
    row = np.repeat(np.arange(len(lengths)), per_row)
    step = np.arange(len(flat)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    start = (row * steps + step) * batch_size  # each batch's first position in the flat output
    within = np.arange(flat.sum()) - np.repeat(np.cumsum(flat) - flat, flat)
    values = torch.cat(orders).to(torch.long)
    if len(values) != len(within):
        raise ValueError(f"the orders hold {len(values)} indices, their batch lengths {len(within)}")
    out.view(-1)[torch.from_numpy(np.repeat(start, flat) + within)] = values
    return out


def chunk_size(n_rows: int, n_state: int, batch_size: int, sample_numel: int, activations: int = 0,
               rowwise: bool = False, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk within ``budget`` bytes of working memory.

    A row's step holds its state, gradient, optimizer state and a few copies (about 6 state-sized
    tensors) and its batch; under one ``vmap`` also its activations (``activations`` values per sample,
    :func:`activation_numel`; kept for the backward pass and about as many gradients of them), which
    ``rowwise`` training holds for one row at a time only."""
    per_row = 4 * (6 * n_state + batch_size * (2 * sample_numel + (0 if rowwise else 3 * activations)))
    once = 4 * batch_size * 3 * activations if rowwise else 0
    return max(1, min(n_rows, (budget - once) // max(per_row, 1)))


def activation_numel(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Values every leaf module of ``model`` outputs for one sample of ``shape`` (a forward pass on zeros)."""
    total = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros((1, *shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return total


def _row(tree: Any, i: int) -> Any:
    """Row ``i`` of every tensor in a nest of tuples, lists and dicts of ``(k, ...)`` tensors."""
    if isinstance(tree, torch.Tensor):
        return tree[i]
    if isinstance(tree, dict):
        return {key: _row(v, i) for key, v in tree.items()}
    return type(tree)(_row(v, i) for v in tree)


def vmap_pays(model: nn.Module, device: torch.device) -> bool:
    """Whether one ``vmap`` over rows beats a loop over them: not for convolutions on a CPU, which ``vmap``
    turns into one grouped convolution that CPU kernels run slower than the rows one by one (2.7x slower
    for the ``cnn`` on 3x32x32 with 32 rows here); everything else gains from the batched products."""
    return device.type != "cpu" or not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


class Trainer:
    """Local steps of rows of a ``(k, n_state)`` tensor, in place, with one :class:`Optimizer` row each.

    ``rowwise``: take the gradients row by row (``grad_and_value`` per row, written into one ``(k,
    n_params)`` buffer) instead of in one ``vmap``; the optimizer updates all rows at once either way.
    Rows without a batch at a step are then skipped. Default: :func:`vmap_pays` decides."""

    def __init__(self, layout: Layout, optimizer: Optimizer, loss: Loss, rowwise: bool = False) -> None:
        self.layout, self.opt, self.rowwise = layout, optimizer, rowwise
        self.step_grad = vmap(grad_and_value(loss), in_dims=(0, 0, 0, 0, 0))
        self.row_grad = grad_and_value(loss)

    def _grads(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
               extra: Any, active: torch.Tensor) -> tuple[Callable[[str, slice], torch.Tensor], torch.Tensor]:
        """Every row's gradient (a function of a parameter's name and columns) and loss at one step."""
        k = x.shape[0]
        if not self.rowwise:
            grads, loss = self.step_grad(params, x, y, mask, extra)
            return (lambda name, part: grads[name].reshape(k, -1)), loss
        buffer = torch.zeros((k, self.layout.n_params), device=x.device)
        loss = torch.zeros(k, device=x.device)
        parts = self.layout.param_parts()
        for i in torch.nonzero(active).flatten().tolist():
            row = {name: t[i] for name, t in params.items()}
            g, loss[i] = self.row_grad(row, x[i], y[i], mask[i], _row(extra, i))
            for name, part in parts:
                buffer[i, part] = g[name].reshape(-1)
        return (lambda name, part: buffer[:, part]), loss

    def train(self, flat: torch.Tensor, lo: int, hi: int, plan: torch.Tensor, fetch: Fetch) -> torch.Tensor:
        """Every step of ``plan`` (``(hi - lo, steps, batch_size)``, see the module docstring) for rows
        ``lo..hi-1`` of ``flat``, in place; returns each row's mean loss over its steps, float64 on the CPU."""
        device = flat.device
        plan = plan.to(device)
        k = hi - lo
        none = torch.zeros((k, 0), device=device)
        loss_sum = torch.zeros(k, dtype=torch.float32, device=device)
        counts = (plan[:, :, 0] >= 0).sum(1).to(torch.float32)
        rows = flat[lo:hi]
        params = self.layout.views(rows)
        parts = self.layout.param_parts()
        for s in range(plan.shape[1]):
            local = plan[:, s]  # (k, batch_size)
            mask = (local >= 0).to(torch.float32)
            active = local[:, 0] >= 0
            x, y, extra = fetch(lo, hi, s, local)
            grad, loss = self._grads(params, x, y, mask, none if extra is None else extra, active)
            every = bool(active.all())
            self.opt.count(lo, hi, active)
            for name, part in parts:
                self.opt.step(lo, hi, part, rows[:, part], grad(name, part), active, every)
            loss_sum += torch.where(active, loss.detach(), torch.zeros_like(loss))
        return (loss_sum / counts.clamp_min(1.0)).double().cpu()


def param_groups(model: nn.Module, o: Any) -> list[dict[str, Any]]:
    """The ``param_groups`` of the optimizer (spec ``o``) PyTorch builds for ``model``, as its ``state_dict``
    holds them."""
    params = list(copy.deepcopy(model).parameters())
    if o.name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return opt.state_dict()["param_groups"]


class Optimizer:
    """PyTorch's SGD (momentum, weight decay) and Adam (L2 weight decay), one state row per model.

    ``o``: the optimizer spec (``training.optimizer``: name, lr, momentum, weight_decay). ``step``
    updates a chunk's parameter columns in place; rows of inactive models and their state stay as they were.
    """

    def __init__(self, o: Any, n: int, n_params: int, device: torch.device) -> None:
        self.o = o
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

    def take(self, rows: torch.Tensor) -> Optimizer:
        """A new optimizer holding copies of rows ``rows``'s state (train a subset, then :meth:`put` it back)."""
        sub = Optimizer(self.o, len(rows), self.n_params, self.device)
        for name in ("m", "v", "t", "buf", "stepped"):
            if getattr(self, name, None) is not None:
                setattr(sub, name, getattr(self, name).index_select(0, rows))  # a copy
        return sub

    def put(self, rows: torch.Tensor, sub: Optimizer) -> None:
        """Write the state of ``sub`` (made by :meth:`take`) back into rows ``rows``."""
        for name in ("m", "v", "t", "buf", "stepped"):
            if getattr(self, name, None) is not None:
                getattr(self, name)[rows] = getattr(sub, name)

    def count(self, lo: int, hi: int, active: torch.Tensor) -> None:
        """Mark the rows of a step that took it (Adam's step counts, and whether any state exists)."""
        self.stepped[lo:hi] |= active
        if self.o.name == "adam":
            self.t[lo:hi] += active.double()

    @torch.no_grad()
    def step(self, lo: int, hi: int, part: slice, p: torch.Tensor, g: torch.Tensor, active: torch.Tensor,
             every: bool) -> None:
        """One update of the parameter columns ``part`` of rows ``lo..hi-1``, in place in ``p: (k, m)``.

        ``every``: all rows are active (no masking needed, the common case)."""
        o, on = self.o, active[:, None]
        if o.weight_decay:
            g = g.add(p, alpha=o.weight_decay)  # torch.optim's arithmetic, in its order
        if o.name == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which dfl-sim uses
            m_old, v_old = self.m[lo:hi, part], self.v[lo:hi, part]
            m, v = m_old.lerp(g, 1 - b1), v_old * b2 + (1 - b2) * g * g
            tt = self.t[lo:hi].clamp_min(1.0)
            step_size = (o.lr / (1 - b1 ** tt)).float()[:, None]
            denom = v.sqrt() / torch.sqrt(1 - b2 ** tt).float()[:, None] + eps
            new = p - step_size * (m / denom)
            if every:
                m_old.copy_(m), v_old.copy_(v), p.copy_(new)
            else:
                m_old.copy_(torch.where(on, m, m_old)), v_old.copy_(torch.where(on, v, v_old))
                p.copy_(torch.where(on, new, p))
            return
        if self.buf is not None:
            buf = self.buf[lo:hi, part]
            if every:
                g = buf.mul_(o.momentum).add_(g)
            else:
                buf.copy_(torch.where(on, buf * o.momentum + g, buf))
                g = buf
        if every:
            p.add_(g, alpha=-o.lr)
        else:
            p.copy_(torch.where(on, p.add(g, alpha=-o.lr), p))

    def state_dict(self, i: int, shapes: list[tuple[int, ...]], groups: list[dict[str, Any]]) -> dict[str, Any]:
        """Row ``i``'s state as ``torch.optim``'s ``state_dict`` for parameters of ``shapes``."""
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
        """Set row ``i``'s state from a ``torch.optim`` ``state_dict`` (missing entries: zero)."""
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
