"""What a user of the previous release keeps: run directories that resume, and the moved names."""

from __future__ import annotations

import importlib
import shutil
import warnings
from pathlib import Path

import pytest

from dfl import api

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

# (old module, name, new module): every name a user could import from a module that moved
MOVED = [
    ("dfl.threat", "AdversaryView", "dfl.attack"),
    ("dfl.threat", "MembershipAttack", "dfl.attack"),
    ("dfl.query", "TrainingDefense", "dfl.defense"),
    ("dfl.query", "QueryDefense", "dfl.defense"),
    ("dfl.query", "defended_query", "dfl.defense"),
    ("dfl.privacy", "mia_metrics", "dfl.metrics.membership"),
    ("dfl.inversion", "pseudo_gradient", "dfl.adversary.gradients"),
    ("dfl.inversion", "Reconstruction", "dfl.adversary.gradients"),
    ("dfl.inversion", "psnr", "dfl.metrics.images"),
    ("dfl.inverter", "Inverter", "dfl.adversary.inversion"),
    ("dfl.reference", "reference_classifier", "dfl.adversary.reference"),
    ("dfl.participant", "Participant", "dfl.federation.participant"),
    ("dfl.population", "Population", "dfl.federation.population"),
    ("dfl.flower", "NumPyClientPopulation", "dfl.federation.flower_client"),
    ("dfl.flower", "run_centralized", "dfl.engines.flower"),
    ("dfl.engines.base", "Engine", "dfl.federation.engine"),
    ("dfl.augsearch", "search", "dfl.studies.augsearch"),
    ("dfl.tables", "run_table", "dfl.studies.tables"),
    ("dfl.adversary", "scheduled", "dfl.attack"),
    ("dfl.config", "load_config", "dfl.experiment"),
    ("dfl.config", "parse_config", "dfl.experiment"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_still_imports_with_a_deprecation_warning(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_name_that_never_existed_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        importlib.import_module("dfl.query").nothing  # noqa: B018


def test_the_public_api_imports_without_warnings() -> None:
    """The names the README shows are where it says, with no deprecation on the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from dfl.api import compare, resume, run, validate  # noqa: F401
        from dfl.federation.flower_client import NumPyClientPopulation  # noqa: F401
        from dfl.federation.population import Population  # noqa: F401


def test_a_run_directory_of_the_previous_release_resumes(tmp_path: Path) -> None:
    """tests/golden/rundir-0.1.0 was interrupted after round 1 by dfl-sim 0.1.0; resumed now, it ends with
    the metrics that 0.1.0 wrote for the same run uninterrupted (tests/golden/rundir-0.1.0.expected)."""
    run_dir = tmp_path / "rundir"
    shutil.copytree(GOLDEN / "rundir-0.1.0", run_dir)
    result = api.resume(run_dir)
    assert result.status == "complete"
    assert (run_dir / "metrics.jsonl").read_bytes() == (GOLDEN / "rundir-0.1.0.expected").read_bytes()


def test_federation_rounds_still_yields_each_round_once() -> None:
    """The deprecated generator gives the records run() writes, grouped by round."""
    import copy
    import sys

    sys.path.insert(0, str(GOLDEN.parent))
    from conftest import TINY

    from dfl.engines import SerialEngine
    from dfl.experiment import parse_config
    from dfl.federation import Federation
    from dfl.federation.population import Population

    raw = copy.deepcopy(TINY)
    raw.update(rounds=2, attackers=[])
    cfg = parse_config(raw)
    population = Population.from_config(cfg)
    fed = Federation(cfg, population, SerialEngine(population))
    with pytest.warns(DeprecationWarning, match="Federation.rounds"):
        rounds = list(fed.rounds())
    assert [r for r, _ in rounds] == [0, 1]
    assert all(rec["round"] == r + 1 for r, recs in rounds for rec in recs)
    population = Population.from_config(cfg)
    again = Federation(cfg, population, SerialEngine(population))
    assert again.run() == "complete"
    assert [rec for _, recs in rounds for rec in recs] == again.records
