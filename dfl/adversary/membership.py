"""The adversary side of a run: builds each attacker's view, runs its scheduled attacks, scores them.

An ``Adversary`` is a ``Federation`` observer: after the nodes of round r have shared their states it
gives every attacker an :class:`attacks.base.AdversaryView` (its own data, the auxiliary pool, the
states its neighbours sent it, their query APIs) and runs the attacks scheduled for round r against
its targets. Only here is the truth known: members are a seeded sample of the victim's train split,
non-members as many samples that nobody trained on (the holdout splits of every node but the
attacker, then the test set). Scores become metrics (:func:`dfl.metrics.membership.mia_metrics`) next to the
victim's accuracy on the same members and non-members and its generalisation gap.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import nn

from dfl.adversary.evasion import describe, evasive
from dfl.attack import AdversaryView, Labelled, MembershipAttack, probabilities, round_targets, scheduled
from dfl.config import AttackSpec, ExperimentConfig
from dfl.defense import TrainingDefense, defended_query
from dfl.federation.participant import flatten_into_views, load_flat, local_lengths
from dfl.federation.population import Population
from dfl.metrics.audit import epsilon_lower_bound
from dfl.metrics.graph import GraphContext
from dfl.metrics.membership import ROC_POINTS, mia_metrics
from dfl.mixing import gossip_row
from dfl.registries import ATTACKS
from dfl.seeding import DP_AUDIT, EVASION, MIA_SAMPLE, QUERY, derive_seed, torch_generator
from dfl.topology import build_mixing

Record = dict[str, Any]

SIGNALS_AUTO_BYTES = 64 << 20  # output.signals: auto exports while the files stay under this
SIGNAL_SAMPLE_BYTES = 8 + 20 + 8 + 1 + 8 + 1  # index, split ("train"/"test" as <U5), label, member, score, decision
SIGNALS_FORMAT = """One ``.npz`` per ``kind: mia`` record (its ``signals`` key names the file), readable with
``np.load(path, allow_pickle=False)``; arrays of the record's ``n`` evaluated samples, members first:

