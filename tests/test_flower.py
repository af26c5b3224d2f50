"""dfl.engines.flower: centralized FedAvg through Flower's simulation engine, and NumPyClientLearner.

The two Flower runs (each starts a local Ray) are shared by the tests through one module fixture.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is first imported; tests stay offline
pytest.importorskip("flwr")

from conftest import TINY  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402

from dfl.config import ExperimentConfig  # noqa: E402
from dfl.engines.flower import centralized_errors, check_resume, fedavg, require_flwr, run_centralized
from dfl.engines.serial import SerialEngine  # noqa: E402
from dfl.errors import ConfigError, RunError  # noqa: E402
from dfl.experiment import parse_config  # noqa: E402
from dfl.federation.flower_client import NumPyClientLearner, NumPyClientPopulation, flatten_arrays
from dfl.federation.participant import Participant  # noqa: E402
from dfl.federation.population import Population  # noqa: E402
from dfl.federation.rounds import Federation  # noqa: E402

SIZES = [60, 100, 140]  # unequal shares (train + holdout), so sample weighting matters


def centralized_config(**changes: Any) -> ExperimentConfig:
    raw = copy.deepcopy(TINY)
    raw.update(nodes=3, rounds=2, attackers=[], topology={"name": "centralized"})
    raw["data"]["partition"] = {"name": "sizes", "params": {"sizes": SIZES}}
    raw.update(changes)
    return parse_config(raw)


def serial_records(cfg: ExperimentConfig, population: Population | None = None) -> list[dict[str, Any]]:
    population = population or Population.from_config(cfg)
    fed = Federation(cfg, population, SerialEngine(population))
    assert fed.run() == "complete"
    return fed.records


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    """Two centralized runs of the same config: records, final states, the global state after round 1."""
    cfg = centralized_config()
    out: dict[str, Any] = {"cfg": cfg, "records": [], "final": [], "progress": [], "round1": None}
    for k in range(2):
        population = Population.from_config(cfg)
        records: list[dict[str, Any]] = []

        def on_round(round_idx: int, state: torch.Tensor, k: int = k) -> None:
            if k == 0 and round_idx == 0:
                out["round1"] = state.clone()

        final = run_centralized(cfg, population, lambda d, t, r: out["progress"].append((d, t, r["kind"])),
                                records.extend, num_cpus=2, on_round=on_round)
        out["records"].append(records)
        out["final"].append(final)
    return out


# ------------------------------------------------------------------------------------ centralized runs


def test_centralized_run_writes_the_federation_records(runs: dict[str, Any]) -> None:
    records = runs["records"][0]
    kinds = [(r["round"], r["node"], r["kind"]) for r in records]
    expected = []
    for r in (1, 2):
        expected += [(r, i, "train") for i in range(3)] + [(r, i, "eval") for i in range(3)] + [(r, None, "round")]
    assert kinds == expected
    evals = [r for r in records if r["kind"] == "eval"]
    assert list(evals[0]) == ["round", "node", "kind", "train_acc", "train_loss", "holdout_acc", "holdout_loss",
                              "test_acc", "test_loss"]
    assert all(r["steps"] == float(np.ceil(n * 0.75 / 16)) for r, n in zip(records[:3], SIZES, strict=True))
    summary = records[-1]
    assert summary["edges"] == 3 and summary["consensus_distance"] == 0.0
    assert summary["mean_test_acc"] > 0.5  # 4 classes: chance is 0.25
    assert runs["progress"][:2] == [(1, 2, "round"), (2, 2, "round")]


def test_every_client_holds_the_global_model(runs: dict[str, Any]) -> None:
    """One model for all: the shared test set scores the same at every node, and the consensus distance is 0."""
    for r in (1, 2):
        tests = {(e["test_acc"], e["test_loss"]) for e in runs["records"][0] if e["kind"] == "eval" and e["round"] == r}
        assert len(tests) == 1
    assert all(rec["consensus_distance"] == 0.0 for rec in runs["records"][0] if rec["kind"] == "round")


def test_two_runs_give_identical_records(runs: dict[str, Any]) -> None:
    assert runs["records"][0] == runs["records"][1]
    assert torch.equal(runs["final"][0], runs["final"][1])


def test_centralized_equals_fully_connected_sample_weighted_gossip(runs: dict[str, Any]) -> None:
    """The server's FedAvg is one fully_connected + sample_weighted gossip round: the same records, bit for bit."""
    cfg = runs["cfg"].model_copy(deep=True)
    cfg.topology.name = "fully_connected"
    cfg.aggregator.name = "sample_weighted"
    assert serial_records(cfg) == runs["records"][0]


