"""bench.stats against scipy (bootstrap, Wilcoxon), a hand-computed Holm example and crafted rank intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.report import stats


# ----------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_matches_scipy_bca_and_contains_the_true_mean():
    x = np.random.default_rng(1).normal(loc=2.0, scale=1.0, size=200)
    low, high = stats.bootstrap_ci(x)
    ref = sps.bootstrap((x,), np.mean, method="BCa", confidence_level=0.95, n_resamples=2000,
                        rng=np.random.default_rng(0)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert low < 2.0 < high
    assert low < x.mean() < high
    assert 0.2 < high - low < 0.35  # about 2 * 1.96 / sqrt(200) = 0.277


def test_bootstrap_ci_confidence_level_is_honoured():
    x = np.random.default_rng(2).exponential(size=60)
    w95 = np.subtract(*stats.bootstrap_ci(x)[::-1])
    w50 = np.subtract(*stats.bootstrap_ci(x, confidence=0.5)[::-1])
    assert 0 < w50 < w95
    with pytest.raises(ValueError):
        stats.bootstrap_ci(x, confidence=95)


def test_bootstrap_ci_coverage_is_near_nominal():
    """Over many samples of a known distribution, ~95 % of the intervals contain the true mean."""
    rng = np.random.default_rng(3)
    hits = 0
    reps = 150
    for _ in range(reps):
        x = rng.normal(loc=0.3, scale=0.1, size=40)
        low, high = stats.bootstrap_ci(x, n_resamples=1000)
        hits += low <= 0.3 <= high
    assert 0.87 <= hits / reps <= 0.995


def test_bootstrap_ci_drops_nan_and_is_deterministic():
    x = np.random.default_rng(4).normal(size=30)
    with_nan = np.concatenate([x[:10], [np.nan, np.inf], x[10:], [np.nan]])
    assert stats.bootstrap_ci(with_nan) == stats.bootstrap_ci(x)
    # seeded: the interval scipy gives with default_rng(seed), whatever the seed (default 0)
    for seed in (0, 1):
        ref = sps.bootstrap((x,), np.mean, method="BCa", confidence_level=0.95, n_resamples=2000,
                            rng=np.random.default_rng(seed)).confidence_interval
        assert stats.bootstrap_ci(x, seed=seed) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x, seed=stats.settings()["seed"])  # the seed manifests record
    assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=0)


def test_bootstrap_ci_degenerate_cases():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([np.nan, np.nan]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.7]))           # n == 1: no interval
    assert stats.bootstrap_ci([0.25] * 12) == (0.25, 0.25)                 # all equal: BCa -> percentile
    two = np.array([1.0, 3.0])                                              # n == 2: percentile
    ref = sps.bootstrap((two,), np.mean, method="percentile", n_resamples=2000,
                        rng=np.random.default_rng(0)).confidence_interval
    assert stats.bootstrap_ci(two) == pytest.approx((ref.low, ref.high))


# ----------------------------------------------------------------------------- paired_difference


def test_paired_difference_matches_scipy_wilcoxon_on_the_complete_pairs():
    rng = np.random.default_rng(6)
    pre = rng.normal(0.5, 0.1, size=25)
    post = pre + 0.05 + rng.normal(0, 0.02, size=25)
    pre[3], post[7] = np.nan, np.nan                     # incomplete pairs are dropped
    res = stats.paired_difference(pre, post)
    keep = np.isfinite(pre) & np.isfinite(post)
    assert res.n == 23
    assert res.p_value == pytest.approx(sps.wilcoxon(post[keep], pre[keep]).pvalue, rel=1e-12)
    assert res.diff_mean == pytest.approx(np.mean(post[keep] - pre[keep]))
    assert res.diff_mean == pytest.approx(res.post_mean - res.pre_mean)
    assert (res.ci_low, res.ci_high) == stats.bootstrap_ci(post[keep] - pre[keep])
    assert res.ci_low < 0.05 < res.ci_high
    assert res.p_value < 0.01


def test_paired_difference_large_n_uses_scipy_auto_method_too():
    rng = np.random.default_rng(6)
    pre, post = rng.normal(size=120), rng.normal(size=120)
    post[:10] = pre[:10]                                  # zero differences and ties
    res = stats.paired_difference(pre, post)
    assert res.p_value == pytest.approx(sps.wilcoxon(post - pre).pvalue, rel=1e-12)


def test_paired_difference_degenerate_cases():
    same = stats.paired_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same.p_value == 1.0 and same.diff_mean == 0.0 and same.n == 3
    empty = stats.paired_difference([np.nan, 1.0], [2.0, np.nan])
    assert empty.n == 0 and math.isnan(empty.p_value) and math.isnan(empty.diff_mean)
    one = stats.paired_difference([1.0], [2.0])
    assert one.n == 1 and one.diff_mean == 1.0 and one.p_value == 1.0 and math.isnan(one.ci_low)
    with pytest.raises(ValueError):
        stats.paired_difference([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- holm


def test_holm_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_nan_passes_through_cap_and_ties():
    out = stats.holm([0.01, np.nan, 0.04, 0.03, 0.005])
    assert math.isnan(out[1])
    assert np.delete(out, 1) == pytest.approx([0.03, 0.06, 0.06, 0.02])    # m counts finite p only
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])              # capped at 1
    assert stats.holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])
    assert stats.holm([]).size == 0
    assert np.isnan(stats.holm([np.nan, np.nan])).all()
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_holm_is_monotone_and_never_below_raw():
    p = np.random.default_rng(7).uniform(0, 0.2, size=40)
    adj = stats.holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)


# ----------------------------------------------------------------------------- rank_with_ties


def test_rank_with_ties_overlapping_leader_shares_rank():
    means = [0.9, 0.85, 0.5, 0.45]
    lows = [0.8, 0.75, 0.4, 0.3]
    highs = [1.0, 0.95, 0.6, 0.55]
    assert stats.rank_with_ties(means, lows, highs, True).tolist() == [1, 1, 3, 3]
    # lower is better: the same intervals in the other direction
    assert stats.rank_with_ties(means, lows, highs, False).tolist() == [3, 3, 1, 1]


def test_rank_with_ties_compares_with_the_leader_not_a_chain():
    # B overlaps A, C overlaps B but not A -> C leads a new group at position 3
    means, lows, highs = [0.9, 0.75, 0.6], [0.8, 0.65, 0.5], [1.0, 0.85, 0.7]
    assert stats.rank_with_ties(means, lows, highs, True).tolist() == [1, 1, 3]
    # D overlaps C (the new leader) -> 3
    assert stats.rank_with_ties(means + [0.55], lows + [0.45], highs + [0.65], True).tolist() == [1, 1, 3, 3]


def test_rank_with_ties_separated_touching_missing_and_order_free():
    assert stats.rank_with_ties([1, 2, 3], [0.9, 1.9, 2.9], [1.1, 2.1, 3.1], False).tolist() == [1, 2, 3]
    assert stats.rank_with_ties([1, 2], [0.5, 1.5], [1.5, 2.5], False).tolist() == [1, 1]    # touching ties
    r = stats.rank_with_ties([1, 2, np.nan, 5], [0.9, np.nan, np.nan, 4.9], [1.1, np.nan, np.nan, 5.1], False)
    assert r[0] == 1 and r[1] == 1 and math.isnan(r[2]) and r[3] == 3                     # no CI ties
    means, lows, highs = np.array([0.2, 0.9, 0.5]), np.array([0.1, 0.8, 0.4]), np.array([0.3, 1.0, 0.6])
    perm = np.array([2, 0, 1])
    assert stats.rank_with_ties(means[perm], lows[perm], highs[perm], True).tolist() == \
        stats.rank_with_ties(means, lows, highs, True)[perm].tolist()
