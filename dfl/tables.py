"""The defense evaluation tables: each one a grid of runs over seeds, written as one report.md.

``dfl-sim table NAME --dataset cifar10|digits --seeds 2`` runs every (row, column) cell of table
``NAME`` on ``experiments/tables/<dataset>.yaml`` for each seed, and writes
``<out>/table-NAME-<dataset>-<time>/report.md`` (mean ± std over seeds, then each row's change against
the first), ``table.csv`` (every run's figures) and the runs themselves. Any other registered data set
(``--dataset svhn``, ``cifar100``, ...) runs on a base experiment's settings unchanged (``--base``,
default ``cifar10``), so defenses tuned there can be judged on data they were not tuned on. Tables:

- ``augmixcloak`` (the AugMixCloak paper's comparison): F1 of the shadow-model attack and of three
  metric attacks, and benign accuracy, for no defense / AugMixCloak (tuned per node) / confidence
  masking / L2 regularization, on fully connected, ring and star topologies;
- ``adamixup`` (the AdaMixup paper's comparison): classification accuracy and the accuracy of attacks
  A1 (shadow model), A2 (metric: loss) and A3 (label only), for no defense / dropout / L1 / L2 / Mixup /
  DP-SGD / MemGuard / AdaMixup;
- ``inversion`` (the defensive-augmentation paper's comparison): model accuracy, and attack accuracy
  (recognisability), PSNR and SSIM of inverting-gradients reconstructions, for no defense / DP-SGD with
  sigma 0.1, 0.5, 1.0 / posterize M9 / the per-class CIFAR-10 policy (each cell runs the base
  experiment twice: trained with the defense, and attacked on one-step updates under it);
- ``inversion_dp``: the same measurement for no defense (as is, and with the DP-SGD rows' group norm) and
  DP-SGD with sigma 0.001, 0.003, 0.01, 0.03 and 0.1: the noise level at which one-image updates stop
  leaking;
- ``perturbation`` (the MIA-defence slides): target accuracy and global top-one attack accuracy for
  confidence regularization, image perturbation and confidence perturbation alone and combined.

Accuracies are those of the victims' query API (what an attacker is answered) on the attack's
non-members, so query-time defenses that change labels pay for it in the table.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfl.errors import ConfigError
from dfl.rundir import check_out_dir, make_dir

ROOT = Path(__file__).resolve().parents[1]
BASES = ("cifar10", "digits")  # the base experiments in experiments/tables/

L2 = "{name: weight_penalty, params: {norm: l2, lam: 0.0005}}"
L1 = "{name: weight_penalty, params: {norm: l1, lam: 0.00001}}"


@dataclass(frozen=True)
class Table:
    title: str
    attacks: str  # the YAML list set as ``attacks``
    rows: list[tuple[str, list[str]]]  # label, overrides
    metrics: list[tuple[str, str]]  # header, summary key (``mia.<key>`` or ``final.<key>``)
    columns: list[tuple[str, list[str]]] = field(default_factory=lambda: [("", [])])
    note: str = ""
    # runs per cell: (phase, overrides applied before the row's); a metric key ``phase:part.key`` reads that run
    phases: list[tuple[str, list[str]]] = field(default_factory=lambda: [("", [])])
    only: dict[str, tuple[str, ...]] = field(default_factory=dict)  # row label -> the only data sets it applies to


def _defenses(*specs: str) -> str:
    return "defenses=[" + ", ".join(specs) + "]"


def _dp(sigma: float) -> list[str]:
    return [_defenses(f"{{name: dp_sgd, params: {{noise_multiplier: {sigma}, max_grad_norm: 1.0}}}}"),
            "model.params.norm=group"]


# the inversion tables' two runs per cell, what they read and how it is measured
INVERSION_PHASES = [
    ("model", ["attackers=[]"]),
    # one image, one plain SGD step per node; on a complete graph of 11 nodes the attacker inverts 10 updates
    ("attack", ["rounds=1", "nodes=11", "topology.name=fully_connected", "training.local_steps=1",
                "training.batch_size=1", "training.optimizer.momentum=0.0",
                "attacks=[{name: inverting_gradients, params: {iterations: 600}}]"]),
]
INVERSION_METRICS = [("model acc", "model:final.mean_test_acc"),
                     ("attack acc", "attack:inversion.inverting_gradients_exact_recognisability"),
                     ("PSNR", "attack:inversion.inverting_gradients_exact_psnr"),
                     ("SSIM", "attack:inversion.inverting_gradients_exact_ssim")]
INVERSION_NOTE = ("Model accuracy: the base experiment trained with the defense (no attacker). Attack accuracy: the "
                  "reference classifier's accuracy on inverting-gradients reconstructions of the one-image, one-step "
                  "updates of 10 neighbours (exact start state, round 1) made under the same defense; PSNR and SSIM of "
                  "those reconstructions against the images as stored. DP-SGD rows use group norm.")


TABLES: dict[str, Table] = {
    "augmixcloak": Table(
        title="AugMixCloak against the shadow-model attack and three metric attacks",
        attacks="[{name: shadow_model}, {name: confidence}, {name: entropy}, {name: modified_entropy}]",
        rows=[
            ("no defense", ["defenses=[]"]),
            ("AugMixCloak (tuned per node)", [_defenses("{name: augmixcloak, params: {tune: true}}")]),
            ("confidence masking (top-1)", [_defenses("{name: confidence_masking, params: {mode: top_k, k: 1}}")]),
            ("L2 regularization", [_defenses(L2)]),
        ],
        columns=[(t, [f"topology.name={t}"]) for t in ("fully_connected", "ring", "star")],
        metrics=[("shadow F1", "mia.shadow_model_f1"), ("confidence F1", "mia.confidence_f1"),
                 ("entropy F1", "mia.entropy_f1"), ("m-entropy F1", "mia.modified_entropy_f1"),
                 ("benign acc", "mia.shadow_model_answered_non_member_acc")],
        note="F1 of 0.667 is the all-member baseline; AugMixCloak aims at [0.35, 0.65].",
    ),
    "adamixup": Table(
        title="Training- and query-time defenses against attacks A1 (shadow model), A2 (loss), A3 (label only)",
        attacks="[{name: shadow_model}, {name: loss}, {name: label_only}]",
        rows=[
            ("no defense", ["defenses=[]"]),
            ("dropout 0.5", ["defenses=[]", "model.params.dropout=0.5"]),
            ("L1", [_defenses(L1)]),
            ("L2", [_defenses(L2)]),
            ("Mixup", [_defenses("{name: mixup}")]),
            ("DP-SGD (sigma 1.0, C 1.0)", [_defenses("{name: dp_sgd, params: {noise_multiplier: 1.0, max_grad_norm: 1.0}}"),
                                           "model.params.norm=group"]),
            ("MemGuard", [_defenses("{name: memguard}")]),
            ("AdaMixup", [_defenses("{name: adamixup}")]),
        ],
        metrics=[("classification acc", "mia.shadow_model_answered_non_member_acc"),
                 ("A1 shadow acc", "mia.shadow_model_accuracy"), ("A2 loss acc", "mia.loss_accuracy"),
                 ("A3 label-only acc", "mia.label_only_accuracy"), ("A2 loss AUC", "mia.loss_auc")],
        note="Attack accuracy of 0.5 is chance (balanced members and non-members).",
    ),
    "inversion": Table(
        title="Defenses against gradient inversion: model accuracy and attack accuracy",
        attacks="[]",
        rows=[
            ("no defense", ["defenses=[]"]),
            ("DP-SGD sigma 0.1", _dp(0.1)),
            ("DP-SGD sigma 0.5", _dp(0.5)),
            ("DP-SGD sigma 1.0", _dp(1.0)),
            ("posterize M9", [_defenses("{name: defensive_augmentation, params: {op: posterize, magnitude: 9}}")]),
            ("per-class policy (Table 3)", [_defenses("{name: defensive_augmentation, params: {preset: cifar10}}")]),
        ],
        phases=INVERSION_PHASES,
        metrics=INVERSION_METRICS,
        only={"per-class policy (Table 3)": ("cifar10",)},  # it names CIFAR-10's classes
        note=INVERSION_NOTE,
    ),
    "inversion_dp": Table(
        title="DP-SGD noise against gradient inversion: where the leakage stops",
        attacks="[]",
        rows=[("no defense", ["defenses=[]"]),
              ("no defense, group norm", ["defenses=[]", "model.params.norm=group"]),  # the DP rows' model
              *((f"DP-SGD sigma {s}", _dp(s)) for s in (0.001, 0.003, 0.01, 0.03, 0.1))],
        phases=INVERSION_PHASES,
        metrics=INVERSION_METRICS,
        note=INVERSION_NOTE + (" One DP-SGD step on one image adds noise of std sigma * C to every parameter against a "
                               "clipped gradient of norm at most C, so the levels at which reconstructions still leak "
                               "sit far below the usual training noise multipliers."),
    ),
    "perturbation": Table(
        title="Perturbation defenses against the global top-one attack",
        attacks="[{name: top1_threshold}]",
        rows=[
            ("no defense", ["defenses=[]"]),
            ("confidence regularization (r 1)", [_defenses("{name: confidence_regularization, params: {r: 1.0}}")]),
            ("image perturbation (r 0.05)", [_defenses("{name: image_perturbation, params: {r: 0.05}}")]),
            ("confidence perturbation (r 1)", [_defenses("{name: confidence_perturbation, params: {r: 1.0}}")]),
            # in the order of the query: pixels, then noise on the logits, then the clip (clipping first would
            # leave a [-1, 1] range that the noise swamps)
            ("all three", [_defenses("{name: image_perturbation, params: {r: 0.05}}",
                                     "{name: confidence_perturbation, params: {r: 1.0}}",
                                     "{name: confidence_regularization, params: {r: 1.0}}")]),
        ],
        metrics=[("target acc", "mia.top1_threshold_answered_non_member_acc"),
                 ("top-one attack acc", "mia.top1_threshold_accuracy"), ("top-one AUC", "mia.top1_threshold_auc")],
        note=("Ranges in this tool's units: logits clipped to [-1, 1]; pixel noise of +-0.05 on [0, 1] images; "
              "logit noise of +-1. The slides combine regularization 1, image perturbation 0.5 and confidence "
              "perturbation 15 in their own units (scores in percent, pixels in 0-255) at under 1 point of "
              "accuracy; these are settings of like strength."),
    ),
}


def _value(summary: dict[str, Any], key: str) -> float:
    part, name = key.split(".", 1)
    return float(summary.get(part, {}).get(name, float("nan")))


def _phase_value(summaries: dict[str, dict[str, Any]], key: str) -> float:
    phase, _, rest = key.rpartition(":")
    return _value(summaries[phase]["summary"], rest)


def run_table(name: str, dataset: str, *, seeds: int = 2, overrides: list[str] | None = None,
              out_dir: str | Path | None = None, on_run: Callable[[str, int, int], None] | None = None,
              jobs: int = 1, base: str | None = None) -> Path:
    """Run table ``name`` on ``dataset`` over ``seeds`` seeds; returns the folder holding its report.md.

    ``jobs``: runs at once, each in its own process (:func:`dfl.api.run_all`); the figures do not depend on it."""
    from dfl import api
    from dfl.experiment import load_config

    if name not in TABLES:
        raise ConfigError([("table", f"unknown table {name!r}; choose one of {', '.join(TABLES)}")])
    if base is not None and base not in BASES:
        raise ConfigError([("--base", f"unknown base experiment {base!r}; choose one of {', '.join(BASES)}")])
    base = base or (dataset if dataset in BASES else "cifar10")
    swap: list[str] = []
    if dataset != base:
        from dfl.plugins import load_plugins
        from dfl.registries import DATASETS

        load_plugins()
        if dataset not in DATASETS:
            raise ConfigError([("--dataset", f"unknown dataset {dataset!r}; known: {', '.join(DATASETS.names())}")])
        swap = [f"data.dataset={{name: {dataset}}}"]
    if seeds < 1:
        raise ConfigError([("--seeds", f"must be at least 1, got {seeds}")])
    if out_dir is not None:
        check_out_dir(Path(out_dir), "--out")
    table = TABLES[name]
    config = ROOT / "experiments" / "tables" / f"{base}.yaml"
    common = [*swap, f"attacks={table.attacks}", *(overrides or [])]
    rows = [(row, sets) for row, sets in table.rows if dataset in table.only.get(row, (dataset,))]
    cells = [(row, col, [*row_sets, *col_sets]) for row, row_sets in rows for col, col_sets in table.columns]
    base_cfg = load_config(config, common)
    # every cell must be valid (and fit the jobs) before anything runs
    specs = [(f"{row}{', ' + col if col else ''}{', ' + phase if phase else ''}, seed {base_cfg.seed + s}",
              api.validate(config, [*common, *phase_sets, *sets, f"seed={base_cfg.seed + s}"]))
             for row, col, sets in cells for s in range(seeds) for phase, phase_sets in table.phases]
    api.check_jobs(jobs, specs)
    out = Path(out_dir if out_dir is not None else base_cfg.output.dir) / f"table-{name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    make_dir(out, "--out" if out_dir is not None else "output.dir")
    results = iter(api.run_all(specs, out_dir=out / "runs", jobs=jobs, on_run=on_run))
    runs: list[dict[str, Any]] = []
    for row, col, _ in cells:
        for s in range(seeds):
            summaries = {}
            for phase, _ in table.phases:
                res = next(results)
                summaries[phase] = {"summary": res.summary, "run_dir": res.run_dir.name}
            runs.append({"row": row, "column": col, "seed": base_cfg.seed + s,
                         "run_dir": " ".join(v["run_dir"] for v in summaries.values()),
                         **{h: _phase_value(summaries, k) for h, k in table.metrics}})
    _write(out, name, dataset, base, table, [r for r, _ in rows], runs, seeds)
    return out


def _write(out: Path, name: str, dataset: str, base: str, table: Table, rows: list[str], runs: list[dict[str, Any]],
           seeds: int) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(runs)
    headers = [h for h, _ in table.metrics]
    cols = [c for c, _ in table.columns]
    lines = [f"# {table.title}", "",
             f"`dfl-sim table {name} --dataset {dataset} --seeds {seeds}` on `experiments/tables/{base}.yaml`"
             + (f" with `data.dataset={{name: {dataset}}}`" if dataset != base else "") + "; "
             f"mean ± std over {seeds} seed(s); every run is under `runs/`.", ""]
    head = (["defense", "topology"] if cols != [""] else ["defense"]) + headers
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for col in cols:
            cell = [r for r in runs if r["row"] == row and r["column"] == col]
            vals = [f"{np.mean([r[h] for r in cell]):.3f} ± {np.std([r[h] for r in cell]):.3f}" for h in headers]
            lines.append("| " + " | ".join([row, col] if col else [row]) + " | " + " | ".join(vals) + " |")
    same = "seed and topology" if cols != [""] else "seed"
    lines += ["", f"Change against {rows[0]} (each run minus the {rows[0]} run of the same {same}; mean ± std):", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows[1:]:
        for col in cols:
            base = {r["seed"]: r for r in runs if r["row"] == rows[0] and r["column"] == col}
            cell = [r for r in runs if r["row"] == row and r["column"] == col]
            deltas = [[r[h] - base[r["seed"]][h] for r in cell] for h in headers]
            vals = [f"{np.mean(d):+.3f} ± {np.std(d):.3f}" for d in deltas]
            lines.append("| " + " | ".join([row, col] if col else [row]) + " | " + " | ".join(vals) + " |")
    if table.note:
        lines += ["", table.note]
    (out / "report.md").write_text("\n".join(lines) + "\n")
