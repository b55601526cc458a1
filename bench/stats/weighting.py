"""From a cell-balanced sample to the test split: stratified (reweighted) means.

A run with ``data.sample = "per_cell"`` draws the same number of images from every confusion cell
of the sampling model (e.g. 6 TP, 6 FP, 3 FN, 6 TN), so a plain mean over them weighs a false
negative as much as a true positive although the test split holds 3 of one and 387 of the other.
The leaderboards' plain mean answers "averaged over the kinds of decision"; the stratified mean
answers "averaged over the test split" (Cochran 1977, *Sampling Techniques*, ch. 5):

    mean_w = sum_c W_c ybar_c,   W_c = N_c / N,
    Var(mean_w) = sum_c W_c^2 s_c^2 / n_c,

``N_c`` the test split's images in cell c, ``n_c`` the sampled ones, ``s_c^2`` their variance (no
finite-population correction: the test split stands for the population it was drawn from), with
Satterthwaite's df ``(sum_c a_c s_c^2)^2 / sum_c (a_c s_c^2)^2 / (n_c - 1)``, ``a_c = W_c^2 / n_c``.
A cell with one sampled image has no variance estimate: the interval is then NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from bench.stats.estimate import MeanEstimate

__all__ = ["Sampling", "stratified_mean"]


@dataclass(frozen=True)
class Sampling:
    """How a model's images were drawn: each image's stratum (its cell under the sampling model)
    and every stratum's count in the test split."""

    strata: Mapping[int, str]  # image index -> stratum
    sizes: Mapping[str, int]  # stratum -> images of the test split in it
    source: str = ""  # where the sizes come from (the manifest's sample record, or derived)


def stratified_mean(
    values: Sequence[float] | np.ndarray, strata: Sequence[str], sizes: Mapping[str, int]
) -> MeanEstimate:
    """Stratified mean of ``values`` (one per image, NaN dropped) whose images belong to
    ``strata``; ``sizes`` maps each stratum to its test-split count (strata of the split with no
    sampled image, or sampled strata missing from ``sizes``, make the estimate NaN)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    s = np.asarray(list(strata), dtype=object).ravel()
    if v.shape != s.shape:
        raise ValueError(f"{v.size} values but {s.size} strata")
    keep = np.isfinite(v)
    v, s = v[keep], s[keep]
    nan = float("nan")
    total = float(sum(sizes.values()))
    present = set(s.tolist())
    populated = {c for c, n in sizes.items() if n > 0}
    if not v.size or total <= 0 or not present <= set(sizes) or not populated <= present:
        return MeanEstimate(nan, nan, nan, 1, int(v.size), nan, nan, nan)
    mean = var = 0.0
    den = 0.0
    for c in sorted(populated):
        x = v[s == c]
        w = sizes[c] / total
        mean += w * float(x.mean())
        if x.size < 2:
            var = nan
            continue
        term = w * w * float(x.var(ddof=1)) / x.size
        var += term
        den += term * term / (x.size - 1)
    se = float(np.sqrt(var)) if np.isfinite(var) else nan
    df = var * var / den if np.isfinite(var) and den > 0 else nan
    return MeanEstimate(mean, se, df, 1, int(v.size), nan, nan, nan)
