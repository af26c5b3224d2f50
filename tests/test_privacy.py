from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from dfl.metrics.membership import best_threshold, decision_metrics, mia_metrics, per_class_thresholds


def test_random_scores_give_auc_one_half():
    rng = np.random.default_rng(0)
    scores = rng.random(20_000)
    truth = np.r_[np.ones(10_000, bool), np.zeros(10_000, bool)]
    m = mia_metrics(scores, truth)
    assert abs(m["auc"] - 0.5) <= 0.02
    assert m["members"] == m["non_members"] == 10_000
    assert m["baseline_accuracy"] == 0.5 and abs(m["baseline_f1"] - 2 / 3) < 1e-12


def test_perfectly_separated_scores():
    truth = np.r_[np.ones(5000, bool), np.zeros(5000, bool)]
    scores = np.r_[np.linspace(1, 2, 5000), np.linspace(-1, 0, 5000)]
    m = mia_metrics(scores, truth, predicted=scores > 0.5)
    assert m["auc"] == 1.0 and m["tpr_at_0.1_fpr"] == 1.0 and m["tpr_at_1_fpr"] == 1.0 and m["advantage"] == 1.0
    assert m["accuracy"] == m["oracle_accuracy"] == m["f1"] == 1.0


@pytest.mark.parametrize(("non_members", "reported"), [
    (99, []), (100, ["tpr_at_1_fpr"]), (999, ["tpr_at_1_fpr"]), (1000, ["tpr_at_1_fpr", "tpr_at_0.1_fpr"]),
    (10_000, ["tpr_at_1_fpr", "tpr_at_0.1_fpr", "tpr_at_0.01_fpr"])])
def test_tpr_at_low_fpr_only_where_the_non_members_resolve_it(non_members: int, reported: list[str]) -> None:
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(non_members)
    truth = np.r_[np.ones(500, bool), np.zeros(non_members, bool)]
    scores = rng.normal(truth * 1.5, 1.0)
    m = mia_metrics(scores, truth)
    assert m["fpr_floor"] == 1 / non_members
    fpr, tpr, _ = roc_curve(truth, scores)
    for key, level in (("tpr_at_1_fpr", 0.01), ("tpr_at_0.1_fpr", 0.001), ("tpr_at_0.01_fpr", 0.0001)):
        if key in reported:
            assert m[key] == tpr[fpr <= level].max() and m[key] > 0
        else:
            assert m[key] is None


def test_null_test_disjoint_non_members_labelled_at_random():
    """Scores of two sets of non-members, one of them called 'members' at random: AUC 0.5 +- 0.03."""
    rng = np.random.default_rng(1)
    losses = rng.gamma(2.0, 1.0, 4000)  # the same distribution for both halves
    truth = rng.permutation(np.r_[np.ones(2000, bool), np.zeros(2000, bool)])
    assert abs(mia_metrics(-losses, truth)["auc"] - 0.5) <= 0.03


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.booleans()), min_size=4, max_size=60))
def test_against_scikit_learn(pairs):
    s = np.array([p[0] for p in pairs])
    m = np.array([p[1] for p in pairs])
    if m.all() or not m.any():
        return
    pred = s > 0
    got = mia_metrics(s, m, pred)
    assert got["auc"] == pytest.approx(roc_auc_score(m, s))
    assert got["accuracy"] == pytest.approx(accuracy_score(m, pred))
    assert got["precision"] == pytest.approx(precision_score(m, pred, zero_division=0))
    assert got["recall"] == pytest.approx(recall_score(m, pred, zero_division=0))
    assert got["f1"] == pytest.approx(f1_score(m, pred, zero_division=0))
    # the oracle threshold reaches the best balanced accuracy: (1 + advantage) / 2 on any set
    t = best_threshold(s, m)
    tpr = np.mean(s[m] >= t)
    tnr = np.mean(s[~m] < t)
    assert (tpr + tnr) / 2 == pytest.approx((1 + got["advantage"]) / 2)


def test_per_class_thresholds_separate_classes_a_global_one_cannot():
    # class 0: members score 1.0 vs non-members 0.0; class 1: members 3.0 vs non-members 2.0
    scores = np.array([1.0, 0.0, 3.0, 2.0] * 50)
    truth = np.array([True, False, True, False] * 50)
    labels = np.array([0, 0, 1, 1] * 50)
    th = per_class_thresholds(scores, truth, labels, 2)
    assert decision_metrics(scores >= th[labels], truth)["accuracy"] == 1.0
    assert decision_metrics(scores >= best_threshold(scores, truth), truth)["accuracy"] < 1.0
