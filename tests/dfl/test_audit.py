"""dfl.metrics.audit: the empirical epsilon lower bound, against scipy and a brute-force loop, and its
soundness on a mechanism whose epsilon is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from dfl.metrics.audit import audit_bounds, clopper_pearson_upper, epsilon_bound, epsilon_lower_bound


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_clopper_pearson_upper_is_scipys_exact_interval(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    # a one-sided bound at alpha is the upper end of the two-sided interval at 2 alpha
    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact").high
    assert clopper_pearson_upper(k, n, 0.025) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_epsilon_bound_is_the_dp_inequality() -> None:
    assert epsilon_bound(0.1, 0.2, 0.0) == pytest.approx(max(math.log(0.9 / 0.2), math.log(0.8 / 0.1)))
    assert epsilon_bound(0.5, 0.5, 0.0) == 0.0  # chance: consistent with epsilon 0
    assert epsilon_bound(0.6, 0.6, 1e-5) == 0.0  # worse than chance: never negative
    assert epsilon_bound(0.1, 0.2, 0.05) == pytest.approx(max(math.log(0.85 / 0.2), math.log(0.75 / 0.1)))


def test_audit_bounds_count_every_threshold_as_the_loop_does() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.5
    scores = np.round(rng.normal(truth * 1.0, 1.0), 1)  # ties on purpose
    thresholds = np.unique(scores)
    got = audit_bounds(scores, truth, thresholds, 1e-5)
    for t, bound in zip(thresholds, got, strict=True):
        fp, fn = int(((scores >= t) & ~truth).sum()), int(((scores < t) & truth).sum())
        fpr = clopper_pearson_upper(fp, int((~truth).sum()), 0.025)
        fnr = clopper_pearson_upper(fn, int(truth.sum()), 0.025)
        assert bound == pytest.approx(float(epsilon_bound(fpr, fnr, 1e-5)))


def test_a_perfect_attack_is_bounded_by_the_samples_and_a_blind_one_proves_nothing() -> None:
    truth = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    perfect = epsilon_lower_bound(truth.astype(float), truth, 1e-5, seed=0)
    u = 1 - 0.025 ** (1 / 250)  # no error among 250 counted members (and non-members)
    assert perfect["audit_samples"] == 500
    assert perfect["epsilon_lower"] == pytest.approx(math.log((1 - 1e-5 - u) / u))
    blind = epsilon_lower_bound(np.random.default_rng(1).random(1000), truth, 1e-5, seed=0)
    assert blind["epsilon_lower"] < 0.3
    assert epsilon_lower_bound(truth.astype(float), truth, 1e-5, seed=0) == perfect  # seeded: repeatable


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_the_bound_stays_below_a_known_epsilon_and_comes_near_it(eps: float) -> None:
    """Randomised response is exactly eps-DP: a member answers 1 with probability e^eps / (1 + e^eps), a
    non-member with 1 / (1 + e^eps). Over repeated audits the 95 % bound exceeds eps rarely, and the
    best test (answer 1 -> member) gets it close."""
    p = math.exp(eps) / (1 + math.exp(eps))
    truth = np.r_[np.ones(4000, bool), np.zeros(4000, bool)]
    above, bounds = 0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        answer = np.where(truth, rng.random(len(truth)) < p, rng.random(len(truth)) < 1 - p).astype(float)
        bound = epsilon_lower_bound(answer + 1e-3 * rng.random(len(truth)), truth, 0.0, seed=seed)["epsilon_lower"]
        above += bound > eps
        bounds.append(bound)
    assert above <= 2  # a 95 % bound: about one in 20 may exceed
    assert np.median(bounds) > 0.75 * eps
