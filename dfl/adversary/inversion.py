"""Gradient inversion in a decentralized federation: attackers invert their neighbours' updates.

An ``Inverter`` is a ``Federation`` observer. In a scheduled round r, each attacker a takes every
neighbour v's shared state ``x_v`` and the state ``s_v`` it believes v began round r from, and inverts
the update ``x_v - s_v`` turned into per-parameter pseudo-gradients ``-(x_v - s_v) / (lr * steps)``:
the true mean gradient of v's batch when v took one plain SGD step, an average over many steps
otherwise (records say which: ``update: gradient | pseudo-gradient``). What ``s_v`` is depends on
``knowledge`` (DESIGN.md §6):

- ``exact``: the true start (an upper bound on what an attacker can do);
- ``observed``: what a can compute from what it received. In round 1 every node starts from the shared
  initial model, so the start is exact. Later, ``s_v = sum_j W_vj x_j`` over the previous round's graph
  and mixing weights (public), but a has received ``x_j`` only from its own neighbours (and knows its
  own), so it renormalises the weights over the ``j`` it knows: exact in a fully connected graph,
  approximate in a ring or a star (the record's ``start_error`` says how far off it was).

The truth is the victim's round-r batches (a pure function of seed, node and round); the ``B``
reconstructions are paired with the images the victim trained on by the assignment of lowest total MSE
(for one step, exactly its batch). Per (round, attacker, victim, attack) a ``kind: inversion`` record
holds MSE, PSNR, SSIM, label accuracy, recognisability (the accuracy of the cached reference classifier
on the reconstructions, "attack accuracy" in the defensive-augmentation paper) and the runtime; a grid
PNG (originals above, reconstructions below) goes to ``plots/``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import nn

from dfl.adversary.gradients import pseudo_gradient
from dfl.adversary.reference import reference_classifier
from dfl.attack import InversionAttack, round_targets, scheduled
from dfl.config import AttackSpec, ExperimentConfig
from dfl.federation.participant import flatten_into_views, load_flat, local_batches
from dfl.federation.population import Population
from dfl.metrics.graph import GraphContext
from dfl.metrics.images import mse, pair, psnr, ssim, to_pixels
from dfl.registries import ATTACKS
from dfl.seeding import INVERSION, derive_seed
from dfl.topology import build_mixing

Record = dict[str, Any]


def is_inversion(name: str) -> bool:
    return name in ATTACKS and getattr(ATTACKS.get(name).obj, "kind", "") == "inversion"


class Inverter:
    """Runs the configured gradient-inversion attacks of every attacker (a ``Federation`` observer)."""

    def __init__(self, cfg: ExperimentConfig, population: Population, plots: Path | None = None) -> None:
        self.cfg = cfg
        self.population = population
        self.plots = plots
        self.attackers = cfg.attacker_ids
        self.attacks: list[tuple[int, AttackSpec, InversionAttack]] = []
        for i, spec in enumerate(cfg.attacks):
            if is_inversion(spec.name):
                entry = ATTACKS.get(spec.name, f"attacks.{i}.name")
                self.attacks.append((i, spec, entry.obj(entry.parse_params(spec.params, f"attacks.{i}.params"))))
        self._previous: tuple[nx.Graph, torch.Tensor] | None = None  # last round's graph and shared states
        self._reference: tuple[nn.Module, float] | None = None

    def reference(self) -> tuple[nn.Module, float]:
        if self._reference is None:

            self._reference = reference_classifier(self.population.data)
        return self._reference

    def _model(self, state: torch.Tensor) -> nn.Module:
        model = copy.deepcopy(self.population.template())
        flatten_into_views(model)
        load_flat(model, state.detach().cpu())
        return model

    needs_starts = True  # mode: async: the messages an attacker heard come with their senders' start states

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor,
                heard: list[dict[int, Any]] | None = None) -> list[Record]:
        """``heard`` (``mode: async``): an attacker inverts, of each target, the newest message that
        reached it: the update from the state its sender began that iteration from (``exact``) or from
        the message it heard from it before (``observed``; none yet: the initial model for a first
        iteration, else the attacker's own newest state), with the batches of that iteration. The
        record adds the message's ``iteration`` and ``message_time``."""
        r = round_idx + 1
        records: list[Record] = []
        todo = [(i, spec, atk) for i, spec, atk in self.attacks if scheduled(spec, r, self.cfg.rounds)]
        if todo and self.attackers:
            shared_cpu, starts_cpu = shared.detach().cpu(), starts.detach().cpu()
            context = GraphContext(graph, seed=self.cfg.seed)
            for a in self.attackers:
                for i, spec, attack in todo:
                    for v in round_targets(spec, a, graph, self.attackers):
                        if heard is None:
                            exact = starts_cpu[v]
                            record = self._attack_one(i, spec, attack, a, v, round_idx, shared_cpu[v], exact,
                                                      lambda a=a, v=v, e=exact: self.observed_start(a, v, round_idx, e),
                                                      round_idx)
                        elif v in heard[a]:
                            m = heard[a][v]
                            guess = m.previous if m.previous is not None else (
                                self.population.initial_state() if m.iteration == 0 else shared_cpu[a])
                            record = self._attack_one(i, spec, attack, a, v, round_idx, m.state, m.start,
                                                      lambda g=guess: g, m.iteration)
                            record.update(iteration=m.iteration, message_time=m.time)
                        else:
                            continue  # nothing of v reached a yet
                        records.append({**record, **context.pair(a, v)})
        self._previous = (graph, shared.detach().cpu().clone()) if self.attacks else None
        return records

    def observed_start(self, a: int, v: int, round_idx: int, exact: torch.Tensor) -> torch.Tensor:
        """Attacker ``a``'s estimate of the state victim ``v`` began round ``round_idx`` from."""
        if round_idx == 0 or self._previous is None:
            return exact  # the initial model is common knowledge
        graph, prev = self._previous

        W = build_mixing(self.cfg, graph, self.population.sample_counts())
        known = sorted({a, *graph.neighbors(a)})
        cols = [j for j in known if W[v, j] != 0]
        if not cols:
            return prev[v]
        w = torch.tensor(W[v, cols] / W[v, cols].sum(), dtype=prev.dtype)
        return (w[:, None] * prev[cols]).sum(0)

    def _attack_one(self, i: int, spec: AttackSpec, attack: InversionAttack, a: int, v: int, round_idx: int,
                    state: torch.Tensor, exact: torch.Tensor, observed: Callable[[], torch.Tensor],
                    trained_in: int) -> Record:
        """``a`` inverts ``v``'s ``state``, trained from ``exact`` with the batches of its round (``mode:
        async``: iteration) ``trained_in``; ``observed()``: the start the attacker believes otherwise."""
        pop, t = self.population, self.cfg.training
        knowledge = getattr(attack.params, "knowledge", "exact")
        start = exact if knowledge == "exact" else observed()
        update = state - start
        true_update = state - exact
        node = pop.splits.nodes[v]
        batches = local_batches(self.cfg.seed, v, trained_in, len(node.train), t)
        steps = len(batches)
        used = torch.unique(torch.cat(batches)) if batches else torch.empty(0, dtype=torch.long)
        truth = pop.train_pool(node.train[used.numpy()])
        batch = min(int(getattr(attack.params, "batch_size", None) or t.batch_size), len(used))
        model = self._model(start)
        grads = pseudo_gradient(model, update, t.optimizer.lr, steps)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, INVERSION, i, round_idx + 1, a, v))
        t0 = time.perf_counter()
        rec = attack.reconstruct(model, grads, batch, pop.data.num_classes, tuple(pop.data.shape), g,  # type: ignore[arg-type]
                                 pop.mean, pop.std)
        seconds = time.perf_counter() - t0
        images = rec.images.detach().cpu()
        order = pair(images, truth.x.cpu(), pop.mean, pop.std)  # recon k <-> truth order[k]
        originals, labels = truth.x.cpu()[order], truth.y.cpu()[order]
        ref, ref_acc = self.reference()
        with torch.no_grad():
            recognised = (ref.eval()(images).argmax(1) == labels).float().numpy()
        plain_sgd = t.optimizer.name == "sgd" and (t.optimizer.momentum == 0 or t.reset_optimizer) \
            and t.optimizer.weight_decay == 0
        record: Record = {
            "round": round_idx + 1, "node": v, "kind": "inversion", "attacker": a, "attack": spec.name,
            "knowledge": knowledge, "update": "gradient" if steps == 1 and plain_sgd else "pseudo-gradient",
            "local_steps": steps, "batch_size": batch, "images_trained_on": int(len(used)),
            "mse": float(np.mean(mse(images, originals, pop.mean, pop.std))),
            "psnr": float(np.mean(np.minimum(psnr(images, originals, pop.mean, pop.std), 100.0))),
            "ssim": float(np.mean(ssim(images, originals, pop.mean, pop.std))),
            "label_acc": float((rec.labels.cpu() == labels).float().mean()),
            "recognisability": float(recognised.mean()), "reference_test_acc": ref_acc,
            "start_error": float((start - exact).norm() / true_update.norm().clamp_min(1e-12)),
            "iterations": int(rec.iterations), "seconds": round(seconds, 3),
            "final_mismatch": float(rec.loss_history[-1]) if rec.loss_history else float("nan"),
        }
        if self.plots is not None:
            name = f"inversion_r{round_idx + 1}_a{a}_v{v}_{spec.name}_{knowledge}.png"
            save_grid(self.plots / name, originals, images, pop.mean, pop.std,
                      f"{spec.name} ({knowledge}), round {round_idx + 1}, node {a} -> {v}: PSNR {record['psnr']:.1f} dB")
            record["grid"] = f"plots/{name}"
        return record


def save_grid(path: Path, originals: torch.Tensor, recon: torch.Tensor, mean: np.ndarray, std: np.ndarray,
              title: str) -> None:
    """Originals above, reconstructions below, as one PNG."""
    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib.pyplot as plt


    top, bottom = to_pixels(originals, mean, std), to_pixels(recon, mean, std)
    n = len(top)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 3.0), squeeze=False)
    for k in range(n):
        for row, imgs in enumerate((top, bottom)):
            img = np.clip(imgs[k].transpose(1, 2, 0), 0, 1)
            axes[row, k].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                                vmin=0, vmax=1)
            axes[row, k].axis("off")
    axes[0, 0].set_title("original", fontsize=7, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
