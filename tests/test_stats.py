"""bench.stats on planted cases with known answers, against scipy, statsmodels and autorank, and by simulation."""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.stats import agreement, compare, estimate, power, weighting
from bench.stats.aliases import alias_label, collapse, find_aliases
from bench.stats.settings import DEFAULT_MARGINS, FAMILIES, StatsSettings, family_label

# ----------------------------------------------------------------------------- means and intervals


def test_one_seed_is_the_paired_t_of_scipy():
    x = np.random.default_rng(0).normal(0.3, 0.2, 25)
    est = estimate.mean_estimate(x)
    ref = sps.ttest_1samp(x, 0.0)
    assert est.df == 24 and est.se == pytest.approx(x.std(ddof=1) / 5)
    assert estimate.t_pvalue(est) == pytest.approx(ref.pvalue, rel=1e-12)
    ci = ref.confidence_interval(0.9)
    assert estimate.t_interval(est, 0.9) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert estimate.t_pvalue(est, 0.3, "greater") == pytest.approx(
        sps.ttest_1samp(x, 0.3, alternative="greater").pvalue
    )


def test_crossed_estimator_matches_a_statsmodels_mixed_model():
    """Balanced crossed seeds x images: the ANOVA estimator equals REML's fixed-effect SE and components."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    s, n = 3, 21
    y = 0.5 + rng.normal(0, 0.1, (s, 1)) + rng.normal(0, 0.2, (1, n)) + rng.normal(0, 0.05, (s, n))
    df = pd.DataFrame({"y": y.ravel(), "seed": np.repeat(np.arange(s), n), "img": np.tile(np.arange(n), s), "g": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(
            "y ~ 1", df, groups="g", vc_formula={"seed": "0+C(seed)", "img": "0+C(img)"}, re_formula="0"
        ).fit(reml=True)
    est = estimate.mean_estimate(y)
    assert est.mean == pytest.approx(fit.fe_params.iloc[0], rel=1e-9)
    assert est.se == pytest.approx(fit.bse_fe.iloc[0], rel=1e-3)
    assert (est.var_image, est.var_seed) == pytest.approx(tuple(fit.vcomp), rel=1e-3)
    assert est.var_resid == pytest.approx(fit.scale, rel=1e-3)
    assert 2 < est.df < 4  # the seed component dominates: Satterthwaite's df is near S - 1


def _old_within_seed_bootstrap(y: np.ndarray, rng: np.random.Generator, n_boot: int = 300) -> tuple[float, float]:
    """The published study's pooled interval: draw seeds, then images within each seed independently."""
    s, n = y.shape
    boot = [np.mean([y[k][rng.integers(0, n, n)].mean() for k in rng.integers(0, s, s)]) for _ in range(n_boot)]
    return tuple(np.percentile(boot, [2.5, 97.5]))


@pytest.mark.parametrize(
    "sd_seed, sd_image, sd_resid, low",
    [
        (0.03, 0.15, 0.04, 0.92),  # like the study: per-image scores correlate ~0.95 across seeds
        (0.10, 0.10, 0.05, 0.90),  # seeds dominate: 2 df for the seed component (documented worst case)
    ],
)
def test_crossed_interval_covers_the_mean_and_the_old_bootstrap_does_not(sd_seed, sd_image, sd_resid, low):
    rng = np.random.default_rng(11)
    reps, hits, old = 400, 0, 0
    for _ in range(reps):
        y = 0.5 + rng.normal(0, sd_seed, (3, 1)) + rng.normal(0, sd_image, (1, 21)) + rng.normal(0, sd_resid, (3, 21))
        lo, hi = estimate.t_interval(estimate.mean_estimate(y), 0.95)
        hits += lo <= 0.5 <= hi
        lo, hi = _old_within_seed_bootstrap(y, rng)
        old += lo <= 0.5 <= hi
    assert low <= hits / reps <= 0.98
    assert old / reps < 0.85  # the check can fail: the interval the study published undercovers


