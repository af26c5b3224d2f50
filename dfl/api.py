"""The Python API the CLI is a thin layer over: ``run``, ``run_all``, ``resume``, ``compare``, ``validate``.

    from dfl.api import run
    result = run("experiments/ring_digits.yaml", ["rounds=3"])
    result.summary["final"]["mean_test_acc"]
"""

from __future__ import annotations

import errno
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfl.config import ExperimentConfig
from dfl.errors import ConfigError, DataError, EngineFault, RunError
from dfl.experiment import load_config, parse_override
from dfl.rundir import RunDir, check_out_dir, make_dir

if TYPE_CHECKING:
    import torch

ProgressFn = Callable[[int, int, dict[str, Any]], None]


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _config(config: ExperimentConfig | str | Path, overrides: Sequence[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            from dfl.experiment import parse_config

            return parse_config(config.model_dump(mode="json"), list(overrides))
        return config
    return load_config(config, list(overrides))


PopulationFactory = Callable[[ExperimentConfig], Any]


def prepare(cfg: ExperimentConfig, population_factory: PopulationFactory | None = None) -> Any:
    """Load data, make splits and build the initial model: every data/model error surfaces here.

    ``population_factory(cfg) -> Population`` replaces ``Population.from_config``, e.g. to make every
    node a user's Flower ``NumPyClient`` (``dfl.federation.flower_client.NumPyClientPopulation.wrap``).
    """
    from dfl.federation.population import Population

    try:
        population = (population_factory or Population.from_config)(cfg)
    except DataError as exc:
        msg = str(exc)
        raise DataError(msg if msg.startswith("data") else f"data.dataset ({cfg.data.dataset.name}): {msg}") from None
    population.template()
    return population


def validate(config: ExperimentConfig | str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Schema, plugin params, cross-field checks and data availability; no training."""
    from dfl.data import locate_dataset

    cfg = _config(config, overrides)
    try:
        locate_dataset(cfg.data.dataset, Path(cfg.data.root).expanduser() if cfg.data.root else None)
    except DataError as exc:
        msg = str(exc)
        raise DataError(msg if msg.startswith("data") else f"data.dataset ({cfg.data.dataset.name}): {msg}") from None
    if cfg.init is not None:
        RunDir.init_source(cfg.init)  # the model's size is checked against it when the model is built
    preflight(cfg)
    return cfg


def preflight(cfg: ExperimentConfig, out_dir: str | Path | None = None) -> None:
    """What a run needs outside its config, checked before any data are loaded: a usable output place
    (``--out`` or ``output.dir``) and, on a Ray cluster, that the cluster answers at ``engine.ray.address``."""
    check_out_dir(Path(out_dir if out_dir is not None else cfg.output.dir), "--out" if out_dir is not None else "output.dir")
    if cfg.engine.name == "ray" and cfg.engine.ray.address and cfg.topology.name != "centralized":
        from dfl.engines.ray import check_address

        check_address(cfg.engine.ray.address)


def run(
    config: ExperimentConfig | str | Path,
    overrides: Sequence[str] = (),
    *,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    t0: float | None = None,
    population_factory: PopulationFactory | None = None,
) -> RunResult:
    """Run an experiment to the end (or, with ``stop_after=k``, stop after round k as if interrupted)."""
    t0 = time.perf_counter() if t0 is None else t0
    cfg = _config(config, overrides)
    preflight(cfg, out_dir)
    population = prepare(cfg, population_factory)
    rundir = RunDir.create(cfg, Path(out_dir) if out_dir is not None else None)
    return _execute(cfg, population, rundir, 0, None, progress, stop_after, t0)


def _run_detached(cfg: ExperimentConfig, out_dir: str) -> RunResult | str:
    """:func:`run` in a worker process: the result, or the error's message (exceptions need not pickle)."""
    from dfl.plugins import load_plugins

    try:
        load_plugins()  # a fresh interpreter: the registries fill on first load
        return run(cfg, out_dir=out_dir)
    except Exception as exc:  # noqa: BLE001 -- reported by run_all, naming the run
        return f"{type(exc).__name__}: {exc}"


def check_jobs(jobs: int, runs: Iterable[tuple[str, ExperimentConfig]]) -> None:
    """Raise ``ConfigError`` unless ``jobs`` runs at once can run the ``(label, config)`` pairs ``runs``."""
    if jobs < 1:
        raise ConfigError([("--jobs", f"must be at least 1, got {jobs}")])
    if jobs > 1:
        for label, cfg in runs:
            if cfg.engine.name == "ray":
                raise ConfigError([("--jobs", f"run {label!r} uses the Ray engine, which spreads one run over "
                                              "the machine itself; use --jobs 1 or engine.name=serial")])


def run_all(
    specs: Sequence[tuple[str, ExperimentConfig]],
    *,
    out_dir: str | Path,
    jobs: int = 1,
    on_run: Callable[[str, int, int], None] | None = None,
) -> list[RunResult]:
    """Run every ``(label, config)`` of ``specs`` into ``out_dir``; the results in ``specs`` order.

    ``jobs > 1`` runs that many at once, each in a fresh worker process. Runs share nothing, so every
    run's metrics equal those of a sequential run. ``on_run(label, i, total)`` reports the i-th run as it
    starts (sequential) or as it finishes (parallel). Runs on the Ray engine take ``jobs = 1``.
    """
    check_jobs(jobs, specs)
    total = len(specs)
    if jobs == 1 or total <= 1:
        results = []
        for i, (label, cfg) in enumerate(specs):
            if on_run:
                on_run(label, i + 1, total)
            results.append(run(cfg, out_dir=out_dir))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    found: dict[int, RunResult | str] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_detached, cfg, str(out_dir)): i for i, (_, cfg) in enumerate(specs)}
        for done, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            found[i] = fut.result()
            if on_run:
                on_run(specs[i][0], done, total)
    failed = [(specs[i][0], r) for i, r in sorted(found.items()) if isinstance(r, str)]
    if failed:
        raise RunError("; ".join(f"run {label!r} failed: {msg}" for label, msg in failed))
    return [found[i] for i in range(total)]  # type: ignore[misc]


def resume(run_dir: str | Path, *, progress: ProgressFn | None = None, stop_after: int | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint; the metrics equal an uninterrupted run's."""
    t0 = time.perf_counter()
    rundir = RunDir.open(run_dir)
    if rundir.status == "complete":
        raise RunError(f"{rundir.path} is already complete; nothing to resume (start a new run instead)")
    cfg = rundir.config()
    if cfg.topology.name == "centralized":
        from dfl.engines.flower import check_resume

        check_resume(cfg)
    ckpt = rundir.load_checkpoint()
    rundir.truncate_metrics(ckpt["metrics_bytes"])  # checked first: a run whose metrics were cut is not resumed
    preflight(cfg, rundir.path.parent)
    population = prepare(cfg)
    rundir.set_status("running")
    return _execute(cfg, population, rundir, ckpt["round"], ckpt["participants"], progress, stop_after, t0)


def _execute(cfg: ExperimentConfig, population: Any, rundir: RunDir, start: int, snaps: list[Any] | None,
             progress: ProgressFn | None, stop_after: int | None, t0: float) -> RunResult:
    from dfl.engines import engine_class
    from dfl.federation.rounds import Federation
    from dfl.report import write_outputs
    from dfl.topology import build_graph

    timings: dict[str, float] = {"setup_s": time.perf_counter() - t0}
    engine = None
    try:
        if cfg.topology.name == "centralized":
            _run_flower(cfg, population, rundir, progress, timings, t0)
        else:
            engine = engine_class(cfg.engine.name)(population)
            if snaps is not None:
                engine.restore(snaps)
            elif cfg.output.checkpoint_every:
                rundir.save_checkpoint(0, engine.snapshot())  # a fault in round 1 rolls back to here
            observers: list[Any] = []
            if cfg.attacks:
                from dfl.adversary.inversion import Inverter, is_inversion
                from dfl.adversary.membership import Adversary

                if not all(is_inversion(a.name) for a in cfg.attacks):
                    observers.append(Adversary(cfg, population))
                if any(is_inversion(a.name) for a in cfg.attacks):
                    observers.append(Inverter(cfg, population, rundir.path / "plots" if cfg.output.plots else None))
            fed = Federation(cfg, population, engine, observers, _states(snaps))
            failures = 0
            round_idx = start
            while round_idx < cfg.rounds:
                try:
                    records = fed.run_round(round_idx)
                except EngineFault as fault:
                    failures += 1
                    if not cfg.output.checkpoint_every:
                        raise EngineFault(f"{fault}; with output.checkpoint_every 0 there is no checkpoint to "
                                          "recover from: start the run again") from None
                    if failures > cfg.engine.ray.max_failures:
                        raise EngineFault(f"{fault}; that is {failures} faults, more than engine.ray.max_failures="
                                          f"{cfg.engine.ray.max_failures}. The last checkpoint is intact: resume "
                                          f"with `{rundir.resume_hint()}`") from None
                    try:
                        round_idx, fed.starts = _recover(engine, rundir, fault, round_idx)
                    except EngineFault as lost:
                        raise EngineFault(f"{lost}. The last checkpoint is intact: resume with "
                                          f"`{rundir.resume_hint()}` once the cluster has room") from None
                    continue
                rundir.append(records)
                done = round_idx + 1
                k = cfg.output.checkpoint_every
                if k and (done % k == 0 or done == cfg.rounds):
                    rundir.save_checkpoint(done, engine.snapshot())
                if round_idx == start:
                    timings["to_first_round_s"] = time.perf_counter() - t0
                if progress:
                    progress(done, cfg.rounds, records[-1])
                if stop_after is not None and done >= stop_after and done < cfg.rounds:
                    rundir.set_status("interrupted")
                    return RunResult(rundir.path, "interrupted", timings=timings)
                round_idx = done
        timings["rounds_s"] = time.perf_counter() - t0 - timings["setup_s"]
        records = rundir.records()
        splits = population.splits
        summary = write_outputs(
            rundir.path, cfg, records, population.sample_counts(),
            splits.label_histograms(population.data.y_train, population.data.num_classes),
            population.data.classes, build_graph(cfg, 0), {"status": "complete"},
        )
        timings["total_s"] = time.perf_counter() - t0
        (rundir.path / "timings.json").write_text(json.dumps(timings, indent=2))
        rundir.set_status("complete")
        return RunResult(rundir.path, "complete", summary, timings)
    except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM through the CLI's handler (Terminated)
        rundir.set_status("interrupted")
        exc.run_dir = rundir.path  # type: ignore[attr-defined]  # the CLI names it in its resume hint
        raise
    except OSError as exc:  # the run's own files: a full disk, a quota, a folder made read-only
        rundir.set_status("failed")
        if exc.errno not in WRITE_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise RunError(f"{rundir.path}: cannot write the run's outputs: {exc.strerror or exc}{where}. Nothing "
                       f"before the last checkpoint is lost: free space (or fix the folder), then resume with "
                       f"`{rundir.resume_hint()}`") from None
    except BaseException:
        rundir.set_status("failed")
        raise
    finally:
        if engine is not None:
            engine.close()


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG})


