"""Empirical differential-privacy audit: a lower bound on epsilon from a membership attack's errors.

If a training algorithm is ``(epsilon, delta)``-DP with respect to one training sample, every test that
tells "the sample was in the training set" from "it was not" has false-positive and false-negative
rates with (Kairouz et al., ICML 2015; Jagielski et al., "Auditing Differentially Private Machine
Learning: How Private is Private SGD?", NeurIPS 2020)

    FPR + e^eps * FNR >= 1 - delta   and   FNR + e^eps * FPR >= 1 - delta,

so ``eps >= max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))``. With FPR and FNR
replaced by their Clopper-Pearson upper confidence bounds (each one-sided at ``alpha / 2``, so both
hold together with probability at least ``1 - alpha``), the bound holds with that confidence.

The threshold of the test is chosen on one half of the samples (the half-split is seeded, members and
non-members split separately) and the rates are counted on the other half: choosing it on the counted
samples would bias the bound upwards. Caveat: a membership attack against one trained model scores many
samples of the same run, which are not independent trials of the mechanism (Steinke, Nasr and Jagielski,
"Privacy Auditing with One (1) Training Run", NeurIPS 2023, bound that case rigorously); the bound here
is the customary empirical epsilon. An attack far from optimal gives a loose (small) bound; a bound
above the accountant's epsilon is evidence of a bug (in the accountant's assumptions or the training).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AUDIT_ALPHA = 0.05  # the confidence of the lower bound: 95 %


def clopper_pearson_upper(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided upper confidence bounds at level ``1 - alpha`` on a binomial rate from ``k`` of ``n``:
    the ``1 - alpha`` quantile of Beta(k + 1, n - k), and 1 where ``k == n`` (Clopper and Pearson, 1934)."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    if n <= 0:
        return np.ones_like(k)
    with np.errstate(invalid="ignore"):
        upper = beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, upper)


def epsilon_bound(fpr: np.ndarray | float, fnr: np.ndarray | float, delta: float) -> np.ndarray:
    """``max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR), 0)`` elementwise (0 where no
    term is positive: the errors are consistent with ``epsilon = 0``)."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(1.0 - delta - fpr, 0.0) / fnr)
        b = np.log(np.maximum(1.0 - delta - fnr, 0.0) / fpr)
    out = np.fmax(np.nan_to_num(a, nan=-np.inf, posinf=np.inf), np.nan_to_num(b, nan=-np.inf, posinf=np.inf))
    return np.maximum(out, 0.0)


def _rates(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """False positives and false negatives of ``score >= t`` for every ``t``, and the class counts."""
    neg, pos = np.sort(scores[~truth]), np.sort(scores[truth])
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")  # non-members at or above t
    fn = np.searchsorted(pos, thresholds, side="left")  # members below t
    return fp, fn, len(neg), len(pos)


def audit_bounds(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, delta: float,
                 alpha: float = AUDIT_ALPHA) -> np.ndarray:
    """The epsilon lower bound of the test ``score >= t`` for every ``t``, from the counts on these samples."""
    fp, fn, n_neg, n_pos = _rates(scores, truth, thresholds)
    return epsilon_bound(clopper_pearson_upper(fp, n_neg, alpha / 2), clopper_pearson_upper(fn, n_pos, alpha / 2),
                         delta)


def epsilon_lower_bound(scores: np.ndarray, truth: np.ndarray, delta: float, seed: int,
                        alpha: float = AUDIT_ALPHA) -> dict[str, Any]:
    """The audit of one attack's scores (higher = member) against the truth: see the module docstring.

    Returns ``epsilon_lower`` (0 when the attack does no better than chance), the ``threshold`` chosen
    on the selection half and the rates' upper bounds on the counting half (``fpr_upper``,
    ``fnr_upper``), and how many samples each half had (``audit_samples``: the counting half)."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    rng = np.random.default_rng(seed)
    pick = np.zeros(len(s), dtype=bool)
    for cls in (True, False):  # half of the members and half of the non-members select the threshold
        idx = np.flatnonzero(t == cls)
        pick[rng.permutation(idx)[: len(idx) // 2]] = True
    select, count = (s[pick], t[pick]), (s[~pick], t[~pick])
    out: dict[str, Any] = {"epsilon_lower": 0.0, "audit_threshold": None, "fpr_upper": None, "fnr_upper": None,
                           "audit_samples": int((~pick).sum())}
    if not (select[1].any() and (~select[1]).any() and count[1].any() and (~count[1]).any()):
        return out  # a half without members or non-members: no test to count
    candidates = np.unique(select[0])
    bounds = audit_bounds(*select, candidates, delta, alpha)
    threshold = float(candidates[int(np.argmax(bounds))])  # ties: the lowest threshold
    fp, fn, n_neg, n_pos = _rates(*count, np.array([threshold]))
    fpr_hi = float(clopper_pearson_upper(fp, n_neg, alpha / 2)[0])
    fnr_hi = float(clopper_pearson_upper(fn, n_pos, alpha / 2)[0])
    eps = float(epsilon_bound(fpr_hi, fnr_hi, delta))
    out.update(epsilon_lower=eps if math.isfinite(eps) else None, audit_threshold=threshold,
               fpr_upper=fpr_hi, fnr_upper=fnr_hi)
    return out
