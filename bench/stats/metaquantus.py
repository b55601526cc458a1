"""MetaQuantus meta-consistency (Hedström et al. 2023, TMLR) from per-draw scores, with its interval.

Input: the long table of one (model, stage, metric, test) (``meta_scores.csv``,
:data:`RAW_COLUMNS`): for every perturbation ``kind`` (``nr`` minor, ``ar`` disruptive), draw,
explainer and image, the unperturbed score ``base``, the perturbed score ``new``, whether the
minor perturbation ``kept`` the model's prediction, and the draw's ``status``. With ``q`` the
scores of an explainer on the images and ``q'`` under a perturbation (NR on the images whose
prediction it kept):

* IAC_NR = mean over explainers and draws of the Wilcoxon signed-rank p between ``q`` and ``q'``
  (normal approximation, scipy's ``"asymptotic"``, for the point and every resample alike: scipy's
  default switches by sample size and ties between the exact p and, since scipy 1.15, a
  9,999-draw permutation test, so a resample that repeats an image would use another p than the
  point estimate, and take minutes; MetaQuantus itself calls the default);
* IAC_AR = mean of ``1 - p``;
* IEC_NR = share of (image, rank position) where the explainers' ranking is the same;
* IEC_AR = share of (explainer, image) whose score got worse (in the metric's own direction);
* MC = the mean of the four, in [0, 1].

:func:`mc_interval`: a percentile interval of MC over images and draws resampled together (the
"pigeonhole" bootstrap of a crossed design; Owen 2007, Ann. Appl. Stat. 1:386: it errs wide).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["RAW_COLUMNS", "consistency", "mc_interval"]

RAW_COLUMNS = [
    "model",
    "stage",
    "metric",
    "test",
    "kind",
    "draw",
    "explainer",
    "image",
    "base",
    "new",
    "kept",
    "status",
]


def _cube(raw: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[int]]:
    """(base, new (draws, explainers, images), kept (draws, images), ok draws (draws,), explainers, draws)."""
    r = raw[raw["kind"] == kind]
    explainers = sorted(set(r["explainer"]))
    draws = sorted(set(int(d) for d in r["draw"]))
    images = sorted(set(int(i) for i in r["image"]))
    idx = pd.MultiIndex.from_product([draws, explainers, images], names=["draw", "explainer", "image"])
    w = r.set_index(["draw", "explainer", "image"]).reindex(idx)
    shape = (len(draws), len(explainers), len(images))
    base = w["base"].to_numpy(dtype=np.float64).reshape(shape)
    new = w["new"].to_numpy(dtype=np.float64).reshape(shape)
    kept = (
        w["kept"].astype(object).map(lambda v: str(v).lower() in ("true", "1", "1.0")).to_numpy().reshape(shape)[:, 0]
    )
    ok = (w["status"].astype(str) == "ok").to_numpy().reshape(shape).all(axis=(1, 2))
    return base, new, kept, ok, explainers, draws


def _wilcoxon(a: np.ndarray, b: np.ndarray, method: str = "asymptotic") -> float:
    """Wilcoxon signed-rank p-value by ``method`` (scipy's; module docstring for the default)."""
    if np.all(a == b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(a, b, method=method).pvalue)


def _mean(values: list[float]) -> float:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def consistency(
    raw: pd.DataFrame,
    higher_is_better: bool,
    draws: np.ndarray | None = None,
    images: np.ndarray | None = None,
    wilcoxon: str = "asymptotic",
) -> dict[str, float]:
    """IAC/IEC and MC of one (model, stage, metric, test) from its raw rows (module docstring).
    ``draws`` / ``images``: positions to use (with repeats: a resample); all by default;
    ``wilcoxon``: the method of the signed-rank p-values (:func:`_wilcoxon`)."""
    sign = 1.0 if higher_is_better else -1.0
    iac: dict[str, list[float]] = {"nr": [], "ar": []}
    iec_nr: list[float] = []
    iec_ar: list[float] = []
    for kind in ("nr", "ar"):
        if not (raw["kind"] == kind).any():
            continue
        base, new, kept, ok_draw, explainers, _ = _cube(raw, kind)
        live = np.isfinite(base).any(axis=(0, 2))  # explainers the metric applies to
        base, new = base[:, live], new[:, live]
        d_idx = np.arange(base.shape[0]) if draws is None else np.asarray(draws)
        i_idx = np.arange(base.shape[2]) if images is None else np.asarray(images)
        for k in d_idx:
            if not ok_draw[k] or not base.shape[1]:
                continue
            b, n = base[k][:, i_idx], new[k][:, i_idx]
            keep = kept[k][i_idx] if kind == "nr" else np.ones(len(i_idx), bool)
            sel = keep & np.isfinite(b).all(0) & np.isfinite(n).all(0)
            if not sel.any():
                continue
            for x, y in zip(b[:, sel], n[:, sel]):
                p = _wilcoxon(x, y, wilcoxon)
                iac[kind].append(p if kind == "nr" else 1.0 - p)
            if kind == "nr":
                iec_nr.append(
                    float(
                        np.mean(
                            np.argsort(b[:, sel], axis=0, kind="stable") == np.argsort(n[:, sel], axis=0, kind="stable")
                        )
                    )
                )
            else:
                iec_ar.append(float(np.mean(sign * b[:, sel] > sign * n[:, sel])))
    parts = {"iac_nr": _mean(iac["nr"]), "iac_ar": _mean(iac["ar"]), "iec_nr": _mean(iec_nr), "iec_ar": _mean(iec_ar)}
    parts["mc"] = _mean(list(parts.values()))
    return parts


def mc_interval(
    raw: pd.DataFrame, higher_is_better: bool, *, n_resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of MC with images and draws resampled (with replacement) together."""
    n_draws = len(set(raw["draw"]))
    n_images = len(set(raw["image"]))
    if n_images < 4:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = [
        consistency(raw, higher_is_better, rng.integers(0, n_draws, n_draws), rng.integers(0, n_images, n_images))["mc"]
        for _ in range(n_resamples)
    ]
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return (float("nan"), float("nan"))
    low, high = np.percentile(v, [50 * (1 - confidence), 50 * (1 + confidence)])
    return (float(low), float(high))