def test_degenerate_means():
    assert math.isnan(estimate.mean_estimate([]).se)
    one = estimate.mean_estimate([0.4])
    assert one.mean == 0.4 and math.isnan(one.se)
    flat = estimate.mean_estimate(np.full((3, 5), 0.2))
    assert flat.se == 0.0 and estimate.t_interval(flat, 0.95) == (0.2, 0.2)
    assert estimate.t_pvalue(estimate.mean_estimate(np.zeros((3, 5)))) == 1.0
    assert estimate.t_pvalue(flat) == 0.0  # exact data away from 0
    y = np.array([[1.0, np.nan, 2.0], [1.5, 3.0, 2.5]])  # image 1 is missing under seed 0: dropped everywhere
    assert estimate.mean_estimate(y).n_images == 2


def test_bootstrap_ci_is_scipys_bca():
    x = np.random.default_rng(1).normal(2.0, 1.0, 200)
    ref = sps.bootstrap((x,), np.mean, method="BCa", n_resamples=2000, rng=np.random.default_rng(0)).confidence_interval
    assert estimate.bootstrap_ci(x) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert estimate.bootstrap_ci([0.25] * 12) == (0.25, 0.25)
    assert all(math.isnan(v) for v in estimate.bootstrap_ci([0.7]))


def test_holm_and_bonferroni():
    assert estimate.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = estimate.holm([0.01, np.nan, 0.04])
    assert math.isnan(out[1]) and np.delete(out, 1) == pytest.approx([0.02, 0.04])
    assert estimate.bonferroni([0.01, 0.3, np.nan]) == pytest.approx([0.02, 0.6, np.nan], nan_ok=True)
    with pytest.raises(ValueError):
        estimate.holm([1.5])


# ----------------------------------------------------------------------------- paired comparisons


def _table(g: np.ndarray, names=None) -> pd.DataFrame:
    names = names or [f"e{j}" for j in range(g.shape[-1])]
    return compare.pairwise(g, names, alpha=0.05, margin=0.02, draws=4000)


def test_a_constant_small_gap_is_separated_although_the_marginal_intervals_overlap():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.3, 21)  # a large spread across images
    g = np.stack([base + 0.01 + rng.normal(0, 1e-4, 21), base], axis=1)
    row = _table(g).iloc[0]
    assert row.a == "e0" and row.verdict == "a better" and row.ci_low > 0
    a, b = (estimate.t_interval(estimate.mean_estimate(g[:, j]), 0.95) for j in (0, 1))
    assert a[0] < b[1]  # the marginal intervals overlap: an overlap rule would have called this a tie


def test_the_same_gap_in_independent_noise_at_n_10_is_not_separable():
    rng = np.random.default_rng(1)
    g = np.stack([rng.normal(0.51, 0.3, 10), rng.normal(0.5, 0.3, 10)], axis=1)
    row = _table(g).iloc[0]
    assert row.verdict == "not separable at n = 10" and row.ci_low < 0 < row.ci_high
    assert not row.equivalent  # absence of evidence is not equivalence


def test_identical_maps_are_equivalent_under_tost():
    g = np.random.default_rng(2).normal(size=(15, 1)).repeat(2, axis=1)
    row = _table(g).iloc[0]
    assert row.verdict == "equivalent" and row.ci_low == row.ci_high == 0.0 and row.p_equiv == 0.0
    near = g + np.stack([np.zeros(15), np.random.default_rng(3).normal(0, 1e-3, 15)], axis=1)
    assert _table(near).iloc[0].verdict == "equivalent"