* ``index`` (int64): the sample's index into its split of the data set; ``split`` (unicode): ``train``
  or ``test`` (non-members come from the other nodes' holdout parts of ``train``, or from ``test``);
* ``label`` (int64): its class; ``member`` (bool): the truth;
* ``score`` (float64): the attack's membership score (higher = member);
* ``decision`` (bool): the attack's own calibrated decision, only for attacks that make one;
* scalars ``round``, ``attacker``, ``victim``, ``attack_index`` (the position in ``attacks``) and the
  strings ``attack`` and ``access``.
"""


def _query_api(victim_model: Any, j: int, chain: list[Any], g: torch.Generator) -> Any:
    """Node ``j``'s black-box prediction API: its current model behind its query-time defenses."""
    def query(x: torch.Tensor) -> torch.Tensor:
        return defended_query(victim_model(j), x, chain, g)

    return query


def view_state(view: str, a: int, v: int, shared: torch.Tensor, W: np.ndarray) -> torch.Tensor:
    """The state attacker ``a`` scores under ``view`` (``own`` or ``isolated``) for victim ``v``.

    ``own``: the attacker's model after it aggregated this round, ``y_a = sum_j W_aj x_j`` over its row of
    the mixing matrix (the gossip's own arithmetic, so it is the attacker's next start state to the bit).

    ``isolated``: the victim's contribution, isolated as Pasquini et al. ("On the (in)security of
    peer-to-peer decentralized machine learning", S&P 2023; ``attacker.py`` of their code) do:

        x~_v = (x_v - sum_{j != v} W_aj x_j) / W_av

    over the attacker's row (its neighbours and itself; in float64). With their uniform weights ``1/n``
    this is their ``n x_v - sum_{j != v} x_j``, i.e. ``y_a + (n + 1)(x_v - y_a)``. Assumptions: the
    mixing weights are public, and the victim's message is modelled as an aggregate over the same
    neighbourhood with the attacker's weights, its own model in its slot. Where that holds (every node
    aggregating the same messages with the same weights: a complete graph with uniform weights) the
    estimator recovers the victim's own model exactly; elsewhere it amplifies the victim's deviation
    from the attacker's aggregate, which is where its training data shows.
    """
    cols = np.flatnonzero(W[a])
    if view == "own":
        return gossip_row(shared[cols], W[a, cols])
    if view != "isolated":
        raise ValueError(f"unknown view {view!r}")
    rest = torch.zeros(shared.shape[1], dtype=torch.float64)
    for j in cols:
        if j != v:
            rest += float(W[a, j]) * shared[j].double()
    return ((shared[v].double() - rest) / float(W[a, v])).float()


def _budget(attack: MembershipAttack, info: dict[str, Any]) -> Record:
    """The reference-model budget behind a score: how many shadow or reference models the attack used
    (0 for none), whether online (IN and OUT per target) or offline (OUT only), and RMIA's population and
    offline ``a``."""
    k = getattr(attack.params, "shadow_models", 0)
    out: Record = {"reference_models": int(k), "reference_mode": info.get("reference_mode", "offline") if k else None}
    for key, name in (("population", "population"), ("a", "offline_a")):
        if key in info:
            out[name] = info[key]
    return out


class Adversary:
    """Runs the configured attacks of every attacker (a ``Federation`` observer)."""

    def __init__(self, cfg: ExperimentConfig, population: Population, signals: Path | None = None) -> None:
        """``signals``: the directory of the per-sample exports (written when ``output.signals`` asks)."""
        self.cfg = cfg
        self.population = population
        self.attackers = cfg.attacker_ids
        self.attacks: list[tuple[AttackSpec, MembershipAttack]] = []
        for i, spec in enumerate(cfg.attacks):
            entry = ATTACKS.get(spec.name, f"attacks.{i}.name")
            if getattr(entry.obj, "kind", "") == "inversion":  # run by dfl.adversary.inversion
                continue
            self.attacks.append((spec, entry.obj(entry.parse_params(spec.params, f"attacks.{i}.params"))))
        splits = population.splits
        self._aux = population.train_pool(splits.auxiliary) if len(splits.auxiliary) else None
        self._epochs_per_round = self._local_epochs_per_round()
        self._chains = {i: population.query_defenses(i) for i in range(cfg.nodes)}
        # on the batched engine the attacks' extra models train batched too (same tolerance as the engine)
        self._stacked = cfg.engine.name == "batched" or (cfg.engine.name == "ray" and cfg.engine.ray.batched)
        wanted = cfg.output.signals
        on = wanted is True or (wanted == "auto" and self.signal_bytes() <= SIGNALS_AUTO_BYTES)
        self.signals = signals if on else None
        self._accountants: dict[int, TrainingDefense | None] = {}

    def signal_bytes(self) -> int:
        """At most the bytes the per-sample exports of this config take: every membership attack's scheduled
        rounds x attackers x victims (its targets, or every other node) x members and non-members."""
        total = 0
        for spec, _ in self.attacks:
            rounds = sum(scheduled(spec, r, self.cfg.rounds) for r in range(1, self.cfg.rounds + 1))
            victims = len(spec.targets) if isinstance(spec.targets, list) else self.cfg.nodes - 1
            total += rounds * len(self.attackers) * victims * 2 * spec.samples * SIGNAL_SAMPLE_BYTES
        return total

    def _local_epochs_per_round(self) -> float:
        t = self.cfg.training
        if t.local_steps is None:
            return float(t.local_epochs or 1)
        sizes = self.population.sample_counts()
        return t.local_steps * t.batch_size / max(float(np.mean(sizes)), 1.0)

    def _make_model(self) -> nn.Module:
        model = copy.deepcopy(self.population.template())
        flatten_into_views(model)
        return model

    def _model(self, state: torch.Tensor) -> nn.Module:
        model = self._make_model()
        load_flat(model, state)
        model.eval()
        return model

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor,
                heard: list[dict[int, Any]] | None = None) -> list[Record]:
        """``heard`` (``mode: async``): what each node received. An attacker with ``access: params`` then
        attacks, of each neighbour, the newest message that reached it (which a victim that sends to one
        neighbour at a time may have outdated elsewhere), and the record's ``message_time`` says when
        that message was sent."""
        r = round_idx + 1
        todo = [(spec, atk) for spec, atk in self.attacks if scheduled(spec, r, self.cfg.rounds)]
        if not todo or not self.attackers:
            return []
        for chain in self._chains.values():  # the victims' defenses as of this round (e.g. a resampled graph)
            for d in chain:
                d.start_round(round_idx)
        records: list[Record] = []
        victim_models: dict[int, nn.Module] = {}

        def victim_model(v: int) -> nn.Module:
            if v not in victim_models:
                victim_models[v] = self._model(shared[v])
            return victim_models[v]

        queried = {t for spec, _ in todo if spec.access == "query" and spec.targets != "neighbours" for t in spec.targets}
        context = GraphContext(graph, seed=self.cfg.seed)
        W = (build_mixing(self.cfg, graph, self.population.sample_counts())
             if any(spec.view != "received" for spec, _ in todo) else None)
        for a in self.attackers:
            view = self._view(a, r, graph, shared, victim_model, queried)
            if heard is not None:
                view.received = {j: m.state.clone() for j, m in sorted(heard[a].items())}
            for spec, attack in todo:
                targets = round_targets(spec, a, graph, self.attackers)
                if heard is not None and spec.access == "params":  # only what reached it
                    targets = [v for v in targets if v in heard[a]]
                if spec.view == "isolated":  # a victim without weight in the attacker's aggregate cannot be isolated
                    targets = [v for v in targets if W is not None and W[a, v] > 0]
                if not targets:
                    continue
                attack.prepare(view)
                for v in targets:
                    scored = None
                    if heard is not None and spec.access == "params":  # the message that reached it, not v's newest
                        scored = self._model(heard[a][v].state)
                    elif spec.view != "received":
                        scored = self._model(view_state(spec.view, a, v, shared, W))
                    record = self._attack_one(view, spec, attack, a, v, r, victim_model(v), scored)
                    if heard is not None and spec.access == "params":
                        record["message_time"] = heard[a][v].time
                    records.append({**record, **context.pair(a, v)})
        records += self._dp_audits(records, r)
        for j, chain in self._chains.items():  # what the victims' defenses reported while answering
            for i, d in enumerate(chain):
                records += [{"round": r, "node": j, "kind": "defense", "defense": d.name or type(d).__name__,
                             "position": i, **rec}
                            for rec in d.drain()]
        return records

    def _view(self, a: int, r: int, graph: nx.Graph, shared: torch.Tensor, victim_model: Any,
              queried: set[int] = frozenset()) -> AdversaryView:  # type: ignore[assignment]
        """What attacker ``a`` has in round ``r``: the states its neighbours shared, and the query API of its
        neighbours and of ``queried`` (the explicit targets of ``access: query`` attacks)."""
        pop = self.population
        neighbours = sorted(graph.neighbors(a))
        own = pop.train_pool(pop.splits.nodes[a].train)
        aux = self._aux if self._aux is not None else Labelled(own.x[:0], own.y[:0])
        return AdversaryView(
            attacker=a, round=r, num_classes=pop.data.num_classes, recipe=self.cfg.training,
            local_epochs_so_far=self._epochs_per_round * r, make_model=self._make_model, load_state=load_flat,
            own=Labelled(own.x, own.y), auxiliary=Labelled(aux.x, aux.y),
            received={j: shared[j].clone() for j in neighbours},
            query={j: _query_api(victim_model, j, self._chains[j],
                                 torch_generator(self.cfg.seed, QUERY, j, r, a + 1))
                   for j in sorted(set(neighbours) | set(queried))},
            seed=self.cfg.seed, stacked=self._stacked,
        )

    def evaluation_set(self, attacker: int, victim: int, samples: int, r: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Indices of members (victim's train) and as many non-members; ``True`` if the non-members come from the test split."""
        splits = self.population.splits
        rng = np.random.default_rng([self.cfg.seed, MIA_SAMPLE, r, attacker, victim])
        train = splits.nodes[victim].train
        pool = np.concatenate([n.holdout for i, n in enumerate(splits.nodes) if i != attacker])
        k = min(samples, len(train), max(len(pool), len(splits.test)))
        members = np.sort(rng.choice(train, k, replace=False))
        if len(pool) >= k:
            return members, np.sort(rng.choice(pool, k, replace=False)), False
        return members, np.sort(rng.choice(splits.test, k, replace=False)), True

    def _attack_one(self, view: AdversaryView, spec: AttackSpec, attack: MembershipAttack, a: int, v: int, r: int,
                    model: nn.Module, scored: nn.Module | None = None) -> Record:
        """One record of ``attack`` by ``a`` on ``v``; ``model``: the victim's (shared) model, on which the
        victim's accuracies are measured; ``scored``: the model the attack scores with ``access: params``
        when the spec's view is not the received state."""
        pop = self.population
        members, non_members, from_test = self.evaluation_set(a, v, spec.samples, r)
        ins = pop.train_pool(members)
        outs = (pop._split(pop.data.x_test, pop.data.y_test, non_members) if from_test
                else pop.train_pool(non_members))
        data = Labelled(torch.cat([ins.x, outs.x]), torch.cat([ins.y, outs.y]))
        truth = np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)]
        index = next(i for i, other in enumerate(self.cfg.attacks) if other is spec)
        if spec.access == "query":
            outputs = view.query[v]
            if spec.evasion:
                g = torch_generator(self.cfg.seed, EVASION, r, a, v, index)
                outputs = evasive(view.query[v], spec.evasion, pop.mean, pop.std, g)
        else:
            target = view.victim_model(v) if scored is None else scored
            outputs = lambda x: probabilities(target, x)  # noqa: E731
        detector = next((d for d in self._chains[v] if d.detects), None) if spec.access == "query" else None
        before = (detector.queries, detector.detected) if detector is not None else (0, 0)
        result = attack.score(view, outputs, data)
        detected = None
        if detector is not None and detector.queries > before[0]:
            detected = (detector.detected - before[1]) / (detector.queries - before[0])
        metrics = mia_metrics(result.scores, truth, result.predicted)
        p = probabilities(model, data.x)
        correct = (p.argmax(1) == data.y).numpy()
        train_acc, holdout_acc = float(correct[truth].mean()), float(correct[~truth].mean())
        # the same samples through what a benign user is given (the query API behind the victim's defenses)
        answered = (view.query[v](data.x).argmax(1) == data.y).numpy() if spec.access == "query" else correct
        # here, not at the top: scikit-learn costs about a second of start-up, and only scoring attacks needs it
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(truth, result.scores)
        exported = {}
        if self.signals is not None:
            exported["signals"] = self._export(spec, index, a, v, r, members, non_members, from_test, data, truth,
                                               result)
        return {
            "round": r, "node": v, "kind": "mia", "attacker": a, "attack": spec.name, "access": spec.access,
            "view": spec.view if spec.access == "params" else None,
            "evasion": describe(spec.evasion), "detected": detected,
            **metrics,
            "victim_train_acc": train_acc, "victim_holdout_acc": holdout_acc, "victim_gap": train_acc - holdout_acc,
            "answered_member_acc": float(answered[truth].mean()),
            "answered_non_member_acc": float(answered[~truth].mean()),
            "non_members_from": "test" if from_test else "holdout",
            "roc_tpr": [round(float(np.interp(x, fpr, tpr)), 5) for x in ROC_POINTS],
            **({"threshold": result.info["threshold"]} if "threshold" in result.info else {}),
            **_budget(attack, result.info),
            **self._audit(index, a, v, r, result.scores, truth),
            **exported,
        }

    def _accountant(self, v: int) -> TrainingDefense | None:
        """Node ``v``'s training-time defense with a privacy accountant (``dp_sgd``), if it runs one."""
        if v not in self._accountants:
            self._accountants[v] = next((d for d in self.population.defenses(v, TrainingDefense)
                                         if type(d).privacy_spent is not TrainingDefense.privacy_spent), None)
        return self._accountants[v]

    def _audit(self, index: int, a: int, v: int, r: int, scores: np.ndarray, truth: np.ndarray) -> Record:
        """For a victim with a DP accountant: its ``(dp_epsilon, dp_delta)`` after round ``r`` and the
        empirical lower bound from these scores (:func:`dfl.metrics.audit.epsilon_lower_bound`)."""
        accountant = self._accountant(v)
        if accountant is None:
            return {}
        n, t = len(self.population.splits.nodes[v].train), self.cfg.training
        spent = accountant.privacy_spent(r, len(local_lengths(n, t)), t.batch_size, n)
        assert spent is not None
        audit = epsilon_lower_bound(scores, truth, spent[1], derive_seed(self.cfg.seed, DP_AUDIT, r, a, v, index))
        return {"dp_epsilon": spent[0], "dp_delta": spent[1], **audit}

    @staticmethod
    def _dp_audits(records: list[Record], r: int) -> list[Record]:
        """Per victim with a DP accountant, one ``kind: dp_audit`` record: the best lower bound over this
        round's membership attacks on it, beside the accountant's epsilon; ``violation`` when the bound
        exceeds it (a bug in the accounting or the training: the report says so)."""
        out = []
        for v in sorted({rec["node"] for rec in records if rec.get("kind") == "mia" and "dp_epsilon" in rec}):
            audited = [rec for rec in records if rec.get("kind") == "mia" and rec["node"] == v
                       and rec.get("epsilon_lower") is not None]
            if not audited:
                continue
            best = max(audited, key=lambda rec: rec["epsilon_lower"])
            out.append({"round": r, "node": v, "kind": "dp_audit", "epsilon": best["dp_epsilon"],
                        "delta": best["dp_delta"], "epsilon_lower": best["epsilon_lower"],
                        "attack": best["attack"], "attacker": best["attacker"], "access": best["access"],
                        "view": best["view"], "attacks_audited": len(audited),
                        "violation": bool(best["epsilon_lower"] > best["dp_epsilon"])})
        return out

    def _export(self, spec: AttackSpec, index: int, a: int, v: int, r: int, members: np.ndarray,
                non_members: np.ndarray, from_test: bool, data: Labelled, truth: np.ndarray, result: Any) -> str:
        """Write one record's per-sample signals (format: :data:`SIGNALS_FORMAT`) of ``spec``, attack
        ``index`` of the config; returns the file's path relative to the run directory."""
        assert self.signals is not None
        name = f"r{r:04d}-a{a}-v{v}-{index}-{spec.name}-{spec.access}.npz"
        n_in = len(members)
        arrays: dict[str, np.ndarray] = {
            "index": np.r_[members, non_members].astype(np.int64),
            "split": np.array(["train"] * n_in + ["test" if from_test else "train"] * len(non_members)),
            "label": data.y.numpy().astype(np.int64),
            "member": truth.astype(bool),
            "score": np.asarray(result.scores, dtype=np.float64),
            "round": np.int64(r), "attacker": np.int64(a), "victim": np.int64(v),
            "attack": np.array(spec.name), "access": np.array(spec.access), "attack_index": np.int64(index),
        }
        if result.predicted is not None:
            arrays["decision"] = np.asarray(result.predicted, dtype=bool)
        self.signals.mkdir(parents=True, exist_ok=True)
        tmp = self.signals / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, self.signals / name)
        return f"{self.signals.name}/{name}"
