"""Flower (``flwr``) in dfl-sim: centralized FedAvg through Flower's simulation engine.

``topology.name: centralized`` runs the experiment as classic server-based federated learning on
Flower's own simulation engine (``flwr.simulation.run_simulation``, Ray backend) instead of dfl-sim's
gossip round loop, as a baseline:

    round r = 1..R:  the server sends the global model x to every client (fraction 1.0);
                     client i loads x and trains locally -> x_i (same partition, initial model, seed
                     and recipe as ``Population.participant(i).train_round(r - 1)``);
                     the server sets x <- sum_i n_i x_i / sum_i n_i (FedAvg, McMahan et al.,
                     "Communication-efficient learning of deep networks from decentralized data", 2017),
                     n_i = the client's train samples;
                     every ``eval.every`` rounds (and the last) every client's data is scored with x.

:class:`FlowerEngine` is the round loop's engine for these runs: the rounds go through
:meth:`Federation.run <dfl.federation.rounds.Federation.run>` like every run's, and its records (``train``
per node, ``eval`` per node, one ``round``) equal those of a ``fully_connected`` topology with the ``sample_weighted`` aggregator on the same
config: the server's average is accumulated in node order with :func:`dfl.mixing.gossip_row`, whatever
order Flower delivers the replies in, so two runs of the same config and seed give identical records.
A client's optimizer state (momentum) stays local across rounds: it travels in Flower's node
``Context.state``, as a Flower app keeps per-client state. Evaluation runs on the driver, with
participants built there and the global model loaded into each, while Flower waits.

Not modelled in centralized runs: client sampling (every client trains every round), link failures,
attackers observing the traffic, checkpoints and ``--resume``. ``aggregator`` and ``engine`` are
ignored (the server always averages weighted by sample counts; clients run on Flower's Ray actors).

The other direction, a Flower ``NumPyClient`` as a dfl-sim participant, is :mod:`dfl.federation.flower_client`.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from dfl.config import ExperimentConfig, default_data_root
from dfl.engines.ray import require_ray
from dfl.errors import ConfigError, RunError
from dfl.experiment import parse_config
from dfl.federation.engine import Engine, available_cpus
from dfl.federation.participant import Participant, flatten_into_views
from dfl.federation.population import Population
from dfl.federation.rounds import Federation
from dfl.mixing import gossip_row

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord
    from flwr.serverapp import Grid

Record = dict[str, Any]
ProgressFn = Callable[[int, int, Record], None]
AppendFn = Callable[[list[Record]], None]

INSTALL_HINT = "pip install 'dfl-sim[flower]'"
MISSING_FLWR = f"centralized runs through Flower, which is not installed; install it with: {INSTALL_HINT}"

# Keys of the records exchanged with the clients.
_STATE = "state"  # the one flat float32 array of an ArrayRecord
_CONFIG_KEY = "dfl.config"  # the resolved experiment config, JSON
_THREADS_KEY = "dfl.threads"  # torch threads per client
_LOCAL_KEY = "dfl.local"  # Context.state entry: a client's optimizer state and integer buffers


def require_flwr() -> ModuleType:
    """Import and return ``flwr``; raise a ``ConfigError`` with the install command if it is missing.

    Flower's telemetry is switched off unless ``FLWR_TELEMETRY_ENABLED`` is set (a simulator should not
    phone home, and the variable is read when ``flwr`` is first imported).
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
        import flwr
    except ImportError:
        raise ConfigError([("topology.name", MISSING_FLWR)]) from None
    return flwr


