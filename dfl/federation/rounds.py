"""``Federation``: the synchronous round loop, written once for every engine.

Round r (0-based inside, reported 1-based): every node trains locally -> shares its state with its
neighbours in the round-r graph -> observers (attackers) see what was shared -> every node aggregates
``x_i <- sum_j W_ij x_j`` with the configured mixing rule -> evaluation every ``eval.every`` rounds.

:meth:`Federation.run` is the only loop over rounds: ``dfl.api.run`` and ``resume``, the Flower
baseline (``dfl.engines.flower``) and the tests all go through it. Around each round it writes the
records (to the run directory, or to ``Federation.records``), saves checkpoints, recovers from engine
faults by rolling back to the last checkpoint, reports progress and stops early when asked to.
:meth:`Federation.run_round` is the one record builder: ``train`` per node, what the observers add,
``eval`` per node in evaluation rounds, then the ``round`` summary (see :mod:`dfl.records`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import networkx as nx
import numpy as np
import torch

from dfl.config import ExperimentConfig
from dfl.errors import EngineFault
from dfl.federation.asynchronous import MIX_COLUMNS, AsyncRounds, Message
from dfl.federation.engine import Engine
from dfl.federation.participant import shared_tensors
from dfl.federation.population import Population
from dfl.metrics.graph import spectral_gap
from dfl.mixing import consensus_distance
from dfl.records import EVAL, FAULT, ROUND, TRAIN, Record
from dfl.rundir import RunDir
from dfl.topology import build_graph, build_mixing

ProgressFn = Callable[[int, int, Record], None]


class Observer(Protocol):
    """Sees the states shared in a round (attackers hook in here); returns extra metric records.

    ``shared``: ``(n_nodes, n_params)``, what every node shared after its local training in round
    ``round_idx``; ``starts``: the states the nodes began that round from (the truth that an attacker
    with exact knowledge is granted; an observer must not leak it into what attackers are given);
    ``heard`` (``mode: async``): per node, the newest message it received from each sender
    (:class:`dfl.federation.asynchronous.Message`: state, time sent, sender's iteration): what an
    attacker has actually heard. An observer with ``needs_starts = True`` also gets, for the attackers'
    messages, the state the sender began that iteration from and the message heard before it.
    """

    def observe(self, round_idx: int, graph: nx.Graph, shared: torch.Tensor, starts: torch.Tensor,
                heard: list[dict[int, Message]] | None = None) -> list[Record]: ...


class Federation:
    """Runs rounds on an engine and turns what happens into metric records.

    ``rundir``: where records and checkpoints go (``None``: nothing is checkpointed, so an engine fault
    is not recovered from); ``sink(records)`` receives each round's records (default: the run
    directory's ``metrics.jsonl``, else the list ``self.records``); ``progress(done, total,
    round_record)`` after every round.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        population: Population,
        engine: Engine,
        observers: list[Observer] | None = None,
        starts: torch.Tensor | None = None,
        *,
        rundir: RunDir | None = None,
        progress: ProgressFn | None = None,
        sink: Callable[[list[Record]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.population = population
        self.engine = engine
        self.observers = observers or []
        self.rundir = rundir
        self.progress = progress
        self.records: list[Record] = []  # what run() wrote, when there is neither a sink nor a run directory
        self.sink = sink or (rundir.append if rundir is not None else self.records.extend)
        self.timings: dict[str, float] = {}
        self._counts = population.sample_counts()
        self.starts = starts  # the nodes' states at the start of the next round (None: the initial model)
        self._mixing: tuple[nx.Graph, np.ndarray] | None = None  # the last graph and its mixing matrix
        self._gap: tuple[np.ndarray, float | None] | None = None  # the last mixing matrix and its spectral gap
        self._async: AsyncRounds | None = None  # mode: async's inboxes, messages on their way and schedule

    def _starts(self) -> torch.Tensor:
        if self.starts is None:
            self.starts = self.population.initial_state().expand(self.cfg.nodes, -1)
        return self.starts

    def mixing_matrix(self, graph: nx.Graph) -> np.ndarray:
        """``W: (n_nodes, n_nodes)`` of the configured aggregator on ``graph``, read-only.

        A mixing rule is a function of the graph (and the fixed sample counts), so while the graph stays
        the same (edges and attributes) the loop hands the engines the same array: at thousands of
        nodes building the dense matrix costs more than a round's gossip, and an engine may keep what it
        derived from it (the batched engine's gossip plan)."""
        if self._mixing is not None and nx.utils.graphs_equal(self._mixing[0], graph):
            return self._mixing[1]
        W = build_mixing(self.cfg, graph, self._counts)
        W.flags.writeable = False
        self._mixing = (graph, W)
        return W

    def _asynchronous(self, graph: nx.Graph, W: np.ndarray) -> AsyncRounds:
        """The asynchronous state, made on first use (``mode: async``)."""
        if self._async is None:
            n_state = sum(t.numel() for t in shared_tensors(self.population.template()))
            watched = self.cfg.attacker_ids if any(getattr(o, "needs_starts", False) for o in self.observers) else []
            self._async = AsyncRounds(self.cfg, self.engine, graph, W, n_state, watched)
        return self._async

    def _snapshot(self) -> list[dict[str, Any]]:
        """The engine's per-node snapshot, with the asynchronous state in ``mode: async``."""
        snaps = self.engine.snapshot()
        if self._async is not None:
            snaps = [{**s, "async": a} for s, a in zip(snaps, self._async.snapshot(), strict=True)]
        return snaps

    def spectral_gap(self, W: np.ndarray) -> float | None:
        """:func:`dfl.metrics.graph.spectral_gap` of the round's mixing matrix, computed once per matrix."""
        if self._gap is None or self._gap[0] is not W:
            self._gap = (W, spectral_gap(W))
        return self._gap[1]

    def is_eval_round(self, round_idx: int) -> bool:
        r = round_idx + 1
        return r % self.cfg.eval.every == 0 or r == self.cfg.rounds

    def run_round(self, round_idx: int) -> list[Record]:
        """One synchronous round (``mode: async``: one interval of simulated time); returns its metric
        records in a fixed order."""
        r = round_idx + 1
        if self.cfg.mode == "async":
            graph = build_graph(self.cfg, 0)  # async runs on the base graph (validated: no resampling)
            W = self.mixing_matrix(graph)
            rounds = self._asynchronous(graph, W)
            begun = self.engine.node_states(list(range(self.cfg.nodes))) if self.observers else None
            stats = rounds.play(round_idx)
            new = self.engine.node_states(list(range(self.cfg.nodes)))
            shared = rounds.shared(new) if self.observers else new  # only the observers read it
            if begun is not None:  # the observers' start states: the nodes' states as the interval began
                self.starts = begun
        else:
            graph = build_graph(self.cfg, round_idx)
            stats = self.engine.train(round_idx)
            shared = self.engine.share()
        records: list[Record] = [{"round": r, "node": i, "kind": TRAIN, **s} for i, s in enumerate(stats)]
        heard = {"heard": rounds.heard_messages()} if self.cfg.mode == "async" and self.observers else {}
        for obs in self.observers:
            records += obs.observe(round_idx, graph, shared, self._starts(), **heard)
        if self.cfg.mode == "async":
            timing = {"time": rounds.time, "messages": int(sum(s["received"] for s in stats))}
            if self.cfg.async_.log_mixes and self.rundir is not None:
                self.rundir.write_mixes(r, MIX_COLUMNS, rounds.mixes)
        else:
            W = self.mixing_matrix(graph)
            new = self.engine.mix(W, shared)
            if self.observers:
                self.starts = new
            timing = {}
        summary: Record = {
            "round": r,
            "node": None,
            "kind": ROUND,
            "edges": graph.number_of_edges(),
            "train_loss": float(np.mean([s["loss"] for s in stats])),
            "consensus_distance": consensus_distance(new),
            "spectral_gap": self.spectral_gap(W),
            **timing,
        }
        if self.is_eval_round(round_idx):
            evals = self.engine.evaluate(list(self.cfg.eval.splits), round_idx)
            records += [{"round": r, "node": i, "kind": EVAL, **e} for i, e in enumerate(evals)]
            for key in evals[0]:
                summary[f"mean_{key}"] = float(np.mean([e[key] for e in evals]))
        records.append(summary)
        return records

    def rounds(self, start: int = 0) -> Iterator[tuple[int, list[Record]]]:
        """Deprecated (kept for one release): ``(round_idx, records)`` per round, after :meth:`run` has run
        them all; use ``run()`` and ``records`` (or a ``sink``)."""
        warnings.warn("Federation.rounds() is deprecated; call Federation.run() and read Federation.records "
                      "(or pass sink=)", DeprecationWarning, stacklevel=2)
        sink, seen = self.sink, len(self.records)
        self.sink = self.records.extend
        try:
            self.run(start)
        finally:
            self.sink = sink
        for round_idx in range(start, self.cfg.rounds):
            yield round_idx, [r for r in self.records[seen:] if r["round"] == round_idx + 1]

    def run(self, start: int = 0, snaps: list[dict[str, Any]] | None = None, *, stop_after: int | None = None,
            t0: float | None = None) -> str:
        """Rounds ``start .. cfg.rounds - 1``; returns ``"complete"``, or ``"interrupted"`` after round
        ``stop_after`` (as if stopped there; the last checkpoint is the one a resume continues from).

        ``snaps``: the participants' checkpoint to continue from (a resume); otherwise round 0's state
        is checkpointed first, so a fault in round 1 rolls back to it. An ``EngineFault`` (a worker lost)
        replaces the workers, rolls every node back to the last checkpoint, drops the records written
        after it and logs one ``kind: fault`` record; after ``engine.ray.max_failures`` faults, or with no
        checkpoint to return to, it is raised with the command that resumes the run. ``t0`` (a
        ``perf_counter`` value) dates ``timings["to_first_round_s"]``.
        """
        t0 = time.perf_counter() if t0 is None else t0
        cfg, engine, rundir = self.cfg, self.engine, self.rundir
        checkpoints = rundir is not None and engine.checkpoints and cfg.output.checkpoint_every > 0
        if snaps is not None:
            engine.restore(snaps)
            self.starts = _states(snaps)
            self._resume_async(snaps, start)
        elif checkpoints:
            rundir.save_checkpoint(0, self._snapshot())  # type: ignore[union-attr]
        failures = 0
        round_idx = start
        while round_idx < cfg.rounds:
            try:
                records = self.run_round(round_idx)
            except EngineFault as fault:
                failures += 1
                round_idx = self._recover(fault, failures, round_idx, checkpoints)
                continue
            self.sink(records)
            done = round_idx + 1
            k = cfg.output.checkpoint_every
            if checkpoints and (done % k == 0 or done == cfg.rounds):
                rundir.save_checkpoint(done, self._snapshot())  # type: ignore[union-attr]
            if round_idx == start:
                self.timings["to_first_round_s"] = time.perf_counter() - t0
            if self.progress:
                self.progress(done, cfg.rounds, records[-1])
            if stop_after is not None and stop_after <= done < cfg.rounds:
                return "interrupted"
            round_idx = done
        return "complete"

    def _resume_async(self, snaps: list[dict[str, Any]], start: int) -> None:
        """``mode: async``: the inboxes and messages of the checkpoint, and the schedule skipped to ``start``."""
        if self.cfg.mode != "async":
            return
        graph = build_graph(self.cfg, 0)
        rounds = self._asynchronous(graph, self.mixing_matrix(graph))
        if all("async" in s for s in snaps):
            rounds.restore([s["async"] for s in snaps], start)
        else:  # round 0's checkpoint of a run that had not started
            rounds.skip_to(start)

    def _recover(self, fault: EngineFault, failures: int, round_idx: int, checkpoints: bool) -> int:
        """Replace the lost workers, roll every node back to the last checkpoint and log the fault.

        Returns the round to continue from. Records written after the checkpoint are dropped, so the run
        finishes with the metrics of an undisturbed run plus one ``kind: fault`` record.
        """
        cfg, rundir = self.cfg, self.rundir
        if not checkpoints or rundir is None:
            raise EngineFault(f"{fault}; with output.checkpoint_every 0 there is no checkpoint to recover from: "
                              "start the run again") from None
        if failures > cfg.engine.ray.max_failures:
            raise EngineFault(f"{fault}; that is {failures} faults, more than engine.ray.max_failures="
                              f"{cfg.engine.ray.max_failures}. The last checkpoint is intact: resume with "
                              f"`{rundir.resume_hint()}`") from None
        try:
            self.engine.recover(fault)
            ckpt = rundir.load_checkpoint()
            self.engine.restore(ckpt["participants"])
        except EngineFault as lost:
            raise EngineFault(f"{lost}. The last checkpoint is intact: resume with `{rundir.resume_hint()}` once "
                              "the cluster has room") from None
        if self._async is not None:  # the schedule and messages as they were at the checkpoint
            self._async = None
            self._resume_async(ckpt["participants"], int(ckpt["round"]))
        rundir.truncate_metrics(ckpt["metrics_bytes"])
        rundir.append([{"round": round_idx + 1, "node": None, "kind": FAULT, "nodes": list(fault.nodes),
                        "error": str(fault), "resumed_from_round": ckpt["round"]}])
        self.starts = _states(ckpt["participants"])
        return int(ckpt["round"])


def _states(snaps: list[dict[str, Any]] | None) -> torch.Tensor | None:
    """The nodes' states ``(n_nodes, n_params)`` in participant snapshots (None for none)."""
    return torch.stack([s["state"] for s in snaps]) if snaps is not None else None