def test_the_server_averages_weighted_by_sample_counts(runs: dict[str, Any]) -> None:
    """Round 1's global model is ``sum_i n_i x_i / sum_i n_i`` of the clients trained from the initial model."""
    population = Population.from_config(runs["cfg"])
    counts = population.sample_counts()
    assert len(set(counts.tolist())) == 3
    states = []
    for i in range(3):
        p = population.participant(i)
        p.train_round(0)
        states.append(p.state().double())
    expected = sum(n * x for n, x in zip(counts.tolist(), states, strict=True)) / counts.sum()
    assert torch.allclose(runs["round1"].double(), expected, rtol=0, atol=1e-6)
    uniform = sum(states) / 3
    assert not torch.allclose(runs["round1"].double(), uniform, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- fedavg math


def test_fedavg_is_the_sample_weighted_mean() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(5, 40, generator=g)
    counts = np.array([3, 0, 10, 1, 7])
    out = fedavg(states, counts)
    ref = (torch.from_numpy(counts).double()[:, None] * states.double()).sum(0) / counts.sum()
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=0, atol=1e-6)
    perm = [3, 0, 4, 2, 1]
    assert torch.allclose(fedavg(states[perm], counts[perm]), out, rtol=0, atol=1e-6)
    assert torch.allclose(fedavg(states, np.zeros(5)), states.mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        fedavg(states, counts[:4])


# ---------------------------------------------------------------------------------- errors and limits


def test_missing_flwr_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = centralized_config()
    monkeypatch.setitem(sys.modules, "flwr", None)  # `import flwr` now raises ImportError
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else find_spec(name, *a))
    with pytest.raises(ConfigError) as err:
        require_flwr()
    [(path, message)] = err.value.errors
    assert path == "topology.name"
    assert "pip install 'dfl-sim[flower]'" in message and "not installed" in message
    assert ("topology.name", message) in centralized_errors(cfg)
    with pytest.raises(ConfigError, match=r"dfl-sim\[flower\]"):  # `dfl-sim validate` reports it too
        parse_config(cfg.model_dump(mode="json"))


def test_centralized_runs_cannot_resume_or_drop_links() -> None:
    cfg = centralized_config()
    with pytest.raises(RunError, match="cannot be resumed"):
        check_resume(cfg)
    with pytest.raises(RunError, match="cannot be resumed"):
        run_centralized(cfg, Population.from_config(cfg), None, lambda records: None, start_round=1)
    flaky = cfg.model_copy(update={"topology": cfg.topology.model_copy(update={"link_failure": 0.1})})
    assert [p for p, _ in centralized_errors(flaky)] == ["topology.link_failure"]
    with pytest.raises(ConfigError, match="topology.link_failure"):
        parse_config(flaky.model_dump(mode="json"))
    check_resume(centralized_config(topology={"name": "ring"}))  # gossip runs resume as usual


# ------------------------------------------------------------------------------------ NumPyClientLearner