def centralized_errors(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """What a ``centralized`` config asks for that a Flower run cannot do, as ``(dotted.path, message)``."""
    errors: list[tuple[str, str]] = []
    if importlib.util.find_spec("flwr") is None:
        errors.append(("topology.name", MISSING_FLWR))
    if cfg.topology.link_failure > 0:
        errors.append(("topology.link_failure", f"is {cfg.topology.link_failure}, but in a centralized run every client"
                       " reaches the server every round; set it to 0 or use a gossip topology"))
    if cfg.device == "cuda":
        errors.append(("device", "centralized runs train on CPU Flower clients; set device: cpu or auto"))
    return errors


def check_resume(cfg: ExperimentConfig) -> None:
    """Raise ``RunError`` if ``cfg`` is a centralized run: those keep no checkpoints and cannot be resumed."""
    if cfg.topology.name == "centralized":
        raise RunError("centralized (Flower) runs keep no checkpoints and cannot be resumed; start the run again")


# ----------------------------------------------------------------------------------------------- math


def fedavg(states: torch.Tensor, sample_counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The server step of FedAvg: ``x = sum_i n_i x_i / sum_i n_i``, clients in the given order.

    ``states``: ``(n_clients, n_params)``; ``sample_counts``: ``(n_clients,)`` train samples ``n_i``.
    Weights ``n_i / sum_k n_k`` are computed in float64 (as ``sample_weighted`` computes a row of its
    mixing matrix) and the sum is accumulated term by term in client order with
    :func:`dfl.mixing.gossip_row`, so the result is bit-identical to a ``fully_connected`` +
    ``sample_weighted`` gossip round and independent of thread count. Clients with ``n_i = 0`` are
    left out; if every ``n_i`` is 0 the plain mean is returned (McMahan et al. 2017).
    """
    s = np.asarray(sample_counts, dtype=np.float64)
    if states.ndim != 2 or s.shape != (states.shape[0],):
        raise ValueError(f"states must be (n_clients, n_params) and sample_counts (n_clients,), "
                         f"got {tuple(states.shape)} and {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sample_counts must be finite and >= 0, got {s.tolist()}")
    if s.sum() == 0:
        s = np.ones_like(s)
    keep = np.flatnonzero(s)
    return gossip_row(states[torch.as_tensor(keep)], s[keep] / s.sum())


# ------------------------------------------------------------------------------------ centralized run


class FlowerEngine(Engine):
    """``topology: centralized``: the round loop's engine whose rounds run on Flower's simulation engine.

    :meth:`Federation.run <dfl.federation.rounds.Federation.run>` drives the rounds as for every engine;
    Flower runs in a thread of its own (``flwr.simulation.run_simulation``, which blocks until the last
    round). After each round its ``ServerApp`` hands the round to this engine and waits: ``train`` returns
    the clients' stats, ``share`` and ``mix`` the server's average for every node (each client holds the
    global model, so the consensus distance is 0), ``evaluate`` scores it on every node's data in the
    driver. The next ``train`` lets Flower go on. ``close`` stops a simulation that has not finished (an
    interrupt, an error) by failing its next round. No checkpoints: a centralized run cannot be resumed.

    Ray gets ``num_cpus`` (default: the CPUs this process may use) and each client ``cpus_per_client``
    of them, so ``num_cpus // cpus_per_client`` clients train at once; each client uses
    ``engine.threads`` (default 1) torch threads, as dfl-sim's engines do.
    """

    checkpoints = False

    def __init__(self, population: Population, *, num_cpus: int | None = None, cpus_per_client: float = 1.0) -> None:
        cfg = population.cfg
        require_flwr()
        errors = centralized_errors(cfg)
        if errors:
            raise ConfigError(errors)
        super().__init__(population)
        self.cfg = cfg
        self.num_cpus, self.cpus_per_client = num_cpus, cpus_per_client
        self.state = flatten_into_views(copy.deepcopy(population.template())).detach().cpu().clone()
        self._evaluator = _DriverEvaluation(population, self.threads)
        self._rounds: queue.Queue[tuple[Any, ...]] = queue.Queue()  # Flower -> driver: each round, then the end
        self._go: queue.Queue[bool] = queue.Queue()  # driver -> Flower: next round (True) or stop (False)
        self._thread: threading.Thread | None = None

    def train(self, round_idx: int) -> list[dict[str, float]]:
        if self._thread is None:
            if round_idx:
                check_resume(self.cfg)
            self._thread = threading.Thread(target=self._simulate, name="flower-simulation", daemon=True)
            self._thread.start()
        else:
            self._go.put(True)
        kind, payload = self._rounds.get()
        if kind == "error":
            raise payload
        if kind == "end":
            raise RuntimeError(f"the Flower simulation stopped after round {round_idx} of {self.cfg.rounds}")
        stats, self.state = payload
        return stats

    def share(self) -> torch.Tensor:
        return self.state.expand(self.n, -1)

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        return shared  # the server has averaged: every client holds the global model

    def evaluate(self, splits: list[str], round_idx: int | None = None) -> list[dict[str, float]]:
        return self._evaluator.evaluate(self.state, splits)

    def snapshot(self) -> list[dict[str, Any]]:
        raise RunError("centralized (Flower) runs keep no checkpoints")

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        check_resume(self.cfg)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._go.put(False)
            self._thread.join(timeout=CLOSE_TIMEOUT_S)
        super().close()

    def _simulate(self) -> None:
        """The Flower side, in its own thread: the whole simulation, handing over each round."""
        try:
            rounds_done = self._run_simulation()
            if rounds_done < self.cfg.rounds:
                raise RuntimeError(f"the Flower simulation stopped after {rounds_done} of {self.cfg.rounds} rounds")
            self._rounds.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 -- handed to the driver, which raises it
            self._rounds.put(("error", exc))

    def _run_simulation(self) -> int:
        # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
        from flwr.app import Array, ArrayRecord, ConfigRecord
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        cfg = self.cfg
        with _quiet_flwr():
            strategy = _ordered_fedavg(cfg.nodes)

        def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:  # Flower also calls this on the initial model
                return None
            state = torch.from_numpy(arrays[_STATE].numpy())
            self._rounds.put(("round", (strategy.round_stats, state)))
            if server_round < cfg.rounds and not self._go.get():
                raise RunError(f"the run stopped after round {server_round}")
            return None

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord({_STATE: Array(self.state.numpy())}),
                num_rounds=cfg.rounds,
                train_config=ConfigRecord({_CONFIG_KEY: _client_config(cfg), _THREADS_KEY: self.threads}),
                evaluate_fn=after_round,
            )

        require_ray(local=True)  # Flower starts its own Ray: keep it on the loopback address
        cpus = self.num_cpus or available_cpus()
        backend_config = {
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                          "logging_level": logging.ERROR, "log_to_driver": False},
            "client_resources": {"num_cpus": self.cpus_per_client, "num_gpus": 0.0},
        }
        with _quiet_flwr():
            run_simulation(server_app=server, client_app=_client_app(), num_supernodes=cfg.nodes,
                           backend_name="ray", backend_config=backend_config)  # type: ignore[arg-type]
        return len(strategy.rounds_done)


CLOSE_TIMEOUT_S = 120  # how long close() waits for a stopped simulation to wind down


def run_centralized(
    cfg: ExperimentConfig,
    population: Population,
    progress_cb: ProgressFn | None,
    append_records: AppendFn,
    start_round: int = 0,
    *,
    num_cpus: int | None = None,
    cpus_per_client: float = 1.0,
    on_round: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run ``cfg.rounds`` rounds of FedAvg on Flower through the one round loop; returns the final global state.

    The records of each round go to ``append_records``, then ``progress_cb(done, cfg.rounds,
    round_record)`` and ``on_round(round_idx, global_state)`` are called. ``start_round > 0`` (resume)
    raises ``RunError``. See :class:`FlowerEngine` for ``num_cpus`` and ``cpus_per_client``.
    """
    if start_round:
        check_resume(cfg)
    engine = FlowerEngine(population, num_cpus=num_cpus, cpus_per_client=cpus_per_client)

    def progress(done: int, total: int, summary: Record) -> None:
        if progress_cb is not None:
            progress_cb(done, total, summary)
        if on_round is not None:
            on_round(done - 1, engine.state)

    try:
        Federation(cfg, population, engine, progress=progress, sink=append_records).run()
    finally:
        engine.close()
    return engine.state


def _client_config(cfg: ExperimentConfig) -> str:
    """The resolved config as JSON for the clients: CPU, and the data root made absolute (actors may not share cwd)."""
    raw = cfg.model_dump(mode="json")
    raw["device"] = "cpu"  # Ray gives the clients no GPU
    root = Path(cfg.data.root).expanduser() if cfg.data.root else default_data_root()
    raw["data"]["root"] = str(root.resolve())
    return json.dumps(raw, sort_keys=True)


@contextmanager
def _quiet_flwr() -> Iterator[None]:
    """Keep only errors: Flower logs every round at INFO and warns that ``run_simulation`` is deprecated;
    Ray warns about a future change of its GPU visibility default, irrelevant to CPU clients."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
            yield
    finally:
        logger.setLevel(level)


class _DriverEvaluation:
    """Scores the global model on every node's evaluation splits, in the driver process."""

    def __init__(self, population: Population, threads: int) -> None:
        self.population = population
        self.threads = threads
        self.participants: list[Participant] = []

    def evaluate(self, state: torch.Tensor, splits: list[str]) -> list[dict[str, float]]:
        if not self.participants:
            self.participants = [self.population.participant(i) for i in range(self.population.cfg.nodes)]
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the numerics depend on it; match the clients and engines
        try:
            out = []
            for p in self.participants:
                p.load_state(state.to(p.device))
                out.append({f"{s}_{k}": v for s in splits for k, v in p.evaluate(s).items()})
            return out
        finally:
            torch.set_num_threads(before)


def _ordered_fedavg(n_nodes: int) -> Any:
    """Flower's FedAvg with every client every round and a reply-order-independent aggregation.

    Flower's own ``aggregate_train`` sums the replies in arrival order (float sums then differ from run
    to run) and drops failed replies; this one sorts the replies by dfl-sim node id, averages with
    :func:`fedavg`, keeps each node's training stats for the records, and raises if a client failed.
    """
    # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
    from flwr.serverapp.strategy import FedAvg

    class OrderedFedAvg(FedAvg):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_nodes,
                             min_evaluate_nodes=0, min_available_nodes=n_nodes)
            self.round_stats: list[dict[str, float]] = []
            self.rounds_done: list[int] = []

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord, MetricRecord]:
            # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
            from flwr.app import Array, ArrayRecord, MetricRecord

            replies = list(replies)
            failed = [m for m in replies if m.has_error()]
            if failed:
                reasons = "; ".join(f"{m.error.reason}" for m in failed[:3])
                raise RuntimeError(f"{len(failed)} Flower client(s) failed in round {server_round}: {reasons}")
            if len(replies) != n_nodes:
                raise RuntimeError(f"round {server_round}: {len(replies)} of {n_nodes} clients replied (timeout?)")
            metrics = [m.content["metrics"] for m in replies]
            order = sorted(range(n_nodes), key=lambda k: int(metrics[k]["node"]))
            if [int(metrics[k]["node"]) for k in order] != list(range(n_nodes)):
                raise RuntimeError(f"round {server_round}: replies came from nodes "
                                   f"{sorted(int(m['node']) for m in metrics)}, expected 0..{n_nodes - 1}")
            states = torch.stack([torch.from_numpy(replies[k].content["arrays"][_STATE].numpy()) for k in order])
            counts = [int(metrics[k]["num-examples"]) for k in order]
            self.round_stats = [{"loss": float(metrics[k]["loss"]), "steps": float(metrics[k]["steps"])} for k in order]
            self.rounds_done.append(server_round)
            mean_loss = float(np.mean([s["loss"] for s in self.round_stats]))
            return ArrayRecord({_STATE: Array(fedavg(states, counts).numpy())}), MetricRecord({"train_loss": mean_loss})

    return OrderedFedAvg()


