"""Power of the tables' paired tests: before a run (the n to plan) and after it (what n could see).

The tables test paired mean differences with a two-sided t test at ``alpha / m`` (Bonferroni over
a family of ``m`` contrasts, :mod:`bench.stats.compare`), so power is the noncentral t's
(Cohen 1988, ch. 2): with ``n`` pairs whose differences have mean ``delta`` and standard
deviation ``sd``, ``ncp = |delta| / sd * sqrt(n)`` and

    power = P(|T_{n-1, ncp}| > t_{1 - level / 2, n - 1}),   level = alpha / m.

``n`` counts distinct images: scoring the same images under several seeds adds seeds, not images
(the image effect is shared; :mod:`bench.stats.estimate`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats as sps

__all__ = ["N_CAP", "min_detectable_difference", "n_needed", "paired_power"]

N_CAP = 100_000  # n needed beyond this is reported as "> N_CAP"


def paired_power(delta: float, sd: float, n: float, level: float) -> float:
    """Power of the two-sided paired t test at ``level`` with ``n`` pairs (mean difference
    ``delta``, sd ``sd``). NaN below 2 pairs or without spread."""
    if n < 2 or not sd > 0:
        return float("nan")
    df = n - 1
    nc = abs(delta) / sd * math.sqrt(n)
    crit = sps.t.ppf(1 - level / 2, df)
    power = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    if not np.isfinite(power):  # scipy's nct gives up far in the tail: the normal limit
        power = sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc)
    return float(min(1.0, power))


def min_detectable_difference(sd: float, n: int, level: float, power: float = 0.8) -> float:
    """The smallest mean paired difference the test detects with ``power`` at ``level`` with ``n``
    pairs; NaN below 2 pairs or without spread."""
    if n < 2 or not sd > 0:
        return float("nan")
    high = 10 * sd / math.sqrt(n)
    while paired_power(high, sd, n, level) < power:  # a few df and a small level need a large noncentrality
        high *= 4
        if high > 1e12 * sd:
            return float("inf")
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, level) - power, 1e-12 * sd, high))


def n_needed(delta: float, sd: float, level: float, power: float = 0.8) -> float:
    """The number of pairs the test needs to detect ``delta`` (sd ``sd``) with ``power`` at
    ``level``; ``inf`` beyond :data:`N_CAP` or for no difference; 2 without spread."""
    if not sd > 0:
        return 2.0 if delta != 0 else float("inf")
    if delta == 0 or paired_power(delta, sd, N_CAP, level) < power:
        return float("inf")
    lo, hi = 2, N_CAP
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(delta, sd, mid, level) >= power:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)
