"""Loading an experiment: YAML, ``--set`` overrides, plugin resolution and cross-field checks.

Loading collects every error with its dotted path (schema errors, plugin ``params`` errors from the
registries, and cross-field checks such as attacker ids against ``nodes``) and raises one
:class:`~dfl.errors.ConfigError`. ``--set a.b=c`` overrides are applied to the raw mapping first, so
they are validated like the file itself. What a plugin requires of the rest of the experiment it says
itself: every registry entry may carry ``config_errors``, asked here.
"""

from __future__ import annotations

import copy
import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from dfl.attack import target_errors
from dfl.config import ExperimentConfig, LinkSpec
from dfl.defense import TrainingDefense
from dfl.errors import ConfigError
from dfl.models import build_model
from dfl.plugins import load_plugins
from dfl.registries import AGGREGATORS, ATTACKS, DATASETS, DEFENSES, MODELS, PARTITIONERS, PROTOCOLS, TOPOLOGIES
from dfl.registry import pydantic_errors
from dfl.seeding import ATTACKER_PLACEMENT
from dfl.topology import base_graph, check_topology


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file with ``yaml.safe_load``; syntax errors name the line and column.

    The file is read as bytes, so PyYAML's reader decodes it: UTF-8 (with or without a byte-order mark),
    or UTF-16 with a byte-order mark; anything else is a ``ConfigError`` asking for UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError([("", f"config file {str(p)!r} does not exist; check the path")])
    try:
        raw = yaml.safe_load(p.read_bytes())
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror or exc}; check its permissions")],
                          source=str(p)) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError([("", f"the file is not UTF-8 text ({exc.reason}: byte {_byte(exc.character)} at offset "
                                f"{exc.position}); save it as UTF-8")], source=str(p)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"YAML syntax error{where}: {problem}; fix the file")], source=str(p)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", f"the file must hold a mapping of keys, got {type(raw).__name__}")], source=str(p))
    return raw


def _byte(char: Any) -> str:
    return f"0x{char:02x}" if isinstance(char, int) else repr(char)


MAX_VALUES = 100_000  # scalars and containers in one config, counted with every alias expanded


