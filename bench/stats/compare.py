"""Paired comparisons within a declared family: verdicts, intervals that agree with them, ranks.

Every explainer is scored on the same images, so two explainers are compared by their paired
differences ``d[s, i] = g_a[s, i] - g_b[s, i]`` (goodness: the score, negated where lower is
better), never by whether two marginal intervals overlap. For a family of ``m`` such contrasts
(:func:`family_tests`):

* location: the mean difference, its standard error and df from
  :func:`bench.stats.estimate.mean_estimate` (paired t for one seed, crossed image x seed for
  several);
* test and interval, one family at a time, two ways that both keep the interval and the verdict
  in step:

  - the explainer pairs of one table: single-step **max-T** (Westfall & Young 1993; Hothorn,
    Bretz & Westfall 2008, the method of R's ``multcomp``): one per-comparison level ``p_crit``
    from the ``1 - alpha`` quantile ``c`` of the largest ``|Z|`` of a multivariate normal with the
    correlation of the pairs' estimates (``p_crit = 2 (1 - Phi(c))``), each pair's interval its t
    interval at ``1 - p_crit`` (its own df, which differ between pairs when seeds are pooled):
    the family-wise error of Bonferroni, less conservative because the pairs of one table are
    correlated (Tukey-like simultaneous intervals for paired data);
  - rows of different metrics and stages (pre vs post, tuning policies, map similarity):
    **Bonferroni**, ``p_adj = min(1, m p)`` with the interval at ``1 - alpha / m``;

  either way the interval excludes 0 exactly when ``p_adj <= alpha`` (Holm's step-down test has no
  interval that matches it, which is why the tables do not use it);
* equivalence: two one-sided tests (TOST; Schuirmann 1987, J. Pharmacokin. Biopharm. 15:657)
  against ``+-margin`` at the family's level: the pair is equivalent exactly when the shown
  interval lies inside ``[-margin, margin]`` (``p_equiv <= alpha``).

A contrast is *separated* (its interval excludes 0), *equivalent* (its interval lies inside the
margin) or *not separable at n = ...* (neither: absence of evidence, not evidence of equality).

From the pairwise verdicts of one table (:func:`pairwise`): dominance ranks (:func:`dominance_ranks`:
a method separated below another always ranks below it) and a compact letter display
(:func:`compact_letters`, Piepho 2004: two methods share a letter exactly when the test does not
separate them). :func:`friedman` gives the omnibus test and mean per-image ranks (Demsar 2006,
JMLR 7:1) for the critical-difference figure. The post-hoc tests are the pairwise paired tests,
not Nemenyi's mean-rank test, whose verdict on two methods depends on which other methods are in
the table (Benavoli, Corani & Mangili 2016, "Should we really use post-hoc tests based on
mean-ranks?", JMLR 17:1).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.stats.estimate import crossed_covariance, mean_estimate, sqrt_psd, t_interval, t_pvalue

__all__ = [
    "FAMILY_COLUMNS",
    "PAIR_COLUMNS",
    "compact_letters",
    "dominance_ranks",
    "family_tests",
    "friedman",
    "mean_ranks",
    "pairwise",
    "verdict_text",
]

FAMILY_COLUMNS = [
    "n_seeds",
    "n_images",
    "diff",
    "se",
    "df",
    "level",
    "ci_low",
    "ci_high",
    "p",
    "p_adj",
    "margin",
    "p_equiv",
    "separated",
    "equivalent",
]


def max_z_null(corr: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Sorted draws of ``max_k |Z_k|``, ``Z ~ N(0, corr)``: the null distribution of the largest of
    the family's standardised statistics (``corr`` may be singular: contrasts that are sums of
    others)."""
    z = np.random.default_rng(seed).standard_normal((draws, corr.shape[0])) @ sqrt_psd(corr)
    return np.sort(np.abs(z).max(axis=1))


def _exceed(null: np.ndarray, p: float) -> float:
    """P(max|Z| >= z) for the two-sided per-comparison p-value ``p`` (z = Phi^-1(1 - p / 2))."""
    if not np.isfinite(p):
        return float("nan")
    z = float(stats.norm.isf(p / 2)) if p > 0 else float("inf")
    return float(len(null) - np.searchsorted(null, z, side="left")) / len(null)


