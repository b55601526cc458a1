"""The reliability card: can a metric be trusted on this run's model, images and explainers?

For every (model, stage, metric) the card answers, each with its CI or p-value:

1. **Control separation.** Each real explainer against each control (``random``, ``edge``): the
   paired difference of the metric's *goodness* (the score, negated for lower-is-better metrics)
   with a BCa CI and a Wilcoxon signed-rank p, Holm-adjusted over every comparison of the
   (model, stage) card. Summary: how many real explainers beat ``random`` significantly, and a
   flag when a control beats a real explainer significantly.
2. **Consistency across images** (Tomsett et al. 2020, "Sanity Checks for Saliency Metrics",
   AAAI): Krippendorff's alpha (ordinal; Krippendorff 2004) of the per-image rankings of the
   explainers, images as raters, with a BCa bootstrap CI over images; and split-half reliability
   of the leaderboard's ranking: the Spearman correlation of the explainers' mean goodness on two
   random halves of the images, Spearman-Brown corrected (``2 r / (1 + r)``), averaged over
   random splits, with a percentile bootstrap CI over images.
3. **Noise resilience and adversary reactivity** (Hedström et al. 2023, MetaQuantus, TMLR): read
   from ``meta.csv`` when the run computed it (:mod:`bench.run.meta`).
4. **Agreement between metrics.** Kendall's tau (``scipy.stats.kendalltau``) between the
   explainer rankings of every pair of metrics, both oriented so that higher is better: metrics
   of the same kind (e.g. faithfulness) are expected to agree (tau > 0); a negative tau is flagged.
5. **Substrate sensitivity.** From ``substrates.csv`` when the run computed it: the rankings of
   the perturbation metrics under each substrate, Kendall's tau between substrate rankings, and
   control separation under each substrate.
6. **Power.** At the run's n, the smallest paired difference between two explainers a two-sided
   test detects with 80 % power after Holm (Bonferroni at the first Holm step: alpha / m, m the
   number of explainer pairs), and the n each adjacent pair of the leaderboard's order needs for
   its observed difference. Computed for the paired t-test with the noncentral t distribution
   (``scipy.stats.nct``) at an effective n of ``n * 3 / pi``, the asymptotic relative efficiency
   of the Wilcoxon signed-rank test under normality (Lehmann 1975); tests/test_reliability.py
   checks it by simulating the Wilcoxon test.

A metric *fails* the card when no real explainer beats ``random`` significantly, or when the image
rankings agree no better than chance (the lower bound of alpha's CI at or below 0).
``leaderboard.md`` marks such metric columns. A control that beats a real explainer is flagged
(it says as much about that explainer as about the metric) but does not fail the metric.

Everything here is computed from files (``scores.csv``, ``substrates.csv``, ``meta.csv``), so
``bench report`` rebuilds the card byte for byte.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import krippendorff
import numpy as np
import pandas as pd
from scipy import optimize, stats as sps

from bench.core.io import atomic_write_text
from bench.core.text import csv_text, fmt_number, markdown_table
from bench.report import stats

WILCOXON_ARE = 3 / math.pi  # asymptotic relative efficiency of the Wilcoxon signed-rank vs the t-test
N_CAP = 100_000  # n needed beyond this is reported as "> N_CAP"


@dataclass(frozen=True)
class CardSettings:
    """The card's choices (``[reliability]`` of the run config; recorded in the manifest)."""

    controls: tuple[str, ...] = ("random", "edge")
    alpha: float = 0.05
    power: float = 0.8
    splits: int = 100        # random split halves per split-half estimate
    bootstrap: int = 1000    # resamples of the alpha and split-half CIs
    seed: int = 0

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> "CardSettings":
        values = dict(values or {})
        keep = {k: (tuple(v) if k == "controls" else v) for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**keep)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "controls": list(self.controls)}


# ----------------------------------------------------------------------------- the statistics