def test_every_interval_agrees_with_its_verdict():
    rng = np.random.default_rng(4)
    for trial in range(30):
        k, n = rng.integers(2, 7), rng.integers(5, 30)
        g = rng.normal(size=(int(n), int(k))) * rng.uniform(0.01, 1) + rng.normal(0, 0.3, int(k))
        for method in ("max-T", "Bonferroni"):
            if method == "max-T":
                t = _table(g)
            else:
                pairs = list(combinations(range(int(k)), 2))
                t = compare.family_tests([g[:, a] - g[:, b] for a, b in pairs], 0.05, 0.05)
            sep = (t["ci_low"] > 0) | (t["ci_high"] < 0)
            assert (sep == t["separated"]).all()
            assert (t["separated"] == (t["p_adj"] <= 0.05)).all(), (trial, method)
            inside = (t["ci_low"] >= -t["margin"]) & (t["ci_high"] <= t["margin"])
            assert (inside == t["equivalent"]).all() and (t["equivalent"] == (t["p_equiv"] <= 0.05)).all()


def test_max_t_controls_the_family_wise_error_and_beats_bonferroni():
    rng = np.random.default_rng(5)
    false = 0
    for r in range(200):  # 6 explainers with nothing between them, a strong shared image effect
        g = rng.normal(size=(21, 6)) + rng.normal(0, 2, (21, 1))
        false += bool(compare.pairwise(g, list("abcdef"), alpha=0.05, margin=0.0, draws=4000, seed=r).separated.any())
    assert false / 200 <= 0.08
    t = _table(rng.normal(size=(21, 6)))
    assert (t["level"] < 1 - 0.05 / 15).all()  # a less extreme per-comparison level than Bonferroni's


def test_pooled_pairs_use_each_pairs_own_degrees_of_freedom():
    """One pair whose seeds disagree has ~2 df; it must not make every other pair's interval wide."""
    rng = np.random.default_rng(6)
    y = rng.normal(0, 0.05, (3, 21, 4)) + rng.normal(0, 0.3, (1, 21, 1)) + np.array([0.0, 0.3, 0.6, 0.9])
    y[:, :, 3] += np.array([0.4, -0.4, 0.0])[:, None]  # explainer 3 flips between seeds
    t = _table(y)
    clean = t[(t.a != "e3") & (t.b != "e3")]
    assert clean.separated.all() and (clean.df >= 20).all()
    assert t[(t.a == "e3") | (t.b == "e3")].df.min() < 3


def test_ranks_follow_the_separations_and_letters_encode_them():
    rng = np.random.default_rng(7)
    for trial in range(40):
        k = int(rng.integers(3, 9))
        g = rng.normal(size=(20, k)) * 0.3 + rng.normal(0, 0.25, k)
        names = [f"e{j}" for j in range(k)]
        t = _table(g, names)
        ranks = compare.dominance_ranks(names, t)
        letters = compare.compact_letters(names, t, g.mean(0))
        for r in t.itertuples(index=False):
            share = bool(set(letters[r.a]) & set(letters[r.b]))
            assert share == (not r.separated), (trial, r.a, r.b, letters)
            if r.separated:
                winner, loser = (r.a, r.b) if r.diff > 0 else (r.b, r.a)
                assert ranks[winner] < ranks[loser]
        best = max(range(k), key=lambda j: g[:, j].mean())
        assert ranks[names[best]] == 1 and "a" in letters[names[best]]


def test_random_never_shares_a_rank_with_a_method_that_beats_it():
    rng = np.random.default_rng(8)
    base = rng.normal(0, 1, (21, 1))
    g = np.concatenate(
        [
            base + 0.5 + rng.normal(0, 0.1, (21, 6)),
            base + rng.normal(0, 0.1, (21, 1)),
            base + 0.45 + rng.normal(0, 0.4, (21, 1)),
        ],
        axis=1,
    )
    names = [f"m{j}" for j in range(6)] + ["random", "noisy"]
    t = _table(g, names)
    ranks = compare.dominance_ranks(names, t)
    beaten_by = [r.a for r in t.itertuples(index=False) if r.b == "random" and r.separated and r.diff > 0]
    assert len(beaten_by) >= 6
    assert all(ranks["random"] > ranks[m] for m in beaten_by)


