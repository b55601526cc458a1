"""Statistics for the tables: bootstrap intervals, paired pre/post tests, Holm correction, tied ranks.

Plain functions on 1-D arrays of per-image scores; :mod:`bench.report.leaderboard` applies them per group.
Everything scipy implements comes from scipy (``scipy.stats.bootstrap``, ``scipy.stats.wilcoxon``);
only Holm's step-down correction and the interval-overlap ranking are written here.

Missing values: NaN (and +-inf) are dropped before any statistic; "n" is always the number of
finite values actually used.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

__all__ = ["settings", "bootstrap_ci", "PairedDifference", "paired_difference", "holm", "rank_with_ties", "finite"]

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


def settings() -> dict[str, object]:
    """Every choice of this module that changes a number, for the run manifest."""
    return {"ci": "bootstrap of the mean, BCa (percentile when degenerate), scipy.stats.bootstrap",
            "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES, "seed": SEED,
            "paired_test": "scipy.stats.wilcoxon two-sided, zero_method=wilcox, method=auto",
            "multiple_testing": "holm", "rank": "competition rank; ties when the CI overlaps the group leader's"}


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float64 array with NaN and +-inf removed."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Two-sided bootstrap confidence interval of the mean, ``(low, high)``.

    Bias-corrected and accelerated bootstrap (BCa; Efron 1987, "Better bootstrap confidence
    intervals", JASA 82:171) via ``scipy.stats.bootstrap(method="BCa")`` with
    ``numpy.random.default_rng(seed)``, so the same values give the same interval.

    Non-finite values are dropped first; with ``n`` finite values left:

    * ``n == 0`` -> ``(nan, nan)``: nothing to estimate.
    * ``n == 1`` -> ``(nan, nan)``: one value says nothing about sampling variability (scipy
      refuses it too). A degenerate ``(v, v)`` would claim certainty and win every rank
      comparison; a missing interval counts as overlapping everything in :func:`rank_with_ties`.
    * ``n == 2`` or all values equal -> percentile interval (BCa's jackknife acceleration is
      0/0 there); for all-equal values this is exactly ``(v, v)``, the true bootstrap
      distribution of the mean being a point mass.
    * BCa returns non-finite bounds (other degenerate resampling) -> percentile interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = finite(values)
    if x.size < 2:
        return (float("nan"), float("nan"))
    method = "percentile" if x.size < 3 or np.ptp(x) == 0.0 else "BCa"
    low, high = _scipy_ci(x, method, confidence, n_resamples, seed)
    if method == "BCa" and not (np.isfinite(low) and np.isfinite(high)):
        low, high = _scipy_ci(x, "percentile", confidence, n_resamples, seed)
    return (low, high)


def _scipy_ci(x: np.ndarray, method: str, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    with warnings.catch_warnings():
        # BCa warns (DegenerateDataWarning / 0-divide) exactly when it returns NaN; we fall back.
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              method=method, vectorized=True, rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


class PairedDifference(NamedTuple):
    """Paired comparison of two stages on the same images (``diff = post - pre``)."""

    n: int              # pairs with a finite value in both stages
    pre_mean: float     # mean of pre over those pairs
    post_mean: float    # mean of post over those pairs
    diff_mean: float    # mean of (post - pre) = post_mean - pre_mean
    ci_low: float       # bootstrap_ci of the differences
    ci_high: float
    p_value: float      # two-sided Wilcoxon signed-rank p-value


def paired_difference(pre: Sequence[float] | np.ndarray, post: Sequence[float] | np.ndarray, *,
                      confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                      seed: int = SEED) -> PairedDifference:
    """Mean paired difference ``post - pre``, its bootstrap CI and the Wilcoxon signed-rank p.

    ``pre[i]`` and ``post[i]`` are the same image; pairs where either value is non-finite are
    dropped (so ``n`` counts complete pairs only). The CI is :func:`bootstrap_ci` of the
    differences ``d_i = post_i - pre_i`` (resampling pairs). The test is
    ``scipy.stats.wilcoxon(d)`` with scipy's defaults (Wilcoxon 1945): two-sided,
    ``zero_method="wilcox"`` (zero differences discarded) and ``method="auto"`` (exact null
    distribution for small n without ties/zeros, normal approximation otherwise). It is
    computed for every n >= 1, however small; note that with n <= 5 non-zero differences the
    exact two-sided p cannot fall below 0.0625, so small cells simply cannot reach significance.
    All differences zero (including "every pair tied") -> p = 1.0; n = 0 -> everything NaN.
    """
    a = np.asarray(pre, dtype=np.float64).ravel()
    b = np.asarray(post, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pre and post must pair up, got {a.size} and {b.size} values")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    nan = float("nan")
    if n == 0:
        return PairedDifference(0, nan, nan, nan, nan, nan, nan)
    d = b - a
    low, high = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if np.all(d == 0.0):
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-n / ties notices; the docstring states the behaviour
            p = float(stats.wilcoxon(d).pvalue)
    return PairedDifference(n, float(a.mean()), float(b.mean()), float(d.mean()), low, high, p)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j))``. Rejecting ``adj <= alpha`` controls
    the family-wise error rate at alpha under any dependence. NaN entries pass through as NaN
    and do not count in m. Tied p-values get equal adjusted values (the running max).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    idx = np.flatnonzero(~np.isnan(flat))
    m = idx.size
    if m == 0:
        return out
    if np.any((flat[idx] < 0) | (flat[idx] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = idx[np.argsort(flat[idx], kind="stable")]
    scaled = (m - np.arange(m)) * flat[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    res = out.ravel()
    res[order] = adjusted
    return res.reshape(p.shape)


def rank_with_ties(means: Sequence[float] | np.ndarray, lows: Sequence[float] | np.ndarray,
                   highs: Sequence[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Competition ranks (1 = best) in which statistically indistinguishable methods tie.

    Rule, applied in order of mean from best to worst (ties in mean keep the input order):
    the first method leads group 1 with rank 1. Each next method joins the current group and
    takes its rank when its interval ``[low, high]`` overlaps the *leader's* interval (closed
    intervals: touching counts), when its mean equals the leader's, or when either interval is
    missing (NaN: cannot be told apart). Otherwise it leads a new group whose rank is its
    1-based position in the order, giving competition ranking "1, 1, 3".

    Comparing with the leader only (not with every group member) keeps chains from merging:
    A overlaps B, B overlaps C but A does not overlap C -> ranks 1, 1, 3.
    Methods with a NaN mean get NaN rank and take no position. Returns float64 ranks.
    """
    mu = np.asarray(means, dtype=np.float64).ravel()
    lo = np.asarray(lows, dtype=np.float64).ravel()
    hi = np.asarray(highs, dtype=np.float64).ravel()
    if not (mu.shape == lo.shape == hi.shape):
        raise ValueError("means, lows and highs must have the same length")
    ranks = np.full(mu.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(mu))
    key = -mu[valid] if higher_is_better else mu[valid]
    order = valid[np.argsort(key, kind="stable")]
    leader = -1
    for pos, i in enumerate(order, start=1):
        if leader >= 0 and _same_group(i, leader, mu, lo, hi):
            ranks[i] = ranks[leader]
        else:
            leader = i
            ranks[i] = float(pos)
    return ranks


def _same_group(i: int, leader: int, mu: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    if mu[i] == mu[leader]:
        return True
    if np.isnan([lo[i], hi[i], lo[leader], hi[leader]]).any():
        return True
    return bool(lo[i] <= hi[leader] and lo[leader] <= hi[i])
