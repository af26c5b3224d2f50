"""``memguard``: label-preserving noise on each score vector that fools a membership classifier.

MemGuard (Jia, Salem, Backes, Zhang, Gong, "MemGuard: Defending against Black-Box Membership Inference
Attacks via Adversarial Examples", CCS 2019, arXiv 1909.10594). The node plays the attacker first:

- **defense classifier** (:meth:`MemGuard.fit`): a small MLP ``g`` with a sigmoid output, trained on the
  node's own members (its training images) against non-members (its holdout images), whose input is the
  model's confidence vector ``s = softmax(z)`` sorted in descending order;
- **Phase I** (:func:`phase_one`): for each query with logits ``z`` and predicted label ``l``, gradient
  steps on the noisy logits ``z' = z + r`` against

      L(z') = c1 |h(z')| + c2 relu(max_{j != l} z'_j - z'_l + margin) + c3 ||softmax(z') - softmax(z)||_1,

  with ``h`` the classifier's pre-sigmoid output (``h = 0`` <=> ``g = 0.5``, a coin flip for an attacker
  that mimics ``g``), each step ``z' <- z' - step * grad / ||grad||_2``, until ``g`` crosses (or comes
  within ``tol`` of) 0.5 while the label is kept. As in the authors' release, ``c3`` starts small and is
  multiplied by ``c3_growth`` after every success, so that the last success is the least distorted
  noise that still fools ``g``; a row whose first search fails gets no noise.
- **Phase II** (:func:`phase_two`): the noise is used with probability ``p`` (``p_noise``; with a
  utility budget ``epsilon`` also at most ``epsilon / ||softmax(z') - softmax(z)||_1``, which bounds the
  expected L1 distortion of the row by ``epsilon``), otherwise the clean vector.

The predicted label is kept exactly: any row whose noisy scores would change the argmax is answered
clean. The classifier is fitted from a stream derived from the run seed and the node, and the query-time
search is deterministic, so identical models and queries get identical answers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfl.defense import DefenseContext, QueryDefense
from dfl.errors import ConfigError
from dfl.registries import DEFENSES
from dfl.seeding import MEMGUARD_FIT, derive_seed

# --------------------------------------------------------------------------- defense classifier


def init_classifier(sizes: list[int], g: torch.Generator) -> list[torch.Tensor]:
    """Glorot-uniform weights ``(out, in)`` and zero biases of an MLP with layer widths ``sizes``."""
    params: list[torch.Tensor] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        params.append(torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=g))
        params.append(torch.zeros(fan_out))
    return params


def classifier_logit(params: list[torch.Tensor], s: torch.Tensor) -> torch.Tensor:
    """The pre-sigmoid output ``h`` ``(B,)`` of the MLP on sorted confidence vectors ``s`` ``(B, K)``."""
    x = s
    for i in range(0, len(params), 2):
        x = F.linear(x, params[i], params[i + 1])
        if i + 2 < len(params):
            x = F.relu(x)
    return x[:, 0]


def sorted_scores(p: torch.Tensor) -> torch.Tensor:
    """Confidence vectors ``(B, K)`` sorted in descending order (the classifier's input)."""
    return p.sort(dim=1, descending=True).values


def train_classifier(s: torch.Tensor, member: torch.Tensor, hidden: list[int], epochs: int, batch_size: int,
                     lr: float, g: torch.Generator) -> list[torch.Tensor]:
    """An MLP ``K -> hidden -> 1`` fitted by Adam on binary cross-entropy (member = 1) over ``epochs``
    shuffled passes of mini-batches of sorted scores ``s`` ``(N, K)``; initialisation and batch order
    are drawn from ``g`` (a CPU generator). Returns the parameters, detached, on ``s``'s device."""
    params = [t.to(s.device).requires_grad_(True) for t in init_classifier([s.shape[1], *hidden, 1], g)]
    opt = torch.optim.Adam(params, lr=lr)
    target = member.to(s.dtype)
    for _ in range(epochs):
        order = torch.randperm(len(s), generator=g).to(s.device)
        for idx in order.split(batch_size):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(classifier_logit(params, s[idx]), target[idx])
            loss.backward()
            opt.step()
    return [t.detach() for t in params]


# --------------------------------------------------------------------------- the two phases


def phase_one(z: torch.Tensor, clf: list[torch.Tensor], *, c1: float, c2: float, c3: float, c3_growth: float,
              c3_max: float, max_iter: int, step: float, margin: float, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy logits ``(B, K)`` that move the classifier's output to 0.5 and keep the label, and a mask
    ``(B,)`` of the rows that got noise (the others are ``z`` unchanged).

    All rows are searched together; a row stops moving once it succeeds, and a row leaves the outer
    loop over ``c3 = c3, c3 * c3_growth, ... <= c3_max`` at its first failure, keeping its last success.
    """
    z = z.detach()
    s0 = torch.softmax(z, dim=1)
    label = s0.argmax(1)
    is_label = F.one_hot(label, z.shape[1]).bool()
    h0 = classifier_logit(clf, sorted_scores(s0))
    out, noised = z.clone(), torch.zeros(len(z), dtype=torch.bool, device=z.device)
    # an output already at 0.5 needs no noise
    active = (torch.sigmoid(h0) - 0.5).abs() > tol
    weight = c3
    while bool(active.any()) and weight <= c3_max:
        rows = active.nonzero().squeeze(1)
        zr, s0r, lab, isl, h0r = z[rows], s0[rows], label[rows], is_label[rows], h0[rows]
        x, done = zr.clone(), torch.zeros(len(rows), dtype=torch.bool, device=z.device)
        for _ in range(max_iter):
            with torch.enable_grad():
                xg = x.requires_grad_(True)
                p = torch.softmax(xg, dim=1)
                h = classifier_logit(clf, sorted_scores(p))
                correct = (xg * isl).sum(1)
                wrong = xg.masked_fill(isl, -math.inf).max(1).values
                loss = (c1 * h.abs() + c2 * F.relu(wrong - correct + margin)
                        + weight * (p - s0r).abs().sum(1))
                (grad,) = torch.autograd.grad(loss.sum(), xg)
            x = x.detach()
            norm = grad.norm(dim=1, keepdim=True)
            move = torch.where(norm > 0, grad / norm.clamp_min(1e-30), torch.zeros_like(grad))
            x = torch.where(done[:, None], x, x - step * move)
            p = torch.softmax(x, dim=1)
            h = classifier_logit(clf, sorted_scores(p))
            reached = (h * h0r <= 0) | ((torch.sigmoid(h) - 0.5).abs() <= tol)
            done = done | (reached & (p.argmax(1) == lab))
            if bool(done.all()):
                break
        out[rows[done]] = x[done]
        noised[rows[done]] = True
        active[rows[~done]] = False
        weight *= c3_growth
    return out, noised


def phase_two(z: torch.Tensor, noisy: torch.Tensor, p_noise: float, epsilon: float | None,
              g: torch.Generator) -> torch.Tensor:
    """Per row, ``noisy`` with probability ``min(p_noise, epsilon / ||softmax(noisy) - softmax(z)||_1)``
    (``p_noise`` without a budget), otherwise ``z``; draws ``B`` uniforms from ``g`` unless that
    probability is 1 by configuration."""
    if p_noise >= 1.0 and epsilon is None:
        return noisy
    prob = torch.full((len(z),), p_noise, dtype=torch.float64, device=z.device)
    if epsilon is not None:
        d = (torch.softmax(noisy, 1) - torch.softmax(z, 1)).abs().sum(1).to(torch.float64)
        prob = torch.minimum(prob, torch.where(d > 0, epsilon / d.clamp_min(1e-300), torch.ones_like(d)))
    u = torch.rand(len(z), generator=g, device=g.device, dtype=torch.float64).to(z.device)
    return torch.where((u < prob)[:, None], noisy, z)


# --------------------------------------------------------------------------- the plugin


class MemGuardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_samples: int = Field(500, gt=0, description="members (and as many non-members) the classifier sees")
    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1, description="classifier widths")
    epochs: int = Field(400, gt=0, description="classifier training epochs")
    batch_size: int = Field(64, gt=0, description="classifier mini-batch size")
    lr: float = Field(1e-3, gt=0.0, description="classifier Adam learning rate")
    c1: float = Field(1.0, ge=0.0, description="weight of |h|, the classifier's distance from 0.5")
    c2: float = Field(10.0, ge=0.0, description="weight of the hinge that keeps the label")
    c3: float = Field(0.1, gt=0.0, description="first weight of the L1 distortion")
    c3_growth: float = Field(10.0, gt=1.0, description="factor on c3 after each successful search")
    c3_max: float = Field(1e5, gt=0.0, description="largest c3 tried")
    max_iter: int = Field(300, gt=0, description="gradient steps per search")
    step: float = Field(0.1, gt=0.0, description="step length on the logits")
    margin: float = Field(0.0, ge=0.0, description="logit margin the hinge asks of the label")
    tol: float = Field(1e-5, ge=0.0, lt=0.5, description="a classifier output this close to 0.5 counts as reached")
    p_noise: float = Field(1.0, ge=0.0, le=1.0, description="Phase II: probability of answering with the noise")
    epsilon: float | None = Field(None, gt=0.0, description="Phase II: expected L1 distortion budget per query")


@DEFENSES.register("memguard", params=MemGuardParams)
class MemGuard(QueryDefense):
    """Logit noise found per query that drives the node's own membership classifier to 0.5."""

    params: MemGuardParams

    def __init__(self, params: MemGuardParams, ctx: DefenseContext) -> None:
        super().__init__(params, ctx)
        if ctx.train_images is None or ctx.holdout_images is None:
            raise ConfigError([("defenses", f"memguard needs node {ctx.node}'s training and holdout images "
                                            "in its DefenseContext; the population provides both")])
        if len(ctx.holdout_images(ctx.node)[0]) == 0 or len(ctx.train_images(ctx.node)[0]) == 0:
            raise ConfigError([("data.holdout_fraction", f"memguard trains its membership classifier on node "
                                                         f"{ctx.node}'s holdout images, and the node has none; "
                                                         "set data.holdout_fraction > 0")])
        self.clf: list[torch.Tensor] = []

    def fit(self, model: nn.Module) -> None:
        """Train the defense classifier on up to ``train_samples`` members and as many non-members,
        scored by ``model`` (left in eval mode, its parameters untouched)."""
        assert self.ctx.train_images is not None and self.ctx.holdout_images is not None
        model.eval()
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(derive_seed(self.ctx.seed, MEMGUARD_FIT, self.ctx.node))
        xm, _ = self.ctx.train_images(self.ctx.node)
        xn, _ = self.ctx.holdout_images(self.ctx.node)
        n = min(self.params.train_samples, len(xm), len(xn))
        pick_m = torch.randperm(len(xm), generator=g)[:n].sort().values.numpy()
        pick_n = torch.randperm(len(xn), generator=g)[:n].sort().values.numpy()
        scores = torch.cat([self._scores(model, xm[pick_m], device), self._scores(model, xn[pick_n], device)])
        member = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
        s = sorted_scores(scores)
        with torch.enable_grad():
            self.clf = train_classifier(s, member, self.params.hidden, self.params.epochs, self.params.batch_size,
                                        self.params.lr, g)
        with torch.no_grad():
            acc = float(((classifier_logit(self.clf, s) > 0).to(member.dtype) == member).float().mean())
        self.records.append({"fit": "memguard", "defense_classifier_train_acc": acc, "members": n,
                             "non_members": n})

    def _scores(self, model: nn.Module, x_u8: np.ndarray, device: torch.device) -> torch.Tensor:
        """Softmax outputs ``(N, K)`` in float32 of ``model`` on uint8 images ``(N, C, H, W)``."""
        x = torch.as_tensor(x_u8).to(device=device, dtype=torch.float32) / 255.0
        with torch.no_grad():
            return torch.cat([torch.softmax(model(self.ctx.normalise(xb)).float(), dim=1)
                              for xb in x.split(1000)]) if len(x) else torch.empty(0, self.ctx.num_classes)

    def logits(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self.clf or len(z) == 0:
            return z
        pr = self.params
        clf = [t.to(z.device) for t in self.clf]
        z32 = z.detach().float()
        noisy, _ = phase_one(z32, clf, c1=pr.c1, c2=pr.c2, c3=pr.c3, c3_growth=pr.c3_growth, c3_max=pr.c3_max,
                             max_iter=pr.max_iter, step=pr.step, margin=pr.margin, tol=pr.tol)
        out = phase_two(z32, noisy, pr.p_noise, pr.epsilon, g).to(z.dtype)
        # the label is kept exactly, as the API will compute it: any row that would change is answered clean
        kept = torch.softmax(out, dim=1).argmax(1) == torch.softmax(z, dim=1).argmax(1)
        return torch.where(kept[:, None], out, z)