def test_friedman_mean_ranks_and_post_hoc_agree_with_the_references():
    """Friedman against scipy, mean ranks against pandas' rank, post-hoc p against scipy's paired t and
    statsmodels' Bonferroni. (autorank, which gives the same Friedman p and mean ranks on this matrix, is not a
    test dependency: its wheel installs a top-level ``tests`` package that shadows this one.)"""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(9)
    data = pd.DataFrame(rng.normal(size=(30, 5)) + np.arange(5) * 0.3, columns=list("abcde"))
    data.iloc[:4, 1] = data.iloc[:4, 2]  # some ties within blocks
    chi2, p, blocks = compare.friedman(data.to_numpy())
    ref = sps.friedmanchisquare(*data.to_numpy().T)
    assert (chi2, p, blocks) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 30)
    ranks = data.rank(axis=1, ascending=False, method="average").mean()
    assert compare.mean_ranks(data.to_numpy()) == pytest.approx(ranks.to_numpy())
    pairs = list(combinations(range(5), 2))
    fam = compare.family_tests([data.iloc[:, a] - data.iloc[:, b] for a, b in pairs], 0.02, 0.05)
    raw = [sps.ttest_rel(data.iloc[:, a], data.iloc[:, b]).pvalue for a, b in pairs]
    assert fam["p"].to_numpy() == pytest.approx(raw, rel=1e-9)
    assert fam["p_adj"].to_numpy() == pytest.approx(multipletests(raw, method="bonferroni")[1], rel=1e-9)


# ----------------------------------------------------------------------------- agreement, power, P(top)


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(10)
    a = rng.integers(0, 4, (50, 7)).astype(float)
    b = rng.integers(0, 4, (50, 7)).astype(float)
    mine = agreement.kendall_tau(a, b)
    ref = [sps.kendalltau(x, y).statistic for x, y in zip(a, b)]
    assert np.allclose(mine, ref, equal_nan=True)
    assert math.isnan(agreement.kendall_tau(np.ones(4), np.arange(4.0)))


def test_w_lies_inside_its_joint_image_interval():
    """The audit found insertion W 0.976 outside its published CI [0.859, 0.973]; joint resampling and BCa fix it."""
    rng = np.random.default_rng(12)
    image = rng.normal(0, 0.3, (1, 21, 1))
    y = image + np.linspace(0, 0.2, 8) + rng.normal(0, 0.05, (3, 21, 8))
    w = agreement.kendall_w(y.mean(axis=1))
    lo, hi = agreement.image_interval(
        lambda idx: agreement.kendall_w(y[:, idx, :].mean(axis=1)), 21, n_resamples=500, seed=0
    )
    assert lo <= w <= hi and w > 0.9


def test_paired_t_power_by_simulation():
    n, level, sd = 24, 0.05 / 6, 1.0
    delta = power.min_detectable_difference(sd, n, level, 0.8)
    rng = np.random.default_rng(13)
    hits = sum(sps.ttest_1samp(rng.normal(delta, sd, n), 0).pvalue <= level for _ in range(2000))
    assert 0.77 <= hits / 2000 <= 0.83
    assert power.n_needed(delta * 1.0001, sd, level, 0.8) == n and power.n_needed(delta * 0.97, sd, level, 0.8) > n
    assert power.n_needed(0.0, 1.0, 0.05) == float("inf") and power.n_needed(0.1, 0.0, 0.05) == 2.0
    assert math.isfinite(power.min_detectable_difference(1.0, 2, 0.05 / 36))  # 1 df and a small level


def test_p_top_sums_to_one_and_shares_ties():
    rng = np.random.default_rng(14)
    y = rng.normal(0, 1, (3, 21, 4)) + rng.normal(0, 1, (1, 21, 1)) + np.array([0.0, 0.1, 0.2, 2.0])
    p = estimate.p_top(y, draws=4000, seed=0)
    assert p.sum() == pytest.approx(1.0) and p[3] > 0.95 and p[3] == p.max()
    dup = np.concatenate([y[:, :, :3], y[:, :, 2:3]], axis=2)
    q = estimate.p_top(dup, draws=4000, seed=0)
    assert q[2] == pytest.approx(q[3]) and q.sum() == pytest.approx(1.0)