def _run_flower(cfg: ExperimentConfig, population: Any, rundir: RunDir, progress: ProgressFn | None,
                timings: dict[str, float], t0: float) -> None:
    """``topology: centralized``: FedAvg through Flower's simulation engine, writing the same records."""
    from dfl.engines.flower import run_centralized

    def on_progress(done: int, total: int, summary: dict[str, Any]) -> None:
        timings.setdefault("to_first_round_s", time.perf_counter() - t0)
        if progress:
            progress(done, total, summary)

    run_centralized(cfg, population, on_progress, rundir.append)


def _states(snaps: list[dict[str, Any]] | None) -> torch.Tensor | None:
    """The nodes' states ``(n_nodes, n_params)`` in participant snapshots (None for none)."""
    import torch

    return torch.stack([s["state"] for s in snaps]) if snaps is not None else None


def _recover(engine: Any, rundir: RunDir, fault: EngineFault, round_idx: int) -> tuple[int, torch.Tensor | None]:
    """Replace the lost workers, roll every node back to the last checkpoint and log the fault.

    Returns the round to continue from and the nodes' states there. Records written after the
    checkpoint are dropped, so the run finishes with the metrics of an undisturbed run plus one
    ``kind: fault`` record.
    """
    engine.recover(fault)
    ckpt = rundir.load_checkpoint()
    engine.restore(ckpt["participants"])
    rundir.truncate_metrics(ckpt["metrics_bytes"])
    rundir.append([{"round": round_idx + 1, "node": None, "kind": "fault", "nodes": list(fault.nodes),
                    "error": str(fault), "resumed_from_round": ckpt["round"]}])
    return int(ckpt["round"]), _states(ckpt["participants"])