# ------------------------------------------------------------------------------------- client side

# Per-process cache of the clients' data: a Ray actor serves many nodes over many rounds, and loading
# the data set once per process (not per message) is what a Flower app does with its partitions.
_CACHE: dict[str, Any] = {"key": None, "population": None, "participants": {}}


def _client_participant(cfg_json: str, node: int, fresh: bool) -> Participant:
    """Node ``node``'s participant in this process; ``fresh`` rebuilds it (first round of a run)."""
    if _CACHE["key"] != cfg_json:
        _CACHE.update(key=None, population=None, participants={})
        _CACHE["population"] = Population.from_config(parse_config(json.loads(cfg_json)))
        _CACHE["key"] = cfg_json
    parts: dict[int, Participant] = _CACHE["participants"]
    if fresh or node not in parts:
        parts[node] = _CACHE["population"].participant(node)
    return parts[node]


def _local_state(p: Participant) -> bytes:
    """What stays on the client between rounds: optimizer state and integer buffers, serialized."""
    buf = io.BytesIO()
    snap = p.snapshot()
    torch.save({"int_buffers": snap["int_buffers"], "optimizer": snap["optimizer"]}, buf)
    return buf.getvalue()


def _restore_local(p: Participant, data: bytes) -> None:
    local = torch.load(io.BytesIO(data), weights_only=True)
    buffers = dict(p.model.named_buffers())
    with torch.no_grad():
        for k, v in local["int_buffers"].items():
            buffers[k].copy_(v)
    p.optimizer.load_state_dict(local["optimizer"])