def test_crossed_covariance_gives_the_scalar_variance_of_a_contrast():
    rng = np.random.default_rng(15)
    y = rng.normal(size=(3, 30, 3)) * 0.1 + rng.normal(size=(3, 1, 3)) * 0.2 + rng.normal(size=(1, 30, 3))
    cov = estimate.crossed_covariance(y)
    c = np.array([1.0, -1.0, 0.0])
    assert c @ cov @ c >= estimate.mean_estimate(y @ c).se ** 2 - 1e-12
    one = estimate.crossed_covariance(y[:1])
    assert c @ one @ c == pytest.approx(estimate.mean_estimate(y[0] @ c).se ** 2)


# ----------------------------------------------------------------------------- test-distribution means


def test_stratified_mean_by_hand():
    values = [1.0, 2.0, 3.0, 10.0, 12.0, 5.0, 6.0, 7.0]
    strata = ["TP", "TP", "TP", "FN", "FN", "TN", "TN", "TN"]
    sizes = {"TP": 80, "FN": 5, "TN": 15, "FP": 0}
    est = weighting.stratified_mean(values, strata, sizes)
    assert est.mean == pytest.approx(0.8 * 2 + 0.05 * 11 + 0.15 * 6)
    var = 0.8**2 * 1.0 / 3 + 0.05**2 * 2.0 / 2 + 0.15**2 * 1.0 / 3
    assert est.se == pytest.approx(math.sqrt(var))
    terms = [0.8**2 * 1.0 / 3, 0.05**2 * 2.0 / 2, 0.15**2 * 1.0 / 3]
    assert est.df == pytest.approx(var**2 / (terms[0] ** 2 / 2 + terms[1] ** 2 / 1 + terms[2] ** 2 / 2))
    assert math.isnan(weighting.stratified_mean([1.0, 2.0], ["TP", "TP"], {"TP": 5, "TN": 5}).mean)  # TN unsampled


# ----------------------------------------------------------------------------- aliases, settings


def _scores(values: dict[str, list[float]], metrics=("m1", "m2")) -> pd.DataFrame:
    rows = [
        ["model", "pre", e, m, i, float(v) * (1 + k), "ok"]
        for e, vals in values.items()
        for k, m in enumerate(metrics)
        for i, v in enumerate(vals)
    ]
    return pd.DataFrame(rows, columns=["model", "stage", "explainer", "metric", "image", "value", "status"])


def test_aliases_found_named_and_collapsed():
    v = [0.1, 0.5, 0.3]
    s = _scores({"shap.deep": v, "captum.deeplift_shap": v, "other": [0.1, 0.5, 0.3 + 1e-3], "random": [0.2, 0.2, 0.9]})
    aliases = find_aliases(s)
    assert aliases == {"captum.deeplift_shap": ["shap.deep"]}
    assert alias_label("captum.deeplift_shap", aliases) == "captum.deeplift_shap (= shap.deep)"
    assert set(collapse(s, aliases)["explainer"]) == {"captum.deeplift_shap", "other", "random"}
    # a difference in one metric, a different status or a differing stored map breaks the alias
    t = s.copy()
    t.loc[(t.explainer == "shap.deep") & (t.metric == "m2") & (t.image == 2), "value"] += 1e-4
    assert find_aliases(t) == {}
    maps = {("model", "pre", "shap.deep"): np.zeros((2, 4)), ("model", "pre", "captum.deeplift_shap"): np.eye(2, 4)}
    assert find_aliases(s, maps=maps) == {}


