"""``dfl-sim compare``: a grid of runs over config axes x seeds, written as one table and plots."""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfl.errors import ConfigError
from dfl.experiment import load_config, parse_override
from dfl.rundir import RunDir, check_out_dir, make_dir
from dfl.runner import RunResult, validate
from dfl.studies.grid import check_jobs, run_all


def parse_over(text: str) -> tuple[str, list[Any]]:
    """``topology.name=ring,star`` -> (``"topology.name"``, ``["ring", "star"]``); brackets keep commas."""
    if "=" not in text:
        raise ConfigError([("--over", f"{text!r} is not of the form key=v1,v2 (e.g. topology.name=ring,star)")])
    key, _, raw = text.partition("=")
    key = parse_override(f"{key}=0")[0]
    parts, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    values = [p.strip() for p in parts if p.strip()]
    if not values:
        raise ConfigError([("--over", f"{text!r} lists no values; write key=v1,v2 (e.g. topology.name=ring,star)")])
    return key, values


MIA_HEADLINE = ("_auc", "_accuracy", "_tpr_at_1_fpr", "_victim_gap")


def is_headline_mia(metric: str) -> bool:
    """The attack metrics shown in comparison tables (every metric is in comparison.csv)."""
    if metric.startswith("gi_"):
        return metric.endswith(("_psnr", "_ssim", "_recognisability", "_start_error"))
    return metric.startswith("mia_") and metric.endswith(MIA_HEADLINE) and not metric.endswith("oracle_accuracy")


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    runs: list[RunResult]


CONTEXT_FIELDS = ("round", "attacker", "node", "attack", "access", "view", "auc", "tpr_at_1_fpr", "hops",
                  "attacker_degree", "victim_degree", "attacker_betweenness", "victim_betweenness",
                  "attacker_closeness", "victim_closeness")

COMPARE_METRICS = ("mean_test_acc", "min_test_acc", "mean_train_acc", "mean_holdout_acc", "generalization_gap",
                   "consensus_distance", "time", "messages", "staleness_mean")  # the last three: mode: async


def compare(
    config: str | Path,
    over: Sequence[str],
    *,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    on_run: Callable[[str, int, int], None] | None = None,
    jobs: int = 1,
) -> CompareResult:
    """Run the grid ``over`` x ``seeds`` and write one table (mean ± std over seeds) and plots.

    ``jobs``: runs at once, each in its own process (see :func:`run_all`)."""
    if seeds < 1:
        raise ConfigError([("--seeds", f"must be at least 1, got {seeds}")])
    if out_dir is not None:
        check_out_dir(Path(out_dir), "--out")
    axes = [parse_over(o) for o in over]
    if not axes:
        raise ConfigError([("--over", "give at least one axis, e.g. --over topology.name=ring,star")])
    base = load_config(config, list(overrides))
    cells = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        sets = [f"{k}={v}" for (k, _), v in zip(axes, combo, strict=True)]
        label = ", ".join(sets)
        cfgs = [load_config(config, [*overrides, *sets, f"seed={base.seed + s}"]) for s in range(seeds)]
        cells.append((label, dict(zip([k for k, _ in axes], combo, strict=True)), cfgs))
    for _, _, cfgs in cells:  # every cell's data must be there before anything runs
        validate(cfgs[0])
    specs = [(label, cfg) for label, _, cfgs in cells for cfg in cfgs]
    check_jobs(jobs, specs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir if out_dir is not None else base.output.dir) / f"compare-{base.name}-{stamp}"
    make_dir(out / "plots", "--out" if out_dir is not None else "output.dir")
    results = run_all(specs, out_dir=out / "runs", jobs=jobs, on_run=on_run)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    points: list[dict[str, Any]] = []  # every membership record's AUC beside its graph context
    for c, (label, values, cfgs) in enumerate(cells):
        finals: list[dict[str, float]] = []
        for res in results[c * seeds : (c + 1) * seeds]:
            finals.append({**res.summary["final"], **{f"mia_{k}": v for k, v in res.summary.get("mia", {}).items()},
                           **{f"gi_{k}": v for k, v in res.summary.get("inversion", {}).items()}})
            recs = RunDir(res.run_dir).records()
            curves.setdefault(label, []).append(  # against simulated time: a synchronous round is one unit
                [(r.get("time", r["round"]), r["mean_test_acc"]) for r in recs
                 if r["kind"] == "round" and "mean_test_acc" in r])
            points += [{"cell": label, "seed": res.summary["seed"], **{k: r.get(k) for k in CONTEXT_FIELDS}}
                       for r in recs if r["kind"] == "mia"]
        row: dict[str, Any] = {**values, "seeds": len(cfgs)}
        extra = sorted({k for f in finals for k in f if k.startswith(("mia_", "gi_"))})
        for m in (*COMPARE_METRICS, *extra):
            vals = [f[m] for f in finals if m in f]
            if vals:

                row[m] = float(np.mean(vals))
                row[f"{m}_std"] = float(np.std(vals))
        rows.append(row)
    timed = any(res.summary.get("mode") == "async" for res in results)
    _write_comparison(out, axes, rows, curves, "simulated time (a synchronous round: 1 unit)" if timed else "round")
    if points:
        _write_context(out, points)
    return CompareResult(out, rows, results)


