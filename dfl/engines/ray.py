"""``ray``: participants hosted on Ray actors, one shard of participants per actor.

By default one actor per CPU the cluster offers (``engine.ray.cpus_per_actor`` each), or per GPU share
(``engine.ray.gpus_per_actor``, may be fractional), never more actors than nodes. Nodes are placed on
actors in reverse Cuthill-McKee order of the round-0 graph, cut into contiguous blocks, so topology
neighbours mostly share an actor. A round moves one object per shard through the object store: the
shard's shared states ``(k, n_params)`` as a numpy array; each actor then fetches the shards its rows of
``W`` need and mixes with the same row-wise arithmetic as the serial engine, so both engines give
bit-identical states (with the same ``engine.threads``).

A local Ray binds to 127.0.0.1 with the dashboard off unless ``engine.ray.dashboard: true``;
``engine.ray.address`` joins a running cluster instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from functools import partial
from typing import Any

import networkx as nx
import numpy as np
import torch

from dfl.engines.batched import BatchedEngine
from dfl.engines.serial import ParticipantNodes, evaluate_all
from dfl.errors import ConfigError, EngineFault, ParticipantError, Terminated
from dfl.federation.engine import Engine, Mix, default_threads, guarded, wake_nodes
from dfl.federation.population import Population
from dfl.mixing import gossip
from dfl.topology import build_graph


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """A read-only view of an object-store array as a tensor (only ever read, never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(arr))


