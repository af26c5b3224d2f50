"""Membership-inference metrics: pure functions of attack scores and the ground truth.

Convention: a higher score means "member"; members are the positive class. Only the scorer calls
these, after an attack has produced its scores: attacks never see the truth.

- threshold-free: ROC AUC, TPR at a fixed FPR (1 %, 0.1 % and 0.01 %, as in Carlini et al., "Membership
  Inference Attacks From First Principles", S&P 2022; each only where the evaluation set has enough
  non-members to resolve it, else ``None``), advantage ``max_t TPR(t) - FPR(t)`` (Yeom et
  al., CSF 2018);
- at a threshold: accuracy, precision, recall, F1 -- for the attack's own calibrated decision and for
  the oracle threshold that maximises balanced accuracy on the evaluation set itself (an upper bound);
- the trivial all-member baseline beside them (on balanced sets: accuracy 0.5, F1 0.667).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROC_POINTS = np.r_[0.0, np.logspace(-4, 0, 53)]  # the FPR grid a record's ROC curve (roc_tpr) is stored on


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold ``t`` maximising balanced accuracy ``(TPR + TNR) / 2`` of ``score >= t``.

    ``scores``, ``is_member``: ``(n,)``. Ties between thresholds go to the largest ``t``. With only one
    class present, returns a threshold that predicts that class for every sample.
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    # here, not at the top: scikit-learn costs about a second of start-up, and only scoring attacks needs it
    from sklearn.metrics import roc_curve

    if m.all():
        return float(s.min())
    if not m.any():
        return float(np.nextafter(s.max(), np.inf))
    fpr, tpr, thr = roc_curve(m, s, drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))
    return float(min(thr[k], np.nextafter(s.max(), np.inf)))


def per_class_thresholds(scores: np.ndarray, is_member: np.ndarray, labels: np.ndarray,
                         num_classes: int) -> np.ndarray:
    """``(num_classes,)`` thresholds, each :func:`best_threshold` of one class's samples (global one where a class is absent)."""
    glob = best_threshold(scores, is_member)
    out = np.full(num_classes, glob, dtype=np.float64)
    for c in range(num_classes):
        idx = labels == c
        if idx.any() and 0 < is_member[idx].sum() < idx.sum():
            out[c] = best_threshold(scores[idx], is_member[idx])
    return out


def decision_metrics(predicted: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of boolean member predictions (member = positive)."""
    p = np.asarray(predicted, dtype=bool)
    m = np.asarray(is_member, dtype=bool)
    tp = float(np.sum(p & m))
    fp = float(np.sum(p & ~m))
    fn = float(np.sum(~p & m))
    tn = float(np.sum(~p & ~m))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(m), "precision": precision, "recall": recall, "f1": f1}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR on the ROC curve at an FPR of at most ``target``."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


FPR_LEVELS = {"tpr_at_1_fpr": 0.01, "tpr_at_0.1_fpr": 0.001, "tpr_at_0.01_fpr": 0.0001}


def resolvable(fpr: float, non_members: int) -> bool:
    """Whether ``non_members`` negatives resolve a false-positive rate of ``fpr``: one false positive is
    at most ``fpr`` of them (``non_members >= 1 / fpr``). Below that, the TPR "at" ``fpr`` is the TPR at
    zero false positives, a different and noisier number, so it is not reported."""
    return non_members >= round(1.0 / fpr)


def mia_metrics(scores: np.ndarray, is_member: np.ndarray, predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of one attack on one evaluation set.

    ``scores``: ``(n,)`` (higher = member); ``is_member``: ``(n,)`` truth; ``predicted``: the attack's own
    calibrated decisions, if it makes any. Keys: ``auc``, ``tpr_at_1_fpr``, ``tpr_at_0.1_fpr``,
    ``tpr_at_0.01_fpr`` (each ``None`` where the non-members cannot resolve that rate: :func:`resolvable`),
    ``fpr_floor`` (``1 / non_members``, the smallest rate they resolve), ``advantage``, ``oracle_{accuracy,precision,recall,f1}``, ``{accuracy,precision,recall,f1}``
    (calibrated, when ``predicted`` is given), ``baseline_{accuracy,f1}`` (all-member), ``members``,
    ``non_members``.
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ValueError(f"scores and is_member must be (n,) of one length, got {s.shape} and {m.shape}")
    if not (m.any() and (~m).any()):
        raise ValueError("the evaluation set needs both members and non-members")
    if not np.isfinite(s).all():
        raise ValueError("attack scores must be finite")
    # here, not at the top: scikit-learn costs about a second of start-up, and only scoring attacks needs it
    from sklearn.metrics import roc_auc_score, roc_curve  # here: importing the plugins stays fast

    fpr, tpr, _ = roc_curve(m, s)
    out: dict[str, Any] = {
        "members": int(m.sum()),
        "non_members": int((~m).sum()),
        "auc": float(roc_auc_score(m, s)),
        **{key: tpr_at_fpr(fpr, tpr, level) if resolvable(level, int((~m).sum())) else None
           for key, level in FPR_LEVELS.items()},
        "fpr_floor": 1.0 / float((~m).sum()),
        "advantage": float(np.max(tpr - fpr)),
    }
    oracle = decision_metrics(s >= best_threshold(s, m), m)
    out.update({f"oracle_{k}": v for k, v in oracle.items()})
    if predicted is not None:
        out.update(decision_metrics(predicted, m))
    base = decision_metrics(np.ones_like(m), m)
    out["baseline_accuracy"] = base["accuracy"]
    out["baseline_f1"] = base["f1"]
    return out
