"""The defense evaluation tables: each one a grid of runs over seeds, written as one report.md.

A table is a data file, ``<name>.table.yaml``. ``dfl-sim table NAME --dataset cifar10|digits --seeds 2``
runs every (row, column) cell of table ``NAME`` on the base experiment ``<dataset>.yaml`` for each seed,
and writes ``<out>/table-NAME-<dataset>-<time>/report.md`` (mean ± std over seeds, then each row's change
against the first), ``table.csv`` (every run's figures) and the runs themselves. Any other registered
data set (``--dataset svhn``, ``cifar100``, ...) runs on a base experiment's settings unchanged
(``--base``, default ``cifar10``), so defenses tuned there can be judged on data they were not tuned on.

Where tables live: table files and the base experiments (``cifar10.yaml``, ``digits.yaml``) are looked
up in these folders, in this order, the first file of a name winning: ``--tables DIR`` (``tables_dir``),
the folders in ``$DFL_SIM_TABLES`` (separated by ``os.pathsep``), the checkout's ``experiments/tables/``,
or, where dfl-sim was installed from a wheel, the copy of that folder the wheel ships
(``<prefix>/share/dfl-sim/tables/``). A folder of one's own tables needs no base experiments of its own.
``dfl-sim table --list`` prints every table's name, title and file.

The format (``yaml.safe_load``, then validated: an unknown key or a wrong type is an error naming the
file and the field)::

    title: Weight penalties against the loss attack     # the report's heading
    attacks: "[{name: loss}]"                           # set as ``attacks=`` in every run (a YAML list)
    rows:                                               # a label and its --set overrides
      - {label: no defense, overrides: ["defenses=[]"]}
      - {label: L2, overrides: ["defenses=[{name: weight_penalty, params: {norm: l2, lam: 0.0005}}]"]}
    columns:                                            # optional; default one unnamed column
      - {label: ring, overrides: [topology.name=ring]}
      - {label: star, overrides: [topology.name=star]}
    metrics:                                            # a header and a summary key, part.key
      - {header: loss acc, key: mia.loss_accuracy}
      - {header: test acc, key: final.mean_test_acc}
    note: Attack accuracy of 0.5 is chance.             # optional; printed under the tables
    only: {L2: [cifar10]}                               # optional; row label -> the only data sets it runs on

``phases`` (optional, default one unnamed phase) runs each cell more than once:
``[{name: model, overrides: [...]}, {name: attack, overrides: [...]}]``, and a metric key
``phase:part.key`` reads that phase's run. A run's overrides are, in this order: the data set swap
(other data sets), ``attacks=``, the command's ``--set``, the phase's, the row's, the column's, ``seed=``.

The shipped tables (each file's comment says more):

- ``augmixcloak``: the AugMixCloak paper's comparison, shadow-model and metric attacks' F1 on three
  topologies;
- ``adamixup``: the AdaMixup paper's comparison, attacks A1 (shadow model), A2 (loss), A3 (label only);
- ``inversion``: the defensive-augmentation paper's comparison, model accuracy and inverting-gradients
  reconstructions (two phases per cell: trained with the defense, and attacked on one-step updates);
- ``inversion_dp``: the same measurement for DP-SGD noise from 0.001 to 0.1;
- ``perturbation``: the MIA-defence slides' confidence regularization, image and confidence
  perturbation.

Accuracies are those of the victims' query API (what an attacker is answered) on the attack's
non-members, so query-time defenses that change labels pay for it in the table.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dfl.errors import ConfigError
from dfl.experiment import load_config, parse_override, read_yaml
from dfl.plugins import load_plugins
from dfl.registries import DATASETS
from dfl.registry import pydantic_errors
from dfl.rundir import check_out_dir, make_dir
from dfl.runner import validate
from dfl.studies.grid import check_jobs, run_all

ROOT = Path(__file__).resolve().parents[2]
BASES = ("cifar10", "digits")  # the base experiments, <name>.yaml beside the tables
SUFFIX = ".table.yaml"
ENV = "DFL_SIM_TABLES"
SHARE = ("share", "dfl-sim", "tables")  # where a wheel installs experiments/tables/*.yaml, under its prefix
SHIPPED = ("checkout", "installed")  # the sources of the tables that come with dfl-sim
_RESERVED = ("row", "column", "seed", "run_dir")  # table.csv's own columns


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


@dataclass(frozen=True)
class TableFile:
    """A table file found on the search path; ``source`` says which folder: ``--tables``, ``DFL_SIM_TABLES``,
    ``checkout`` or ``installed``."""

    name: str
    path: Path
    source: str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Cell(_Spec):
    label: str
    overrides: list[str] = []


class _Phase(_Spec):
    name: str
    overrides: list[str] = []


class _Metric(_Spec):
    header: str
    key: str


class TableSpec(_Spec):
    """The schema of a ``<name>.table.yaml`` file."""

    title: str
    attacks: str
    rows: list[_Cell] = Field(min_length=1)
    metrics: list[_Metric] = Field(min_length=1)
    columns: list[_Cell] = Field(default_factory=lambda: [_Cell(label="")], min_length=1)
    note: str = ""
    phases: list[_Phase] = Field(default_factory=lambda: [_Phase(name="")], min_length=1)
    only: dict[str, list[str]] = {}


def _spec_errors(spec: TableSpec) -> list[tuple[str, str]]:
    """What the schema cannot say: unique labels, overrides of the ``--set`` form, metric keys that name a phase."""
    errors: list[tuple[str, str]] = []
    for part, key, names in (("rows", "label", [r.label for r in spec.rows]),
                             ("columns", "label", [c.label for c in spec.columns]),
                             ("phases", "name", [p.name for p in spec.phases]),
                             ("metrics", "header", [m.header for m in spec.metrics])):
        for i, n in enumerate(names):
            if n in names[:i]:
                errors.append((f"{part}.{i}.{key}", f"{n!r} is given twice; each must be unique"))
    sets = ([(f"rows.{i}", r.overrides) for i, r in enumerate(spec.rows)]
            + [(f"columns.{i}", c.overrides) for i, c in enumerate(spec.columns)]
            + [(f"phases.{i}", p.overrides) for i, p in enumerate(spec.phases)])
    for where, texts in sets:
        for j, text in enumerate(texts):
            try:
                parse_override(text)
            except ConfigError as exc:
                errors.append((f"{where}.overrides.{j}", exc.errors[0][1]))
    if not isinstance(parse_override(f"attacks={spec.attacks}")[1], list):
        errors.append(("attacks", f"{spec.attacks!r} is not a YAML list; write e.g. \"[{{name: loss}}]\" or \"[]\""))
    phases = [p.name for p in spec.phases]
    for i, m in enumerate(spec.metrics):
        if m.header in _RESERVED:
            errors.append((f"metrics.{i}.header", f"{m.header!r} is a column of table.csv already; rename it"))
        phase, _, rest = m.key.rpartition(":")
        part, _, name = rest.partition(".")
        if not part or not name:
            errors.append((f"metrics.{i}.key", f"{m.key!r} is not of the form part.key (e.g. mia.loss_auc)"))
        elif phase not in phases:
            known = ", ".join(repr(p) for p in phases)
            errors.append((f"metrics.{i}.key", f"{m.key!r} reads phase {phase!r}, which is not one of the phases "
                                               f"({known}); write {'phase:' if phases != [''] else ''}part.key"))
    labels = [r.label for r in spec.rows]
    for label, datasets in spec.only.items():
        if label not in labels:
            errors.append((f"only.{label}", f"{label!r} is not the label of a row"))
        elif not datasets:
            errors.append((f"only.{label}", "lists no data set; remove the row instead"))
    return errors


def load_table(path: str | Path) -> Table:
    """Read and validate one table file; a :class:`ConfigError` names the file and the field."""
    raw = read_yaml(path)
    try:
        spec = TableSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(pydantic_errors(exc), source=str(path)) from None
    errors = _spec_errors(spec)
    if errors:
        raise ConfigError(errors, source=str(path))
    return Table(title=spec.title, attacks=spec.attacks,
                 rows=[(r.label, list(r.overrides)) for r in spec.rows],
                 metrics=[(m.header, m.key) for m in spec.metrics],
                 columns=[(c.label, list(c.overrides)) for c in spec.columns],
                 note=spec.note,
                 phases=[(p.name, list(p.overrides)) for p in spec.phases],
                 only={label: tuple(datasets) for label, datasets in spec.only.items()})


def _installed_dir() -> Path | None:
    """The folder of table files a wheel installed (``<prefix>/share/dfl-sim/tables``), found from its RECORD."""
    try:
        files = metadata.distribution("dfl-sim").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if tuple(f.parts[-4:-1]) == SHARE:
            return Path(str(f.locate())).resolve().parent
    return None


def shipped_dirs() -> list[tuple[str, Path]]:
    """The folder of the tables that come with dfl-sim: the checkout's experiments/tables, else the wheel's copy."""
    checkout = ROOT / "experiments" / "tables"
    if checkout.is_dir():
        return [("checkout", checkout)]
    installed = _installed_dir()
    return [("installed", installed)] if installed is not None and installed.is_dir() else []


def search_path(tables_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every folder searched for tables and base experiments, first first, each with where it came from."""
    dirs: list[tuple[str, Path]] = []
    if tables_dir is not None:
        if not Path(tables_dir).is_dir():
            raise ConfigError([("--tables", f"{str(tables_dir)!r} is not a directory; give the folder holding "
                                            f"the <name>{SUFFIX} files")])
        dirs.append(("--tables", Path(tables_dir)))
    for part in os.environ.get(ENV, "").split(os.pathsep):
        if part:
            if not Path(part).is_dir():
                raise ConfigError([(ENV, f"{part!r} is not a directory; set it to folders of <name>{SUFFIX} files "
                                         f"separated by {os.pathsep!r}, or unset it")])
            dirs.append((ENV, Path(part)))
    return dirs + shipped_dirs()


