"""Flower clients as learners: a user's ``flwr.client.NumPyClient`` as a dfl-sim participant.

:class:`NumPyClientLearner` lets an existing ``NumPyClient`` act as a dfl-sim participant, so a Flower
user's training code runs unchanged under any topology; :class:`NumPyClientPopulation` makes every node
one. The other direction (dfl-sim's participants as Flower clients of a centralized FedAvg run) is
:mod:`dfl.engines.flower`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

import numpy as np
import torch

from dfl.federation.population import Population
from dfl.mixing import gossip_row


def flatten_arrays(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Concatenate arrays of any shapes and dtypes into one float32 vector ``(sum of sizes,)``."""
    if not arrays:
        return torch.zeros(0, dtype=torch.float32)
    return torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays]))


def unflatten_arrays(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]],
                     dtypes: Sequence[np.dtype[Any]]) -> list[np.ndarray]:
    """The inverse of :func:`flatten_arrays`: fresh arrays of the given shapes and dtypes."""
    vec = flat.detach().cpu().numpy()
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != vec.shape[0]:
        raise ValueError(f"a flat state of {vec.shape[0]} values cannot fill arrays of shapes {list(shapes)}")
    out, offset = [], 0
    for shape, dtype, size in zip(shapes, dtypes, sizes, strict=True):
        out.append(vec[offset : offset + size].reshape(shape).astype(dtype, copy=True))
        offset += size
    return out


class NumPyClientLearner:
    """A user's ``flwr.client.NumPyClient`` as a dfl-sim participant (its local learner).

    Offers what the engines use of a :class:`~dfl.federation.participant.Participant`: ``node_id``, ``device``,
    ``flat``, ``train_round``, ``state``/``load_state``, ``aggregate``, ``evaluate``, ``num_samples``,
    ``snapshot``/``restore`` (not ``query``: a NumPyClient has no prediction API).
    The client's parameters (a list of numpy arrays) live in one float32 vector ``flat``
    ``(n_params,)``, in list order; their shapes and dtypes are remembered and restored when they are
    handed to the client (integer arrays pass through float32: exact below 2**24).

    - ``train_round(r)`` calls ``client.fit(parameters, {**config, "server-round": r + 1})`` and keeps
      the returned parameters; the record's ``loss``/``steps`` are fit's metrics ``"loss"`` (or
      ``"train_loss"``) and ``"steps"``, NaN when the client does not report them.
    - ``evaluate(split)`` calls ``client.evaluate(parameters, {**config, "split": split})``:
      ``{"acc": metrics["accuracy"] (or "acc"), "loss": loss}``.
    - ``num_samples`` is the ``num_samples`` given, else the ``num_examples`` of the last ``fit``.

    Every node should start from the same model, as dfl-sim's participants do: seed the model the
    client builds, or pass ``initial``. Only the parameters are checkpointed, not the client's own state
    (e.g. its optimizer). To use it for every node, see :class:`NumPyClientPopulation`.
    """

    def __init__(self, client: Any, config: dict[str, Any] | None = None, *, node_id: int = 0,
                 num_samples: int | None = None, initial: Sequence[np.ndarray] | None = None) -> None:
        self.client = client
        self.config: dict[str, Any] = dict(config or {})
        self.node_id = node_id
        self.device = torch.device("cpu")  # where ``flat`` lives; the client keeps its own model wherever it likes
        self._num_samples = num_samples
        arrays = [np.asarray(a) for a in (initial if initial is not None else client.get_parameters(dict(self.config)))]
        if not arrays:
            raise ValueError(f"{type(client).__name__}.get_parameters returned no arrays; "
                             "implement it or pass initial=[...]")
        self.shapes = [a.shape for a in arrays]
        self.dtypes = [a.dtype for a in arrays]
        self.flat = flatten_arrays(arrays)
        self.last_metrics: dict[str, Any] = {}

    @property
    def num_samples(self) -> int:
        if self._num_samples is None:
            raise ValueError(f"node {self.node_id}: the number of train samples is unknown before the first fit; "
                             "pass num_samples= to NumPyClientLearner")
        return self._num_samples

    def parameters(self) -> list[np.ndarray]:
        """The current parameters as the client's list of arrays (fresh copies)."""
        return unflatten_arrays(self.flat, self.shapes, self.dtypes)

    def _set(self, arrays: Sequence[np.ndarray], what: str) -> None:
        shapes = [np.shape(a) for a in arrays]
        if shapes != self.shapes:
            raise ValueError(f"node {self.node_id}: {type(self.client).__name__}.{what} returned arrays of shapes "
                             f"{shapes}, expected {self.shapes} (as get_parameters)")
        self.flat.copy_(flatten_arrays(arrays))

    def train_round(self, round_idx: int) -> dict[str, float]:
        """One ``client.fit`` from the current parameters; returns ``{"loss", "steps"}``."""
        out = self.client.fit(self.parameters(), {**self.config, "server-round": round_idx + 1})
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(f"{type(self.client).__name__}.fit must return (parameters, num_examples, metrics)")
        arrays, n, metrics = out
        self._set(arrays, "fit")
        if self._num_samples is None:
            self._num_samples = int(n)
        self.last_metrics = dict(metrics or {})
        loss = self.last_metrics.get("loss", self.last_metrics.get("train_loss", math.nan))
        steps = self.last_metrics.get("steps", math.nan)
        return {"loss": float(cast(float, loss)), "steps": float(cast(float, steps))}

    def state(self) -> torch.Tensor:
        """A copy of the parameters as one ``(n_params,)`` float32 vector."""
        return self.flat.detach().clone()

    def load_state(self, state: torch.Tensor) -> None:
        with torch.no_grad():
            self.flat.copy_(state.reshape(-1))

    def aggregate(self, neighbour_states: torch.Tensor, weights: Sequence[float] | np.ndarray) -> None:
        """Replace the parameters by ``sum_j w_j * x_j`` over ``neighbour_states: (k, n_params)``."""
        self.load_state(gossip_row(neighbour_states, weights))

    def evaluate(self, split: str) -> dict[str, float]:
        """``client.evaluate`` on the current parameters, with ``config["split"] = split``."""
        # here, not at the top: flwr is the optional extra dfl-sim[flower], needed only by centralized runs
        from flwr.client import NumPyClient

        if getattr(type(self.client), "evaluate", None) is NumPyClient.evaluate:
            raise NotImplementedError(f"{type(self.client).__name__} does not implement evaluate(); "
                                      "implement NumPyClient.evaluate or set eval.every above rounds")
        loss, _, metrics = self.client.evaluate(self.parameters(), {**self.config, "split": split})
        metrics = metrics or {}
        acc = metrics.get("accuracy", metrics.get("acc", math.nan))
        return {"acc": float(cast(float, acc)), "loss": float(loss)}

    def query(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a NumPyClient has no prediction API; attacks that query a node need a Participant")

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state().cpu(), "int_buffers": {}, "optimizer": {}}

    def restore(self, snap: dict[str, Any]) -> None:
        self.load_state(snap["state"])