def client_train(msg: Message, context: Context) -> Message:
    """Flower ``train`` handler: load the global model, train one round as node ``partition-id``, reply.

    A module-level function so that Ray pickles it by reference and it sees this module's cache.
    """
    # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    conf = msg.content.config_records["config"]
    node = int(context.node_config["partition-id"])
    round_idx = int(cast(int, conf["server-round"])) - 1
    torch.set_num_threads(int(cast(int, conf[_THREADS_KEY])))
    local = context.state.config_records.get(_LOCAL_KEY)
    p = _client_participant(str(conf[_CONFIG_KEY]), node, fresh=local is None)
    if local is not None:
        _restore_local(p, cast(bytes, local["bytes"]))
    p.load_state(torch.from_numpy(msg.content.array_records["arrays"][_STATE].numpy()).to(p.device))
    stats = p.train_round(round_idx)
    context.state[_LOCAL_KEY] = ConfigRecord({"bytes": _local_state(p)})
    reply = RecordDict({
        "arrays": ArrayRecord({_STATE: Array(p.state().cpu().numpy())}),
        "metrics": MetricRecord({"num-examples": p.num_samples, "node": node,
                                 "loss": stats["loss"], "steps": stats["steps"]}),
    })
    return Message(reply, reply_to=msg)


def _client_app() -> Any:
    # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(client_train)
    return app