def find_tables(tables_dir: str | Path | None = None, *,
                dirs: list[tuple[str, Path]] | None = None) -> dict[str, TableFile]:
    """Every table on the search path by name (sorted), each from the first folder that has it."""
    found: dict[str, TableFile] = {}
    for source, folder in dirs if dirs is not None else search_path(tables_dir):
        for p in sorted(folder.glob(f"*{SUFFIX}")):
            name = p.name[: -len(SUFFIX)]
            if name and p.is_file() and name not in found:
                found[name] = TableFile(name, p, source)
    return dict(sorted(found.items()))


def find_base(base: str, dirs: list[tuple[str, Path]]) -> tuple[Path, str]:
    """Base experiment ``<base>.yaml`` from the first folder that has it, and where it came from."""
    for source, folder in dirs:
        if (folder / f"{base}.yaml").is_file():
            return folder / f"{base}.yaml", source
    where = ", ".join(str(d) for _, d in dirs) or "no folder"
    raise ConfigError([("--base", f"base experiment {base}.yaml is in none of the table folders ({where}); "
                                  f"add it to one of them")])


def list_tables(tables_dir: str | Path | None = None) -> list[tuple[TableFile, Table]]:
    """Every table on the search path, loaded (a malformed file is a :class:`ConfigError`)."""
    return [(f, load_table(f.path)) for f in find_tables(tables_dir).values()]


