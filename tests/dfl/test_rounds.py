"""dfl.federation.rounds: Federation.run() is the one round loop, for runs, resumes and notebooks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY

from dfl import api
from dfl.engines import SerialEngine
from dfl.experiment import parse_config
from dfl.federation import Federation
from dfl.federation.population import Population


def tiny(**patch: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw.update({"rounds": 3, "attackers": [], "output": {"plots": False}, **patch})
    return raw


def test_runs_and_resumes_go_through_federation_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int | None]] = []
    real = Federation.run

    def counted(self: Federation, start: int = 0, snaps: Any = None, **kw: Any) -> str:
        calls.append((start, kw.get("stop_after")))
        return real(self, start, snaps, **kw)

    monkeypatch.setattr(Federation, "run", counted)
    first = api.run(parse_config(tiny()), out_dir=tmp_path, stop_after=1)
    assert first.status == "interrupted" and calls == [(0, 1)]
    assert api.resume(first.run_dir).status == "complete" and calls == [(0, 1), (1, None)]


def test_run_without_a_run_directory_collects_records_and_stops_where_asked() -> None:
    cfg = parse_config(tiny())
    population = Population.from_config(cfg)
    seen: list[tuple[int, int, str]] = []
    fed = Federation(cfg, population, SerialEngine(population), progress=lambda d, t, r: seen.append((d, t, r["kind"])))
    assert fed.run(stop_after=2) == "interrupted"
    assert seen == [(1, 3, "round"), (2, 3, "round")]
    assert [r["round"] for r in fed.records if r["kind"] == "round"] == [1, 2]
    assert fed.run(2) == "complete"
    assert [r["round"] for r in fed.records if r["kind"] == "round"] == [1, 2, 3]
    assert "to_first_round_s" in fed.timings


def test_a_sink_receives_each_rounds_records_in_order() -> None:
    cfg = parse_config(tiny(rounds=2))
    population = Population.from_config(cfg)
    batches: list[list[dict[str, Any]]] = []
    fed = Federation(cfg, population, SerialEngine(population), sink=batches.append)
    assert fed.run() == "complete" and fed.records == []
    assert [[r["kind"] for r in b][-1] for b in batches] == ["round", "round"]
    assert [b[0]["kind"] for b in batches] == ["train", "train"]


def test_the_mixing_matrix_is_kept_while_the_graph_stays_and_rebuilt_when_it_changes() -> None:
    import networkx as nx
    import numpy as np

    from dfl.topology import build_graph, build_mixing

    cfg = parse_config(tiny())
    fed = Federation(cfg, Population.from_config(cfg), SerialEngine.__new__(SerialEngine))
    ring = build_graph(cfg, 0)
    W = fed.mixing_matrix(ring)
    assert fed.mixing_matrix(build_graph(cfg, 1)) is W and not W.flags.writeable
    assert np.array_equal(W, build_mixing(cfg, ring, fed._counts))
    other = nx.path_graph(cfg.nodes)  # another graph: another matrix
    W2 = fed.mixing_matrix(other)
    assert W2 is not W and np.array_equal(W2, build_mixing(cfg, other, fed._counts))
    weighted = nx.path_graph(cfg.nodes)
    nx.set_edge_attributes(weighted, 2.0, "weight")  # the same edges with other attributes are another graph
    assert fed.mixing_matrix(weighted) is not W2
