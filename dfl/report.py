"""Turns a run's metric records into tables, plots, ``summary.json`` and ``report.md``.

Reads only the records (and the config, splits and round-0 graph), so a resumed run and an
uninterrupted one produce the same report.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from dfl.config import ExperimentConfig
from dfl.metrics.membership import ROC_POINTS

Record = dict[str, Any]


def final_evals(records: list[Record]) -> tuple[int, list[Record]]:
    """The last evaluation round and its per-node eval records (node order)."""
    evals = [r for r in records if r["kind"] == "eval"]
    if not evals:
        return 0, []
    last = max(r["round"] for r in evals)
    return last, sorted((r for r in evals if r["round"] == last), key=lambda r: r["node"])


def summarize(cfg: ExperimentConfig, records: list[Record], counts: np.ndarray) -> dict[str, Any]:
    """Final per-node and aggregate metrics (mean/std/min/max over honest nodes and all nodes)."""
    last, finals = final_evals(records)
    rounds = [r for r in records if r["kind"] == "round"]
    attackers = set(cfg.attacker_ids)
    keys = [k for k in (finals[0] if finals else {}) if k not in ("round", "node", "kind")]
    agg: dict[str, float] = {}
    for k in keys:
        vals = np.array([r[k] for r in finals])
        agg[f"mean_{k}"] = float(vals.mean())
        agg[f"std_{k}"] = float(vals.std())
        agg[f"min_{k}"] = float(vals.min())
        agg[f"max_{k}"] = float(vals.max())
    if "mean_train_acc" in agg and "mean_holdout_acc" in agg:
        agg["generalization_gap"] = agg["mean_train_acc"] - agg["mean_holdout_acc"]
    if rounds:
        agg["consensus_distance"] = rounds[-1]["consensus_distance"]
    if cfg.mode == "async" and rounds:  # the whole run's messages and their age when mixed
        train = [r for r in records if r["kind"] == "train"]
        mixed = sum(r["mixed"] for r in train)
        agg["time"] = rounds[-1]["time"]
        agg["messages"] = float(sum(r["messages"] for r in rounds))
        agg["staleness_mean"] = sum(r["staleness_mean"] * r["mixed"] for r in train) / mixed if mixed else 0.0
        agg["staleness_max"] = max(r["staleness_max"] for r in train)
    per_node = [
        {"node": r["node"], "role": "attacker" if r["node"] in attackers else "honest",
         "train_samples": int(counts[r["node"]]), **{k: r[k] for k in keys}}
        for r in finals
    ]
    return {
        "mia": mia_summary(records),
        "inversion": inversion_summary(records),
        **dp_audit_summary(records),
        "name": cfg.name,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "nodes": cfg.nodes,
        "topology": cfg.topology.name,
        "dataset": cfg.data.dataset.name,
        "model": cfg.model.name,
        "final_round": last,
        "final": agg,
        "per_node": per_node,
    }


MIA_KEYS = ("auc", "accuracy", "f1", "advantage", "tpr_at_1_fpr", "tpr_at_0.1_fpr", "tpr_at_0.01_fpr", "oracle_accuracy",
            "victim_train_acc", "victim_holdout_acc", "victim_gap", "answered_member_acc", "answered_non_member_acc",
            "detected")


def mia_summary(records: list[Record]) -> dict[str, float]:
    """Per attack (access and view), the mean over attacker-victim pairs at its last attacked round:
    ``{attack}_{metric}`` (query), ``{attack}_params_{metric}`` (the received state),
    ``{attack}_params_{view}_{metric}`` (``own``, ``isolated``); ``{attack}_evasion_{metric}`` for an
    attack with ``evasion`` (one such spec per attack name)."""
    mia = [r for r in records if r["kind"] == "mia"]
    out: dict[str, float] = {}
    def group(r: Record) -> tuple[str, str, str, bool]:
        return r["attack"], r["access"], r.get("view") or "received", bool(r.get("evasion"))

    for name in sorted({group(r) for r in mia}):
        rows = [r for r in mia if group(r) == name]
        last = max(r["round"] for r in rows)
        rows = [r for r in rows if r["round"] == last]
        label = name[0] if name[1] == "query" else f"{name[0]}_params" + ("" if name[2] == "received" else f"_{name[2]}")
        label += "_evasion" if name[3] else ""
        for k in MIA_KEYS:
            vals = [r[k] for r in rows if r.get(k) is not None]  # None: an FPR the set cannot resolve
            if vals:
                out[f"{label}_{k}"] = float(np.mean(vals))
    return out


def dp_audit_summary(records: list[Record]) -> dict[str, Any]:
    """``{"dp_audit": ...}`` with ``dp_audit`` records: how many, how many violations, and at the last
    audited round the mean accountant epsilon and mean and largest lower bound; ``{}`` without."""
    audits = [r for r in records if r["kind"] == "dp_audit"]
    if not audits:
        return {}
    last = max(r["round"] for r in audits)
    final = [r for r in audits if r["round"] == last]
    return {"dp_audit": {"audits": len(audits), "violations": sum(bool(r["violation"]) for r in audits),
                         "round": last, "mean_epsilon": float(np.mean([r["epsilon"] for r in final])),
                         "mean_epsilon_lower": float(np.mean([r["epsilon_lower"] for r in final])),
                         "max_epsilon_lower": float(max(r["epsilon_lower"] for r in final))}}


INVERSION_KEYS = ("psnr", "ssim", "mse", "label_acc", "recognisability", "start_error", "seconds")


def inversion_summary(records: list[Record]) -> dict[str, float]:
    """Per attack and knowledge, the mean over attacker-victim pairs and attacked rounds: ``{attack}_{knowledge}_{metric}``."""
    inv = [r for r in records if r["kind"] == "inversion"]
    out: dict[str, float] = {}
    for attack, knowledge in sorted({(r["attack"], r["knowledge"]) for r in inv}):
        rows = [r for r in inv if (r["attack"], r["knowledge"]) == (attack, knowledge)]
        for k in INVERSION_KEYS:
            out[f"{attack}_{knowledge}_{k}"] = float(np.mean([r[k] for r in rows]))
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_tables(out: Path, records: list[Record], summary: dict[str, Any], histograms: np.ndarray,
                 classes: list[str]) -> None:
    tables = out / "tables"
    evals = [{k: v for k, v in r.items() if k != "kind"} for r in records if r["kind"] == "eval"]
    _write_csv(tables / "node_metrics.csv", evals)
    _write_csv(tables / "rounds.csv", [{k: v for k, v in r.items() if k not in ("kind", "node")}
                                       for r in records if r["kind"] == "round"])
    _write_csv(tables / "final.csv", summary["per_node"])
    mia = [{k: v for k, v in r.items() if k not in ("kind", "roc_tpr")} for r in records if r["kind"] == "mia"]
    if mia:
        _write_csv(tables / "mia.csv", mia)
    inversion = [{k: v for k, v in r.items() if k != "kind"} for r in records if r["kind"] == "inversion"]
    if inversion:
        _write_csv(tables / "inversion.csv", inversion)
    audits = [{k: v for k, v in r.items() if k != "kind"} for r in records if r["kind"] == "dp_audit"]
    if audits:
        _write_csv(tables / "dp_audit.csv", audits)
    _write_csv(tables / "label_histogram.csv",
               [{"node": i, **{c: int(v) for c, v in zip(classes, row, strict=True)}} for i, row in enumerate(histograms)])


def _layout(graph: nx.Graph, name: str) -> dict[int, Any]:
    n = graph.number_of_nodes()
    if name in ("ring", "fully_connected") or n > 200:
        return nx.circular_layout(graph)
    if name == "star":
        return nx.shell_layout(graph, [[0], [i for i in graph.nodes if i != 0]]) if n > 1 else nx.circular_layout(graph)
    return nx.spring_layout(graph, seed=0)


def write_plots(out: Path, cfg: ExperimentConfig, records: list[Record], graph: nx.Graph) -> list[str]:
    """Accuracy per round per node, consensus distance, and the topology with attackers marked."""
    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib

    matplotlib.use("Agg")
    # here, not at the top: matplotlib costs about 0.7 s of start-up, and only the plots need it
    import matplotlib.pyplot as plt

    made = []
    attackers = set(cfg.attacker_ids)
    # mode: async plots against simulated time: round r ends at r * interval
    scale, xlabel = (cfg.async_.interval, "simulated time") if cfg.mode == "async" else (1.0, "round")
    evals = [r for r in records if r["kind"] == "eval"]
    metric = "test_acc" if evals and "test_acc" in evals[0] else next(
        (k for k in (evals[0] if evals else {}) if k.endswith("_acc")), None)
    if metric:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        by_node: dict[int, list[tuple[int, float]]] = {}
        for r in evals:
            by_node.setdefault(r["node"], []).append((r["round"] * scale, r[metric]))
        rounds = sorted({r["round"] * scale for r in evals})
        if cfg.nodes <= 50:
            for node, pts in sorted(by_node.items()):
                xs, ys = zip(*pts, strict=True)
                style = {"color": "tab:red", "ls": "--", "lw": 1.6} if node in attackers else {"lw": 1.0, "alpha": 0.8}
                ax.plot(xs, ys, label=f"node {node}" + (" (attacker)" if node in attackers else ""), **style)
            if cfg.nodes <= 12:
                ax.legend(fontsize=7, ncol=2)
        else:
            arr = np.array([[dict(by_node[n])[r] for r in rounds] for n in sorted(by_node)])
            ax.fill_between(rounds, arr.min(0), arr.max(0), alpha=0.25, label="min-max over nodes")
            ax.plot(rounds, arr.mean(0), lw=2, label="mean over nodes")
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{cfg.name}: {metric.replace('_', ' ')} per node ({cfg.topology.name}, {cfg.nodes} nodes)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "plots" / "accuracy.png", dpi=110)
        plt.close(fig)
        made.append("plots/accuracy.png")

    rounds_rec = [r for r in records if r["kind"] == "round"]
    if rounds_rec:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["round"] * scale for r in rounds_rec], [r["consensus_distance"] for r in rounds_rec], marker="o", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("consensus distance")
        ax.set_yscale("log" if min(r["consensus_distance"] for r in rounds_rec) > 0 else "linear")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "plots" / "consensus.png", dpi=110)
        plt.close(fig)
        made.append("plots/consensus.png")

    if cfg.mode == "async" and rounds_rec:
        made.append(_staleness_plot(out, records, scale))

    mia = [r for r in records if r["kind"] == "mia"]
    if mia:
        last = max(r["round"] for r in mia)
        fig, ax = plt.subplots(figsize=(5.5, 5))
        shown = [r for r in mia if r["round"] == last]
        floor = max(1e-4, min(r.get("fpr_floor", 1e-3) for r in shown))  # the smallest FPR the sets resolve
        for r in shown:
            keep = ROC_POINTS >= r.get("fpr_floor", 0.0)
            ax.plot(ROC_POINTS[keep], np.asarray(r["roc_tpr"])[keep], lw=1.2,
                    label=f"{r['attack']} ({r['access']}) {r['attacker']}->{r['node']}: AUC {r['auc']:.3f}")
        ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"membership inference, round {last}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "plots" / "roc.png", dpi=110)
        plt.close(fig)
        made.append("plots/roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    pos = _layout(graph, cfg.topology.name)
    colors = ["tab:red" if i in attackers else "tab:blue" for i in graph.nodes]
    small = graph.number_of_nodes() <= 50
    nx.draw_networkx(graph, pos, ax=ax, node_color=colors, with_labels=small, node_size=300 if small else 20,
                     font_color="white", font_size=8, width=0.8 if small else 0.2, edge_color="0.5")
    ax.set_title(f"{cfg.topology.name} ({cfg.nodes} nodes; attackers in red)" if attackers
                 else f"{cfg.topology.name} ({cfg.nodes} nodes)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "plots" / "topology.png", dpi=110)
    plt.close(fig)
    made.append("plots/topology.png")
    return made


def _staleness_plot(out: Path, records: list[Record], scale: float) -> str:
    """``mode: async``: per interval, the mean and largest age of the mixed messages over the nodes
    (simulated time), and the messages delivered."""
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    rounds = sorted({r["round"] for r in train})
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    xs = [r * scale for r in rounds]
    mixing = {r: [t for t in train if t["round"] == r and t["mixed"]] for r in rounds}
    ax.plot(xs, [float(np.mean([t["staleness_mean"] for t in mixing[r]])) if mixing[r] else np.nan for r in rounds],
            marker="o", ms=3, label="mean over mixing nodes")
    ax.plot(xs, [max((t["staleness_max"] for t in mixing[r]), default=np.nan) for r in rounds], marker="^", ms=3,
            label="largest")
    ax.set_ylabel("age of mixed messages")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.bar(xs, [sum(t["received"] for t in train if t["round"] == r) for r in rounds], width=0.8 * scale)
    bx.set_ylabel("messages delivered")
    bx.set_xlabel("simulated time")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / "staleness.png", dpi=110)
    plt.close(fig)
    return "plots/staleness.png"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "n/a" if v is None else str(v)


def write_report(out: Path, cfg: ExperimentConfig, summary: dict[str, Any], plots: list[str],
                 histograms: np.ndarray, classes: list[str]) -> None:
    """``report.md``: the setup, the final table per node, the plots and the label histograms."""
    f = summary["final"]
    lines = [
        f"# {cfg.name}",
        "",
        f"{cfg.nodes} nodes on a `{cfg.topology.name}` topology, `{cfg.data.dataset.name}` data "
        f"(`{cfg.data.partition.name}` partition), `{cfg.model.name}` model, {cfg.rounds} rounds "
        f"of {cfg.training.local_steps or cfg.training.local_epochs} local "
        f"{'steps' if cfg.training.local_steps else 'epochs'}, aggregation `{cfg.aggregator.name}`, "
        f"seed {cfg.seed}, "
        + ("FedAvg through Flower's simulation engine (server-based baseline)."
           if cfg.topology.name == "centralized" else f"engine `{cfg.engine.name}`.")
        + (f" Attackers: {', '.join(map(str, cfg.attacker_ids))}." if cfg.attackers else ""),
        "",
        f"## Final metrics (round {summary['final_round']})",
        "",
    ]
    pairs = [(k[5:], f[k], f.get("std_" + k[5:]), f.get("min_" + k[5:]), f.get("max_" + k[5:]))
             for k in f if k.startswith("mean_")]
    if pairs:
        lines += ["| metric | mean | std | min | max |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {m:.4f} | {s:.4f} | {lo:.4f} | {hi:.4f} |" for k, m, s, lo, hi in pairs]
    if "generalization_gap" in f:
        lines += ["", f"Generalisation gap (train - holdout accuracy): {f['generalization_gap']:.4f}. "
                  f"Consensus distance: {f.get('consensus_distance', float('nan')):.4g}."]
    if cfg.mode == "async" and "time" in f:
        a = cfg.async_
        lines += ["", f"Asynchronous gossip (`{a.protocol}`): {cfg.rounds} intervals of {a.interval:g} simulated "
                  f"time, {f['time']:g} in all; {f['messages']:.0f} messages delivered, mixed at a mean age of "
                  f"{f['staleness_mean']:.4g} (largest {f['staleness_max']:.4g}); per node and interval in the "
                  "`train` records (`iterations`, `sent`, `received`, `staleness_*`, `lag_*`)."]
    per = summary["per_node"]
    if per and len(per) <= 50:
        keys = list(per[0])
        lines += ["", "## Per node", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in per]
    mia = summary.get("mia_rows", [])
    if mia:
        cols = ["round", "attacker", "node", "attack", "access", "view", "evasion", "detected", "hops", "members", "auc",
                "accuracy",
                "oracle_accuracy", "f1",
                "advantage", "tpr_at_1_fpr", "tpr_at_0.1_fpr", "tpr_at_0.01_fpr", "victim_train_acc",
                "victim_holdout_acc", "victim_gap"]
        lines += ["", "## Membership inference", "",
                  "Members: a sample of the victim's train split; as many non-members that nobody trained on. "
                  "`accuracy`/`f1`: the attack's own calibrated decisions; `oracle_accuracy`: the best threshold on "
                  "this set (an upper bound); the all-member baseline has accuracy 0.5 and F1 0.667. "
                  "`tpr_at_X_fpr`: n/a where the set's non-members cannot resolve that rate (it takes at least "
                  "1 / rate of them: 1,000 for 0.1%, 10,000 for 0.01%).", "",
                  "| " + " | ".join(c.replace("victim_", "") for c in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in mia]
    lines += dp_audit_lines(summary.get("dp_audit_rows", []))
    inv = summary.get("inversion_rows", [])
    if inv:
        cols = ["round", "attacker", "node", "attack", "knowledge", "update", "local_steps", "batch_size", "psnr",
                "ssim", "mse", "label_acc", "recognisability", "start_error", "seconds"]
        lines += ["", "## Gradient inversion", "",
                  "The attacker inverts each neighbour's update (shared state minus the start it assumes) as "
                  "(pseudo-)gradients; reconstructions are paired with the images the victim trained on that round. "
                  "`recognisability`: accuracy of the reference classifier "
                  f"(test accuracy {inv[0].get('reference_test_acc', float('nan')):.3f}) on the reconstructions; "
                  "`start_error`: |assumed start - true start| / |true update|.", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in inv]
        lines += [""] + [f"![{Path(r['grid']).stem}]({r['grid']})" for r in inv[:12] if "grid" in r]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    if len(histograms) <= 50:
        lines += ["", "## Label histogram (train split)", "", "| node | " + " | ".join(classes) + " |",
                  "|" + "---|" * (len(classes) + 1)]
        lines += [f"| {i} | " + " | ".join(str(int(v)) for v in row) + " |" for i, row in enumerate(histograms)]
    lines += ["", "Files: `config.yaml` (resolved), `metrics.jsonl`, `summary.json`, `tables/`, `plots/`.", ""]
    (out / "report.md").write_text("\n".join(lines))


def dp_audit_lines(audits: list[Record]) -> list[str]:
    """The report's DP audit section (none without ``dp_audit`` records); a violation leads it, loudly."""
    if not audits:
        return []
    bad = [r for r in audits if r["violation"]]
    lines = ["", "## DP audit", ""]
    if bad:
        lines += [f"**VIOLATION: in {len(bad)} of {len(audits)} audits the empirical lower bound exceeds the "
                  "accountant's epsilon** (nodes " + ", ".join(sorted({str(r["node"]) for r in bad})) + "). "
                  "A sound DP-SGD cannot be beaten like this: check the accounting (sampling, steps, delta) and "
                  "the training.", ""]
    lines += ["Per DP-trained victim and attacked round: the accountant's epsilon (Opacus, RDP) beside the largest "
              "empirical lower bound of the membership attacks on it (95 % Clopper-Pearson, threshold chosen on "
              "half of the samples: `dfl.metrics.audit`). A loose bound says the attacks are weak, not that "
              "the model is private.", "",
              "| round | node | epsilon | delta | epsilon_lower | attack | view | violation |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['node']} | {_fmt(r['epsilon'])} | {r['delta']:g} | {_fmt(r['epsilon_lower'])} | "
              f"{r['attack']} ({r['access']}) | {_fmt(r.get('view'))} | {'**yes**' if r['violation'] else 'no'} |"
              for r in audits]
    return lines


def write_outputs(out: Path, cfg: ExperimentConfig, records: list[Record], counts: np.ndarray,
                  histograms: np.ndarray, classes: list[str], graph: nx.Graph, extra: dict[str, Any]) -> dict[str, Any]:
    """Write every output of a finished run; return the summary.

    ``tables/`` and ``plots/`` are made if missing: a run directory copied by a tool that drops empty
    folders (git, some sync tools) still finishes."""
    for folder in ("tables", "plots"):
        (out / folder).mkdir(exist_ok=True)
    summary = summarize(cfg, records, counts)
    summary.update(extra)
    write_tables(out, records, summary, histograms, classes)
    plots = write_plots(out, cfg, records, graph) if cfg.output.plots else []
    mia_rows = [r for r in records if r["kind"] == "mia"]
    inv_rows = [r for r in records if r["kind"] == "inversion"]
    audits = [r for r in records if r["kind"] == "dp_audit"]
    write_report(out, cfg, {**summary, "mia_rows": mia_rows[-200:], "inversion_rows": inv_rows[-200:],
                            "dp_audit_rows": audits[-200:]}, plots, histograms, classes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