# ------------------------------------------------------------------------------------------ compare


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


COMPARE_METRICS = ("mean_test_acc", "min_test_acc", "mean_train_acc", "mean_holdout_acc", "generalization_gap",
                   "consensus_distance")


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
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for c, (label, values, cfgs) in enumerate(cells):
        finals: list[dict[str, float]] = []
        for res in results[c * seeds : (c + 1) * seeds]:
            finals.append({**res.summary["final"], **{f"mia_{k}": v for k, v in res.summary.get("mia", {}).items()},
                           **{f"gi_{k}": v for k, v in res.summary.get("inversion", {}).items()}})
            recs = RunDir(res.run_dir).records()
            curves.setdefault(label, []).append(
                [(r["round"], r["mean_test_acc"]) for r in recs if r["kind"] == "round" and "mean_test_acc" in r])
        row: dict[str, Any] = {**values, "seeds": len(cfgs)}
        extra = sorted({k for f in finals for k in f if k.startswith(("mia_", "gi_"))})
        for m in (*COMPARE_METRICS, *extra):
            vals = [f[m] for f in finals if m in f]
            if vals:
                import numpy as np

                row[m] = float(np.mean(vals))
                row[f"{m}_std"] = float(np.std(vals))
        rows.append(row)
    _write_comparison(out, axes, rows, curves)
    return CompareResult(out, rows, results)


def _write_comparison(out: Path, axes: list[tuple[str, list[Any]]], rows: list[dict[str, Any]],
                      curves: dict[str, list[list[tuple[int, float]]]]) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fields = list(rows[0])
    for r in rows[1:]:
        fields += [k for k in r if k not in fields]
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    keys = [k for k, _ in axes]
    metrics = [m for m in rows[0] if not m.endswith("_std") and (m in COMPARE_METRICS or is_headline_mia(m))]
    lines = ["# Comparison", "", f"Mean ± std over {rows[0]['seeds']} seed(s) of each run's final metrics.", "",
             "| " + " | ".join(keys + metrics) + " |", "|" + "---|" * (len(keys) + len(metrics))]
    for r in rows:
        cells = [str(r[k]) for k in keys] + [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" for m in metrics]
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
    ax.set_xlabel("round")
    ax.set_ylabel("mean test accuracy over nodes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "accuracy.png", dpi=110)
    plt.close(fig)