def require_ray(local: bool = True) -> Any:
    """Import Ray; for a local instance, make it bind to the loopback address only.

    Ray replaces 127.0.0.1 with the machine's outward address unless it runs in single-node mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); the environment variable reaches the processes Ray
    starts, and the constant is patched in case Ray was imported already.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        # here, not at the top: ray is the optional extra dfl-sim[ray], needed only by Ray runs
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise ConfigError([("engine.name", "the ray engine needs Ray, which is not installed; "
                                           "install it with: pip install 'dfl-sim[ray]'")]) from None
    if local:
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


CONNECT_TIMEOUT_S = 10.0  # a TCP connection to the cluster's GCS port
PROBE_TIMEOUT_S = 20.0  # the GCS's answer, asked by a child process that is killed past this
START_TIMEOUT_S = 120.0  # for the actors to start (the first start pays for imports and the data's transfer)
RECOVER_TIMEOUT_S = 120.0  # for replacement actors to start after a fault
RECOVER_POLL_S = 10.0  # between looks at which nodes are still alive, while they do not

# Run in a child process: ask the GCS at argv[1] for its cluster id (Ray's own client waits up to ~35 s).
_PROBE = "import sys, ray._raylet as r; r.GcsClient(address=sys.argv[1]).internal_kv_get(b'dfl-sim-probe', None)"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:6379`` for IPv6) -> ``(host, port)``; ``ConfigError`` naming the field otherwise."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError([("engine.ray.address", f"{address!r} is not host:port (e.g. 127.0.0.1:6379 or "
                                                  "ray-head:6379)")])
    return host, int(port)


def check_address(address: str) -> None:
    """Fail fast, with a ``ConfigError`` naming ``engine.ray.address``, unless a Ray cluster answers there.

    ``ray.init`` itself retries an unanswered address for many minutes and cannot be interrupted meanwhile,
    so this first opens a TCP connection (``CONNECT_TIMEOUT_S``: refused or silent addresses fail here),
    then asks the GCS for its cluster id from a child process that is killed after ``PROBE_TIMEOUT_S``
    (a port that answers but is not a Ray GCS). Both fail in well under 30 s.
    """
    host, port = split_address(address)
    fix = "start the cluster first (ray start --head --port PORT) or fix the address"
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConfigError([("engine.ray.address", f"nothing answers at {address} ({reason}); {fix}")]) from None
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address.strip()], capture_output=True,
                               timeout=PROBE_TIMEOUT_S)
        ok = probe.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if not ok:
        raise ConfigError([("engine.ray.address", f"{address} accepts connections but no Ray cluster answers there "
                                                  f"within {PROBE_TIMEOUT_S:.0f} s; {fix}")])


def place(graph: nx.Graph, n_shards: int) -> list[list[int]]:
    """Split nodes into ``n_shards`` balanced blocks of the reverse Cuthill-McKee order of ``graph``.

    RCM keeps the adjacency matrix's bandwidth small, so contiguous blocks cut few edges (a ring is cut
    into arcs). Each block is sorted; blocks are disjoint and cover every node.
    """
    order: list[int] = []
    for comp in sorted(nx.connected_components(graph), key=min):
        order += list(nx.utils.reverse_cuthill_mckee_ordering(graph.subgraph(comp)))
    blocks = np.array_split(np.array(order, dtype=np.int64), n_shards)
    return [sorted(int(i) for i in b) for b in blocks if len(b)]


def _mixes(mixes: list[Any]) -> list[Mix]:
    """Wakes' mixes as sent to an actor (states as object references, each fetched once) -> as
    :func:`wake_nodes` takes them. Runs in an actor, where Ray is imported."""
    import ray

    refs = list(dict.fromkeys(x for m in mixes if m is not None for x in m[0] if x is not None))
    got = {ref: _tensor(arr) for ref, arr in zip(refs, ray.get(refs), strict=True)}
    return [None if m is None else ([None if x is None else got[x] for x in m[0]], m[1]) for m in mixes]


class ShardHost(ParticipantNodes):
    """The body of a Ray actor: a shard of participants in one worker process."""

    def __init__(self, population: Population, node_ids: list[int], threads: int) -> None:
        torch.set_num_threads(threads)
        self.ids = node_ids
        self.participants = {i: population.participant(i) for i in node_ids}

    def pid(self) -> int:
        return os.getpid()

    def train(self, round_idx: int) -> tuple[list[dict[str, float]], np.ndarray]:
        """Local training of the shard; returns its stats and its shared states ``(k, n_params)``."""
        stats = [guarded("training", i, round_idx, partial(p.train_round, round_idx))
                 for i, p in self.participants.items()]
        return stats, self.states()

    def states(self) -> np.ndarray:
        return torch.stack([p.flat.detach() for p in self.participants.values()]).cpu().numpy()

    def mix(self, W_rows: np.ndarray, shards: list[list[int]], *shard_states: np.ndarray) -> np.ndarray:
        """Load ``sum_j W_ij x_j`` into each local node i from the shards it needs; return the new states."""
        rows: dict[int, torch.Tensor] = {}
        device = next(iter(self.participants.values())).device
        for ids, arr in zip(shards, shard_states, strict=True):
            t = _tensor(arr).to(device)
            rows.update({j: t[k] for k, j in enumerate(ids)})
        new = gossip(rows, W_rows)
        for p, row in zip(self.participants.values(), new, strict=True):
            p.load_state(row)
        return new.cpu().numpy()

    def evaluate(self, splits: list[str], round_idx: int | None) -> list[dict[str, float]]:
        return [guarded("evaluating", i, round_idx, partial(evaluate_all, p, splits))
                for i, p in self.participants.items()]

    def states_of(self, ids: list[int]) -> np.ndarray:
        return self.node_states(ids).cpu().numpy()

    def wake(self, ids: list[int], iterations: list[int], mixes: list[Any]) -> tuple[list[dict[str, float]], np.ndarray]:
        """``mode: async``: :func:`wake_nodes` on this shard; the trained states as one array."""
        stats, states = wake_nodes(self, ids, iterations, _mixes(mixes))
        return stats, states.cpu().numpy()

    def snapshot(self) -> list[dict[str, Any]]:
        return [p.snapshot() for p in self.participants.values()]

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        for p, s in zip(self.participants.values(), snaps, strict=True):
            p.restore(s)


class BatchedShardHost:
    """The body of a Ray actor with ``engine.ray.batched``: its shard trained by a :class:`BatchedEngine`."""

    def __init__(self, population: Population, node_ids: list[int], threads: int) -> None:
        self.engine = BatchedEngine(population, node_ids)
        torch.set_num_threads(threads)

    def pid(self) -> int:
        return os.getpid()

    def train(self, round_idx: int) -> tuple[list[dict[str, float]], np.ndarray]:
        return self.engine.train(round_idx), self.states()

    def states(self) -> np.ndarray:
        return self.engine.flat.cpu().numpy()

    def mix(self, W_rows: np.ndarray, shards: list[list[int]], *shard_states: np.ndarray) -> np.ndarray:
        rows: dict[int, torch.Tensor] = {}
        for ids, arr in zip(shards, shard_states, strict=True):
            t = _tensor(arr).to(self.engine.device)
            rows.update({j: t[k] for k, j in enumerate(ids)})
        self.engine.flat = gossip(rows, W_rows)
        return self.engine.flat.cpu().numpy()

    def evaluate(self, splits: list[str], round_idx: int | None) -> list[dict[str, float]]:
        return self.engine.evaluate(splits, round_idx)

    def _rows(self, ids: list[int]) -> list[int]:
        rows = {node: r for r, node in enumerate(self.engine.ids)}
        return [rows[i] for i in ids]

    def states_of(self, ids: list[int]) -> np.ndarray:
        return self.engine.node_states(self._rows(ids)).numpy()

    def wake(self, ids: list[int], iterations: list[int], mixes: list[Any]) -> tuple[list[dict[str, float]], np.ndarray]:
        """``mode: async``: the shard's batched engine wakes them (its rows are local)."""
        stats, states = self.engine.wake(self._rows(ids), iterations, _mixes(mixes))
        return stats, states.numpy()

    def snapshot(self) -> list[dict[str, Any]]:
        return self.engine.snapshot()

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        self.engine.restore(snaps)


