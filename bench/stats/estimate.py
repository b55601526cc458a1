"""Means and their sampling error: one model (paired t) or several seeds sharing images (crossed).

Every explainer of a run is scored on the same images, and with several training seeds the same
images appear under every seed. A score (or a paired difference of two explainers' scores) is then
a table ``y[s, i]``: seed ``s``, image ``i``. Its pooled mean has two sources of error that a
bootstrap of images *within* each seed cannot see: the images are shared (their effect is the same
under every seed) and the seeds are few. :func:`mean_estimate` uses the two-way crossed
random-effects model (Searle, Casella & McCulloch 1992, *Variance Components*, ch. 4; Owen 2007,
"The pigeonhole bootstrap", Ann. Appl. Stat. 1:386, on why both factors must be resampled)::

    y[s, i] = mu + a_s + b_i + e_si,    a ~ (0, s2_seed), b ~ (0, s2_image), e ~ (0, s2_resid)
    Var(mean) = s2_seed / S + s2_image / n + s2_resid / (S n)

estimated from the balanced two-way ANOVA mean squares (``E[MS_seed] = s2_resid + n s2_seed``,
``E[MS_image] = s2_resid + S s2_image``, ``E[MS_resid] = s2_resid``), negative components set to
0, with Satterthwaite's (1946) degrees of freedom for the t interval. With one seed this is the
ordinary one-sample (paired) t: ``se = sd / sqrt(n)``, ``df = n - 1``. What three seeds can tell:
the seed component has ``S - 1 = 2`` degrees of freedom, so when seeds disagree the interval is
wide (t quantile 4.3 at df = 2) and the verdicts say so; the between-seed variance itself is only
known to within its 95 % chi-square interval at 2 df, 0.27 to 40 times the estimate.

Also here: the BCa bootstrap interval of a mean (descriptive intervals), and Holm's and
Bonferroni's corrections. Missing values: NaN and +-inf are dropped first (a seed x image table
keeps the images complete in every seed).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "MeanEstimate",
    "bonferroni",
    "bootstrap_ci",
    "complete",
    "crossed_covariance",
    "finite",
    "holm",
    "sqrt_psd",
    "mean_estimate",
    "p_top",
    "t_interval",
    "t_pvalue",
]

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float64 array with NaN and +-inf removed."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def complete(y: Sequence[float] | np.ndarray) -> np.ndarray:
    """``y`` as a ``(seeds, images)`` float64 table (a 1-D input is one seed), keeping only the
    images (columns) that are finite under every seed."""
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected (images,) or (seeds, images) values, got shape {a.shape}")
    return a[:, np.isfinite(a).all(axis=0)]


class MeanEstimate(NamedTuple):
    """A pooled mean with its standard error and degrees of freedom (:func:`mean_estimate`)."""

    mean: float
    se: float
    df: float
    n_seeds: int
    n_images: int
    var_seed: float  # estimated variance components (0 where the estimate was negative)
    var_image: float
    var_resid: float


def mean_estimate(y: Sequence[float] | np.ndarray) -> MeanEstimate:
    """Mean of ``y`` (``(images,)`` or ``(seeds, images)``) with the crossed random-effects standard
    error and Satterthwaite degrees of freedom (module docstring).

    * one seed: ``se = sd(y, ddof=1) / sqrt(n)``, ``df = n - 1`` (the one-sample t);
    * one image, several seeds: ``se = sd over seeds / sqrt(S)``, ``df = S - 1``;
    * nothing or a single value: NaN se and df.

    All values equal gives ``se = 0`` (and ``df`` NaN): the interval is the point.
    """
    a = complete(y)
    s, n = a.shape
    nan = float("nan")
    if a.size == 0:
        return MeanEstimate(nan, nan, nan, s if n else 0, n, nan, nan, nan)
    mean = float(a.mean())
    if a.size == 1:
        return MeanEstimate(mean, nan, nan, s, n, nan, nan, nan)
    if np.ptp(a) == 0.0:  # all equal: exactly no sampling error (rounding in the sums would leave ~1e-17)
        return MeanEstimate(float(a.flat[0]), 0.0, nan, s, n, 0.0, 0.0, 0.0)
    if s == 1 or n == 1:
        v = a.ravel()
        var = float(v.var(ddof=1))
        se = math.sqrt(var / v.size)
        df = float(v.size - 1) if var > 0 else nan
        return MeanEstimate(mean, se, df, s, n, var if n == 1 else 0.0, var if s == 1 else 0.0, 0.0)
    seed_means, image_means = a.mean(axis=1), a.mean(axis=0)
    ms_seed = n * float(((seed_means - mean) ** 2).sum()) / (s - 1)
    ms_image = s * float(((image_means - mean) ** 2).sum()) / (n - 1)
    resid = a - seed_means[:, None] - image_means[None, :] + mean
    ms_resid = float((resid**2).sum()) / ((s - 1) * (n - 1))
    var_seed = max(0.0, (ms_seed - ms_resid) / n)
    var_image = max(0.0, (ms_image - ms_resid) / s)
    # Var(mean) * S n as a combination of mean squares; a truncated component drops its terms
    coef = {"seed": 1.0 if var_seed > 0 else 0.0, "image": 1.0 if var_image > 0 else 0.0}
    coef["resid"] = 1.0 - coef["seed"] - coef["image"]
    terms = (
        (coef["seed"], ms_seed, s - 1),
        (coef["image"], ms_image, n - 1),
        (coef["resid"], ms_resid, (s - 1) * (n - 1)),
    )
    total = sum(c * ms for c, ms, _ in terms)
    se = math.sqrt(max(total, 0.0) / (s * n))
    den = sum((c * ms) ** 2 / d for c, ms, d in terms if c != 0.0)
    df = total**2 / den if den > 0 else nan
    return MeanEstimate(mean, se, float(df), s, n, var_seed, var_image, ms_resid)


def t_interval(est: MeanEstimate, level: float) -> tuple[float, float]:
    """Two-sided ``level`` t interval ``mean -+ t_{(1 + level) / 2, df} se``; the point itself when
    ``se == 0``; NaN when the standard error is unknown."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if est.se == 0.0:
        return (est.mean, est.mean)
    if not (np.isfinite(est.se) and np.isfinite(est.df)):
        return (float("nan"), float("nan"))
    q = float(stats.t.ppf(0.5 + level / 2, est.df))
    return (est.mean - q * est.se, est.mean + q * est.se)


