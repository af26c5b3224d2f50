"""Shadow models trained together (the batched engines' path) against one at a time, in one process.

    python benchmarks/bench_shadow.py [--shadows 1 8 32] [--repeats 3] [--config experiments/ring_digits.yaml]

The attacker of ``--config`` (default: the embedded digits ring, ``mlp`` [64]) trains ``k`` shadow models
on its auxiliary pool with the victims' recipe and the epochs a victim has trained by the last round,
exactly as ``shadow_model``, ``lira_offline`` and the shadow-calibrated attacks do
(``attacks.shadow.shadow_models``): once one at a time (``view.stacked = False``, the serial and Ray
engines) and once as rows of one tensor (``view.stacked = True``, the batched engines). Printed per k:
wall time of each (the best of ``--repeats``), their ratio, and the largest parameter difference
between the two sets of models (float32 rounding).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from attacks.base import AdversaryView, Labelled  # noqa: E402
from attacks.shadow import shadow_models  # noqa: E402
from dfl.adversary.membership import Adversary  # noqa: E402
from dfl.experiment import load_config  # noqa: E402
from dfl.federation.participant import load_flat  # noqa: E402
from dfl.federation.population import Population  # noqa: E402
from dfl.plugins import load_plugins  # noqa: E402


def view(adversary: Adversary, population: Population, stacked: bool) -> AdversaryView:
    cfg = adversary.cfg
    a = cfg.attacker_ids[0] if cfg.attacker_ids else 0
    own = population.train_pool(population.splits.nodes[a].train)
    aux = adversary._aux
    assert aux is not None, "the config grants no auxiliary data (data.auxiliary_fraction)"
    return AdversaryView(
        attacker=a, round=cfg.rounds, num_classes=population.data.num_classes, recipe=cfg.training,
        local_epochs_so_far=adversary._epochs_per_round * cfg.rounds, make_model=adversary._make_model,
        load_state=load_flat, own=Labelled(own.x, own.y), auxiliary=Labelled(aux.x, aux.y), received={}, query={},
        seed=cfg.seed, stacked=stacked)


def timed(adversary: Adversary, population: Population, k: int, stacked: bool, repeats: int) -> tuple[float, list]:
    best, models = float("inf"), []
    for _ in range(repeats):
        v = view(adversary, population, stacked)  # a fresh view: nothing cached
        t0 = time.perf_counter()
        models = shadow_models(v, k, None, None)
        best = min(best, time.perf_counter() - t0)
    return best, models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "ring_digits.yaml"))
    ap.add_argument("--shadows", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_plugins()
    cfg = load_config(args.config)
    population = Population.from_config(cfg)
    adversary = Adversary(cfg, population)
    v = view(adversary, population, False)
    print(f"{args.config}: {cfg.model.name}, auxiliary pool {len(v.auxiliary)}, shadow size {min(len(v.own), len(v.auxiliary) // 2)}, "
          f"{v.local_epochs_so_far:g} epochs, batch {cfg.training.batch_size}, {args.threads} thread(s)")
    print(f"{'k':>4} {'one at a time':>14} {'stacked':>9} {'ratio':>7} {'max |diff|':>11}")
    for k in args.shadows:
        t_one, one = timed(adversary, population, k, False, args.repeats)
        t_st, st = timed(adversary, population, k, True, args.repeats)
        diff = max(float((p - q).detach().abs().max()) for a, b in zip(one, st, strict=True)
                   for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
        print(f"{k:>4} {t_one:>13.3f}s {t_st:>8.3f}s {t_one / t_st:>6.1f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
