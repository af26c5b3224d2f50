"""When an attack runs and whom it attacks: the schedule, and one rule for targets.

The rule, at validate time and in every round:

* ``access: query`` may target any node: a node's prediction API is built to answer queries, so an
  attacker reaches it whether or not they share an edge. ``targets: neighbours`` means the attacker's
  neighbours in the round's graph.
* ``access: params`` (and every inversion attack) sees only the states its neighbours share with it: a
  listed target that is not a neighbour in the base graph is a config error naming
  ``attacks.N.targets.J``; in a round where the edge is down (``link_failure``) or a resampled graph
  separates them, that target is skipped for the round.
* Attackers never target attackers.
"""

from __future__ import annotations

import networkx as nx

from dfl.config import AttackSpec, ExperimentConfig


def scheduled(spec: AttackSpec, round_no: int, rounds: int) -> bool:
    """Whether ``spec`` runs in 1-based round ``round_no``: its ``rounds``, every ``every``, else the last."""
    if spec.rounds is not None:
        return round_no in spec.rounds
    if spec.every is not None:
        return round_no % spec.every == 0 or round_no == rounds
    return round_no == rounds


def round_targets(spec: AttackSpec, attacker: int, graph: nx.Graph, attackers: list[int]) -> list[int]:
    """The victims ``attacker`` attacks with ``spec`` in the round whose graph is ``graph``, in order."""
    targets = sorted(graph.neighbors(attacker)) if spec.targets == "neighbours" else list(spec.targets)
    if spec.access == "params":  # only what reached it: a link down this round, or a resampled graph
        targets = [v for v in targets if graph.has_edge(attacker, v)]
    return [v for v in targets if v not in attackers]


def target_errors(cfg: ExperimentConfig, index: int, graph: nx.Graph) -> list[tuple[str, str]]:
    """The rule at validate time for ``cfg.attacks[index]`` on the base graph ``graph``."""
    spec, attackers, errors = cfg.attacks[index], cfg.attacker_ids, []
    where = f"attacks.{index}.targets"
    if spec.targets == "neighbours":
        for a in attackers:
            if graph.degree(a) == 0:
                errors.append((where, f"attacker {a} has no neighbours in the {cfg.topology.name} graph; list "
                                      "explicit targets or choose another attacker"))
        return errors
    for j, t in enumerate(spec.targets):
        if not 0 <= t < cfg.nodes or t in attackers:
            errors.append((f"{where}.{j}", f"target {t} must be a node id below {cfg.nodes} that is not an attacker"))
        elif spec.access == "params" and (far := [a for a in attackers if not graph.has_edge(a, t)]):
            errors.append((f"{where}.{j}", f"node {t} is not a neighbour of attacker(s) {far} in the "
                                           f"{cfg.topology.name} graph, and access: params sees only the states its "
                                           "neighbours share; target neighbours, or use access: query (any node's "
                                           "prediction API)"))
    return errors