def t_pvalue(est: MeanEstimate, null: float = 0.0, alternative: str = "two-sided") -> float:
    """p-value of the t test of ``mean == null`` (``"two-sided"``, ``"greater"``: mean > null,
    ``"less"``). With ``se == 0`` the data are exact: p is 0 when the mean is on the alternative's
    side of ``null`` and 1 otherwise."""
    if est.se == 0.0:
        diff = est.mean - null
        hit = {"two-sided": diff != 0.0, "greater": diff > 0.0, "less": diff < 0.0}[alternative]
        return 0.0 if hit else 1.0
    if not (np.isfinite(est.se) and np.isfinite(est.df)):
        return float("nan")
    t = (est.mean - null) / est.se
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * stats.t.sf(abs(t), est.df)))
    return float(stats.t.sf(t, est.df) if alternative == "greater" else stats.t.cdf(t, est.df))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Two-sided bootstrap confidence interval of the mean, ``(low, high)``: descriptive intervals
    (map similarity summaries), never beside a test verdict.

    Bias-corrected and accelerated bootstrap (BCa; Efron 1987, JASA 82:171) via
    ``scipy.stats.bootstrap(method="BCa")`` with ``numpy.random.default_rng(seed)``. Non-finite
    values are dropped; ``n < 2`` -> ``(nan, nan)``; ``n == 2`` or all values equal -> the
    percentile interval (BCa's acceleration is 0/0 there; all-equal gives ``(v, v)``); BCa
    returning non-finite bounds -> percentile.
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
        # BCa warns (DegenerateDataWarning / 0-divide) exactly when it returns NaN; the caller falls back
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (x,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=method,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def _check_p(p: np.ndarray) -> None:
    ok = p[~np.isnan(p)]
    if np.any((ok < 0) | (ok > 1)):
        raise ValueError("p-values must lie in [0, 1]")


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m finite p-values sorted ascending: ``adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``.
    Controls the family-wise error rate under any dependence. NaN entries pass through and do
    not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    _check_p(p)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    idx = np.flatnonzero(~np.isnan(flat))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(flat[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * flat[order]))
    res = out.ravel()
    res[order] = adjusted
    return res.reshape(p.shape)


def bonferroni(pvalues: Sequence[float] | np.ndarray, m: int | None = None) -> np.ndarray:
    """Bonferroni-adjusted p-values ``min(1, m p)``; ``m`` defaults to the number of finite
    p-values. Single-step, so an interval at level ``1 - alpha / m`` excludes the null exactly when
    the adjusted p is below alpha: the tables pair every verdict with such an interval."""
    p = np.asarray(pvalues, dtype=np.float64)
    _check_p(p)
    m = int(np.count_nonzero(~np.isnan(p))) if m is None else int(m)
    return np.minimum(1.0, p * max(m, 1))


def _psd(a: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0): the matrix form of
    setting a negative variance component to 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.clip(w, 0.0, None)) @ v.T


def sqrt_psd(a: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """A factor ``S`` of a covariance matrix, ``S' S = a``, for seeded draws ``g @ S`` (standard
    normal rows ``g``) that give the same numbers on every machine (up to rounding).

    ``S = R^(1/2) D``: ``D`` the standard deviations, ``R^(1/2)`` the symmetric root ``V sqrt(W) V'``
    of the correlation matrix ``R = D^-1 a D^-1``. Three choices keep it machine-independent: the
    symmetric root does not depend on which eigenvectors LAPACK returns for a repeated eigenvalue
    (unlike ``V sqrt(W)``); the root is taken of the correlation matrix, so its eigenvalues are of
    order one whatever the metric's scale (an additivity error of 1e-7 beside one of 0.5); and an
    eigenvalue below ``rtol`` times the largest is 0, as it is in exact arithmetic for a singular
    matrix (a family's contrasts that are sums of others): LAPACK returns such an eigenvalue as
    +-1e-16 depending on the CPU's kernels, and its square root (1e-8) would move draws near a
    threshold from one machine to the next. A variable with variance 0 draws 0."""
    a = (np.asarray(a, dtype=np.float64) + np.asarray(a, dtype=np.float64).T) / 2
    d = np.sqrt(np.clip(np.diag(a), 0.0, None))
    live = d > 0
    r = np.eye(len(d))
    r[np.ix_(live, live)] = a[np.ix_(live, live)] / np.outer(d[live], d[live])
    w, v = np.linalg.eigh(r)
    w = np.where(w > rtol * max(float(w.max(initial=0.0)), 0.0), w, 0.0)
    return ((v * np.sqrt(w)) @ v.T) * d[None, :]


def crossed_covariance(y: np.ndarray) -> np.ndarray:
    """Covariance matrix of the ``k`` pooled means of ``y (seeds, images, k)`` under the crossed
    random-effects model (module docstring), from the ANOVA mean-square-and-product matrices with
    each variance-component matrix projected to positive semi-definite. For a contrast ``c``,
    ``c' V c`` equals :func:`mean_estimate`'s squared standard error of ``y @ c`` when both component
    matrices are positive semi-definite as estimated (otherwise it is at least as large: the
    projection raises variances, never lowers them). One seed: the covariance of the image rows over ``n``."""
    a = np.asarray(y, dtype=np.float64)
    a = a[:, np.isfinite(a).all(axis=(0, 2)), :]
    s, n, k = a.shape
    if n < 2 and s < 2:
        return np.full((k, k), np.nan)
    if s == 1 or n == 1:
        rows = a.reshape(-1, k)
        return np.atleast_2d(np.cov(rows, rowvar=False, ddof=1)) / rows.shape[0]
    m = a.mean(axis=(0, 1))
    r = a.mean(axis=1) - m  # (S, k) seed effects
    c = a.mean(axis=0) - m  # (n, k) image effects
    e = a - r[:, None, :] - c[None, :, :] - m
    ms_seed = n * r.T @ r / (s - 1)
    ms_image = s * c.T @ c / (n - 1)
    ms_resid = np.einsum("sik,sil->kl", e, e) / ((s - 1) * (n - 1))
    var_seed = _psd((ms_seed - ms_resid) / n)
    var_image = _psd((ms_image - ms_resid) / s)
    return var_seed / s + var_image / n + ms_resid / (s * n)


def p_top(y: np.ndarray, *, draws: int, seed: int) -> np.ndarray:
    """Probability that each of the ``k`` explainers of ``y (seeds, images, k)`` (goodness, higher
    is better) has the highest pooled mean, under the sampling distribution of the pooled means:
    multivariate t draws ``mean + L z sqrt(df / chi2_df)`` with ``L L' =``
    :func:`crossed_covariance` and ``df`` the Satterthwaite df of the leader's contrast with the
    runner-up (the contrast that decides the top). Ties within a draw share its unit of
    probability; explainers with identical values everywhere always tie. NaN when the covariance is unknown."""
    a = np.asarray(y, dtype=np.float64)
    a = a[:, np.isfinite(a).all(axis=(0, 2)), :]
    k = a.shape[2]
    # explainers with identical values everywhere tie in every draw: draw the distinct ones, then share
    flat = a.reshape(-1, k).T
    _, first, group = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    group = np.asarray(group).ravel()
    if len(first) < k:
        distinct = p_top(a[:, :, np.sort(first)], draws=draws, seed=seed)
        order = {g: i for i, g in enumerate(np.argsort(first))}  # unique row g sits at position order[g]
        counts = np.bincount(group)
        return np.array([distinct[order[g]] / counts[g] for g in group])
    if k == 1:
        return np.ones(1)
    cov = crossed_covariance(a)
    if not np.isfinite(cov).all() or a.shape[1] == 0:
        return np.full(k, np.nan)
    means = a.mean(axis=(0, 1))
    order_ = np.argsort(-means, kind="stable")
    df = mean_estimate(a[:, :, order_[0]] - a[:, :, order_[1]]).df
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, k)) @ sqrt_psd(cov)
    if np.isfinite(df):
        z *= np.sqrt(df / rng.chisquare(df, size=(draws, 1)))
    d = means + z
    tied = d == d.max(axis=1, keepdims=True)
    return (tied / tied.sum(axis=1, keepdims=True)).mean(axis=0)
