"""Many runs at once: every ``(label, config)`` of a grid, sequentially or in worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from dfl.config import ExperimentConfig
from dfl.errors import ConfigError, RunError
from dfl.plugins import load_plugins
from dfl.runner import RunResult, run


def _run_detached(cfg: ExperimentConfig, out_dir: str) -> RunResult | str:
    """:func:`run` in a worker process: the result, or the error's message (exceptions need not pickle)."""
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


