"""``idlg``: improved Deep Leakage from Gradients (Zhao, Mopuri & Bilen, arXiv:2001.02610, 2020).

The label is read off the gradient of the last fully connected layer before any optimisation. For one
sample with cross-entropy loss, row ``k`` of that layer's weight gradient is ``(p_k - y_k) * a``, where
``a >= 0`` is the layer's input (after a sigmoid or ReLU) and ``p`` the softmax output: only the true
class has ``p_k - 1 < 0``, so only its row sums to a negative number. DLG then runs with that hard
label fixed, optimising the images alone.

For a batch (``B > 1``), rows are averages over samples and a class present in the batch usually,
not always, keeps a negative row sum; :func:`infer_labels` then returns a best effort (see there).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from attacks.dlg import DLGParams, lbfgs_match, model_device
from dfl.adversary.gradients import Reconstruction
from dfl.attack import InversionAttack
from dfl.registries import ATTACKS


class IDLGParams(DLGParams):
    """DLG's L-BFGS settings (the labels are read off the gradient, not optimised)."""


def last_linear_index(model: nn.Module) -> int:
    """Index in ``list(model.parameters())`` of the weight of the model's last ``nn.Linear`` (the classifier)."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer; iDLG reads labels from the last fully connected "
            "layer, so pass the labels explicitly for this model"
        )
    weight = linear[-1].weight
    return next(i for i, p in enumerate(model.parameters()) if p is weight)


def infer_labels(model: nn.Module, target_grads: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Labels ``(batch_size,)`` from the sign of the last layer's weight gradient (iDLG, Zhao et al. 2020).

    ``B = 1``: the class whose row of ``dL/dW`` has the most negative sum (exact when the layer's input
    is non-negative). ``B > 1`` (best effort, not in the paper): the classes with negative row sums,
    most negative first; with more such classes than ``B`` the ``B`` most negative are kept, with fewer
    the batch is filled by giving each negative class a share proportional to its row sum (largest
    remainders), since a class present ``n`` times contributes about ``n`` times to the average.
    Labels come back sorted by class id.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sums = target_grads[last_linear_index(model)].detach().double().sum(dim=1).cpu().numpy()
    if batch_size == 1:
        return torch.tensor([int(np.argmin(sums))], dtype=torch.long)
    order = np.argsort(sums, kind="stable")
    negative = [int(k) for k in order if sums[k] < 0] or [int(order[0])]
    if len(negative) >= batch_size:
        labels = negative[:batch_size]
    else:
        weight = -sums[negative] if np.all(sums[negative] < 0) else np.ones(len(negative))
        extra = batch_size - len(negative)
        share = weight / weight.sum() * extra
        counts = np.floor(share).astype(int)
        for i in np.argsort(-(share - counts), kind="stable")[: extra - counts.sum()]:
            counts[i] += 1
        labels = [k for k, c in zip(negative, counts + 1, strict=True) for _ in range(c)]
    return torch.tensor(sorted(labels), dtype=torch.long)


def idlg(
    model: nn.Module,
    target_grads: Sequence[torch.Tensor],
    batch_size: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    iterations: int = 300,
    lr: float = 1.0,
    history_size: int = 100,
    max_eval: int = 20,
    line_search: bool = True,
    generator: torch.Generator,
) -> Reconstruction:
    """Labels by :func:`infer_labels`, then DLG's L-BFGS gradient matching over the images alone.

    Same arguments as :func:`attacks.dlg.dlg`; ``num_classes`` is checked against the last layer.
    """
    k = target_grads[last_linear_index(model)].shape[0]
    if k != num_classes:
        raise ValueError(f"the last layer has {k} outputs but num_classes={num_classes}; pass the model's class count")
    device = model_device(model)
    labels = infer_labels(model, target_grads, batch_size)
    x0 = torch.randn((batch_size, *image_shape), generator=generator).to(device)
    start = time.perf_counter()
    x, _, history, its = lbfgs_match(
        model, target_grads, x0, labels.to(device), soft=False, iterations=iterations, lr=lr,
        history_size=history_size, max_eval=max_eval, line_search=line_search,
    )
    return Reconstruction(images=x.cpu(), labels=labels, loss_history=history, iterations=its,
                          seconds=time.perf_counter() - start)


@ATTACKS.register("idlg", params=IDLGParams)
class IDLG(InversionAttack):
    """The ``idlg`` gradient-inversion attack against a neighbour's update (see :func:`idlg`)."""

    params: IDLGParams

    def reconstruct(self, model: nn.Module, grads: list[torch.Tensor], batch_size: int, num_classes: int,
                    image_shape: tuple[int, int, int], generator: torch.Generator,
                    mean: np.ndarray, std: np.ndarray) -> Reconstruction:
        return idlg(model, grads, batch_size, num_classes, image_shape, generator=generator, **self.options())