def test_settings_margins_and_families():
    s = StatsSettings.from_config({"margins": {"faithfulness": 0.05, "road_morf": 0.01}, "alpha": 0.1})
    assert s.margin("road_morf", "faithfulness") == 0.01 and s.margin("deletion_auc", "faithfulness") == 0.05
    assert s.margin("additivity_error", "axiomatic") == DEFAULT_MARGINS["axiomatic"]
    assert s.margin("new", None) == DEFAULT_MARGINS["default"] and s.alpha == 0.1
    assert family_label("table", "r18", "pre", "m", size=3) == "table: r18 · pre · m (m = 3)"
    assert "pooled" in FAMILIES
    with pytest.raises(KeyError):
        family_label("nope", size=1)


def test_the_draws_factor_does_not_depend_on_the_eigenvector_basis():
    """max-T's null and P(top stays) draw g @ S with S' S = the covariance: S = R^(1/2) D, the
    symmetric root of the correlation matrix (unique even where an eigenvalue repeats: equal or
    identical contrasts) scaled by the standard deviations, so the seeded draws agree across LAPACKs."""
    from bench.stats.estimate import sqrt_psd

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    w = np.array([2.0, 2.0, 2.0, 0.5, 0.0])  # a repeated eigenvalue and a zero one (a singular matrix)
    a = (q * w) @ q.T
    s = sqrt_psd(a)
    np.testing.assert_allclose(s.T @ s, a, atol=1e-12)
    d = np.sqrt(np.diag(a))
    root = s / d[None, :]  # R^(1/2): symmetric, and its square is the correlation matrix
    np.testing.assert_allclose(root, root.T, atol=1e-12)
    np.testing.assert_allclose(root @ root, a / np.outer(d, d), atol=1e-12)
    # the factor V sqrt(W) of another orthonormal basis of a repeated eigenspace differs; the root does not
    r, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q2 = q.copy()
    q2[:, :3] = q[:, :3] @ r
    assert np.abs(q * np.sqrt(w) - q2 * np.sqrt(w)).max() > 0.1
    corr = a / np.outer(d, d)
    wc, vc = np.linalg.eigh(corr)  # the PSD symmetric root is unique: any eigenbasis gives it
    np.testing.assert_allclose(root, (vc * np.sqrt(np.clip(wc, 0, None))) @ vc.T, atol=1e-7)


def test_the_draws_factor_is_stable_where_eigenvalues_are_zero_and_scales_differ():
    """A family's contrasts of k means are singular (rank k - 1): rounding noise of 1e-16 in the
    matrix, as two CPUs' kernels make, must not move the factor by its square root (1e-8); and an
    explainer whose values are 1e-7 (an exact method's additivity error) beside one of 0.5 keeps its
    own variance in the draws instead of being lost below the large one's rounding."""
    from bench.stats.estimate import sqrt_psd

    rng = np.random.default_rng(1)
    k = 5
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    c = np.zeros((len(pairs), k))
    for row, (i, j) in enumerate(pairs):
        c[row, i], c[row, j] = 1.0, -1.0
    cov = c @ np.diag(rng.uniform(0.5, 2.0, k)) @ c.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    noise = rng.standard_normal(corr.shape) * 1e-16
    moved = np.abs(sqrt_psd(corr) - sqrt_psd(corr + (noise + noise.T) / 2)).max()
    assert moved < 1e-12
    s = sqrt_psd(corr)
    np.testing.assert_allclose(s.T @ s, corr, atol=1e-12)
    # two explainers 1e-7 apart in scale from a third
    scale = np.array([1e-7, 1.2e-7, 0.5])
    mixed = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]]) * np.outer(scale, scale)
    f = sqrt_psd(mixed)
    np.testing.assert_allclose(f.T @ f, mixed, rtol=1e-9, atol=0)
    draws = rng.standard_normal((200_000, 3)) @ f
    np.testing.assert_allclose(draws.std(axis=0), scale, rtol=0.01)
    assert np.corrcoef(draws[:, 0], draws[:, 1])[0, 1] == pytest.approx(0.9, abs=0.01)
    zero = np.diag([1.0, 0.0, 4.0])  # a variable with variance 0 draws 0
    assert np.all((rng.standard_normal((10, 3)) @ sqrt_psd(zero))[:, 1] == 0)