def goodness(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Scores oriented so that higher is better."""
    return values if higher_is_better else -values


def image_ranks(g: np.ndarray) -> np.ndarray:
    """Per image (row), the rank of each explainer (column) by goodness, 1 = best, ties averaged."""
    return sps.rankdata(-g, axis=1, method="average")


def krippendorff_alpha(g: np.ndarray) -> float:
    """Ordinal Krippendorff's alpha of the per-image explainer rankings, images as raters
    (``krippendorff.alpha`` on the ``(images, explainers)`` rank matrix). NaN with fewer than two
    images or explainers, or when no image orders the explainers at all (every score tied)."""
    if g.shape[0] < 2 or g.shape[1] < 2:
        return float("nan")
    ranks = image_ranks(g)
    if np.all(ranks == ranks[:, :1]):  # no image separates any two explainers: nothing to agree on
        return float("nan")
    if np.all(ranks == ranks[0]):  # every image ranks alike: perfect agreement (alpha's 0/0 case)
        return 1.0
    return float(krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal"))


def split_half(g: np.ndarray, splits: int, rng: np.random.Generator) -> float:
    """Mean over ``splits`` random halves of the Spearman-Brown corrected (``2 r / (1 + r)``, for
    ``r > 0``) Spearman correlation between the explainers' mean goodness on the two halves. NaN
    below 4 images or 3 explainers."""
    n, k = g.shape
    if n < 4 or k < 3:
        return float("nan")
    perms = np.argsort(rng.random((splits, n)), axis=1)  # one random permutation per split
    a = g[perms[:, : n // 2]].mean(1)                   # (splits, k) means on each half
    b = g[perms[:, n // 2:]].mean(1)
    r = _row_spearman(a, b)
    r = r[np.isfinite(r)]  # a half on which every explainer ties has no order
    if not r.size:
        return float("nan")
    # Spearman-Brown for a full-length test; a negative half-half correlation is left as it is (the
    # correction is only defined for a positive one: it would run to -infinity near -1)
    return float(np.mean(np.where(r > 0, 2 * r / (1 + np.abs(r)), r)))


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties averaged)."""
    ra = sps.rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = sps.rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


def _image_bootstrap(g: np.ndarray, statistic, settings: CardSettings, method: str) -> tuple[float, float]:
    """CI of ``statistic(g)`` over images resampled with replacement (scipy.stats.bootstrap)."""
    if g.shape[0] < 4:
        return (float("nan"), float("nan"))
    for m in dict.fromkeys((method, "percentile")):  # BCa is undefined on a constant statistic
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap((np.arange(g.shape[0]),), lambda idx: statistic(g[idx]), vectorized=False,
                                n_resamples=settings.bootstrap, method=m, confidence_level=0.95,
                                rng=np.random.default_rng(settings.seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return (low, high)
    return (float("nan"), float("nan"))


def paired_power(delta: float, sd: float, n: float, alpha: float) -> float:
    """Power of the two-sided paired t-test at level ``alpha``: n pairs whose differences have
    mean ``delta`` and standard deviation ``sd`` (noncentral t). ``n`` may be fractional (an
    effective n)."""
    if n < 2 or sd <= 0:
        return float("nan")
    df = n - 1
    nc = abs(delta) / sd * math.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    power = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    if not np.isfinite(power):  # scipy's nct gives up far in the tail: the normal limit
        power = sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc)
    return float(min(1.0, power))


def min_detectable_difference(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest mean paired difference the Wilcoxon signed-rank test detects with ``power``
    at level ``alpha`` with ``n`` pairs (t-test power at the effective n ``n * 3 / pi``)."""
    n_eff = n * WILCOXON_ARE
    if n_eff < 2 or not sd > 0:
        return float("nan")
    high = 50 * sd / math.sqrt(n_eff)  # noncentrality 50: power 1 at any level used here
    return float(optimize.brentq(lambda d: paired_power(d, sd, n_eff, alpha) - power, 1e-12 * sd, high))


def n_needed(delta: float, sd: float, alpha: float, power: float = 0.8) -> float:
    """The number of pairs the Wilcoxon test needs to detect a mean difference ``delta`` (sd ``sd``)
    with ``power`` at level ``alpha``; ``inf`` beyond :data:`N_CAP` or for no difference."""
    if not sd > 0:
        return 2.0 if delta != 0 else float("inf")
    if delta == 0 or paired_power(delta, sd, N_CAP * WILCOXON_ARE, alpha) < power:
        return float("inf")
    lo, hi = 2, N_CAP
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(delta, sd, mid * WILCOXON_ARE, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


# ----------------------------------------------------------------------------- the tables


def wide_goodness(scores: pd.DataFrame) -> dict[tuple[str, str, str], tuple[pd.DataFrame, bool]]:
    """Per (model, stage, metric): the goodness matrix (images x explainers, "ok" and finite values
    only; images lacking a value for some explainer dropped) and the metric's direction."""
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].to_numpy(dtype=float))]
    out = {}
    for (model, stage, metric), g in ok.groupby(["model", "stage", "metric"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        wide = g.pivot(index="image", columns="explainer", values="value").sort_index(axis=1)
        wide = wide.dropna(axis=0, how="any")
        out[(model, stage, metric)] = (goodness(wide, hib), hib)
    return out


CONTROL_COLUMNS = ["model", "stage", "metric", "explainer", "control", "n", "diff_mean", "diff_ci_low",
                   "diff_ci_high", "p_wilcoxon", "p_holm", "verdict"]


def control_table(scores: pd.DataFrame, settings: CardSettings) -> pd.DataFrame:
    """Every real explainer against every control, per (model, stage, metric): paired goodness
    differences (explainer minus control), Holm over the (model, stage) card."""
    rows = []
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].to_numpy(dtype=float))]
    for (model, stage, metric), g in ok.groupby(["model", "stage", "metric"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        wide = g.pivot(index="image", columns="explainer", values="value")
        controls = [c for c in settings.controls if c in wide.columns]
        real = sorted(e for e in wide.columns if e not in settings.controls)
        for e in real:
            for c in controls:
                res = stats.paired_difference(goodness(wide[c].to_numpy(), hib), goodness(wide[e].to_numpy(), hib))
                rows.append({"model": model, "stage": stage, "metric": metric, "explainer": e, "control": c,
                             "n": res.n, "diff_mean": res.diff_mean, "diff_ci_low": res.ci_low,
                             "diff_ci_high": res.ci_high, "p_wilcoxon": res.p_value})
    table = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    table["p_holm"] = np.nan
    for _, idx in table.groupby(["model", "stage"], sort=True).groups.items():
        table.loc[idx, "p_holm"] = stats.holm(table.loc[idx, "p_wilcoxon"].to_numpy(dtype=np.float64))
    sig = table["p_holm"] <= settings.alpha
    table["verdict"] = np.where(sig & (table["diff_mean"] > 0), "beats the control",
                                np.where(sig & (table["diff_mean"] < 0), "LOSES to the control", "not separated"))
    table.loc[table["n"] == 0, "verdict"] = "n/a"
    return table.reset_index(drop=True)


POWER_COLUMNS = ["model", "stage", "metric", "better", "worse", "n", "diff_mean", "sd", "mde", "n_needed",
                 "underpowered"]


def power_table(wide: Mapping[tuple[str, str, str], tuple[pd.DataFrame, bool]], settings: CardSettings) -> pd.DataFrame:
    """Adjacent explainers of each metric's order (by mean goodness): observed paired difference,
    the smallest detectable one at this n (80 % power, Holm over all explainer pairs), and the n
    the observed difference needs."""
    rows = []
    for (model, stage, metric), (g, _) in wide.items():
        k, n = g.shape[1], g.shape[0]
        if k < 2 or n < 2:
            continue
        m = k * (k - 1) // 2
        order = list(g.mean(0).sort_values(ascending=False, kind="stable").index)
        for better, worse in zip(order, order[1:]):
            d = (g[better] - g[worse]).to_numpy()
            sd = float(d.std(ddof=1))
            mde = min_detectable_difference(sd, n, settings.alpha / m, settings.power)
            rows.append({"model": model, "stage": stage, "metric": metric, "better": better, "worse": worse, "n": n,
                         "diff_mean": float(d.mean()), "sd": sd, "mde": mde,
                         "n_needed": n_needed(float(d.mean()), sd, settings.alpha / m, settings.power),
                         "underpowered": bool(not abs(d.mean()) >= mde)})
    return pd.DataFrame(rows, columns=POWER_COLUMNS)


AGREEMENT_COLUMNS = ["model", "stage", "metric_a", "metric_b", "n_explainers", "kendall_tau", "p_value", "expected",
                     "verdict"]


def agreement_table(wide: Mapping[tuple[str, str, str], tuple[pd.DataFrame, bool]],
                    kinds: Mapping[str, str | None]) -> pd.DataFrame:
    """Kendall's tau between the explainer rankings (mean goodness) of every pair of metrics."""
    rows = []
    by_stage: dict[tuple[str, str], dict[str, pd.Series]] = {}
    for (model, stage, metric), (g, _) in wide.items():
        by_stage.setdefault((model, stage), {})[metric] = g.mean(0)
    for (model, stage), means in sorted(by_stage.items()):
        for a, b in combinations(sorted(means), 2):
            common = sorted(set(means[a].index) & set(means[b].index))
            tau = p = float("nan")
            if len(common) >= 3:
                res = sps.kendalltau(means[a][common].to_numpy(), means[b][common].to_numpy())
                tau, p = float(res.statistic), float(res.pvalue)
            same_kind = kinds.get(a) is not None and kinds.get(a) == kinds.get(b)
            expected = "+" if same_kind else ""
            verdict = "n/a" if not np.isfinite(tau) else (
                "DISAGREE" if same_kind and tau < 0 else ("agree" if tau > 0 else "no agreement"))
            rows.append({"model": model, "stage": stage, "metric_a": a, "metric_b": b, "n_explainers": len(common),
                         "kendall_tau": tau, "p_value": p, "expected": expected, "verdict": verdict})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


CARD_COLUMNS = ["model", "stage", "metric", "higher_is_better", "n_images", "n_explainers", "beat_random",
                "real_explainers", "control_beats_real", "alpha", "alpha_ci_low", "alpha_ci_high", "split_half",
                "split_half_ci_low", "split_half_ci_high", "mde_median", "n_needed_max", "disagreements",
                "substrate_tau_min", "meta_input", "meta_model", "verdict"]


def card(scores: pd.DataFrame, settings: CardSettings, kinds: Mapping[str, str | None], *,
         substrates: pd.DataFrame | None = None, meta: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the card from checked scores (``bench.report.leaderboard.check_scores``)."""
    wide = wide_goodness(scores)
    controls = control_table(scores, settings)
    power = power_table(wide, settings)
    agreement = agreement_table(wide, kinds)
    subst = substrate_table(substrates, settings) if substrates is not None and len(substrates) else None
    rows = []
    for i, ((model, stage, metric), (g, hib)) in enumerate(wide.items()):
        rng = np.random.default_rng([settings.seed, i])
        c = controls[(controls["model"] == model) & (controls["stage"] == stage) & (controls["metric"] == metric)]
        vs_random = c[c["control"] == "random"]
        beat = int((vs_random["verdict"] == "beats the control").sum())
        loses = bool((c["verdict"] == "LOSES to the control").any())
        alpha = krippendorff_alpha(g.to_numpy())
        a_low, a_high = _image_bootstrap(g.to_numpy(), krippendorff_alpha, settings, "BCa")
        sh = split_half(g.to_numpy(), settings.splits, rng)
        sh_low, sh_high = _image_bootstrap(
            g.to_numpy(), lambda x: split_half(x, max(1, settings.splits // 10), np.random.default_rng(settings.seed)),
            settings, "percentile")
        p = power[(power["model"] == model) & (power["stage"] == stage) & (power["metric"] == metric)]
        a = agreement[(agreement["model"] == model) & (agreement["stage"] == stage)
                      & ((agreement["metric_a"] == metric) | (agreement["metric_b"] == metric))]
        reasons = []
        if len(vs_random) and beat == 0:
            reasons.append("no explainer beats random")
        if np.isfinite(a_low) and a_low <= 0:
            reasons.append("image rankings agree no better than chance")
        tau_min = float("nan")
        if subst is not None:
            s = subst[(subst["model"] == model) & (subst["stage"] == stage) & (subst["metric"] == metric)]
            if len(s) and s["kendall_tau"].notna().any():
                tau_min = float(s["kendall_tau"].min())
        rows.append({"model": model, "stage": stage, "metric": metric, "higher_is_better": hib,
                     "n_images": g.shape[0], "n_explainers": g.shape[1], "beat_random": beat if len(vs_random) else -1,
                     "real_explainers": int(sum(e not in settings.controls for e in g.columns)),
                     "control_beats_real": loses, "alpha": alpha, "alpha_ci_low": a_low, "alpha_ci_high": a_high,
                     "split_half": sh, "split_half_ci_low": sh_low, "split_half_ci_high": sh_high,
                     "mde_median": float(p["mde"].median()) if len(p) else float("nan"),
                     "n_needed_max": float(p["n_needed"].max()) if len(p) else float("nan"),
                     "disagreements": int((a["verdict"] == "DISAGREE").sum()), "substrate_tau_min": tau_min,
                     "meta_input": _meta_score(meta, model, stage, metric, "input"),
                     "meta_model": _meta_score(meta, model, stage, metric, "model"),
                     "verdict": "fails: " + "; ".join(reasons) if reasons else "ok"})
    out = {"reliability": pd.DataFrame(rows, columns=CARD_COLUMNS), "reliability_controls": controls,
           "reliability_power": power, "reliability_agreement": agreement}
    if subst is not None:
        out["reliability_substrates"] = subst
    if meta is not None and len(meta):
        out["reliability_meta"] = meta
    return out


def _meta_score(meta: pd.DataFrame | None, model: str, stage: str, metric: str, test: str) -> float:
    if meta is None or not len(meta):
        return float("nan")
    m = meta[(meta["model"] == model) & (meta["stage"] == stage) & (meta["metric"] == metric) & (meta["test"] == test)]
    return float(m["mc"].iloc[0]) if len(m) else float("nan")


SUBSTRATE_COLUMNS = ["model", "stage", "metric", "substrate_a", "substrate_b", "n_explainers", "kendall_tau",
                     "beat_random_a", "beat_random_b"]


def substrate_table(substrates: pd.DataFrame, settings: CardSettings) -> pd.DataFrame:
    """Kendall's tau between the explainer rankings of a metric under each pair of substrates, and
    how many real explainers beat ``random`` (Wilcoxon, Holm within the metric and substrate)
    under each."""
    df = substrates[(substrates["status"] == "ok") & np.isfinite(substrates["value"].to_numpy(dtype=float))]
    rows = []
    for (model, stage, metric), g in df.groupby(["model", "stage", "metric"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        means, beats = {}, {}
        for sub, h in g.groupby("substrate", sort=True):
            wide = h.pivot(index="image", columns="explainer", values="value").dropna(axis=0, how="any")
            means[sub] = goodness(wide, hib).mean(0)
            beats[sub] = _beat_random(goodness(wide, hib), settings)
        for a, b in combinations(sorted(means), 2):
            common = sorted(set(means[a].index) & set(means[b].index))
            tau = float(sps.kendalltau(means[a][common], means[b][common]).statistic) if len(common) >= 3 else float("nan")
            rows.append({"model": model, "stage": stage, "metric": metric, "substrate_a": a, "substrate_b": b,
                         "n_explainers": len(common), "kendall_tau": tau, "beat_random_a": beats[a],
                         "beat_random_b": beats[b]})
    return pd.DataFrame(rows, columns=SUBSTRATE_COLUMNS)


def _beat_random(g: pd.DataFrame, settings: CardSettings) -> int:
    if "random" not in g.columns:
        return -1
    real = [e for e in g.columns if e not in settings.controls]
    res = [stats.paired_difference(g["random"].to_numpy(), g[e].to_numpy()) for e in real]
    adj = stats.holm(np.array([r.p_value for r in res], dtype=np.float64))
    return int(sum(r.diff_mean > 0 and p <= settings.alpha for r, p in zip(res, adj)))


# ----------------------------------------------------------------------------- files


def write_card(run_dir: Path, tables: Mapping[str, pd.DataFrame], settings: CardSettings) -> list[Path]:
    """``reliability.csv`` (the card), its detail tables and ``reliability.md``; atomically."""
    written = [atomic_write_text(run_dir / f"{name}.csv", csv_text(table)) for name, table in sorted(tables.items())]
    written.append(atomic_write_text(run_dir / "reliability.md", render_card_md(tables, settings)))
    return written


def _f(x: Any, spec: str = ".3g") -> str:
    return fmt_number(x, spec, inf="∞")


def _ci(v: Any, low: Any, high: Any) -> str:
    return f"{_f(v)} [{_f(low)}, {_f(high)}]" if np.isfinite(float(v)) else "n/a"


def _n(x: Any) -> str:
    v = float(x)
    return "n/a" if not np.isfinite(v) and v != float("inf") else (f"> {N_CAP}" if v == float("inf") else str(int(v)))


def render_card_md(tables: Mapping[str, pd.DataFrame], settings: CardSettings) -> str:
    """reliability.md: per (model, stage) the card, then its details."""
    card_df = tables["reliability"]
    lines = ["# Reliability card", "",
             "Can each metric be trusted on this run? Goodness = the score, negated where lower is better. "
             f"Tests at alpha = {settings.alpha:g}, Holm-adjusted over the (model, stage) card; power "
             f"{settings.power:g}. Controls: {', '.join(settings.controls)}. "
             "beat random: real explainers whose paired goodness beats `random` significantly (of all real ones); "
             "alpha: Krippendorff's alpha (ordinal) of the per-image rankings of the explainers, images as raters, "
             "95% BCa CI over images (0 = chance agreement, 1 = every image ranks alike); split-half: Spearman-Brown "
             "corrected Spearman correlation of the ranking on two random halves of the images, 95% percentile "
             "bootstrap CI; MDE: median over adjacent explainers of the smallest paired difference detectable at "
             "this n (Wilcoxon, Holm over all explainer pairs); n needed: the largest n an adjacent pair of the "
             "order needs for its observed difference; disagree: metrics of the same kind whose explainer ranking "
             "runs the other way (Kendall tau < 0); substrate tau: the smallest Kendall tau between the rankings "
             "under two substrates; MetaQuantus: meta-consistency in [0, 1] under input / model perturbations "
             "(when computed).", ""]
    if card_df.empty:
        return "\n".join(lines + ["No scores.", ""])
    order = card_df.assign(_s=card_df["stage"].map({"pre": 0, "post": 1})).sort_values(["model", "_s"], kind="stable")
    for (model, _, stage), sub in order.groupby(["model", "_s", "stage"], sort=True):
        lines += [f"## {model} · {stage}", ""]
        rows = [[r.metric + (" ↑" if r.higher_is_better else " ↓"), str(r.n_images),
                 "n/a" if r.beat_random < 0 else f"{r.beat_random} of {r.real_explainers}",
                 "yes" if r.control_beats_real else "no", _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high),
                 _ci(r.split_half, r.split_half_ci_low, r.split_half_ci_high), _f(r.mde_median), _n(r.n_needed_max),
                 str(r.disagreements), _f(r.substrate_tau_min, ".2f"),
                 f"{_f(r.meta_input, '.2f')} / {_f(r.meta_model, '.2f')}", r.verdict]
                for r in sub.itertuples(index=False)]
        lines += markdown_table(["metric", "n", "beat random", "control beats a method", "alpha [CI]",
                                 "split-half [CI]", "MDE", "n needed", "disagree", "substrate tau",
                                 "MetaQuantus input / model", "verdict"], rows) + [""]
    lines += _details(tables)
    return "\n".join(lines)


def _section(title: str, what: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"## {title}", "", what, ""] + markdown_table(header, rows) + [""] if rows else []


def _details(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    c, p, a = tables["reliability_controls"], tables["reliability_power"], tables["reliability_agreement"]
    s, m = tables.get("reliability_substrates"), tables.get("reliability_meta")
    lines = _section(
        "Control separation", "Paired goodness difference explainer − control over the images both scored, 95% BCa "
        "CI, Wilcoxon signed-rank p, Holm over the (model, stage) card.",
        ["model", "stage", "metric", "explainer", "control", "n", "diff [95% CI]", "p", "Holm p", "verdict"],
        [[r.model, r.stage, r.metric, r.explainer, r.control, str(r.n), _ci(r.diff_mean, r.diff_ci_low, r.diff_ci_high),
          _f(r.p_wilcoxon), _f(r.p_holm), r.verdict] for r in c.itertuples(index=False)])
    lines += _section(
        "Power", "Adjacent explainers in each metric's order (by mean goodness): the observed paired difference, the "
        "smallest one detectable at this n, and the n the observed one needs. Underpowered pairs are tied at this n: "
        "their order is not a result.",
        ["model", "stage", "metric", "better", "worse", "n", "diff", "MDE", "n needed", "tied at this n"],
        [[r.model, r.stage, r.metric, r.better, r.worse, str(r.n), _f(r.diff_mean), _f(r.mde), _n(r.n_needed),
          "yes" if r.underpowered else "no"] for r in p.itertuples(index=False)])
    lines += _section(
        "Agreement between metrics", "Kendall's tau between the explainer rankings (mean goodness) of two metrics; "
        "+ = expected to agree (same kind of metric).",
        ["model", "stage", "metric a", "metric b", "explainers", "tau", "p", "expected", "verdict"],
        [[r.model, r.stage, r.metric_a, r.metric_b, str(r.n_explainers), _f(r.kendall_tau, ".2f"), _f(r.p_value),
          r.expected, r.verdict] for r in a.itertuples(index=False)])
    if s is not None:
        lines += _section(
            "Substrate sensitivity", "Kendall's tau between a metric's explainer rankings under two substrates "
            "(imputation: the metric registered to impute for it, e.g. ROAD's noisy linear imputation beside "
            "deletion), and how many real explainers beat random under each (Wilcoxon, Holm within the metric and "
            "substrate).",
            ["model", "stage", "metric", "substrate a", "substrate b", "explainers", "tau", "beat random a",
             "beat random b"],
            [[r.model, r.stage, r.metric, r.substrate_a, r.substrate_b, str(r.n_explainers), _f(r.kendall_tau, ".2f"),
              _beats(r.beat_random_a), _beats(r.beat_random_b)] for r in s.itertuples(index=False)])
    if m is not None:
        lines += _section(
            "Noise resilience and adversary reactivity (MetaQuantus)", "Hedström et al. 2023. IAC: Wilcoxon p "
            "between unperturbed and perturbed scores (NR: high = unchanged under a minor perturbation; AR: 1 − p, "
            "high = changed under a disruptive one); IEC: share of explainer rankings kept (NR) / of scores made "
            "worse (AR); MC: their mean, in [0, 1].",
            ["model", "stage", "metric", "test", "images", "IAC NR", "IAC AR", "IEC NR", "IEC AR", "MC"],
            [[r.model, r.stage, r.metric, r.test, str(r.n_images), _f(r.iac_nr, ".2f"), _f(r.iac_ar, ".2f"),
              _f(r.iec_nr, ".2f"), _f(r.iec_ar, ".2f"), _f(r.mc, ".2f")] for r in m.itertuples(index=False)])
    return lines


def _beats(v: Any) -> str:
    return "n/a" if int(v) < 0 else str(int(v))