def raw_errors(raw: Any) -> list[tuple[str, str]]:
    """Checks of the raw mapping before the schema sees it: its expanded size and its floats.

    * YAML aliases let a few hundred bytes stand for billions of values (``*a9`` nesting ten ``*a8``...);
      a config that expands past ``MAX_VALUES`` values is refused before anything walks it in full.
    * Every number must be finite: ``.inf`` would pass a ``gt=0`` bound (``lr: .inf`` trains to NaN),
      and ``.nan`` compares false with everything. No field of dfl-sim takes a non-finite value.
    """
    errors: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", raw)]
    seen = 0
    while stack:
        path, value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return [(path.split(".")[0], f"the config expands to more than {MAX_VALUES} values (YAML aliases "
                                         "nested inside one another?); write the values out or shorten them")]
        if isinstance(value, float) and not math.isfinite(value):
            errors.append((path, f"{value} is not a finite number; give a finite value"))
        elif isinstance(value, dict):
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in reversed(value.items())]
        elif isinstance(value, list):
            stack += [(f"{path}.{i}" if path else str(i), v) for i, v in reversed(list(enumerate(value)))]
    return errors


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^\d+$")


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=c`` -> (``"a.b"``, value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError([("--set", f"{text!r} is not of the form key.path=value (e.g. --set rounds=3)")])
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or not all(_KEY.match(part) for part in key.split(".")):
        raise ConfigError([("--set", f"{key!r} is not a dotted key path (e.g. data.partition.params.alpha)")])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_override(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key`` (dotted, list indices allowed) set to ``value``."""
    out = copy.deepcopy(raw)
    node: Any = out
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = int(part) if part.isdigit() else None
            if idx is None or idx >= len(node):
                raise ConfigError([(here, f"index {part} is out of range for a list of {len(node)}")])
            node = node[idx]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError([(here, f"cannot set a key inside a {type(node).__name__} value")])
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError([(key, f"index {last} is out of range for a list of {len(node)}")])
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError([(key, f"cannot set a key inside a {type(node).__name__} value")])
    return out


def parse_config(raw: dict[str, Any], overrides: list[str] = (), source: str | None = None) -> ExperimentConfig:  # type: ignore[assignment]
    """Validate a raw mapping (after overrides); collect every error and raise one ``ConfigError``."""
    for text in overrides:
        key, value = parse_override(text)
        raw = apply_override(raw, key, value)
    errors = raw_errors(raw)
    if errors:
        raise ConfigError(errors, source=source)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(pydantic_errors(exc), source=source) from None
    errors = place_attackers(cfg) + read_trace(cfg) + resolve_plugins(cfg) + cross_checks(cfg)
    if errors:
        raise ConfigError(errors, source=source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:  # type: ignore[assignment]
    """Read, override and validate an experiment file."""
    return parse_config(read_yaml(path), overrides, source=str(path))


def place_attackers(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``attackers: k`` (a count) -> k node ids drawn uniformly without replacement, seeded by ``seed``."""
    if not isinstance(cfg.attackers, int):
        return []
    k = cfg.attackers
    if not 0 <= k < cfg.nodes:
        return [("attackers", f"a count of {k} attackers needs 0 <= count < nodes={cfg.nodes}; lower it or list node ids")]
    rng = np.random.default_rng([cfg.seed, ATTACKER_PLACEMENT])
    cfg.attackers = sorted(int(i) for i in rng.choice(cfg.nodes, size=k, replace=False))
    return []


TRACE_COLUMNS = {"speed": "speeds", "latency": "latencies", "bandwidth": "bandwidths"}
TRACE_BOUNDS = {"speed": "positive (iterations per time unit)", "latency": ">= 0", "bandwidth": "positive (bytes per time unit)"}


def read_trace(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``async.trace``: a CSV file with a header, ``node`` and any of ``speed``, ``latency`` and
    ``bandwidth`` (an empty cell: not given), read into ``async.speeds``, ``latencies`` and
    ``bandwidths``; ``async.link_trace``: ``u``, ``v`` and any of ``latency`` and ``bandwidth``, read
    into ``async.links``. Entries the config gives itself win. Both are then cleared, so the run
    directory's config holds the values it ran with and a resume does not read the files again."""
    a = cfg.async_
    errors: list[tuple[str, str]] = []
    if a.trace is not None:
        rows = _trace_rows("async.trace", a.trace, ("node",), ("speed", "latency", "bandwidth"), cfg.nodes, errors)
        read: dict[str, dict[int, float]] = {field: {} for field in TRACE_COLUMNS.values()}
        for (node,), values in rows:
            for column, value in values.items():
                read[TRACE_COLUMNS[column]][node] = value
        for field, got in read.items():
            setattr(a, field, {**got, **getattr(a, field)})
        a.trace = None
    if a.link_trace is not None:
        given = {frozenset((link.u, link.v)) for link in a.links}
        rows = _trace_rows("async.link_trace", a.link_trace, ("u", "v"), ("latency", "bandwidth"), cfg.nodes, errors)
        a.links = a.links + [LinkSpec(u=u, v=v, **values) for (u, v), values in rows if frozenset((u, v)) not in given]
        a.link_trace = None
    return errors


def _trace_rows(field: str, name: str, keys: tuple[str, ...], columns: tuple[str, ...], nodes: int,
                errors: list[tuple[str, str]]) -> list[tuple[tuple[int, ...], dict[str, float]]]:
    """The lines of a trace CSV ``name``: node ids under ``keys`` and numbers under any of ``columns``
    (an empty cell: not given), checked; on the first bad line one error at ``field`` and nothing read."""
    def error(text: str) -> list[tuple[tuple[int, ...], dict[str, float]]]:
        errors.append((field, f"{name!r}: {text}"))
        return []

    try:
        lines = list(csv.DictReader(Path(name).expanduser().read_text().splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return error(f"cannot read it ({exc}); give a CSV file with a header: {','.join(keys + columns)}")
    found = list(lines[0]) if lines else []
    unknown = [c for c in found if c not in keys and c not in columns]
    if any(k not in found for k in keys) or unknown:
        return error(f"columns {found} must be {' and '.join(keys)} and any of {', '.join(columns)}"
                     + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
    out: list[tuple[tuple[int, ...], dict[str, float]]] = []
    seen: set[frozenset[int]] = set()
    for line, row in enumerate(lines, start=2):
        try:
            ids = tuple(int(row[k]) for k in keys)
            values = {c: float(v) for c, v in row.items() if c not in keys and v not in ("", None)}
        except (TypeError, ValueError):
            return error(f"line {line} {dict(row)} is not numbers; give node ids and numbers")
        bad = [i for i in ids if not 0 <= i < nodes]
        if bad:
            return error(f"line {line}: node id {bad[0]} is out of range; ids run from 0 to {nodes - 1}")
        if frozenset(ids) in seen:
            return error(f"line {line}: {' '.join(map(str, ids))} appears twice; give each one line")
        seen.add(frozenset(ids))
        for column, value in values.items():
            if not (value >= 0 if column == "latency" else value > 0) or not math.isfinite(value):
                return error(f"line {line}: {column} {value} must be {TRACE_BOUNDS[column]} and finite")
        out.append((ids, values))
    return out


def resolve_plugins(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Check each plugin spec against its registry and fill in its params' defaults, in place."""
    load_plugins()
    errors: list[tuple[str, str]] = []
    specs: list[tuple[str, Any, Any]] = [
        ("data.dataset", cfg.data.dataset, DATASETS),
        ("data.partition", cfg.data.partition, PARTITIONERS),
        ("model", cfg.model, MODELS),
        ("topology", cfg.topology, TOPOLOGIES),
        ("aggregator", cfg.aggregator, AGGREGATORS),
    ] + [(f"attacks.{i}", a, ATTACKS) for i, a in enumerate(cfg.attacks)] + [
        (f"defenses.{i}", d, DEFENSES) for i, d in enumerate(cfg.defenses)]
    for path, spec, registry in specs:
        try:
            entry = registry.get(spec.name, f"{path}.name")
            spec.params = entry.parse_params(spec.params, f"{path}.params").model_dump(mode="json")
            if getattr(entry.obj, "kind", "") == "inversion" and "access" not in spec.model_fields_set:
                spec.access = "params"  # what it uses, written out so the saved config reads back the same
        except ConfigError as exc:
            errors += exc.errors
    return errors


def cross_checks(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Checks that span fields: attacker ids, graph shape and connectivity."""
    errors: list[tuple[str, str]] = []
    seen: set[int] = set()
    for i, a in enumerate(cfg.attacker_ids):
        if not 0 <= a < cfg.nodes:
            errors.append((f"attackers.{i}", f"node id {a} is out of range; ids run from 0 to {cfg.nodes - 1} (nodes={cfg.nodes})"))
        if a in seen:
            errors.append((f"attackers.{i}", f"node id {a} is listed twice; list each attacker once"))
        seen.add(a)
    if not errors and len(seen) == cfg.nodes and cfg.nodes > 0:
        errors.append(("attackers", f"all {cfg.nodes} nodes are attackers; leave at least one victim"))
    if not any(p for p, _ in errors if p.startswith("topology")):
        errors += check_topology(cfg)
    errors += plugin_checks(cfg, lists=False)
    if not errors and cfg.attacks:
        errors += attack_checks(cfg)
    for i, d in enumerate(cfg.defenses):
        for j, n in enumerate(d.nodes if isinstance(d.nodes, list) else []):
            if not 0 <= n < cfg.nodes:
                errors.append((f"defenses.{i}.nodes.{j}", f"node id {n} is out of range; ids run from 0 to {cfg.nodes - 1}"))
    if not errors:
        errors += plugin_checks(cfg, singles=False)
    if cfg.mode == "async":
        errors += async_errors(cfg)
    batched = cfg.engine.name == "batched" or (cfg.engine.name == "ray" and cfg.engine.ray.batched)
    if not errors and batched and cfg.topology.name != "centralized":
        errors += batched_errors(cfg)
    return errors


def async_errors(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """What ``mode: async`` does not run: a server, a graph that changes; and node ids out of range in
    its per-node settings."""
    errors: list[tuple[str, str]] = []
    if cfg.topology.name == "centralized":
        errors.append(("mode", "topology centralized has a server and rounds; mode: async is for gossip graphs"))
    if cfg.topology.resample_every is not None or cfg.topology.link_failure > 0:
        errors.append(("mode", "mode: async runs on one fixed graph; drop topology.resample_every and "
                               "topology.link_failure (model a node's absence with async.churn)"))
    for i, spec in enumerate(cfg.attacks):
        if spec.view != "received":
            errors.append((f"attacks.{i}.view", f"view {spec.view} models synchronous gossip; in mode: async an "
                                                "attacker attacks the messages that reached it: use view: received"))
    if cfg.async_.protocol not in PROTOCOLS:
        errors.append(("async.protocol", f"unknown protocol {cfg.async_.protocol!r}; known protocols: "
                                         f"{', '.join(PROTOCOLS.names())} (dfl-sim list protocols)"))
    for i, c in enumerate(cfg.async_.churn):
        if c.node >= cfg.nodes:
            errors.append((f"async.churn.{i}.node", f"node id {c.node} is out of range; ids run from 0 to {cfg.nodes - 1}"))
    if cfg.async_.links:
        graph = base_graph(cfg)
        for i, link in enumerate(cfg.async_.links):
            if not graph.has_edge(link.u, link.v):
                errors.append((f"async.links.{i}", f"{link.u} - {link.v} is not a link of the {cfg.topology.name} "
                                                   "graph; give pairs of neighbours"))
    for field, column in (("speeds", "speed"), ("latencies", "latency"), ("bandwidths", "bandwidth")):
        for node, value in getattr(cfg.async_, field).items():
            if not 0 <= node < cfg.nodes:
                errors.append((f"async.{field}", f"node id {node} is out of range; ids run from 0 to {cfg.nodes - 1}"))
            if not (value >= 0 if field == "latencies" else value > 0) or not math.isfinite(value):
                errors.append((f"async.{field}.{node}", f"{column} {value} must be {TRACE_BOUNDS[column]} and finite"))
    return errors


PROBE_SHAPE = (3, 32, 32)  # the input shape a model is built with to check its layers (they do not depend on it)


def batched_errors(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """What the batched engine cannot run: training-time defenses that are neither pure rewrites
    (``batched``) nor split into draws and a pure rewrite (``draws``) -- DP-SGD and defensive augmentation
    among them --, BatchNorm and dropout (state and randomness it does not carry per node)."""
    errors: list[tuple[str, str]] = []
    for i, spec in enumerate(cfg.defenses):
        obj = DEFENSES.get(spec.name).obj
        if isinstance(obj, type) and issubclass(obj, TrainingDefense) and not (obj.batched or obj.draws):
            errors.append((f"defenses.{i}.name", f"{spec.name} is a training-time defense that the batched engine "
                                                 "does not run (it changes the optimizer or draws per image); use "
                                                 "engine.name: serial (or ray) for it"))
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.model, PROBE_SHAPE, 10)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        errors.append(("model.params.norm", f"{cfg.model.name} uses BatchNorm, whose running statistics the batched "
                                            "engine does not keep; set model.params.norm: group (or use "
                                            "engine.name: serial)"))
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        errors.append(("model.params.dropout", f"{cfg.model.name} uses dropout, whose random masks the batched "
                                               "engine does not draw; set model.params.dropout: 0 (or use "
                                               "engine.name: serial)"))
    return errors


def plugin_checks(cfg: ExperimentConfig, *, singles: bool = True, lists: bool = True) -> list[tuple[str, str]]:
    """What each plugin requires of the rest of the experiment, asked of its registry entry.

    An entry's object may define ``config_errors``: ``config_errors(cfg)`` for the one-of-a-kind specs
    (dataset, partition, model, topology, aggregator: ``centralized`` says what a Flower run cannot do)
    and ``config_errors(cfg, index)`` for the entries of ``attacks`` and ``defenses`` (``dp_sgd`` checks
    the model and the other defenses on its nodes). Each returns ``(dotted.path, message)`` pairs.
    ``cross_checks`` asks the one-of-a-kind specs always and the list entries only once everything else
    is valid (their checks may build the model).
    """
    errors: list[tuple[str, str]] = []
    one = [(cfg.data.dataset, DATASETS), (cfg.data.partition, PARTITIONERS), (cfg.model, MODELS),
               (cfg.topology, TOPOLOGIES), (cfg.aggregator, AGGREGATORS)]
    for spec, registry in one if singles else []:
        check = getattr(registry.get(spec.name).obj, "config_errors", None) if spec.name in registry else None
        if check is not None:
            errors += check(cfg)
    for specs, registry in ((cfg.attacks, ATTACKS), (cfg.defenses, DEFENSES)) if lists else ():
        for i, spec in enumerate(specs):
            check = getattr(registry.get(spec.name).obj, "config_errors", None) if spec.name in registry else None
            if check is not None:
                errors += check(cfg, i)
    return errors


def attack_checks(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Attacks need attackers, victims to reach, rounds that exist and (for shadow training) auxiliary data."""
    errors: list[tuple[str, str]] = []
    attackers = cfg.attacker_ids
    if not attackers:
        return [("attackers", f"{len(cfg.attacks)} attack(s) are configured but no node is an attacker; "
                              "list attacker node ids (attackers: [0]) or a count (attackers: 1)")]
    graph = base_graph(cfg, 0)
    for i, spec in enumerate(cfg.attacks):
        entry = ATTACKS.get(spec.name, f"attacks.{i}.name")
        if getattr(entry.obj, "needs_auxiliary", False) and cfg.data.auxiliary_fraction <= 0:
            errors.append((f"attacks.{i}.name", f"{spec.name} trains shadow models on the attacker's auxiliary data, "
                           "but data.auxiliary_fraction is 0; set it (e.g. 0.1)"))
        if getattr(entry.obj, "kind", "") == "inversion" and spec.access == "query" and "access" in spec.model_fields_set:
            errors.append((f"attacks.{i}.access", f"{spec.name} inverts the state a neighbour shared, so it needs "
                           "access: params (or leave access out)"))
        for r in spec.rounds or []:
            if not 1 <= r <= cfg.rounds:
                errors.append((f"attacks.{i}.rounds", f"round {r} does not exist; rounds run from 1 to {cfg.rounds}"))
        errors += target_errors(cfg, i, graph)
    return errors


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