def __getattr__(name: str) -> Any:
    if name == "TABLES":  # the shipped tables, by name; loaded on first use
        tables = {n: load_table(f.path) for n, f in find_tables(dirs=shipped_dirs()).items()}
        globals()["TABLES"] = tables
        return tables
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _value(summary: dict[str, Any], key: str) -> float:
    part, name = key.split(".", 1)
    return float(summary.get(part, {}).get(name, float("nan")))


def _phase_value(summaries: dict[str, dict[str, Any]], key: str) -> float:
    phase, _, rest = key.rpartition(":")
    return _value(summaries[phase]["summary"], rest)


def run_table(name: str, dataset: str, *, seeds: int = 2, overrides: list[str] | None = None,
              out_dir: str | Path | None = None, on_run: Callable[[str, int, int], None] | None = None,
              jobs: int = 1, base: str | None = None, tables_dir: str | Path | None = None) -> Path:
    """Run table ``name`` on ``dataset`` over ``seeds`` seeds; returns the folder holding its report.md.

    ``jobs``: runs at once, each in its own process (:func:`dfl.studies.grid.run_all`); the figures do not depend on it.
    ``tables_dir``: a folder searched for the table and the base experiment before ``$DFL_SIM_TABLES`` and
    the shipped ones."""
    dirs = search_path(tables_dir)
    found = find_tables(dirs=dirs)
    if name not in found:
        where = ", ".join(str(d) for _, d in dirs) or "no folder"
        raise ConfigError([("table", f"unknown table {name!r}; choose one of {', '.join(found) or '(none)'} "
                                     f"(<name>{SUFFIX} files in {where}; `dfl-sim table --list` lists them)")])
    table = load_table(found[name].path)
    if base is not None and base not in BASES:
        raise ConfigError([("--base", f"unknown base experiment {base!r}; choose one of {', '.join(BASES)}")])
    base = base or (dataset if dataset in BASES else "cifar10")
    swap: list[str] = []
    if dataset != base:
        load_plugins()
        if dataset not in DATASETS:
            raise ConfigError([("--dataset", f"unknown dataset {dataset!r}; known: {', '.join(DATASETS.names())}")])
        swap = [f"data.dataset={{name: {dataset}}}"]
    if seeds < 1:
        raise ConfigError([("--seeds", f"must be at least 1, got {seeds}")])
    if out_dir is not None:
        check_out_dir(Path(out_dir), "--out")
    config, config_source = find_base(base, dirs)
    common = [*swap, f"attacks={table.attacks}", *(overrides or [])]
    rows = [(row, sets) for row, sets in table.rows if dataset in table.only.get(row, (dataset,))]
    if not rows:
        raise ConfigError([("--dataset", f"no row of table {name!r} runs on {dataset!r} (see the table's `only`)")],
                          source=str(found[name].path))
    cells = [(row, col, [*row_sets, *col_sets]) for row, row_sets in rows for col, col_sets in table.columns]
    base_cfg = load_config(config, common)
    # every cell must be valid (and fit the jobs) before anything runs
    specs = [(f"{row}{', ' + col if col else ''}{', ' + phase if phase else ''}, seed {base_cfg.seed + s}",
              validate(config, [*common, *phase_sets, *sets, f"seed={base_cfg.seed + s}"]))
             for row, col, sets in cells for s in range(seeds) for phase, phase_sets in table.phases]
    check_jobs(jobs, specs)
    out = Path(out_dir if out_dir is not None else base_cfg.output.dir) / f"table-{name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    make_dir(out, "--out" if out_dir is not None else "output.dir")
    results = iter(run_all(specs, out_dir=out / "runs", jobs=jobs, on_run=on_run))
    runs: list[dict[str, Any]] = []
    for row, col, _ in cells:
        for s in range(seeds):
            summaries: dict[str, dict[str, Any]] = {}
            for phase, _ in table.phases:
                res = next(results)
                summaries[phase] = {"summary": res.summary, "run_dir": res.run_dir.name}
            runs.append({"row": row, "column": col, "seed": base_cfg.seed + s,
                         "run_dir": " ".join(v["run_dir"] for v in summaries.values()),
                         **{h: _phase_value(summaries, k) for h, k in table.metrics}})
    # shipped files are named as in the checkout; others by their path
    command = f"`dfl-sim table {name} --dataset {dataset} --seeds {seeds}`"
    if found[name].source not in SHIPPED:
        command += f" (table file `{found[name].path}`)"
    on = f"experiments/tables/{base}.yaml" if config_source in SHIPPED else str(config)
    _write(out, command, on, dataset, base, table, [r for r, _ in rows], runs, seeds)
    return out


def _write(out: Path, command: str, on: str, dataset: str, base: str, table: Table, rows: list[str],
           runs: list[dict[str, Any]], seeds: int) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(runs)
    headers = [h for h, _ in table.metrics]
    cols = [c for c, _ in table.columns]
    lines = [f"# {table.title}", "",
             f"{command} on `{on}`"
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
            first = {r["seed"]: r for r in runs if r["row"] == rows[0] and r["column"] == col}
            cell = [r for r in runs if r["row"] == row and r["column"] == col]
            deltas = [[r[h] - first[r["seed"]][h] for r in cell] for h in headers]
            vals = [f"{np.mean(d):+.3f} ± {np.std(d):.3f}" for d in deltas]
            lines.append("| " + " | ".join([row, col] if col else [row]) + " | " + " | ".join(vals) + " |")
    if table.note:
        lines += ["", table.note]
    (out / "report.md").write_text("\n".join(lines) + "\n")