@dataclass
class NumPyClientPopulation(Population):
    """A ``Population`` whose node ``i`` is ``client_fn(i, population)`` wrapped in a :class:`NumPyClientLearner`.

    The splits, seeds and sample counts stay dfl-sim's (``client_fn`` may use ``population.splits``), so
    topologies, aggregators and records work unchanged::

        pop = NumPyClientPopulation.wrap(Population.from_config(cfg), lambda i, pop: MyClient(i))
        engine = SerialEngine(pop)
        fed = Federation(cfg, pop, engine)
        fed.run()  # fed.records: every round's records

    ``client_fn`` must be picklable for engines that build participants in other processes.
    """

    client_fn: Callable[[int, Population], Any] | None = field(default=None, repr=False)
    fit_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(cls, population: Population, client_fn: Callable[[int, Population], Any],
             fit_config: dict[str, Any] | None = None) -> NumPyClientPopulation:
        base = {f.name: getattr(population, f.name) for f in fields(Population)}
        return cls(**base, client_fn=client_fn, fit_config=dict(fit_config or {}))

    def participant(self, node_id: int) -> Any:  # type: ignore[override]
        if self.client_fn is None:
            raise ValueError("NumPyClientPopulation needs client_fn; build it with NumPyClientPopulation.wrap")
        return NumPyClientLearner(self.client_fn(node_id, self), self.fit_config, node_id=node_id,
                                  num_samples=len(self.splits.nodes[node_id].train))
