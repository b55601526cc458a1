"""The reliability card: can a metric be trusted on this run's model, images and explainers?

For every (model, stage, metric) the card answers, each with its interval:

1. **Control separation.** Each real explainer against each control (``random``, ``edge``): read
   from the table's paired comparisons (:mod:`bench.report.comparisons`: mean paired goodness
   difference, t test, max-T over the table's pairs, the interval of the same test and family),
   so the card and the leaderboard's ranks never disagree. Summary: how many distinct real
   explainers beat ``random``, and a flag when a control beats a real explainer.
2. **Consistency across images** (Tomsett et al. 2020, "Sanity Checks for Saliency Metrics",
   AAAI): Krippendorff's alpha (ordinal; Krippendorff 2004) of the per-image rankings of the
   explainers, images as raters, with a BCa bootstrap CI over images; and split-half reliability of
   the leaderboard's ranking: the Spearman correlation of the explainers' mean goodness on two
   random halves of the images, Spearman-Brown corrected (``2 r / (1 + r)``), averaged over
   random splits, with a percentile bootstrap CI over images.
3. **Noise resilience and adversary reactivity** (Hedström et al. 2023, MetaQuantus, TMLR): read
   from ``meta.csv`` when the run computed it (:mod:`bench.run.meta`), with its CI where the run
   stored the per-draw scores (``meta_scores.csv``).
4. **Agreement between metrics.** Kendall's tau-b between the explainer rankings of every pair of
   metrics (both oriented so that higher is better), with a BCa CI over images resampled jointly
   for both metrics: metrics of the same kind (e.g. faithfulness) are expected to agree; a pair
   whose interval lies below 0 is flagged.
5. **Substrate sensitivity.** From ``substrates.csv`` when the run computed it: Kendall's tau (with
   its CI) between the rankings under each pair of substrates, and control separation under each
   (the same paired tests, the substrate's table as the family).
6. **Power.** For adjacent explainers of each metric's order (by mean goodness): the smallest
   paired difference the table's test (paired t at ``alpha / m``, ``m`` the table's pairs) detects
   with 80 % power at the run's n, and the n the observed difference needs
   (:mod:`bench.stats.power`).
7. **Truth** (only a sub-run of ``bench truth``, on marked data): the metric's agreement with the
   planted-marker truth, as :mod:`bench.report.truth` measured it for the run's marker polarity
   (``truth_agreement.csv``: Kendall's tau-b between the metric's ranking of the explainers on the
   confound models and the truth ranking, its image-bootstrap interval and verdict); "n/a" for a
   metric the truth test does not grade. The truth tables hand these rows to the card
   (``truth=``); an ordinary run's card has no such column.

A metric *fails* the card when no real explainer beats ``random`` (for metrics whose controls are
baselines), or when the image rankings agree no better than chance (the lower bound of alpha's CI
at or below 0). ``leaderboard.md`` marks such metric columns. A control that beats a real explainer
is flagged (it says as much about that explainer as about the metric) but does not fail the metric.
Explainers found to be aliases (:mod:`bench.stats.aliases`) are counted once everywhere.

Everything here is computed from files (``scores.csv``, ``substrates.csv``, ``meta.csv``), so
``bench report`` rebuilds the card byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_text
from bench.core.schema import stage_key
from bench.core.text import csv_text, fmt_number, markdown_table
from bench.metrics import METRICS
from bench.report.comparisons import Comparisons, GoodnessTable, compare, goodness_tables
from bench.report.format import arrow, ci_text
from bench.stats.agreement import image_interval, image_ranks, kendall_tau, krippendorff_alpha, split_half
from bench.stats.metaquantus import consistency, mc_interval
from bench.stats.power import N_CAP, min_detectable_difference, n_needed
from bench.stats.settings import StatsSettings

__all__ = [
    "CardSettings",
    "TRUTH_COLUMNS",
    "card",
    "image_ranks",
    "krippendorff_alpha",
    "meta_table",
    "render_card_md",
    "split_half",
    "truth_cells",
    "write_card",
]


@dataclass(frozen=True)
class CardSettings:
    """The card's choices (``[reliability]`` of the run config; recorded in the manifest)."""

    controls: tuple[str, ...] = ("random", "edge")
    alpha: float = 0.05
    power: float = 0.8
    splits: int = 100  # random split halves per split-half estimate
    bootstrap: int = 1000  # resamples of the alpha, split-half and tau CIs
    seed: int = 0

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> "CardSettings":
        values = dict(values or {})
        keep: dict[str, Any] = {
            k: (tuple(v) if k == "controls" else v) for k, v in values.items() if k in cls.__dataclass_fields__
        }
        return cls(**keep)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "controls": list(self.controls)}