def family_tests(
    diffs: Sequence[np.ndarray],
    margins: Sequence[float] | float,
    alpha: float,
    *,
    corr: np.ndarray | None = None,
    draws: int = 20000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per contrast of a family (module docstring); columns :data:`FAMILY_COLUMNS` and
    ``family_size``, ``method``.

    ``diffs``: each ``(images,)`` or ``(seeds, images)`` paired differences (NaN images dropped);
    ``margins``: the equivalence margin of each contrast (or one for all). ``m`` is the number of
    contrasts with an estimable standard error; a contrast without one (fewer than two values)
    has NaN statistics and takes no part in the family. Every contrast is tested at one
    per-comparison level ``p_crit`` with its own t distribution (its own df):

    * without ``corr``: Bonferroni, ``p_crit = alpha / m``, ``p_adj = min(1, m p)``;
    * with ``corr`` (the correlation matrix of the contrast estimates, one row per contrast):
      single-step max-T, ``p_crit = 2 (1 - Phi(c))`` with ``c`` the ``1 - alpha`` quantile of
      :func:`max_z_null` (``draws`` seeded by ``seed``), ``p_adj = P(max|Z| >= Phi^-1(1 - p / 2))``:
      the family-wise error of Bonferroni, less conservative when the contrasts are correlated.

    The interval is ``diff -+ t_{df}(1 - p_crit / 2) se``: it excludes 0 exactly when
    ``p_adj <= alpha``, and lies inside ``+-margin`` exactly when both one-sided tests of TOST pass
    at ``p_crit / 2`` (``p_equiv <= alpha``). Contrasts with ``se == 0`` are exact: their interval is
    the point.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    ests = [mean_estimate(d) for d in diffs]
    margins = (
        [float(margins)] * len(ests) if isinstance(margins, (int, float, np.number)) else [float(v) for v in margins]
    )
    if len(margins) != len(ests):
        raise ValueError(f"{len(ests)} contrasts but {len(margins)} margins")
    testable = [e.se == 0.0 or (np.isfinite(e.se) and np.isfinite(e.df)) for e in ests]
    m = max(1, sum(testable))
    null = None
    varying = [i for i, e in enumerate(ests) if testable[i] and e.se > 0]
    p_crit = alpha / m
    if corr is not None and varying:
        null = max_z_null(np.asarray(corr, dtype=np.float64)[np.ix_(varying, varying)], draws, seed)
        # rounded to 4 decimals: its Monte Carlo error is ~1e-2 at 20,000 draws, and the eigen-
        # decomposition's last bits differ between BLAS builds (tables must not change with them)
        c = round(float(null[min(len(null) - 1, int(np.ceil((1 - alpha) * len(null))) - 1)]), 4)
        p_crit = max(p_crit, float(2 * stats.norm.sf(c)))
    rows = []
    nan = float("nan")
    for est, margin, ok in zip(ests, margins, testable):
        if not ok:
            rows.append(
                [
                    est.n_seeds,
                    est.n_images,
                    est.mean,
                    est.se,
                    est.df,
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    margin,
                    nan,
                    False,
                    False,
                ]
            )
            continue
        level = 1.0 - p_crit
        low, high = t_interval(est, level)
        p = t_pvalue(est)
        p_tost = max(t_pvalue(est, -margin, "greater"), t_pvalue(est, margin, "less"))
        if null is None:
            p_adj, p_equiv = min(1.0, m * p), min(1.0, 2 * m * p_tost)
        else:
            p_adj, p_equiv = _exceed(null, p), _exceed(null, min(1.0, 2 * p_tost))
        rows.append(
            [
                est.n_seeds,
                est.n_images,
                est.mean,
                est.se,
                est.df,
                level,
                low,
                high,
                p,
                p_adj,
                margin,
                p_equiv,
                bool(low > 0.0 or high < 0.0),
                bool(low >= -margin and high <= margin),
            ]
        )
    out = pd.DataFrame(rows, columns=FAMILY_COLUMNS)
    out["family_size"] = sum(testable)
    out["method"] = "max-T" if null is not None else "Bonferroni"
    return out


def verdict_text(
    separated: bool,
    equivalent: bool,
    diff: float,
    n_images: int,
    n_seeds: int = 1,
    *,
    higher: str = "higher",
    lower: str = "lower",
) -> str:
    """The words for one contrast: ``higher``/``lower`` (separated, by the sign of ``diff``),
    ``"equivalent"`` (inside the margin), else ``"not separable at n = ..."``."""
    if separated:
        return higher if diff > 0 else lower
    if equivalent:
        return "equivalent"
    if not np.isfinite(diff):
        return "n/a"
    seeds = f" x {n_seeds} seeds" if n_seeds > 1 else ""
    return f"not separable at n = {n_images}{seeds}"


PAIR_COLUMNS = ["a", "b", "mean_a", "mean_b"] + FAMILY_COLUMNS + ["family_size", "method", "verdict"]


def _contrast_correlation(g: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray | None:
    """Correlation matrix of the pairs' mean differences, from the covariance of the explainers'
    means (one seed: the image covariance over n; several: the crossed estimator)."""
    if not pairs or g.shape[1] < 2:
        return None
    cov = crossed_covariance(g)
    c = np.zeros((len(pairs), g.shape[2]))
    for i, (a, b) in enumerate(pairs):
        c[i, a], c[i, b] = 1.0, -1.0
    v = c @ cov @ c.T
    sd = np.sqrt(np.clip(np.diag(v), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = v / np.outer(sd, sd)
    corr[~np.isfinite(corr)] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


def pairwise(
    goodness: np.ndarray, names: Sequence[str], *, alpha: float, margin: float, draws: int = 20000, seed: int = 0
) -> pd.DataFrame:
    """Every pair of explainers of one table; columns :data:`PAIR_COLUMNS`.

    ``goodness (images, k)`` or ``(seeds, images, k)``: higher is better, the same images in every
    column (and every seed). Within a pair ``a`` is the one with the higher mean goodness (the
    earlier name on a tie), so ``diff = mean(g_a - g_b) >= 0``; ``verdict`` is ``"a better"``,
    ``"equivalent"`` or ``"not separable at n = ..."``. The family is the table's
    ``k (k - 1) / 2`` pairs, adjusted by single-step max-T (:func:`family_tests`) with the
    correlation of the pairs' estimates (``draws`` and ``seed`` of its null distribution).
    """
    g = np.asarray(goodness, dtype=np.float64)
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3 or g.shape[2] != len(names):
        raise ValueError(f"goodness must be (images, k) or (seeds, images, k) with k = {len(names)}, got {g.shape}")
    keep = np.isfinite(g).all(axis=(0, 2))  # images scored by every explainer under every seed
    g = g[:, keep, :]
    means = g.mean(axis=(0, 1)) if g.shape[1] else np.full(len(names), np.nan)
    order = sorted(range(len(names)), key=lambda j: (-means[j], j))
    pairs = list(combinations(order, 2))
    fam = family_tests(
        [g[:, :, a] - g[:, :, b] for a, b in pairs],
        margin,
        alpha,
        corr=_contrast_correlation(g, pairs),
        draws=draws,
        seed=seed,
    )
    fam.insert(0, "mean_b", [means[b] for _, b in pairs])
    fam.insert(0, "mean_a", [means[a] for a, _ in pairs])
    fam.insert(0, "b", [names[b] for _, b in pairs])
    fam.insert(0, "a", [names[a] for a, _ in pairs])
    fam["verdict"] = [
        verdict_text(r.separated, r.equivalent, r.diff, r.n_images, r.n_seeds, higher="a better", lower="b better")
        for r in fam.itertuples(index=False)
    ]
    return fam[PAIR_COLUMNS]


def _beats(pairs: pd.DataFrame) -> set[tuple[str, str]]:
    """(winner, loser) of every separated pair."""
    out = set()
    for r in pairs.itertuples(index=False):
        if r.separated:
            out.add((r.a, r.b) if r.diff > 0 else (r.b, r.a))
    return out


def dominance_ranks(names: Sequence[str], pairs: pd.DataFrame) -> dict[str, int]:
    """Rank of each explainer from the separated pairs: 1 when no method beats it, else one more
    than the worst-ranked (largest rank) method that beats it (the longest chain of wins above it).

    So a method separated below another always has a larger rank, and rank 1 is the set of
    methods nothing beats. Two methods with different ranks are not necessarily separated from
    each other: :func:`compact_letters` says which are.
    """
    beats = _beats(pairs)
    above: dict[str, set[str]] = {n: set() for n in names}
    for winner, loser in beats:
        above[loser].add(winner)
    ranks: dict[str, int] = {}

    def rank(n: str, path: tuple[str, ...] = ()) -> int:
        if n in ranks:
            return ranks[n]
        if n in path:  # a cycle cannot arise from mean differences, but never loop
            raise ValueError(f"the separated pairs form a cycle through {n!r}")
        ranks[n] = 1 + max((rank(w, path + (n,)) for w in above[n]), default=0)
        return ranks[n]

    for n in names:
        rank(n)
    return ranks


def compact_letters(names: Sequence[str], pairs: pd.DataFrame, means: Sequence[float] | np.ndarray) -> dict[str, str]:
    """Compact letter display (Piepho 2004, "An algorithm for a letter-based representation of
    all-pairwise comparisons", J. Comput. Graph. Stat. 13:456, insert-and-absorb): two explainers
    share a letter exactly when the table's paired test does not separate them. Letters run from
    ``a`` for the group holding the best mean (``means``: goodness, higher is better)."""
    names = list(names)
    pos = {n: i for i, n in enumerate(names)}
    columns: list[set[int]] = [set(range(len(names)))]
    for winner, loser in sorted(_beats(pairs), key=lambda p: (pos[p[0]], pos[p[1]])):
        i, j = pos[winner], pos[loser]
        new: list[set[int]] = []
        for col in columns:
            if i in col and j in col:
                new += [col - {i}, col - {j}]
            else:
                new.append(col)
        # absorb: drop empty columns and columns contained in another
        new = [c for c in new if c]
        kept: list[set[int]] = []
        for c in sorted(new, key=len, reverse=True):
            if not any(c <= k for k in kept):
                kept.append(c)
        columns = kept
    mu = np.asarray(means, dtype=np.float64)
    columns.sort(key=lambda c: (-max(mu[i] for i in c), min(c)))
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = {n: "" for n in names}
    for li, col in enumerate(columns):
        tag = letters[li] if li < len(letters) else f"[{li}]"
        for i in sorted(col):
            out[names[i]] += tag
    return out


def mean_ranks(goodness: np.ndarray) -> np.ndarray:
    """Mean per-block rank of each explainer (1 = best, ties averaged): blocks are the images (x
    seeds) of ``goodness (images, k)`` or ``(seeds, images, k)``, incomplete blocks dropped."""
    g = np.asarray(goodness, dtype=np.float64)
    blocks = g.reshape(-1, g.shape[-1])
    blocks = blocks[np.isfinite(blocks).all(axis=1)]
    if not len(blocks):
        return np.full(g.shape[-1], np.nan)
    return stats.rankdata(-blocks, axis=1, method="average").mean(axis=0)


def friedman(goodness: np.ndarray) -> tuple[float, float, int]:
    """Friedman's (1937) chi-square over the blocks (images, x seeds), its p-value and the number of
    blocks: ``scipy.stats.friedmanchisquare`` with its tie correction. NaN below 3 explainers or 2
    blocks, or when every block ties every explainer."""
    g = np.asarray(goodness, dtype=np.float64)
    blocks = g.reshape(-1, g.shape[-1])
    blocks = blocks[np.isfinite(blocks).all(axis=1)]
    if blocks.shape[1] < 3 or blocks.shape[0] < 2:
        return (float("nan"), float("nan"), int(blocks.shape[0]))
    if np.all(blocks == blocks[:, :1]):
        return (float("nan"), float("nan"), int(blocks.shape[0]))
    res = stats.friedmanchisquare(*blocks.T)
    return (float(res.statistic), float(res.pvalue), int(blocks.shape[0]))
