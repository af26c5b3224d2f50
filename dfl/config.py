"""The experiment as data: the schema, one pydantic model tree with ``extra="forbid"``.

A leaf of the project: it imports nothing of dfl-sim (``dfl.deprecation`` aside, which re-exports the
loading functions that moved for one release). Reading a file, ``--set``
overrides, plugin resolution and the checks that span fields live in :mod:`dfl.experiment`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dfl.deprecation import moved


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Spec(Strict):
    """A plugin reference: ``{name: <registry key>, params: {...}}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Strict):
    dataset: Spec = Field(default_factory=lambda: Spec(name="digits"))
    root: str | None = Field(None, description="data root; default $DFL_SIM_DATA or ~/.cache/dfl-sim/data")
    partition: Spec = Field(default_factory=lambda: Spec(name="iid"))
    samples_per_node: int | None = Field(None, gt=0, description="cap on each node's share (train + holdout)")
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of each node's data never trained on")
    auxiliary_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of the train pool kept for attackers")
    test_samples: int | None = Field(None, gt=0, description="cap on the shared test set")


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


class TrainingConfig(Strict):
    local_epochs: int | None = Field(1, gt=0)
    local_steps: int | None = Field(None, gt=0, description="if set, replaces local_epochs")
    batch_size: int = Field(32, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    reset_optimizer: bool = Field(False, description="fresh optimizer state every round")

    @model_validator(mode="after")
    def _one_budget(self) -> TrainingConfig:
        if self.local_epochs is None and self.local_steps is None:
            raise ValueError("set training.local_epochs or training.local_steps")
        return self


class TopologyConfig(Strict):
    name: str = "ring"
    params: dict[str, Any] = Field(default_factory=dict)
    resample_every: int | None = Field(None, gt=0, description="rebuild the graph every k rounds (random graphs)")
    link_failure: float = Field(0.0, ge=0.0, lt=1.0, description="per-round probability that an edge is down")
    allow_disconnected: bool = False


SplitName = Literal["train", "holdout", "test"]


class EvasionSpec(Strict):
    """One transform an adaptive attacker applies to each candidate before it queries (``attacks.N.evasion``)."""

    name: Literal["flip", "translate", "crop", "noise", "jpeg"]
    strength: float | None = Field(None, gt=0, description="translate: largest shift in pixels (default 2); crop: "
                                   "fraction of each side cut away before resizing back (default 0.125); noise: "
                                   "Gaussian std in [0, 1] pixel units (default 0.02); jpeg: quality 1-100 (default "
                                   "75); flip: none")

    @model_validator(mode="after")
    def _strength(self) -> EvasionSpec:
        s = self.strength
        if s is not None and ((self.name == "crop" and s >= 1) or (self.name == "jpeg" and not 1 <= s <= 100)
                              or self.name == "flip"):
            raise ValueError(f"strength {s} does not fit {self.name}: " + {
                "crop": "a fraction below 1, e.g. 0.125", "jpeg": "a quality from 1 to 100, e.g. 75",
                "flip": "flip takes no strength"}[self.name])
        return self


class AttackSpec(Strict):
    """One attack every attacker runs: what, with which access, when, against whom."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    access: Literal["query", "params"] = Field("query", description="black-box query() API, or the shared state")
    rounds: list[int] | None = Field(None, description="1-based rounds to attack in (default: the last round)")
    every: int | None = Field(None, gt=0, description="attack every k rounds (instead of rounds)")
    targets: Literal["neighbours"] | list[int] = Field("neighbours", description="victims: neighbours or node ids")
    samples: int = Field(500, gt=0, description="members scored per victim (as many non-members)")
    view: Literal["received", "own", "isolated"] = Field(
        "received", description="access: params, which model is scored: received (the state the victim shared), "
        "own (the attacker's model after it aggregated), isolated (the victim's contribution isolated with the "
        "public mixing weights, Pasquini et al. 2023)")

    evasion: list[EvasionSpec] = Field(
        default_factory=list, description="access: query, transforms applied in order to each candidate before it is "
        "queried (an adaptive attacker dodging defenses that recognise their training images)")

    @model_validator(mode="after")
    def _one_schedule(self) -> AttackSpec:
        if self.rounds is not None and self.every is not None:
            raise ValueError("give either rounds or every, not both")
        if self.evasion and self.access != "query":
            raise ValueError("evasion transforms queries, which needs access: query; set access: query or drop "
                             "evasion")
        if self.view != "received" and self.access != "params":
            raise ValueError(f"view {self.view} scores a model state, which needs access: params (got access: "
                             f"{self.access}); set access: params or drop view")
        return self


class DefenseSpec(Strict):
    """A defense and the nodes that run it (default: every node that is not an attacker)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    nodes: Literal["honest", "all"] | list[int] = "honest"


class EvalConfig(Strict):
    every: int = Field(1, gt=0)
    splits: list[SplitName] = Field(default_factory=lambda: list[SplitName](["train", "holdout", "test"]))
    max_samples: int | None = Field(2000, gt=0, description="per node and split; a fixed seeded subset")
    batch_size: int = Field(1000, gt=0)


class RayConfig(Strict):
    """Placement of participants on Ray actors (``engine.name: ray``)."""

    address: str | None = Field(None, description="join a running cluster (e.g. ray-head:6379); default: start a local Ray on 127.0.0.1")
    actors: int | None = Field(None, gt=0, description="at most this many actors; default: as many as the cluster's CPUs (or GPUs) hold")
    cpus_per_actor: float = Field(1.0, gt=0.0)
    gpus_per_actor: float = Field(0.0, ge=0.0, description="may be fractional, e.g. 0.25 puts 4 actors on a GPU")
    dashboard: bool = Field(False, description="start Ray's dashboard (bound to 127.0.0.1)")
    max_failures: int = Field(3, ge=0, description="actor deaths to recover from (from the last checkpoint) per run")
    batched: bool = Field(False, description="each actor trains its shard with the batched engine (many small models per actor or GPU share)")


class EngineConfig(Strict):
    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be a whole number of threads (at least 1) or auto")

    name: Literal["serial", "ray", "batched"] = Field("serial", description="serial: one participant at a time; ray: on Ray actors; batched: every participant as rows of stacked tensors (torch.func), for many small models")
    batch_size: int | None = Field(None, gt=0, description="batched: participants trained at once (default: as many as fit about 1 GiB of working memory)")
    vmap: bool | Literal["auto"] = Field("auto", description="batched: every node's gradient in one vmap (true) or node by node into the stacked state (false: faster for convolutions on CPU, which vmap turns into grouped convolutions); auto: node by node for models with convolutions on CPU, one vmap otherwise; part of the numerics")
    threads: int | Literal["auto"] | None = Field(None, description="torch threads per worker process (default 1); auto: the CPUs this process may use for the batched engine (its batched products scale), 1 for the others (one small model per participant only waits on more threads); part of the numerics: CPU kernels reduce by thread count")
    ray: RayConfig = Field(default_factory=RayConfig)


class OutputConfig(Strict):
    dir: str = "runs"
    checkpoint_every: int = Field(1, ge=0, description="0 disables checkpoints (and --resume)")
    plots: bool = True
    progress: bool = True
    save_shared: bool = Field(False, description="keep the shared and start states of every attacked round under shared/ (exact float32), for dfl-sim attack RUN_DIR")
    signals: bool | Literal["auto"] = Field("auto", description="per-sample membership scores of every attack record as .npz files under signals/ (auto: unless they would take more than 64 MB)")


class InitConfig(Strict):
    """Start every node from one node's final state in a complete run, instead of a fresh seeded model."""

    run: str = Field(description="the complete run's directory (it needs checkpoints/latest.pt of its last round)")
    node: int = Field(0, ge=0, description="the node of that run whose final state every node starts from")


class ChurnSpec(Strict):
    """Node ``node`` is offline from ``start`` to ``end`` (simulated time)."""

    node: int = Field(ge=0)
    start: float = Field(ge=0.0)
    end: float

    @model_validator(mode="after")
    def _order(self) -> ChurnSpec:
        if not self.end > self.start:
            raise ValueError(f"end ({self.end}) must come after start ({self.start})")
        return self


class LinkSpec(Strict):
    """The link between nodes ``u`` and ``v`` (both ways): its own latency and bandwidth, where given."""

    u: int = Field(ge=0)
    v: int = Field(ge=0)
    latency: float | None = Field(None, ge=0.0)
    bandwidth: float | None = Field(None, gt=0.0)


class AsyncConfig(Strict):
    """``mode: async``: nodes at their own speed over links with latency (``dfl.federation.events``).

    ``rounds`` counts intervals of ``interval`` simulated time units: records, evaluation, attacks and
    checkpoints happen at their ends, as at the end of synchronous rounds."""

    protocol: str = Field("push_all", description="a registered protocol (dfl-sim list protocols): push_all (every neighbour), push_one (push gossip to one random neighbour), pairwise (AD-PSGD's pairwise averaging)")
    interval: float = Field(1.0, gt=0.0, description="simulated time per round of records (one iteration of a node of speed 1)")
    speed: float = Field(1.0, gt=0.0, description="iterations per time unit of every node (one local budget each)")
    speed_sigma: float = Field(0.0, ge=0.0, description="speeds drawn log-normal around speed with this sigma, one per node, from the seed")
    speeds: dict[int, float] = Field(default_factory=dict, description="node -> speed, replacing the drawn one (e.g. a straggler {0: 0.1})")
    latency: float = Field(0.0, ge=0.0, description="time a message takes beyond size / bandwidth")
    bandwidth: float | None = Field(None, gt=0.0, description="bytes per time unit of every link (default: unlimited)")
    latencies: dict[int, float] = Field(default_factory=dict, description="node -> latency of the messages it sends, replacing latency")
    bandwidths: dict[int, float] = Field(default_factory=dict, description="node -> bandwidth of the messages it sends, replacing bandwidth")
    links: list[LinkSpec] = Field(default_factory=list, description="links (graph edges) with their own latency or bandwidth, replacing their sender's")
    link_trace: str | None = Field(None, description="CSV with a header: u, v and any of latency, bandwidth; read into links when the config is parsed (links given here win), then cleared")
    log_mixes: bool = Field(False, description="write every mix of every interval to mixes/round-NNNN.csv: when, who, which sender's iteration, its age and lag")
    trace: str | None = Field(None, description="CSV with a header: node and any of speed, latency, bandwidth; read when the config is parsed into speeds, latencies and bandwidths (entries given here win), then cleared")
    churn: list[ChurnSpec] = Field(default_factory=list, description="offline intervals")


class ExperimentConfig(Strict):
    """One experiment: data, partition, model, topology, rounds, attackers, engine."""

    # ``async`` is a Python keyword: the field is ``async_``, read and written as ``async``
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True, serialize_by_alias=True)

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    rounds: int = Field(gt=0)
    nodes: int = Field(gt=0)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    data: DataConfig = Field(default_factory=DataConfig)
    model: Spec = Field(default_factory=lambda: Spec(name="mlp"))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    aggregator: Spec = Field(default_factory=lambda: Spec(name="neighbourhood_mean"))
    attackers: list[int] | int = Field(default_factory=list, description="node ids, or a count placed by a seeded rule")
    attacks: list[AttackSpec] = Field(default_factory=list, description="attacks every attacker runs")
    defenses: list[DefenseSpec] = Field(default_factory=list, description="defenses, in the order they apply")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    init: InitConfig | None = Field(None, description="start from a trained model (same model settings) instead of a fresh one")
    mode: Literal["sync", "async"] = Field("sync", description="sync: rounds in lockstep; async: every node at its own speed (see async)")
    async_: AsyncConfig = Field(default_factory=AsyncConfig, alias="async")

    @property
    def attacker_ids(self) -> list[int]:
        """The attacker node ids (a count in the file is placed into ids when the config is parsed)."""
        return [] if isinstance(self.attackers, int) else list(self.attackers)

def defended_nodes(cfg: ExperimentConfig, spec: DefenseSpec) -> list[int]:
    """The node ids that run ``spec``: ``honest`` (every non-attacker), ``all``, or the listed ids."""
    if spec.nodes == "all":
        return list(range(cfg.nodes))
    if spec.nodes == "honest":
        attackers = set(cfg.attacker_ids)
        return [i for i in range(cfg.nodes) if i not in attackers]
    return sorted(set(spec.nodes))


def default_data_root() -> Path:
    """``$DFL_SIM_DATA`` or ``~/.cache/dfl-sim/data``."""
    env = os.environ.get("DFL_SIM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dfl-sim" / "data"


# read_yaml, parse_config, load_config, dump_config, ... moved to dfl.experiment (kept here for one release)
__getattr__ = moved(__name__, "dfl.experiment")
