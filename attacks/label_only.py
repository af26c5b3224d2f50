"""``label_only``: label consistency under data augmentation (Choquette-Choo et al., ICML 2021).

Choquette-Choo, Tramèr, Carlini, Papernot, "Label-Only Membership Inference Attacks" (ICML 2021),
the data-augmentation attack: a model is more robust around its training points, so a member keeps its
(correct) label under small perturbations more often than a non-member. For each sample ``(x, y)`` the
attacker queries the victim's predicted label on a fixed set of queries ``Q(x)`` and scores

    s(x, y) = |{q in Q(x) : argmax f(q) = y}| / |Q(x)|

with ``Q(x)`` = every translation of ``x`` by ``(dy, dx)``, ``|dy| + |dx| <= translations`` (the
identity included; edges replicated), each also flipped horizontally when ``flips`` is set, plus
``noise_draws`` copies ``x + noise_std * N(0, I)`` (the paper's noise-robustness variant, in the
normalised pixel space). The decision threshold maximises balanced accuracy on shadow models trained
on the auxiliary pool with the victims' recipe (:func:`dfl.metrics.membership.best_threshold`).

Only the argmax of ``outputs(x)`` is ever read, so a defense that keeps the predicted label (rounding
or truncating the confidences, MemGuard's label-preserving noise) leaves these scores unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from attacks.base import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities
from attacks.shadow import ShadowParams, shadow_models, stack
from dfl.metrics.membership import best_threshold
from dfl.registries import ATTACKS
from dfl.seeding import LABEL_ONLY_NOISE

Labeller = Callable[[torch.Tensor], torch.Tensor]  # images (B, C, H, W) -> predicted labels (B,)


class LabelOnlyParams(ShadowParams):
    translations: int = Field(1, ge=0, description="largest shift in pixels, |dy| + |dx| <= translations")
    flips: bool = Field(True, description="also query each translation flipped horizontally")
    noise_std: float = Field(0.0, ge=0.0, description="std of the gaussian noise queries (normalised units)")
    noise_draws: int = Field(0, ge=0, description="noisy copies of each sample queried")

    @model_validator(mode="after")
    def _noise_both_or_neither(self) -> LabelOnlyParams:
        if (self.noise_std > 0) != (self.noise_draws > 0):
            raise ValueError(f"noise_std ({self.noise_std}) and noise_draws ({self.noise_draws}) must both be "
                             "positive for noise queries, or both 0 to turn them off")
        return self


def shifts(d: int) -> list[tuple[int, int]]:
    """Pixel shifts ``(dy, dx)`` with ``|dy| + |dx| <= d``, the identity first."""
    return [(0, 0)] + [(i, j) for i in range(-d, d + 1) for j in range(-d, d + 1) if 0 < abs(i) + abs(j) <= d]


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x: (N, C, H, W)`` moved down by ``dy`` and right by ``dx`` pixels; the uncovered border repeats the edge."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    return padded[..., p - dy: p - dy + h, p - dx: p - dx + w]


def queries(x: torch.Tensor, params: LabelOnlyParams, generator: torch.Generator) -> list[torch.Tensor]:
    """The augmented copies of ``x: (N, C, H, W)`` the attack queries, each ``(N, C, H, W)``.

    The noise is drawn from ``generator`` here, once; the rest is deterministic.
    """
    out = []
    for dy, dx in shifts(params.translations):
        t = translate(x, dy, dx)
        out += [t, t.flip(-1)] if params.flips else [t]
    for _ in range(params.noise_draws):
        out.append(x + params.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype))
    return out


def label_consistency(labels: Labeller, x: torch.Tensor, y: torch.Tensor, params: LabelOnlyParams,
                      generator: torch.Generator) -> np.ndarray:
    """``(N,)``: the fraction of the queries of each sample that ``labels`` assigns its true label ``y``."""
    qs = queries(x, params, generator)
    hits = torch.zeros(len(y), dtype=torch.float64)
    for q in qs:
        hits += (labels(q) == y).double()
    return (hits / len(qs)).numpy()


def _generator(view: AdversaryView, *tags: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(view.rng(LABEL_ONLY_NOISE, *tags).integers(2**62)))


@ATTACKS.register("label_only", params=LabelOnlyParams)
class LabelOnly(MembershipAttack):
    """Fraction of augmented queries the victim labels correctly, thresholded on shadow models (label-only)."""

    params: LabelOnlyParams

    def _key(self) -> str:
        return f"label_only:{self.params.model_dump_json()}"

    def prepare(self, view: AdversaryView) -> None:
        p = self.params
        if self._key() in view.cache:
            return
        ins, outs = [], []
        for s, sh in enumerate(shadow_models(view, p.shadow_models, p.shadow_size, p.shadow_epochs)):
            def labels(q: torch.Tensor, m: torch.nn.Module = sh.model) -> torch.Tensor:
                return probabilities(m, q).argmax(1)

            ins.append(label_consistency(labels, sh.inside.x, sh.inside.y, p, _generator(view, 1, s)))
            outs.append(label_consistency(labels, sh.outside.x, sh.outside.y, p, _generator(view, 2, s)))
        view.cache[self._key()] = best_threshold(*stack(np.concatenate(ins), np.concatenate(outs)))

    def score(self, view: AdversaryView, outputs: Outputs, data: Labelled) -> AttackResult:
        self.prepare(view)
        threshold = view.cache[self._key()]

        def labels(q: torch.Tensor) -> torch.Tensor:
            return outputs(q).argmax(1)  # the only thing read from the victim: its label

        s = label_consistency(labels, data.x, data.y, self.params, _generator(view, 0))
        return AttackResult(s, s >= threshold, {"threshold": float(threshold)})
