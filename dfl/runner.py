"""One run, from config to report: preflight, data and model, the engine, the observers, the outputs.

:func:`run` and :func:`resume` build what a config asks for and hand the rounds to
:meth:`Federation.run <dfl.federation.rounds.Federation.run>`, the one round loop; :func:`validate`
checks everything a run needs without training; :func:`attack` runs attacks on a finished run's kept
states (``output.save_shared``) without training. :mod:`dfl.api` re-exports these for notebooks and the
CLI, beside the studies (``compare``, ``run_all``).
"""

from __future__ import annotations

import errno
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfl.adversary import observers
from dfl.adversary.saved import SHARED, available, load, saved_rounds, shared_bytes
from dfl.attack import scheduled
from dfl.config import ExperimentConfig
from dfl.data import locate_dataset
from dfl.engines import engine_for
from dfl.engines.flower import check_resume
from dfl.engines.ray import check_address
from dfl.errors import ConfigError, DataError, RunError
from dfl.experiment import load_config, parse_config, read_yaml
from dfl.federation.participant import shared_tensors
from dfl.federation.population import Population
from dfl.federation.rounds import Federation
from dfl.report import write_outputs
from dfl.rundir import SIGNALS, RunDir, check_out_dir
from dfl.topology import build_graph


@dataclass
class RunResult:
    """A run's directory, its ``STATUS`` (``complete`` or ``interrupted``), its summary and timings."""

    run_dir: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _config(config: ExperimentConfig | str | Path, overrides: Sequence[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if overrides:
            return parse_config(config.model_dump(mode="json"), list(overrides))
        return config
    return load_config(config, list(overrides))


ProgressFn = Callable[[int, int, dict[str, Any]], None]


PopulationFactory = Callable[[ExperimentConfig], Any]


def prepare(cfg: ExperimentConfig, population_factory: PopulationFactory | None = None) -> Any:
    """Load data, make splits and build the initial model: every data/model error surfaces here.

    ``population_factory(cfg) -> Population`` replaces ``Population.from_config``, e.g. to make every
    node a user's Flower ``NumPyClient`` (``dfl.federation.flower_client.NumPyClientPopulation.wrap``).
    """
    try:
        population = (population_factory or Population.from_config)(cfg)
    except DataError as exc:
        msg = str(exc)
        raise DataError(msg if msg.startswith("data") else f"data.dataset ({cfg.data.dataset.name}): {msg}") from None
    population.template()
    return population


def validate(config: ExperimentConfig | str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Schema, plugin params, cross-field checks and data availability; no training."""
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


def resume(run_dir: str | Path, *, progress: ProgressFn | None = None, stop_after: int | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint; the metrics equal an uninterrupted run's."""
    t0 = time.perf_counter()
    rundir = RunDir.open(run_dir)
    if rundir.status == "complete":
        raise RunError(f"{rundir.path} is already complete; nothing to resume (start a new run instead)")
    cfg = rundir.config()
    if cfg.topology.name == "centralized":
        check_resume(cfg)
    ckpt = rundir.load_checkpoint()
    rundir.truncate_metrics(ckpt["metrics_bytes"])  # checked first: a run whose metrics were cut is not resumed
    preflight(cfg, rundir.path.parent)
    population = prepare(cfg)
    rundir.set_status("running")
    return _execute(cfg, population, rundir, ckpt["round"], ckpt["participants"], progress, stop_after, t0)


def _execute(cfg: ExperimentConfig, population: Any, rundir: RunDir, start: int, snaps: list[Any] | None,
             progress: ProgressFn | None, stop_after: int | None, t0: float) -> RunResult:
    """Rounds ``start..`` on the config's engine through :meth:`Federation.run`, then the report."""
    timings: dict[str, float] = {"setup_s": time.perf_counter() - t0}
    engine = None
    try:
        engine = engine_for(cfg)(population)
        plots = rundir.path / "plots" if cfg.output.plots else None
        watching = observers(cfg, population, plots, rundir.path / SIGNALS, rundir.path / SHARED)
        if cfg.output.save_shared:
            n_state = sum(t.numel() for t in shared_tensors(population.template()))
            print(f"output.save_shared: keeping {len(saved_rounds(cfg))} round(s) of shared and start states, "
                  f"{shared_bytes(cfg, n_state, build_graph(cfg, 0)) / 2**20:,.1f} MiB, under {rundir.path / SHARED}",
                  file=sys.stderr)
        fed = Federation(cfg, population, engine, watching, rundir=rundir, progress=progress)
        status = fed.run(start, snaps, stop_after=stop_after, t0=t0)
        timings.update(fed.timings)
        if status == "interrupted":
            rundir.set_status("interrupted")
            return RunResult(rundir.path, "interrupted", timings=timings)
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


REPLAYABLE = ("attacks",)  # what a replay may change: the training, and so the shared states, stays as it was


def attack(run_dir: str | Path, overrides: Sequence[str] = (), *, out_dir: str | Path | None = None) -> RunResult:
    """Run attacks on the kept shared states of a finished run, without training (``dfl-sim attack``).

    ``overrides``: ``--set`` of ``attacks`` (or its entries) only; the result is a run directory (below
    ``out_dir``, default ``RUN_DIR/attacks``) whose ``metrics.jsonl`` holds the records a live run with
    those attacks writes: ``kind: mia``, ``inversion`` and ``defense``, byte for byte (inversion records'
    ``seconds`` aside). Needs the run's ``shared/`` (``output.save_shared: true``) for every round the
    attacks are scheduled in.
    """
    source = RunDir.open(run_dir)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] not in REPLAYABLE:
            raise ConfigError([("--set", f"{key}: a replay changes only the attacks ({', '.join(REPLAYABLE)}); "
                                         "the training is the run's. Start a new run to change the rest")])
    saved_dir = source.path / SHARED
    have = available(saved_dir)
    if not have:
        raise RunError(f"{source.path} kept no shared states ({SHARED}/ is missing or empty): run it again with "
                       "output.save_shared: true (--set output.save_shared=true) to attack it without training")
    cfg = parse_config(read_yaml(source.path / "config.yaml"), list(overrides), source=str(source.path / "config.yaml"))
    if not cfg.attacks:
        raise ConfigError([("attacks", "no attacks to replay: --set 'attacks=[{name: loss}]'")])
    missing = [(i, r) for i, spec in enumerate(cfg.attacks) for r in range(1, cfg.rounds + 1)
               if scheduled(spec, r, cfg.rounds) and r not in have]
    if missing:
        i, r = missing[0]
        raise ConfigError([(f"attacks.{i}", f"is scheduled in round {r}, whose states the run did not keep (kept: "
                                            f"rounds {', '.join(map(str, have))}); schedule it there with "
                                            f"attacks.{i}.rounds")])
    population = prepare(cfg)
    base = Path(out_dir) if out_dir is not None else source.path / "attacks"
    rundir = RunDir.create(cfg, base)
    (rundir.path / "replay.json").write_text(json.dumps({"source": str(source.path), "overrides": list(overrides)}))
    plots = rundir.path / "plots" if cfg.output.plots else None
    watching = observers(cfg, population, plots, rundir.path / SIGNALS)
    rounds = sorted({r for spec in cfg.attacks for r in range(1, cfg.rounds + 1) if scheduled(spec, r, cfg.rounds)})
    try:
        for r in rounds:
            shared, starts, heard = load(saved_dir, r)
            if cfg.mode == "async" and heard is None:
                raise RunError(f"{saved_dir} keeps no heard messages for round {r}: it was written before mode: "
                               "async kept them; run the attacks live")
            graph = build_graph(cfg, 0 if cfg.mode == "async" else r - 1)
            records: list[dict[str, Any]] = []
            for obs in watching:
                records += obs.observe(r - 1, graph, shared, starts, **({"heard": heard} if heard is not None else {}))
            rundir.append(records)
    except BaseException:
        rundir.set_status("failed")
        raise
    rundir.set_status("complete")
    return RunResult(rundir.path, "complete")