def goodness(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Scores oriented so that higher is better."""
    return values if higher_is_better else -values


def _interval(stat, n: int, settings: CardSettings, method: str = "BCa", salt: int = 0) -> tuple[float, float]:
    return image_interval(stat, n, n_resamples=settings.bootstrap, seed=settings.seed + salt, method=method)


# ----------------------------------------------------------------------------- the tables


CONTROL_COLUMNS = [
    "model",
    "stage",
    "metric",
    "explainer",
    "control",
    "n",
    "diff_mean",
    "level",
    "diff_ci_low",
    "diff_ci_high",
    "p",
    "p_adj",
    "family",
    "verdict",
]


def control_table(comparisons: Comparisons, settings: CardSettings) -> pd.DataFrame:
    """Every real explainer against every control, per table: the table's own paired comparison,
    oriented explainer minus control (goodness)."""
    rows = []
    pairs = comparisons.pairs
    for r in pairs.itertuples(index=False):
        for e, c, sign in ((r.a, r.b, 1.0), (r.b, r.a, -1.0)):
            if c not in settings.controls or e in settings.controls:
                continue
            low, high = (r.ci_low, r.ci_high) if sign > 0 else (-r.ci_high, -r.ci_low)
            diff = sign * r.diff
            if not np.isfinite(r.p):
                verdict = "n/a"
            elif r.separated:
                verdict = "beats the control" if diff > 0 else "LOSES to the control"
            elif r.equivalent:
                verdict = "equivalent to the control"
            else:
                verdict = r.verdict
            rows.append(
                [
                    r.model,
                    r.stage,
                    r.metric,
                    e,
                    c,
                    int(r.n_images),
                    diff,
                    r.level,
                    low,
                    high,
                    r.p,
                    r.p_adj,
                    r.family,
                    verdict,
                ]
            )
    table = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    return table.sort_values(["model", "stage", "metric", "explainer", "control"], kind="stable").reset_index(drop=True)


POWER_COLUMNS = [
    "model",
    "stage",
    "metric",
    "better",
    "worse",
    "n",
    "diff_mean",
    "sd",
    "level",
    "mde",
    "n_needed",
    "verdict",
]


def power_table(
    tables: Mapping[tuple[str, str, str], GoodnessTable], comparisons: Comparisons, settings: CardSettings
) -> pd.DataFrame:
    """Adjacent explainers of each table's order (by mean goodness): observed paired difference,
    the smallest one the table's test detects with ``settings.power`` at this n, the n the observed
    one needs, and the table's verdict on the pair."""
    rows = []
    pairs = comparisons.pairs
    verdicts = {(r.model, r.stage, r.metric, r.a, r.b): r.verdict for r in pairs.itertuples(index=False)}
    levels = pairs.groupby(["model", "stage", "metric"])["level"].first().to_dict() if len(pairs) else {}
    for (model, stage, metric), t in tables.items():
        g = t.values[0]
        k, n = g.shape[1], g.shape[0]
        if k < 2 or n < 2:
            continue
        level = 1 - levels.get((model, stage, metric), 1 - settings.alpha)  # the table's per-test level alpha / m
        means = g.mean(0)
        order = sorted(range(k), key=lambda j: (-means[j], j))
        for b, w in zip(order, order[1:]):
            d = g[:, b] - g[:, w]
            sd = float(d.std(ddof=1))
            better, worse = t.explainers[b], t.explainers[w]
            rows.append(
                [
                    model,
                    stage,
                    metric,
                    better,
                    worse,
                    n,
                    float(d.mean()),
                    sd,
                    level,
                    min_detectable_difference(sd, n, level, settings.power),
                    n_needed(float(d.mean()), sd, level, settings.power),
                    verdicts.get((model, stage, metric, better, worse), "n/a"),
                ]
            )
    return pd.DataFrame(rows, columns=POWER_COLUMNS)


AGREEMENT_COLUMNS = [
    "model",
    "stage",
    "metric_a",
    "metric_b",
    "n_explainers",
    "n_images",
    "kendall_tau",
    "tau_ci_low",
    "tau_ci_high",
    "expected",
    "verdict",
]


def _tau_with_ci(a: np.ndarray, b: np.ndarray, settings: CardSettings, salt: int) -> tuple[float, float, float]:
    """Kendall's tau-b of the column means of ``a`` and ``b`` (images x explainers, the same images)
    and its BCa interval over images resampled jointly."""
    tau = float(kendall_tau(a.mean(0), b.mean(0)))
    if a.shape[1] < 3 or not np.isfinite(tau):
        return tau, float("nan"), float("nan")
    low, high = _interval(
        lambda idx: float(kendall_tau(a[idx].mean(0), b[idx].mean(0))), a.shape[0], settings, salt=salt
    )
    return tau, low, high


def _agreement_verdict(low: float, high: float, same_kind: bool) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    if high < 0:
        return "DISAGREE" if same_kind else "run opposite"
    return "agree" if low > 0 else "not separable from no agreement"


def _common(x: GoodnessTable, y: GoodnessTable) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted(set(x.explainers) & set(y.explainers))
    images = sorted(set(x.images) & set(y.images))
    pick = lambda t: t.values[0][  # noqa: E731
        np.ix_(
            [t.images.index(i) for i in images],
            [t.explainers.index(e) for e in names],
        )
    ]
    return pick(x), pick(y), names


def agreement_table(
    tables: Mapping[tuple[str, str, str], GoodnessTable], kinds: Mapping[str, str | None], settings: CardSettings
) -> pd.DataFrame:
    """Kendall's tau between the explainer rankings (mean goodness) of every pair of metrics."""
    rows = []
    by_stage: dict[tuple[str, str], dict[str, GoodnessTable]] = {}
    for (model, stage, metric), t in tables.items():
        by_stage.setdefault((model, stage), {})[metric] = t
    for i, ((model, stage), ts) in enumerate(sorted(by_stage.items())):
        for j, (a, b) in enumerate(combinations(sorted(ts), 2)):
            x, y, names = _common(ts[a], ts[b])
            tau = low = high = float("nan")
            if len(names) >= 3 and x.shape[0] >= 1:
                tau, low, high = _tau_with_ci(x, y, settings, salt=1000 * i + j)
            same_kind = kinds.get(a) is not None and kinds.get(a) == kinds.get(b)
            rows.append(
                [
                    model,
                    stage,
                    a,
                    b,
                    len(names),
                    x.shape[0],
                    tau,
                    low,
                    high,
                    "+" if same_kind else "",
                    _agreement_verdict(low, high, same_kind),
                ]
            )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


CARD_COLUMNS = [
    "model",
    "stage",
    "metric",
    "higher_is_better",
    "n_images",
    "n_explainers",
    "beat_random",
    "real_explainers",
    "control_beats_real",
    "alpha",
    "alpha_ci_low",
    "alpha_ci_high",
    "split_half",
    "split_half_ci_low",
    "split_half_ci_high",
    "mde_median",
    "n_needed_max",
    "disagreements",
    "substrate_tau_min",
    "meta_input",
    "meta_model",
    "verdict",
]


TRUTH_COLUMNS = ("stage", "metric", "tau_truth", "tau_low", "tau_high", "verdict")


def truth_cells(card_df: pd.DataFrame, truth: pd.DataFrame) -> list[str]:
    """The card's ``truth`` column: per row, "verdict: tau t [low, high]" of the truth row of its
    stage and metric (``truth``: :data:`TRUTH_COLUMNS`, one marker polarity), "n/a" where there is none."""
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise BenchError(
            f"the truth rows of the reliability card lack column(s) {missing}; they are "
            f"truth_agreement.csv's rows of one polarity with its stage"
        )
    if "polarity" in truth.columns and truth["polarity"].nunique() > 1:
        raise BenchError(
            f"the truth rows of one reliability card mix the polarities "
            f"{sorted(truth['polarity'].unique())}; give the rows of the run's own polarity"
        )
    if truth.duplicated(["stage", "metric"]).any():
        raise BenchError("the truth rows of the reliability card name a (stage, metric) twice")
    rows = {(r.stage, r.metric): r for r in truth.itertuples(index=False)}
    out = []
    for stage, metric in zip(card_df["stage"], card_df["metric"]):
        r = rows.get((stage, metric))
        tau = "n/a" if r is None else ci_text(r.tau_truth, r.tau_low, r.tau_high, ".2f")
        out.append("n/a" if r is None or tau == "n/a" else f"{r.verdict}: tau {tau}")
    return out


def card(
    scores: pd.DataFrame,
    settings: CardSettings,
    kinds: Mapping[str, str | None],
    *,
    substrates: pd.DataFrame | None = None,
    meta: pd.DataFrame | None = None,
    comparisons: Comparisons | None = None,
    stats: StatsSettings | None = None,
    roles: Mapping[str, str] | None = None,
    truth: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the card from checked scores (``bench.report.leaderboard.check_scores``) with
    aliases already collapsed. ``comparisons``: the tables' paired comparisons (computed here with
    ``stats`` when not given); ``roles``: per metric, what its controls are (``"baseline"``, the
    default: a real explainer should beat ``random``; ``"none"``: random may score best or worst
    by construction, so "no explainer beats random" does not fail the metric); ``truth``: the
    model-truth agreement of the run's polarity (:func:`truth_cells`), given only for a sub-run of
    ``bench truth``: the card gains a ``truth`` column after ``verdict``."""
    stats = stats or StatsSettings(alpha=settings.alpha)
    roles = roles or {}
    tables = goodness_tables(scores)
    comparisons = comparisons if comparisons is not None else compare(tables, stats, kinds)
    controls = control_table(comparisons, settings)
    power = power_table(tables, comparisons, settings)
    agreement = agreement_table(tables, kinds, settings)
    subst, subst_controls = (
        substrate_table(substrates, settings, stats, kinds)
        if substrates is not None and len(substrates)
        else (None, None)
    )
    rows = []
    for i, ((model, stage, metric), t) in enumerate(tables.items()):
        g = t.values[0]
        rng = np.random.default_rng([settings.seed, i])
        c = controls[(controls["model"] == model) & (controls["stage"] == stage) & (controls["metric"] == metric)]
        vs_random = c[c["control"] == "random"]
        beat = int((vs_random["verdict"] == "beats the control").sum())
        loses = bool((c["verdict"] == "LOSES to the control").any())
        alpha = krippendorff_alpha(g)
        a_low, a_high = _interval(lambda idx, g=g: krippendorff_alpha(g[idx]), g.shape[0], settings)
        sh = split_half(g, settings.splits, rng)
        sh_low, sh_high = _interval(
            lambda idx, g=g: split_half(g[idx], max(1, settings.splits // 10), np.random.default_rng(settings.seed)),
            g.shape[0],
            settings,
            method="percentile",
        )
        p = power[(power["model"] == model) & (power["stage"] == stage) & (power["metric"] == metric)]
        a = agreement[
            (agreement["model"] == model)
            & (agreement["stage"] == stage)
            & ((agreement["metric_a"] == metric) | (agreement["metric_b"] == metric))
        ]
        reasons = []
        if len(vs_random) and beat == 0 and roles.get(metric, "baseline") == "baseline":
            reasons.append("no explainer beats random")
        if np.isfinite(a_low) and a_low <= 0:
            reasons.append("image rankings agree no better than chance")
        tau_min = float("nan")
        if subst is not None:
            s = subst[(subst["model"] == model) & (subst["stage"] == stage) & (subst["metric"] == metric)]
            if len(s) and s["kendall_tau"].notna().any():
                tau_min = float(s["kendall_tau"].min())
        rows.append(
            {
                "model": model,
                "stage": stage,
                "metric": metric,
                "higher_is_better": t.higher_is_better,
                "n_images": g.shape[0],
                "n_explainers": g.shape[1],
                "beat_random": beat if len(vs_random) and roles.get(metric, "baseline") == "baseline" else -1,
                "real_explainers": int(sum(e not in settings.controls for e in t.explainers)),
                "control_beats_real": loses,
                "alpha": alpha,
                "alpha_ci_low": a_low,
                "alpha_ci_high": a_high,
                "split_half": sh,
                "split_half_ci_low": sh_low,
                "split_half_ci_high": sh_high,
                # all-NaN: NaN without numpy's "Mean of empty slice" warning (pandas 2.2 passes it on)
                "mde_median": float(p["mde"].median()) if p["mde"].notna().any() else float("nan"),
                "n_needed_max": float(p["n_needed"].max()) if len(p) else float("nan"),
                "disagreements": int((a["verdict"] == "DISAGREE").sum()),
                "substrate_tau_min": tau_min,
                "meta_input": _meta_score(meta, model, stage, metric, "input"),
                "meta_model": _meta_score(meta, model, stage, metric, "model"),
                "verdict": "fails: " + "; ".join(reasons) if reasons else "ok",
            }
        )
    main = pd.DataFrame(rows, columns=CARD_COLUMNS)
    if truth is not None:
        main["truth"] = truth_cells(main, truth)
    out = {
        "reliability": main,
        "reliability_controls": controls,
        "reliability_power": power,
        "reliability_agreement": agreement,
    }
    if subst is not None:
        out["reliability_substrates"] = subst
        out["reliability_substrate_controls"] = subst_controls
    if meta is not None and len(meta):
        out["reliability_meta"] = meta
    return out


def meta_table(meta: pd.DataFrame | None, raw: pd.DataFrame | None, settings: CardSettings) -> pd.DataFrame | None:
    """The card's MetaQuantus table: ``meta.csv`` as the run measured it or, where the run stored the
    per-draw scores (``meta_scores.csv``, aliases already dropped), recomputed from them with a 95 %
    interval of MC over images and draws (:mod:`bench.stats.metaquantus`)."""
    if raw is None or not len(raw) or meta is None:
        return meta
    rows = []
    for i, r in enumerate(meta.itertuples(index=False)):
        part = raw[
            (raw["model"] == r.model)
            & (raw["stage"] == r.stage)
            & (raw["metric"] == r.metric)
            & (raw["test"] == r.test)
        ]
        hib = _direction(r.metric)
        values = consistency(part, hib) if len(part) else {k: getattr(r, k) for k in META_VALUES}
        low, high = (
            mc_interval(part, hib, n_resamples=settings.bootstrap, seed=settings.seed + i)
            if len(part)
            else (float("nan"), float("nan"))
        )
        rows.append(
            {
                "model": r.model,
                "stage": r.stage,
                "metric": r.metric,
                "test": r.test,
                "n_images": r.n_images,
                **values,
                "mc_ci_low": low,
                "mc_ci_high": high,
            }
        )
    return pd.DataFrame(rows)


META_VALUES = ("iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc")


def _direction(metric: str) -> bool:
    return bool(METRICS.get(metric).meta["higher_is_better"]) if metric in METRICS else True


def _meta_score(meta: pd.DataFrame | None, model: str, stage: str, metric: str, test: str) -> float:
    if meta is None or not len(meta):
        return float("nan")
    m = meta[(meta["model"] == model) & (meta["stage"] == stage) & (meta["metric"] == metric) & (meta["test"] == test)]
    return float(m["mc"].iloc[0]) if len(m) else float("nan")


SUBSTRATE_COLUMNS = [
    "model",
    "stage",
    "metric",
    "substrate_a",
    "substrate_b",
    "n_explainers",
    "n_images",
    "kendall_tau",
    "tau_ci_low",
    "tau_ci_high",
    "beat_random_a",
    "beat_random_b",
]


def substrate_table(
    substrates: pd.DataFrame, settings: CardSettings, stats: StatsSettings, kinds: Mapping[str, str | None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Kendall's tau (with its CI) between the explainer rankings of a metric under each pair of
    substrates and how many real explainers beat ``random`` under each; every real explainer against
    every control under each substrate): the substrate's own paired tests, one family per metric and
    substrate."""
    df = substrates[(substrates["status"] == "ok") & np.isfinite(substrates["value"].to_numpy(dtype=float))]
    rows = []
    control_parts = []
    for i, ((model, stage, metric), g) in enumerate(df.groupby(["model", "stage", "metric"], sort=True)):
        hib = bool(g["higher_is_better"].iloc[0])
        subs: dict[str, GoodnessTable] = {}
        for sub, h in g.groupby("substrate", sort=True):
            wide = h.pivot(index="image", columns="explainer", values="value").sort_index(axis=1).dropna(how="any")
            vals = wide.to_numpy(dtype=np.float64)
            subs[sub] = GoodnessTable(
                model,
                stage,
                metric,
                hib,
                tuple(wide.columns),
                tuple(int(x) for x in wide.index),
                (model,),
                goodness(vals, hib)[None],
            )
        beats = {}
        for sub, t in subs.items():
            c = control_table(compare({t.key: t}, stats, kinds, family="substrate"), settings)
            c.insert(3, "substrate", sub)
            c["family"] = c["family"].str.replace(f" · {metric} (", f" · {metric} · {sub} (", regex=False)
            control_parts.append(c)
            beats[sub] = (
                int(((c["control"] == "random") & (c["verdict"] == "beats the control")).sum())
                if "random" in t.explainers
                else -1
            )
        for j, (a, b) in enumerate(combinations(sorted(subs), 2)):
            x, y, names = _common(subs[a], subs[b])
            tau = low = high = float("nan")
            if len(names) >= 3:
                tau, low, high = _tau_with_ci(x, y, settings, salt=100_000 + 1000 * i + j)
            rows.append([model, stage, metric, a, b, len(names), x.shape[0], tau, low, high, beats[a], beats[b]])
    controls = (
        pd.concat(control_parts, ignore_index=True)
        if control_parts
        else pd.DataFrame(columns=CONTROL_COLUMNS[:3] + ["substrate"] + CONTROL_COLUMNS[3:])
    )
    return pd.DataFrame(rows, columns=SUBSTRATE_COLUMNS), controls


# ----------------------------------------------------------------------------- files


def write_card(run_dir: Path, tables: Mapping[str, pd.DataFrame], settings: CardSettings) -> list[Path]:
    """``reliability.csv`` (the card), its detail tables and ``reliability.md``; atomically."""
    written = [atomic_write_text(run_dir / f"{name}.csv", csv_text(table)) for name, table in sorted(tables.items())]
    written.append(atomic_write_text(run_dir / "reliability.md", render_card_md(tables, settings)))
    return written


def _f(x: Any, spec: str = ".3g") -> str:
    return fmt_number(x, spec, inf="∞")


def _ci(v: Any, low: Any, high: Any) -> str:
    return ci_text(v, low, high, ".3g", inf="∞")


def _n(x: Any) -> str:
    v = float(x)
    return "n/a" if not np.isfinite(v) and v != float("inf") else (f"> {N_CAP}" if v == float("inf") else str(int(v)))


TRUTH_LEGEND = (
    " truth (a sub-run of `bench truth` only): does the metric rank the explainers like the planted "
    "marker's truth? Kendall's tau-b between its ranking on the confound models (marked images) and "
    "the ranking by discrimination (confound − noise marker share), with its image-bootstrap CI and "
    "verdict, from the truth folder's truth_agreement.csv for this run's polarity (one value per "
    "metric and polarity, measured across the confound models, shown on every model of the run); "
    "n/a: the truth test does not grade the metric (not a faithfulness metric)."
)


def render_card_md(tables: Mapping[str, pd.DataFrame], settings: CardSettings) -> str:
    """reliability.md: per (model, stage) the card, then its details."""
    card_df = tables["reliability"]
    lines = [
        "# Reliability card",
        "",
        "Can each metric be trusted on this run? Goodness = the score, negated where lower is better. "
        f"Controls: {', '.join(settings.controls)}; power {settings.power:g}. "
        "beat random: distinct real explainers (aliases counted once) that the table's paired test separates "
        "above `random` (mean paired difference, t test, max-T over the table's pairs: the leaderboard's "
        "own comparisons); alpha: Krippendorff's alpha (ordinal) of the per-image rankings of the explainers, "
        "images as raters, 95% BCa CI over images (0 = chance agreement, 1 = every image ranks alike); "
        "split-half: Spearman-Brown corrected Spearman correlation of the ranking on two random halves of the "
        "images, 95% percentile bootstrap CI; MDE: median over adjacent explainers of the smallest paired "
        "difference the table's test detects at this n; n needed: the largest n an adjacent pair of the order "
        "needs for its observed difference; disagree: metrics of the same kind whose rankings' Kendall tau has "
        "its whole 95% CI below 0; substrate tau: the smallest Kendall tau between the rankings under two "
        "substrates; MetaQuantus: meta-consistency in [0, 1] under input / model perturbations (when "
        "computed)." + (TRUTH_LEGEND if "truth" in card_df.columns else ""),
        "",
    ]
    if card_df.empty:
        return "\n".join(lines + ["No scores.", ""])
    truth = "truth" in card_df.columns
    order = card_df.assign(_s=card_df["stage"].map(stage_key)).sort_values(["model", "_s"], kind="stable")
    for (model, _, stage), sub in order.groupby(["model", "_s", "stage"], sort=True):
        lines += [f"## {model} · {stage}", ""]
        rows = [
            [
                f"{r.metric} {arrow(r.higher_is_better)}",
                str(r.n_images),
                "n/a" if r.beat_random < 0 else f"{r.beat_random} of {r.real_explainers}",
                "yes" if r.control_beats_real else "no",
                _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high),
                _ci(r.split_half, r.split_half_ci_low, r.split_half_ci_high),
                _f(r.mde_median),
                _n(r.n_needed_max),
                str(r.disagreements),
                _f(r.substrate_tau_min, ".2f"),
                f"{_f(r.meta_input, '.2f')} / {_f(r.meta_model, '.2f')}",
                r.verdict,
            ]
            + ([r.truth] if truth else [])
            for r in sub.itertuples(index=False)
        ]
        lines += markdown_table(
            [
                "metric",
                "n",
                "beat random",
                "control beats a method",
                "alpha [CI]",
                "split-half [CI]",
                "MDE",
                "n needed",
                "disagree",
                "substrate tau",
                "MetaQuantus input / model",
                "verdict",
            ]
            + (["truth"] if truth else []),
            rows,
        ) + [""]
    lines += _details(tables)
    return "\n".join(lines)