class LinearClient(NumPyClient):
    """A numpy least-squares model with mixed shapes and dtypes; ``fit`` takes one gradient step."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((20, 3)).astype(np.float32)
        self.y = self.x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3
        self.fits: list[dict[str, Any]] = []

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.zeros((3, 1), dtype=np.float32), np.zeros(1, dtype=np.float64), np.ones((2, 2), dtype=np.float32)]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self.fits.append(dict(config))
        w, b, extra = parameters
        err = self.x @ w[:, 0] + b[0] - self.y
        w = w - 0.1 * (self.x.T @ err / len(err))[:, None]
        b = b - 0.1 * np.array([err.mean()])
        return [w.astype(np.float32), b, extra], len(self.y), {"loss": float((err**2).mean()), "steps": 1}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        w, b, _ = parameters
        err = self.x @ w[:, 0] + b[0] - self.y
        return float((err**2).mean()), len(self.y), {"accuracy": float(config["split"] == "test")}


def test_numpy_client_learner_round_trips_parameters() -> None:
    learner = NumPyClientLearner(LinearClient(), {"lr": 0.1}, node_id=2)
    assert learner.state().shape == (3 + 1 + 4,) and learner.state().dtype == torch.float32
    x = torch.arange(8, dtype=torch.float32)
    learner.load_state(x)
    params = learner.parameters()
    assert [p.shape for p in params] == [(3, 1), (1,), (2, 2)]
    assert [p.dtype for p in params] == [np.float32, np.float64, np.float32]
    assert torch.equal(flatten_arrays(params), x)
    params[0][:] = 99  # the client gets copies, not views of the learner's state
    assert torch.equal(learner.state(), x)
    with pytest.raises(ValueError, match="unknown before the first fit"):
        _ = learner.num_samples


def test_numpy_client_learner_trains_through_fit() -> None:
    client = LinearClient()
    learner = NumPyClientLearner(client, {"lr": 0.1})
    before = learner.state()
    stats = learner.train_round(4)
    assert not torch.equal(learner.state(), before)
    assert torch.equal(learner.state()[4:], before[4:])  # fit returned the third array unchanged
    assert client.fits == [{"lr": 0.1, "server-round": 5}]
    assert stats["steps"] == 1.0 and stats["loss"] > 0
    assert learner.num_samples == 20
    loss_after = learner.evaluate("test")["loss"]
    assert loss_after < stats["loss"]
    assert learner.evaluate("test")["acc"] == 1.0 and learner.evaluate("train")["acc"] == 0.0
    trained = learner.state()
    learner.aggregate(torch.stack([before, trained]), [0.25, 0.75])
    assert torch.allclose(learner.state(), 0.25 * before + 0.75 * trained)
    assert torch.equal(learner.snapshot()["state"], learner.state())


class ParticipantClient(NumPyClient):
    """A Flower client whose training is a dfl-sim participant's (to check that the adapter is transparent)."""

    def __init__(self, participant: Participant) -> None:
        self.p = participant

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [t.detach().numpy().copy() for t in self.p.model.parameters()]

    def _load(self, parameters: list[np.ndarray]) -> None:
        with torch.no_grad():
            for t, a in zip(self.p.model.parameters(), parameters, strict=True):
                t.copy_(torch.from_numpy(a))

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self._load(parameters)
        stats = self.p.train_round(int(config["server-round"]) - 1)
        return self.get_parameters(config), self.p.num_samples, stats

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        self._load(parameters)
        out = self.p.evaluate(str(config["split"]))
        return out["loss"], self.p.num_samples, {"accuracy": out["acc"]}


def participant_client(node_id: int, population: Population) -> ParticipantClient:
    return ParticipantClient(Population.participant(population, node_id))


def test_numpy_clients_plug_into_the_engines_through_a_population() -> None:
    """Nodes that are NumPyClients (wrapping the same training) give the plain serial run's records."""
    raw = copy.deepcopy(TINY)
    raw["rounds"] = 2
    cfg = parse_config(raw)
    plain = Population.from_config(cfg)
    wrapped = NumPyClientPopulation.wrap(Population.from_config(cfg), participant_client)
    assert isinstance(wrapped.participant(0), NumPyClientLearner)
    assert serial_records(cfg, wrapped) == serial_records(cfg, plain)


def test_api_runs_centralized_through_flower_with_fedavg_numbers(tiny, write_cfg):
    """`topology: centralized` goes through Flower and equals gossip with FedAvg weights on a complete graph."""
    from dfl import api

    tiny["rounds"] = 2
    tiny["nodes"] = 3
    tiny["attackers"] = []
    tiny["data"]["partition"] = {"name": "sizes", "params": {"sizes": [60, 90, 150]}}
    cfg = write_cfg(tiny)
    flower = api.run(cfg, ["topology.name=centralized"])
    gossip = api.run(cfg, ["topology.name=fully_connected", "aggregator.name=sample_weighted"])
    assert flower.status == "complete"
    assert "Flower" in (flower.run_dir / "report.md").read_text()
    assert (flower.run_dir / "metrics.jsonl").read_bytes() == (gossip.run_dir / "metrics.jsonl").read_bytes()
