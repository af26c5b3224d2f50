"""The Python API the CLI is a thin layer over: ``run``, ``resume``, ``attack``, ``validate``, ``compare``, ``run_all``.

    from dfl.api import run
    result = run("experiments/ring_digits.yaml", ["rounds=3"])
    result.summary["final"]["mean_test_acc"]

One run is :mod:`dfl.runner` (its rounds go through ``Federation.run``, the one round loop); many runs
are :mod:`dfl.studies` (a grid of cells x seeds, ``dfl-sim compare``, the defense tables).
"""

from __future__ import annotations

from dfl.experiment import load_config, parse_config
from dfl.runner import PopulationFactory, ProgressFn, RunResult, attack, preflight, prepare, resume, run, validate
from dfl.studies.compare import COMPARE_METRICS, CompareResult, compare, is_headline_mia, parse_over
from dfl.studies.grid import check_jobs, run_all

__all__ = [
    "COMPARE_METRICS", "CompareResult", "PopulationFactory", "ProgressFn", "RunResult", "attack", "check_jobs", "compare",
    "is_headline_mia", "load_config", "parse_config", "parse_over", "prepare", "preflight", "resume", "run",
    "run_all", "validate",
]