def _section(title: str, what: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"## {title}", "", what, ""] + markdown_table(header, rows) + [""] if rows else []


def _details(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    c, p, a = tables["reliability_controls"], tables["reliability_power"], tables["reliability_agreement"]
    s, m = tables.get("reliability_substrates"), tables.get("reliability_meta")
    lines = _section(
        "Control separation",
        "The table's paired comparison of explainer and control: mean goodness difference "
        "explainer − control with its t interval at the family's level (it excludes 0 exactly when the adjusted p is "
        "below alpha), max-T adjusted p; the family is the table's pairs (comparisons.csv).",
        ["model", "stage", "metric", "explainer", "control", "n", "diff [CI]", "level", "adj. p", "verdict"],
        [
            [
                r.model,
                r.stage,
                r.metric,
                r.explainer,
                r.control,
                str(r.n),
                _ci(r.diff_mean, r.diff_ci_low, r.diff_ci_high),
                _f(r.level, ".4g"),
                _f(r.p_adj),
                r.verdict,
            ]
            for r in c.itertuples(index=False)
        ],
    )
    lines += _section(
        "Power",
        "Adjacent explainers in each metric's order (by mean goodness): the observed paired difference, the "
        "smallest one the table's test detects with the card's power at this n, the n the observed one needs, and "
        "the table's verdict on the pair.",
        ["model", "stage", "metric", "better", "worse", "n", "diff", "MDE", "n needed", "verdict"],
        [
            [
                r.model,
                r.stage,
                r.metric,
                r.better,
                r.worse,
                str(r.n),
                _f(r.diff_mean),
                _f(r.mde),
                _n(r.n_needed),
                r.verdict,
            ]
            for r in p.itertuples(index=False)
        ],
    )
    lines += _section(
        "Agreement between metrics",
        "Kendall's tau-b between the explainer rankings (mean goodness) of two metrics "
        "on their common images and explainers, 95% BCa CI over images resampled jointly for both; + = expected to "
        "agree (same kind of metric).",
        ["model", "stage", "metric a", "metric b", "explainers", "tau [CI]", "expected", "verdict"],
        [
            [
                r.model,
                r.stage,
                r.metric_a,
                r.metric_b,
                str(r.n_explainers),
                _ci(r.kendall_tau, r.tau_ci_low, r.tau_ci_high),
                r.expected,
                r.verdict,
            ]
            for r in a.itertuples(index=False)
        ],
    )
    if s is not None:
        lines += _section(
            "Substrate sensitivity",
            "Kendall's tau-b between a metric's explainer rankings under two substrates, 95% "
            "BCa CI over images (imputation: the metric registered to impute for it, e.g. ROAD's noisy linear "
            "imputation beside deletion), and how many real explainers beat random under each (the substrate's "
            "own paired tests: max-T over its pairs).",
            [
                "model",
                "stage",
                "metric",
                "substrate a",
                "substrate b",
                "explainers",
                "tau [CI]",
                "beat random a",
                "beat random b",
            ],
            [
                [
                    r.model,
                    r.stage,
                    r.metric,
                    r.substrate_a,
                    r.substrate_b,
                    str(r.n_explainers),
                    _ci(r.kendall_tau, r.tau_ci_low, r.tau_ci_high),
                    _beats(r.beat_random_a),
                    _beats(r.beat_random_b),
                ]
                for r in s.itertuples(index=False)
            ],
        )
    if m is not None:
        ci = "mc_ci_low" in m.columns
        lines += _section(
            "Noise resilience and adversary reactivity (MetaQuantus)",
            "Hedström et al. 2023. IAC: Wilcoxon p "
            "between unperturbed and perturbed scores (NR: high = unchanged under a minor perturbation; AR: 1 − p, "
            "high = changed under a disruptive one); IEC: share of explainer rankings kept (NR) / of scores made "
            "worse (AR); MC: their mean, in [0, 1]"
            + (", 95% percentile CI over images and draws" if ci else " (this run stored no per-draw scores: no CI)")
            + ".",
            ["model", "stage", "metric", "test", "images", "IAC NR", "IAC AR", "IEC NR", "IEC AR", "MC"],
            [
                [
                    r.model,
                    r.stage,
                    r.metric,
                    r.test,
                    str(r.n_images),
                    _f(r.iac_nr, ".2f"),
                    _f(r.iac_ar, ".2f"),
                    _f(r.iec_nr, ".2f"),
                    _f(r.iec_ar, ".2f"),
                    _ci(r.mc, r.mc_ci_low, r.mc_ci_high) if ci else _f(r.mc, ".2f"),
                ]
                for r in m.itertuples(index=False)
            ],
        )
    return lines


def _beats(v: Any) -> str:
    return "n/a" if int(v) < 0 else str(int(v))