def _write_comparison(out: Path, axes: list[tuple[str, list[Any]]], rows: list[dict[str, Any]],
                      curves: dict[str, list[list[tuple[float, float]]]], xlabel: str = "round") -> None:

    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib.pyplot as plt

    fields = list(rows[0])
    for r in rows[1:]:
        fields += [k for k in r if k not in fields]
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    keys = [k for k, _ in axes]
    metrics = [m for m in fields if not m.endswith("_std") and (m in COMPARE_METRICS or is_headline_mia(m))]
    lines = ["# Comparison", "", f"Mean ± std over {rows[0]['seeds']} seed(s) of each run's final metrics.", "",
             "| " + " | ".join(keys + metrics) + " |", "|" + "---|" * (len(keys) + len(metrics))]
    for r in rows:
        cells = [str(r[k]) for k in keys] + [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if m in r else "–" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![mean test accuracy per round](plots/accuracy.png)", ""]
    (out / "comparison.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in curves.items():
        if not runs or not runs[0]:
            continue
        rounds = [r for r, _ in runs[0]]
        arr = np.array([[v for _, v in run] for run in runs])
        ax.plot(rounds, arr.mean(0), marker="o", ms=3, label=label)
        if len(runs) > 1:
            ax.fill_between(rounds, arr.mean(0) - arr.std(0), arr.mean(0) + arr.std(0), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean test accuracy over nodes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "accuracy.png", dpi=110)
    plt.close(fig)


def _write_context(out: Path, points: list[dict[str, Any]]) -> None:
    """``attack_context.csv`` (every membership record of every run: its AUC and graph context) and the
    plots of attack AUC against the attacker-victim hop distance and the victim's degree, one series per
    cell and attack (access, view), mean and spread over the records at each value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "attack_context.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["cell", "seed", *CONTEXT_FIELDS])
        w.writeheader()
        w.writerows(points)

    def series(p: dict[str, Any]) -> str:
        view = p["view"] if p["access"] == "params" and p["view"] not in (None, "received") else ""
        return f"{p['cell']}: {p['attack']} ({p['access']}{', ' + view if view else ''})"

    for key, xlabel, name in (("hops", "hop distance attacker -> victim", "auc_vs_hops"),
                              ("victim_degree", "victim's degree", "auc_vs_degree")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label in sorted({series(p) for p in points}):
            mine = [p for p in points if series(p) == label and p[key] is not None and p["auc"] is not None]
            xs = sorted({p[key] for p in mine})
            if not xs:
                continue
            vals = [[p["auc"] for p in mine if p[key] == x] for x in xs]
            ax.errorbar(xs, [float(np.mean(v)) for v in vals], yerr=[float(np.std(v)) for v in vals], marker="o",
                        ms=4, capsize=3, label=label)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("membership attack AUC (mean ± std over records)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"{name}.png", dpi=110)
        plt.close(fig)
    with open(out / "comparison.md", "a") as f:
        f.write("\n## Attack AUC and graph position\n\nEvery membership record of every run, with its attacker's "
                "and victim's place in the round's graph: `attack_context.csv`.\n\n"
                "![AUC against hop distance](plots/auc_vs_hops.png)\n\n![AUC against degree](plots/auc_vs_degree.png)\n")
