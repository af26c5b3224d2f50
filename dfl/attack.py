"""The threat-model interface: what an attacker legitimately has (``AdversaryView``) and what a membership attack is.

An attack receives only the adversary's view -- its own data and model recipe, the auxiliary pool the
config grants it, the states its neighbours sent it this round, and each neighbour's black-box
``query()`` API -- and returns membership scores (higher = member) and, if it calibrates a decision
rule, its member/non-member decisions. The ground truth stays with the scorer (``dfl.adversary``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import networkx as nx
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.config import AttackSpec, ExperimentConfig, TrainingConfig
from dfl.seeding import ADVERSARY_VIEW


@dataclass
class Labelled:
    """Normalised images ``(N, C, H, W)`` and labels ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor) -> Labelled:
        i = torch.as_tensor(idx, dtype=torch.long)
        return Labelled(self.x[i], self.y[i])


@dataclass
class AdversaryView:
    """Everything attacker ``attacker`` has in round ``round`` (1-based), and nothing else."""

    attacker: int
    round: int
    num_classes: int
    recipe: TrainingConfig                          # the victims' local training recipe (public here)
    local_epochs_so_far: float                      # epochs of local training a victim has done by now
    make_model: Callable[[], nn.Module]             # a fresh model of the federation's architecture and init
    load_state: Callable[[nn.Module, torch.Tensor], None]  # load a flat shared state into such a model
    own: Labelled                                   # the attacker's own training data
    auxiliary: Labelled                             # shadow data granted by the config
    received: dict[int, torch.Tensor]               # neighbour -> flat state it shared this round
    query: dict[int, Callable[[torch.Tensor], torch.Tensor]]  # neighbour -> black-box probabilities
    seed: int
    cache: dict[str, Any] = field(default_factory=dict)  # per (attacker, round): shadow models, thresholds
    stacked: bool = False  # train extra models (shadow, reference) together through dfl.stacked (batched engines)

    def victim_model(self, victim: int) -> nn.Module:
        """White-box access: a model holding the state ``victim`` shared with the attacker this round."""
        model = self.make_model()
        self.load_state(model, self.received[victim])
        model.eval()
        return model

    def rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, ADVERSARY_VIEW, self.attacker, self.round, *tags])


@dataclass
class AttackResult:
    """Scores ``(n,)`` (higher = member) and, for calibrated attacks, boolean decisions ``(n,)``."""

    scores: np.ndarray
    predicted: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


Outputs = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Softmax outputs ``(N, num_classes)`` of ``model`` in evaluation mode (white-box access)."""
    model.eval()
    return torch.cat([torch.softmax(model(xb), dim=1) for xb in x.split(batch)]) if len(x) else torch.empty(0)


class MembershipAttack(ABC):
    """A registered membership-inference attack; ``params`` is its validated ``Params`` model."""

    needs_auxiliary: ClassVar[bool] = True

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def prepare(self, view: AdversaryView) -> None:  # noqa: B027 - optional step
        """Work done once per attacker and round, before any victim (e.g. shadow models)."""

    @abstractmethod
    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        """Membership scores of ``data`` against one victim, whose prediction API is ``outputs``.

        ``outputs(x) -> probabilities (B, num_classes)``: the victim's ``query()`` (``access: query``)
        or the softmax of its shared model (``access: params``).
        """


class InversionOptions(BaseModel):
    """What every gradient-inversion attack's params share: the attacker's knowledge of the start state
    and how many images it reconstructs."""

    model_config = ConfigDict(extra="forbid")
    knowledge: Literal["exact", "observed"] = Field(
        "exact", description="exact: the victim's true start state (upper bound); observed: estimated from what was received")
    batch_size: int | None = Field(None, gt=0, description="images to reconstruct (default: the victims' batch size)")


class InversionAttack(ABC):
    """A registered gradient-inversion attack; ``params`` is its validated ``Params`` model.

    It sees what a neighbour's shared state reveals: a model holding the state the attacker believes
    the victim began its round from, and the victim's update turned into per-parameter (pseudo-)gradients
    (:func:`dfl.adversary.gradients.pseudo_gradient`). It knows the batch size and the label count, nothing of the
    victim's data. The truth and the metrics stay with the scorer (``dfl.adversary.inversion``).
    """

    kind: ClassVar[str] = "inversion"
    needs_auxiliary: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def options(self) -> dict[str, Any]:
        """The attack's own params (its optimiser settings), without the shared :class:`InversionOptions`."""
        return self.params.model_dump(exclude=set(InversionOptions.model_fields))

    @abstractmethod
    def reconstruct(self, model: nn.Module, grads: list[torch.Tensor], batch_size: int, num_classes: int,
                    image_shape: tuple[int, int, int], generator: torch.Generator,
                    mean: np.ndarray, std: np.ndarray) -> Any:
        """A :class:`dfl.adversary.gradients.Reconstruction` of ``batch_size`` images (normalised) and labels."""


# ------------------------------------------------------------------------------ when and whom: the target rule
# When an attack runs and whom it attacks: the schedule, and one rule for targets.
#
# The rule, at validate time and in every round:
#
# * ``access: query`` may target any node: a node's prediction API is built to answer queries, so an
#   attacker reaches it whether or not they share an edge. ``targets: neighbours`` means the attacker's
#   neighbours in the round's graph.
# * ``access: params`` (and every inversion attack) sees only the states its neighbours share with it: a
#   listed target that is not a neighbour in the base graph is a config error naming
#   ``attacks.N.targets.J``; in a round where the edge is down (``link_failure``) or a resampled graph
#   separates them, that target is skipped for the round.
# * Attackers never target attackers.


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
