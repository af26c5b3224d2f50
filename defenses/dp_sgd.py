"""``dp_sgd``: differentially private local training -- per-sample clipping and Gaussian noise, through Opacus.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016). Every local step clips each
sample's gradient to norm ``C`` (``max_grad_norm``) and adds Gaussian noise to their sum:

    g = (sum_{i in B} g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / b

with ``sigma`` the ``noise_multiplier`` and ``b`` the configured batch size (Opacus's expected batch size,
so a smaller last batch of an epoch is divided by ``b`` as well). Per-sample gradients come from Opacus's
``GradSampleHooks`` attached to the node's own model for the round, clipping and noise from
``opacus.optimizers.DPOptimizer`` around the node's optimizer; the noise is drawn from a stream of
``(seed, node, round)``, so a run is reproducible and resumable. The node's own optimizer (momentum,
weight decay) then steps on the noisy gradient.

The privacy spent is reported in every training record of a defended node as ``dp_epsilon``: Opacus's
RDP accountant (Mironov et al., "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019) at
``delta``, for ``sigma``, the sample rate ``q = b / n`` (``n`` the node's training samples) and all the
node's local steps of the rounds so far (``inf`` when ``sigma = 0``). The unit of privacy is one training
sample of the node; what the node shares with its neighbours is post-processing of its noisy steps.

Caveats. The accountant assumes Poisson sampling at rate ``q``, while local training draws shuffled
fixed-size batches (every sample once per epoch), so ``dp_epsilon`` is the customary estimate, not a
guarantee proved for this sampler. BatchNorm mixes the samples of a batch and is refused: use
``model.params.norm: group``. A loss penalty of another training defense (``weight_penalty``) has no
per-sample gradient and would be silently dropped, so the two may not share a node; mixup-style
defenses mix samples within a batch, which a per-sample guarantee does not cover.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.defense import DefenseContext, TrainingDefense
from dfl.errors import ConfigError
from dfl.registries import DEFENSES, MODELS
from dfl.seeding import DP_NOISE, TRAIN_DEFENSE, torch_generator

if TYPE_CHECKING:
    from dfl.config import ExperimentConfig

_PROBE_SHAPE = (3, 32, 32)  # image shape the config check builds the model with (layer types do not depend on it)


class DPSGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise_multiplier: float = Field(1.0, ge=0.0, description="sigma: noise std as a multiple of max_grad_norm")
    max_grad_norm: float = Field(1.0, gt=0.0, description="C: bound on each sample's gradient norm")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the reported (epsilon, delta)")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """``epsilon`` at ``delta`` after ``steps`` sampled Gaussian steps (Opacus's RDP accountant); ``inf`` for sigma 0."""
    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]  # what `steps` calls of accountant.step() leave
    # Opacus's default orders start at 1.1; small noise wants orders nearer 1 (an epsilon from too few orders
    # is still a valid upper bound, so the warning that the smallest order won is not repeated to the user)
    alphas = [1 + x / 100 for x in range(1, 10)] + [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        return float(accountant.get_epsilon(delta, alphas=alphas))


def model_errors(model: nn.Module) -> list[tuple[str, str]]:
    """Why Opacus cannot train ``model`` with per-sample gradients, as ``(config path, message)`` pairs."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if not problems:
        return []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return [("model.params.norm", "dp_sgd needs per-sample gradients, and BatchNorm mixes the samples of a batch; "
                 "set model.params.norm: group (GroupNorm), or choose a model without BatchNorm")]
    return [("model.name", f"dp_sgd cannot compute per-sample gradients of this model "
             f"({'; '.join(str(p) for p in problems)}); choose another model")]


@DEFENSES.register("dp_sgd", params=DPSGDParams)
class DPSGD(TrainingDefense):
    """DP-SGD: per-sample clipping to ``max_grad_norm`` and Gaussian noise, with an RDP epsilon per round."""

    params: DPSGDParams

    def __init__(self, params: BaseModel, ctx: DefenseContext) -> None:
        super().__init__(params, ctx)
        self._hooks: Any = None
        self._steps = self._batch_size = self._num_samples = 0

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, round_idx: int, steps: int,
             batch_size: int, num_samples: int) -> torch.optim.Optimizer:
        from opacus.grad_sample import GradSampleHooks
        from opacus.optimizers import DPOptimizer

        errors = model_errors(model)
        if errors:
            raise ConfigError(errors)
        expected = min(batch_size, num_samples)
        self._steps, self._batch_size, self._num_samples = steps, batch_size, num_samples
        # torch warns that the first layer's input needs no gradient: the normal case under these hooks
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs since no inputs require gradients", category=UserWarning)
        self._hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean")
        device = next(model.parameters()).device
        g = torch_generator(self.ctx.seed, TRAIN_DEFENSE, self.ctx.node, round_idx, DP_NOISE, device=device)
        return DPOptimizer(optimizer, noise_multiplier=self.params.noise_multiplier,
                           max_grad_norm=self.params.max_grad_norm, expected_batch_size=expected, generator=g)

    def unwrap(self, model: nn.Module, round_idx: int) -> dict[str, float]:
        if self._hooks is not None:
            self._hooks.cleanup()  # hooks off, grad_sample and counters gone from the parameters
            self._hooks = None
        for p in model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad
        eps, _ = self.privacy_spent(round_idx + 1, self._steps, self._batch_size, self._num_samples)
        return {"dp_epsilon": eps}

    def privacy_spent(self, rounds: int, steps: int, batch_size: int, num_samples: int) -> tuple[float, float]:
        """Opacus's RDP epsilon at ``delta`` for every local step of ``rounds`` rounds, at sample rate
        ``min(batch_size, num_samples) / num_samples``."""
        rate = min(batch_size, num_samples) / max(num_samples, 1)
        delta = self.params.delta
        return epsilon(self.params.noise_multiplier, rate, rounds * steps, delta), delta

    @classmethod
    def config_errors(cls, cfg: ExperimentConfig, index: int) -> list[tuple[str, str]]:
        """Checks over the whole experiment: a model Opacus can train, and no other defense on the same
        nodes whose loss penalty DP-SGD would drop (nor a second ``dp_sgd``)."""
        from dfl.config import defended_nodes

        errors: list[tuple[str, str]] = []
        try:
            entry = MODELS.get(cfg.model.name, "model.name")
            model_params = entry.parse_params(cfg.model.params, "model.params")
            with torch.device("meta"):
                model = entry.obj(_PROBE_SHAPE, 2, model_params)
        except Exception:  # noqa: BLE001 - a bad model spec is reported by its own check
            model = None
        if isinstance(model, nn.Module):
            errors += model_errors(model)
        mine = set(defended_nodes(cfg, cfg.defenses[index]))
        for j, spec in enumerate(cfg.defenses):
            other = DEFENSES.get(spec.name).obj if spec.name in DEFENSES else None
            both = sorted(mine & set(defended_nodes(cfg, spec)))
            if j == index or not both or not (isinstance(other, type) and issubclass(other, TrainingDefense)):
                continue
            if other is cls and j > index:
                errors.append((f"defenses.{j}.name", f"dp_sgd is listed twice for nodes {both}; keep one"))
            elif other.penalty is not TrainingDefense.penalty:
                errors.append((f"defenses.{j}.name", f"{spec.name} adds a loss penalty, which has no per-sample "
                               f"gradient and would be dropped by dp_sgd (defenses.{index}) on nodes {both}; run them "
                               "on different nodes (defenses.N.nodes), or use training.optimizer.weight_decay for L2"))
        return errors