class RayEngine(Engine):
    """Participants on Ray actors; the round logic stays in ``Federation``."""

    def __init__(self, population: Population) -> None:
        super().__init__(population)
        rc = population.cfg.engine.ray
        ray = self.ray = require_ray(local=not rc.address)
        self._owns_ray = False
        if not ray.is_initialized():
            if rc.address:
                check_address(rc.address)
            sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own (sys.exit); ours is put back
            try:
                if rc.address:
                    ray.init(address=rc.address, configure_logging=False, namespace="dfl-sim")
                else:  # a fresh local instance, never a cluster found through RAY_ADDRESS or /tmp/ray
                    ray.init(address="local", include_dashboard=rc.dashboard,
                             dashboard_host="127.0.0.1", configure_logging=False, namespace="dfl-sim",
                             num_cpus=os.cpu_count())
            except SystemExit as exc:  # SIGTERM while Ray's own handler was in place: stop as the CLI's would
                if exc.code == signal.SIGTERM:
                    raise Terminated() from None
                raise
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = rc.address or "a local instance on 127.0.0.1"
                raise ConfigError([("engine.ray.address", f"cannot start or join Ray at {where}: {exc}; "
                                    "start the cluster first (ray start --head) or fix the address")]) from None
            finally:
                if sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
            self._owns_ray = True
        self.threads = default_threads(population.cfg.engine.threads)

        self.shards = place(build_graph(population.cfg, 0), self._n_actors())
        self._where = {i: (s, k) for s, ids in enumerate(self.shards) for k, i in enumerate(ids)}
        self._population_ref = ray.put(population)
        self._actor_cls = ray.remote(BatchedShardHost if rc.batched else ShardHost)
        self.actors = [self._start(s) for s in range(len(self.shards))]
        if not self._ready(START_TIMEOUT_S, raising=True):  # an actor the cluster has no room for waits forever
            raise ConfigError([("engine.ray.actors", f"{len(self.actors)} actors of {rc.cpus_per_actor:g} CPU and "
                                f"{rc.gpus_per_actor:g} GPU each did not all start within {START_TIMEOUT_S:.0f} s; "
                                f"the cluster has {self._resources()} in all: lower engine.ray.actors, "
                                "cpus_per_actor or gpus_per_actor, or add nodes")])
        self._states_refs: list[Any] = []

    def _n_actors(self, alive_only: bool = False) -> int:
        """As many actors as the cluster's CPUs (or GPUs) hold, at most ``engine.ray.actors`` and never more than
        ``nodes`` (placement never changes the numbers, so a run resumes on a smaller cluster); with
        ``alive_only``, as many as the Ray nodes still alive hold, never more than there are now."""
        rc = self.population.cfg.engine.ray
        if alive_only:
            res: dict[str, float] = {}
            for node in self.ray.nodes():
                if node.get("Alive"):
                    for k, v in node.get("Resources", {}).items():
                        res[k] = res.get(k, 0.0) + v
        else:
            res = self.ray.cluster_resources()
        gpu = rc.gpus_per_actor > 0
        slots = int(res.get("GPU" if gpu else "CPU", 0) / (rc.gpus_per_actor if gpu else rc.cpus_per_actor) + 1e-9)
        if alive_only:
            return max(1, min(slots, len(self.shards)))  # the driver's own node may offer nothing: try one
        if gpu and slots < 1:
            raise ConfigError([("engine.ray.gpus_per_actor",
                                f"{rc.gpus_per_actor} GPU per actor but the cluster has {res.get('GPU', 0)} GPUs; "
                                "set it to 0 for CPU actors or join a cluster with GPUs")])
        return max(1, min(slots, self.n, rc.actors or self.n))

    def _start(self, shard: int) -> Any:
        rc = self.population.cfg.engine.ray
        return self._actor_cls.options(num_cpus=rc.cpus_per_actor, num_gpus=rc.gpus_per_actor, max_restarts=0).remote(
            self._population_ref, self.shards[shard], self.threads)

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get`` that turns a dead actor into ``EngineFault`` and a participant's error into itself."""
        ray = self.ray
        out: list[Any] = []
        for s, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if hasattr(exc, "cause") else None
                if isinstance(cause, ParticipantError):
                    raise ParticipantError(str(cause)) from None
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                shard = s if len(refs) == len(self.shards) else -1
                nodes = tuple(self.shards[shard]) if shard >= 0 else ()
                raise EngineFault(f"the actor hosting nodes {list(nodes)} died: {type(exc).__name__}",
                                  shard, nodes) from None
        return out

    # ------------------------------------------------------------------ Engine

    def train(self, round_idx: int) -> list[dict[str, float]]:
        pairs = [a.train.options(num_returns=2).remote(round_idx) for a in self.actors]
        stats = self._get([p[0] for p in pairs])
        self._states_refs = [p[1] for p in pairs]
        out: list[dict[str, float]] = [{} for _ in range(self.n)]
        for ids, st in zip(self.shards, stats, strict=True):
            for i, s in zip(ids, st, strict=True):
                out[i] = s
        return out

    def _assemble(self, arrays: list[np.ndarray], rows: list[list[int]] | None = None) -> torch.Tensor:
        """One tensor of the shards' arrays, ``arrays[s]`` at rows ``rows[s]`` (default: each shard's nodes)."""
        rows = self.shards if rows is None else rows
        states = torch.empty((sum(map(len, rows)), arrays[0].shape[1]), dtype=torch.float32)
        for at, arr in zip(rows, arrays, strict=True):
            states[at] = _tensor(arr)
        return states

    def share(self) -> torch.Tensor:
        return self._assemble(self._get(self._states_refs))

    def mix(self, W: np.ndarray, shared: torch.Tensor) -> torch.Tensor:
        refs = []
        for ids, actor in zip(self.shards, self.actors, strict=True):
            rows = W[ids]
            need = sorted({self._where[int(j)][0] for j in np.flatnonzero(rows.any(axis=0))})
            refs.append(actor.mix.remote(rows, [self.shards[s] for s in need], *[self._states_refs[s] for s in need]))
        return self._assemble(self._get(refs))

    def node_states(self, ids: list[int]) -> torch.Tensor:
        by_shard = self._by_shard(ids)
        arrays = self._get([self.actors[s].states_of.remote([ids[k] for k in ks]) for s, ks in by_shard.items()])
        return self._assemble(arrays, list(by_shard.values()))

    def _by_shard(self, ids: list[int]) -> dict[int, list[int]]:
        """The positions in ``ids`` of each shard's nodes, shards in order."""
        by_shard: dict[int, list[int]] = {}
        for k, i in enumerate(ids):
            by_shard.setdefault(self._where[i][0], []).append(k)
        return dict(sorted(by_shard.items()))

    def wake(self, ids: list[int], iterations: list[int], mixes: list[Mix]) -> tuple[list[dict[str, float]], torch.Tensor]:
        """``mode: async``: each shard wakes its nodes of ``ids`` in one call, the shards in parallel;
        every state to mix goes to the object store once, whatever number of wakes read it."""
        put: dict[int, Any] = {}

        def ref(x: torch.Tensor) -> Any:
            if id(x) not in put:
                put[id(x)] = self.ray.put(x.numpy())
            return put[id(x)]

        by_shard = self._by_shard(ids)
        refs = [self.actors[s].wake.remote(
            [ids[k] for k in ks], [iterations[k] for k in ks],
            [None if mixes[k] is None else ([None if x is None else ref(x) for x in mixes[k][0]], mixes[k][1])
             for k in ks]) for s, ks in by_shard.items()]
        got = self._get(refs)
        stats: list[dict[str, float]] = [{} for _ in ids]
        for ks, (st, _) in zip(by_shard.values(), got, strict=True):
            for k, row_stats in zip(ks, st, strict=True):
                stats[k] = row_stats
        return stats, self._assemble([arr for _, arr in got], list(by_shard.values()))

    def evaluate(self, splits: list[str], round_idx: int | None = None) -> list[dict[str, float]]:
        per = self._get([a.evaluate.remote(splits, round_idx) for a in self.actors])
        out: list[dict[str, float]] = [{} for _ in range(self.n)]
        for ids, recs in zip(self.shards, per, strict=True):
            for i, r in zip(ids, recs, strict=True):
                out[i] = r
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        per = self._get([a.snapshot.remote() for a in self.actors])
        out: list[dict[str, Any]] = [{} for _ in range(self.n)]
        for ids, snaps in zip(self.shards, per, strict=True):
            for i, s in zip(ids, snaps, strict=True):
                out[i] = s
        return out

    def restore(self, snaps: list[dict[str, Any]]) -> None:
        self._get([a.restore.remote([snaps[i] for i in ids]) for ids, a in zip(self.shards, self.actors, strict=True)])

    def pids(self) -> list[int]:
        """Process ids of the actors, in shard order (for fault-injection tests and monitoring)."""
        return self._get([a.pid.remote() for a in self.actors])

    def recover(self, fault: Exception) -> None:
        """Replace the dead actors; the caller then restores every node from the last checkpoint.

        Each dead actor is replaced by a fresh one hosting the same shard. Whenever the new actors are not
        all up after a while and the nodes still alive hold fewer actors than there are (the cluster lost a
        node, which it may notice only some seconds after the actor's death), every shard is placed anew on
        as many actors as those nodes hold. If no placement starts within ``RECOVER_TIMEOUT_S``, the fault is
        given up on (``EngineFault`` with ``recoverable=False``): the run stops with its last checkpoint
        intact, to be resumed later.
        """
        deadline = time.monotonic() + RECOVER_TIMEOUT_S
        for s, actor in enumerate(self.actors):
            try:
                self.ray.get(actor.pid.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - any failure to answer means the actor is gone
                self.ray.kill(actor, no_restart=True)
                self.actors[s] = self._start(s)
        while not self._ready(max(1.0, min(RECOVER_POLL_S, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise EngineFault(f"{fault}; no replacement actor could start on the nodes left in the cluster "
                                  f"within {RECOVER_TIMEOUT_S:.0f} s", recoverable=False)
            slots = self._n_actors(alive_only=True)
            if slots < len(self.actors):
                self._replace(slots)

    def _replace(self, n_actors: int) -> None:
        """Kill every actor and place all shards anew on ``n_actors`` fresh ones."""
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.shards = place(build_graph(self.population.cfg, 0), n_actors)
        self._where = {i: (s, k) for s, ids in enumerate(self.shards) for k, i in enumerate(ids)}
        self.actors = [self._start(s) for s in range(len(self.shards))]

    def _ready(self, timeout: float, raising: bool = False) -> bool:
        """Whether every actor answers within ``timeout`` seconds; an actor that failed to start counts as not
        ready, or (``raising``) raises its error (e.g. a participant that cannot be built)."""
        refs = [a.pid.remote() for a in self.actors]
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(done) < len(refs):
            return False
        if raising:
            self._get(refs)
            return True
        try:
            self.ray.get(done, timeout=timeout)
        except Exception:  # noqa: BLE001 - an actor that died while starting
            return False
        return True

    def _resources(self) -> str:
        res = self.ray.cluster_resources()
        return ", ".join(f"{res.get(k, 0):g} {k}" for k in ("CPU", "GPU"))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()
        super().close()
