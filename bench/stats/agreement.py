"""Agreement between rankings, each with an interval from resampling the images.

* :func:`kendall_w`: Kendall's W of several raters' rankings (training seeds ranking explainers);
* :func:`kendall_tau`: Kendall's tau-b between two rankings (two metrics, two substrates),
  vectorised over resamples;
* :func:`krippendorff_alpha`: ordinal alpha of the per-image rankings (images as raters);
* :func:`split_half`: Spearman-Brown corrected split-half reliability of a ranking;
* :func:`image_interval`: a statistic's bootstrap interval over images, resampled *jointly* in
  every seed and every table that shares them (the images are the same units everywhere).

All rankings are of goodness (higher is better) unless a docstring says otherwise.
"""

from __future__ import annotations

import warnings
from typing import Callable

import krippendorff
import numpy as np
from scipy import stats as sps

__all__ = ["image_interval", "image_ranks", "kendall_tau", "kendall_w", "krippendorff_alpha", "split_half"]


def kendall_w(matrix: np.ndarray) -> float:
    """Kendall's W of the rankings in ``matrix`` (raters = rows, e.g. seeds; objects = columns, e.g.
    explainers; higher = better) with the tie correction (Kendall & Babington Smith 1939):

        W = 12 S / (m^2 (n^3 - n) - m sum_i T_i),   S = sum_j (R_j - mean R)^2,
        T_i = sum over tie groups of rater i of (t^3 - t),

    R_j the rank sum of object j over the m raters (average ranks for ties). It equals Friedman's
    tie-corrected chi-square over ``m (n - 1)`` (``scipy.stats.friedmanchisquare``). NaN with fewer
    than two raters or two objects, or when no rater orders anything."""
    matrix = np.asarray(matrix, dtype=np.float64)
    m, n = matrix.shape
    if m < 2 or n < 2:
        return float("nan")
    ranks = sps.rankdata(matrix, axis=1)
    s = float(((ranks.sum(0) - m * (n + 1) / 2.0) ** 2).sum())
    ties = sum(float(((c := np.unique(row, return_counts=True)[1]) ** 3 - c).sum()) for row in matrix)
    denom = m * m * (n**3 - n) - m * ties
    return float(12.0 * s / denom) if denom > 0 else float("nan")


def kendall_tau(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b (Kendall 1945, ties in both rankings corrected) of ``a[..., :]`` with
    ``b[..., :]`` along the last axis, for any leading (resample) shape; equals
    ``scipy.stats.kendalltau`` row by row. NaN where either ranking is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rankings must have the same shape, got {a.shape} and {b.shape}")
    i, j = np.triu_indices(a.shape[-1], 1)
    sa = np.sign(a[..., i] - a[..., j])
    sb = np.sign(b[..., i] - b[..., j])
    num = (sa * sb).sum(-1)
    den = np.sqrt(np.abs(sa).sum(-1) * np.abs(sb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def image_ranks(g: np.ndarray) -> np.ndarray:
    """Per image (row), the rank of each explainer (column) by goodness, 1 = best, ties averaged."""
    return sps.rankdata(-g, axis=1, method="average")


def krippendorff_alpha(g: np.ndarray) -> float:
    """Ordinal Krippendorff's alpha (Krippendorff 2004) of the per-image explainer rankings, images
    as raters (``krippendorff.alpha`` on the ``(images, explainers)`` rank matrix). NaN with fewer
    than two images or explainers, or when no image orders the explainers at all."""
    if g.shape[0] < 2 or g.shape[1] < 2:
        return float("nan")
    ranks = image_ranks(g)
    if np.all(ranks == ranks[:, :1]):  # no image separates any two explainers: nothing to agree on
        return float("nan")
    if np.all(ranks == ranks[0]):  # every image ranks alike: perfect agreement (alpha's 0/0 case)
        return 1.0
    return float(krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal"))


def split_half(g: np.ndarray, splits: int, rng: np.random.Generator) -> float:
    """Mean over ``splits`` random halves of the images of the Spearman-Brown corrected
    (``2 r / (1 + r)``, for ``r > 0``) Spearman correlation between the explainers' mean goodness
    on the two halves. NaN below 4 images or 3 explainers."""
    n, k = g.shape
    if n < 4 or k < 3:
        return float("nan")
    perms = np.argsort(rng.random((splits, n)), axis=1)  # one random permutation per split
    a = g[perms[:, : n // 2]].mean(1)  # (splits, k) means on each half
    b = g[perms[:, n // 2 :]].mean(1)
    r = _row_spearman(a, b)
    r = r[np.isfinite(r)]  # a half on which every explainer ties has no order
    if not r.size:
        return float("nan")
    # the correction is only defined for a positive correlation (it runs to -infinity near -1)
    return float(np.mean(np.where(r > 0, 2 * r / (1 + np.abs(r)), r)))


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties averaged)."""
    ra = sps.rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = sps.rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


def image_interval(
    statistic: Callable[[np.ndarray], float],
    n_images: int,
    *,
    n_resamples: int,
    seed: int,
    method: str = "BCa",
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(index)`` where ``index`` is a resample (with replacement)
    of ``range(n_images)``: the statistic applies the same image draw to every seed, explainer and
    metric it reads, so shared images are resampled jointly (``scipy.stats.bootstrap`` on the
    image indices). BCa by default (it corrects the downward bias a resample's added noise gives
    agreement statistics), the percentile interval where BCa is undefined (over the resamples where the
    statistic is defined, when at least 95 % are); NaN below 4 images.
    """
    if n_images < 4:
        return (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(
            (np.arange(n_images),),
            statistic,
            vectorized=False,
            n_resamples=n_resamples,
            method="percentile" if method == "percentile" else "BCa",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
        return (low, high)
    # BCa undefined, or a few resamples where the statistic is (e.g. every image ties every explainer):
    # the percentile interval of the resamples where it is defined, if nearly all are
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64).ravel()
    ok = dist[np.isfinite(dist)]
    if ok.size < 0.95 * dist.size:
        return (float("nan"), float("nan"))
    low, high = np.percentile(ok, [50 * (1 - confidence), 50 * (1 + confidence)])
    return (float(low), float(high))
