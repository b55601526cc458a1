"""Does a method win exactly where its baseline matches the substrate? The baseline x substrate interaction.

A method with a reference image (integrated gradients, DeepLIFT, occlusion) is run twice in one run,
as a base and an explainer variant (``captum.integrated_gradients`` and
``captum.integrated_gradients@blur`` with ``baseline = "blur"``), and each is scored by
deletion and insertion on the substrates matching the two baselines (the run's own substrate in
``scores.csv``, the others re-scored by the reliability card's substrate sensitivity in
``substrates.csv``). For one (model, stage, pair, metric) and each image ``i`` scored ok by both
methods on both substrates, with ``g(b, s)`` the goodness (the score, negated where lower is better)
of the method with baseline ``b`` on substrate ``s``, ``A`` and ``B`` the two baselines::

    I_i = [g(A, A) - g(B, A)] - [g(A, B) - g(B, B)]

the difference-in-differences of the 2 x 2 (baseline x substrate) table. ``I > 0``: each baseline does
better, relative to the other, on its own substrate; ``I < 0``: the opposite; ``I`` does not depend
on which method is called ``A``. The main effects (one baseline better everywhere, one substrate
harder for everyone) cancel.

Per row: ``n``, the four cell means (in the metric's own units), the mean of ``I`` with its
bootstrap interval (:func:`bench.stats.estimate.bootstrap_ci`: BCa, seeded, ``[stats] bootstrap``
resamples) at the family's level ``1 - alpha / m``, the Hodges-Lehmann pseudo-median of ``I`` (the
location the signed-rank test is about), Wilcoxon's signed-rank p (``scipy.stats.wilcoxon``,
two-sided, exact zeros dropped) and its Bonferroni-adjusted p (:func:`bench.stats.estimate.bonferroni`;
family ``baseline_substrate``: every row of one model). The verdict comes from the test; the mean's
interval is the one the brief asks for, so when it does not agree with the test the verdict says so.
An ``|I_i|`` within ``[stats] alias_atol + alias_rtol * max|score|`` of 0 counts as 0 (the rounding of
an exact zero, e.g. a constructed table without interaction, is not evidence).

Pairs are found in the run's recorded config (``manifest.json``): two names of ``explain.names``
with the same base (:func:`bench.core.registry.split_variant`) whose effective ``baseline`` (the
``[explain.params]`` table over the adapter's defaults) differ and both map to a substrate
(:data:`BASELINE_SUBSTRATE`) scored for the metric. A blur baseline and the blur substrate are the
same images only at the same sigma (:mod:`explainers.references`): a pair whose blur baseline's
``blur_sigma`` differs from the metric's is left out and named in the notes. Written as
``baseline_substrate.csv`` and ``baseline_substrate.md`` only for a run with such a pair.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.core.errors import BenchError
from bench.core.io import atomic_write_text
from bench.core.registry import split_variant
from bench.core.schema import stage_key
from bench.core.text import csv_text, fmt_number, markdown_table
from bench.metrics import metric_params
from bench.report.format import arrow, ci_text, md_text
from bench.stats.estimate import bonferroni, bootstrap_ci
from bench.stats.settings import StatsSettings, family_label
from explainers import explainer_params

__all__ = [
    "BASELINE_SUBSTRATE",
    "COLUMNS",
    "EXPLANATION",
    "METRICS_STUDIED",
    "VERDICT_MATCH",
    "VERDICT_OPPOSITE",
    "Pair",
    "by_substrate",
    "cells",
    "find_pairs",
    "interaction_table",
    "interactions",
    "own_substrates",
    "render_md",
    "write_baseline_substrate",
]

# An explainer's baseline -> the metric substrate made of the same images. One function makes both
# (explainers.references.make_substrate), so the match is exact; "blur" also needs the same sigma.
# "background_mean" has no substrate.
BASELINE_SUBSTRATE: dict[str, str] = {"zero": "zero", "blur": "blur", "mean": "mean", "noise": "noise"}
METRICS_STUDIED = ("deletion_auc", "insertion_auc")
VERDICT_MATCH = "baseline matches substrate: wins on its own substrate"
VERDICT_OPPOSITE = "opposite: each baseline does better on the other's substrate"

COLUMNS = [
    "model",
    "stage",
    "metric",
    "higher_is_better",
    "a",
    "baseline_a",
    "b",
    "baseline_b",
    "blur_sigma",
    "also_differs",
    "n",
    "a_on_a",
    "b_on_a",
    "a_on_b",
    "b_on_b",
    "interaction",
    "ci_low",
    "ci_high",
    "level",
    "pseudo_median",
    "p",
    "p_adj",
    "family",
    "verdict",
]


@dataclass(frozen=True)
class Pair:
    """Two explainers of one base with different baselines, compared on one metric."""

    a: str
    b: str
    baseline_a: str
    baseline_b: str
    metric: str
    blur_sigma: float  # the blur baseline's (= the metric's) sigma; NaN when neither baseline is blur
    also_differs: str = ""  # other parameters the two set differently ("" when only the baseline differs)

    @property
    def substrates(self) -> tuple[str, str]:
        return BASELINE_SUBSTRATE[self.baseline_a], BASELINE_SUBSTRATE[self.baseline_b]


def _config(manifest_or_config: Mapping[str, Any]) -> Mapping[str, Any]:
    c = manifest_or_config.get("config", manifest_or_config)
    return c if isinstance(c, Mapping) else {}


def _effective(config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """An explainer's parameters as the run used them: its ``[explain.params]`` table over the
    adapter's defaults; None when no installed package registers it."""
    try:
        defaults = explainer_params(name)
    except BenchError:
        return None
    given = ((config.get("explain") or {}).get("params") or {}).get(name) or {}
    return {**defaults, **dict(given)}


def own_substrates(config: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """{metric: (substrate, blur_sigma)} of the studied metrics as the run scored them in ``scores.csv``
    (``[metrics.params]`` over the registry's defaults; the substrate re-runs keep its sigma)."""
    given = (config.get("metrics") or {}).get("params") or {}
    out = {}
    for m in METRICS_STUDIED:
        p = {**metric_params(m), **dict(given.get(m) or {})}
        out[m] = (str(p["substrate"]), float(p.get("blur_sigma", float("nan"))))
    return out


def by_substrate(scores: pd.DataFrame, substrates: pd.DataFrame | None, config: Mapping[str, Any]) -> pd.DataFrame:
    """The studied metrics' scores per substrate (``substrates.csv``'s columns): ``scores.csv``'s rows
    under the metric's own substrate, ``substrates.csv``'s rows under the others (its own-substrate
    rows repeat ``scores.csv``'s)."""
    cols = ["model", "stage", "explainer", "metric", "substrate", "image", "value", "status", "higher_is_better"]
    own = own_substrates(_config(config))
    parts = []
    main = scores[scores["metric"].isin(METRICS_STUDIED)]
    if len(main):
        parts.append(main.assign(substrate=main["metric"].map(lambda m: own[m][0]))[cols])
    if substrates is not None and len(substrates):
        s = substrates[substrates["metric"].isin(METRICS_STUDIED)]
        parts.append(s[s["substrate"].astype(str) != s["metric"].map(lambda m: own[m][0])][cols])
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    return out.assign(
        value=pd.to_numeric(out["value"], errors="coerce"),
        status=out["status"].astype(str),
        substrate=out["substrate"].astype(str),
        explainer=out["explainer"].astype(str),
    )


def find_pairs(config: Mapping[str, Any], long: pd.DataFrame) -> tuple[list[Pair], list[str]]:
    """The (pair, metric)s to test and notes on the pairs left out (module docstring). ``config``: the
    run's recorded config (or its manifest); ``long``: :func:`by_substrate`'s table."""
    config = _config(config)
    names = [str(n) for n in (config.get("explain") or {}).get("names") or []]
    groups: dict[str, list[str]] = {}
    for n in names:
        try:
            groups.setdefault(split_variant("explainer", n)[0], []).append(n)
        except BenchError:
            continue
    own = own_substrates(config)
    scored = {m: set(g["substrate"]) for m, g in long.groupby("metric")} if len(long) else {}
    pairs, notes = [], []
    for members in groups.values():
        for a, b in combinations(members, 2):
            pa, pb = _effective(config, a), _effective(config, b)
            if pa is None or pb is None:
                notes.append(f"{a} vs {b}: no installed package registers them; their baselines are unknown")
                continue
            if "baseline" not in pa or pa["baseline"] == pb["baseline"]:
                continue  # no baseline, or the same one: nothing to test
            ba, bb = str(pa["baseline"]), str(pb["baseline"])
            missing = [x for x in (ba, bb) if x not in BASELINE_SUBSTRATE]
            if missing:
                notes.append(f"{a} vs {b}: baseline {missing[0]!r} has no substrate of the same images")
                continue
            blur = [p for p, x in ((pa, ba), (pb, bb)) if x == "blur"]
            sigma = float(blur[0].get("blur_sigma", float("nan"))) if blur else float("nan")
            other = sorted(
                k
                for k in set(pa) | set(pb)
                if k != "baseline" and pa.get(k) != pb.get(k) and (k != "blur_sigma" or blur)
            )
            for m in METRICS_STUDIED:
                if m not in scored:
                    continue
                absent = [BASELINE_SUBSTRATE[x] for x in (ba, bb) if BASELINE_SUBSTRATE[x] not in scored[m]]
                if absent:
                    notes.append(
                        f"{a} vs {b} on {m}: substrate {absent[0]!r} not scored (add it to reliability.substrates)"
                    )
                    continue
                if blur and sigma != own[m][1]:
                    notes.append(
                        f"{a} vs {b} on {m}: the blur baseline's blur_sigma = {sigma:g} is not the "
                        f"metric's {own[m][1]:g}, so baseline and substrate are different images"
                    )
                    continue
                pairs.append(Pair(a, b, ba, bb, m, sigma, ", ".join(other)))
    return pairs, notes


def _pseudo_median(x: np.ndarray) -> float:
    """Hodges-Lehmann estimate: the median of the Walsh averages ``(x_i + x_j) / 2``, ``i <= j``."""
    if not len(x):
        return float("nan")
    i, j = np.triu_indices(len(x))
    return float(np.median((x[i] + x[j]) / 2))


def _wilcoxon(x: np.ndarray) -> float:
    """Two-sided signed-rank p (exact zeros dropped); 1 when every value is 0, NaN without values."""
    if not len(x):
        return float("nan")
    if not np.any(x != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about zeros / small n; the p it returns stands
        return float(stats.wilcoxon(x, zero_method="wilcox", alternative="two-sided").pvalue)


def cells(long: pd.DataFrame, pair: Pair, model: str, stage: str) -> tuple[pd.DataFrame, bool]:
    """Images x (a on a's substrate, b on a's, a on b's, b on b's) scores of one model and stage, only
    images with all four ok and finite; and the metric's ``higher_is_better``."""
    sa, sb = pair.substrates
    g = long[
        (long["model"] == model)
        & (long["stage"] == stage)
        & (long["metric"] == pair.metric)
        & long["explainer"].isin([pair.a, pair.b])
        & long["substrate"].isin([sa, sb])
    ]
    hib = bool(g["higher_is_better"].astype(str).str.lower().eq("true").iloc[0]) if len(g) else True
    ok = g[(g["status"] == "ok") & np.isfinite(g["value"].to_numpy(dtype=np.float64))]
    wide = ok.pivot_table(index="image", columns=["explainer", "substrate"], values="value", aggfunc="first")
    want = [(pair.a, sa), (pair.b, sa), (pair.a, sb), (pair.b, sb)]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(want)).dropna(how="any").sort_index()
    wide.columns = ["a_on_a", "b_on_a", "a_on_b", "b_on_b"]
    return wide, hib


def interactions(wide: pd.DataFrame, higher_is_better: bool, *, rtol: float = 1e-6, atol: float = 1e-12) -> np.ndarray:
    """Per image ``I = [g(A,A) - g(B,A)] - [g(A,B) - g(B,B)]`` of :func:`cells`' table (goodness: the
    score, negated where lower is better); ``|I| <= atol + rtol * max|score|`` is set to 0."""
    v = wide[["a_on_a", "b_on_a", "a_on_b", "b_on_b"]].to_numpy(dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    d = sign * ((v[:, 0] - v[:, 1]) - (v[:, 2] - v[:, 3]))
    scale = np.abs(v).max(axis=1) if len(v) else np.zeros(0)
    d[np.abs(d) <= atol + rtol * scale] = 0.0
    return d


def interaction_table(long: pd.DataFrame, pairs: Sequence[Pair], settings: StatsSettings | None = None) -> pd.DataFrame:
    """One row per (model, stage, pair, metric) of ``long`` (:func:`by_substrate`); columns :data:`COLUMNS`
    (module docstring). Family: every row of one model, Bonferroni."""
    settings = settings or StatsSettings()
    rows, diffs = [], []
    stages = long[["model", "stage"]].drop_duplicates().itertuples(index=False) if len(long) else []
    for model, stage in sorted(stages, key=lambda ms: (ms[0], stage_key(ms[1]))):
        for pair in pairs:
            wide, hib = cells(long, pair, model, stage)
            if (
                not len(wide)
                and not (
                    (long["model"] == model)
                    & (long["stage"] == stage)
                    & long["explainer"].isin([pair.a, pair.b])
                    & (long["metric"] == pair.metric)
                ).any()
            ):
                continue  # the pair was not scored here at all
            d = interactions(wide, hib, rtol=settings.alias_rtol, atol=settings.alias_atol)
            means = wide.mean(axis=0) if len(wide) else pd.Series(np.nan, index=wide.columns)
            rows.append(
                {
                    "model": model,
                    "stage": stage,
                    "metric": pair.metric,
                    "higher_is_better": hib,
                    "a": pair.a,
                    "baseline_a": pair.baseline_a,
                    "b": pair.b,
                    "baseline_b": pair.baseline_b,
                    "blur_sigma": pair.blur_sigma,
                    "also_differs": pair.also_differs,
                    "n": len(d),
                    **{c: float(means[c]) for c in ("a_on_a", "b_on_a", "a_on_b", "b_on_b")},
                    "interaction": float(d.mean()) if len(d) else float("nan"),
                    "pseudo_median": _pseudo_median(d),
                    "p": _wilcoxon(d),
                }
            )
            diffs.append(d)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.DataFrame(rows)
    table["p_adj"], table["level"] = np.nan, np.nan
    table["ci_low"], table["ci_high"] = np.nan, np.nan
    table["family"], table["verdict"] = "", "n/a"
    for model, g in table.groupby("model", sort=True):
        live = [i for i in g.index if np.isfinite(table.at[i, "p"])]
        m = len(live)
        label = family_label("baseline_substrate", str(model), size=m)
        table.loc[g.index, "family"] = label
        if not m:
            continue
        level = 1.0 - settings.alpha / m
        adj = bonferroni(table.loc[live, "p"].to_numpy(dtype=np.float64), m)
        for i, p_adj in zip(live, adj):
            low, high = bootstrap_ci(diffs[i], confidence=level, n_resamples=settings.bootstrap, seed=settings.seed)
            table.loc[i, ["p_adj", "level", "ci_low", "ci_high"]] = [float(p_adj), level, low, high]
            table.at[i, "verdict"] = _verdict(
                float(p_adj),
                float(table.at[i, "pseudo_median"]),
                float(table.at[i, "interaction"]),
                low,
                high,
                int(table.at[i, "n"]),
                settings.alpha,
            )
    table["n"] = table["n"].astype(np.int64)
    return table[COLUMNS]


def _verdict(p_adj: float, location: float, mean: float, low: float, high: float, n: int, alpha: float) -> str:
    """From the signed-rank test (its direction: the pseudo-median's sign, the mean's on a tie at 0),
    with a remark when the mean's interval does not agree with it."""
    separated = p_adj <= alpha
    sign = np.sign(location) or np.sign(mean)
    excludes = bool(low > 0 or high < 0)
    if not separated:
        text = f"no interaction detectable at n = {n}"
        return text + " (the mean's interval excludes 0)" if excludes else text
    text = VERDICT_MATCH if sign > 0 else VERDICT_OPPOSITE
    agrees = (low > 0) if sign > 0 else (high < 0)
    return text if agrees else text + " (the mean's interval does not exclude 0 on that side)"


def _f(x: Any, spec: str = ".4g") -> str:
    return fmt_number(x, spec)


EXPLANATION = (  # what the table is: the head of baseline_substrate.md and of its report.html section
    "Per image, g(b, s) is the score (negated where lower is better) of the method with baseline b on the "
    "deletion/insertion substrate made of the same images as baseline s; the interaction is "
    "I = [g(A, A) − g(B, A)] − [g(A, B) − g(B, B)] for the two baselines A (method a) and B (method b), "
    "over the images all four cells scored. I > 0: each baseline wins, relative to the other, on its own "
    "substrate; I < 0: the opposite. Cells: mean scores in the metric's units (a on A = method a on the "
    "substrate of its own baseline). I: mean with its BCa bootstrap interval at the family's level; "
    "pseudo-median: Hodges-Lehmann; p: Wilcoxon signed-rank, adj. p: Bonferroni over the model's rows; "
    "the verdict is the test's. blur_sigma: of the blur baseline and the blur substrate (the same)."
)


def render_md(table: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """``baseline_substrate.md``: what the interaction is, then one table per model."""
    lines = ["# Does a method win where its baseline matches the substrate?", "", EXPLANATION, ""]
    for model, g in table.groupby("model", sort=True):
        lines += [f"## {md_text(model)}", "", f"Family: {g['family'].iloc[0]}.", ""]
        lines += markdown_table(
            [
                "stage",
                "metric",
                "a (baseline)",
                "b (baseline)",
                "n",
                "a on A",
                "b on A",
                "a on B",
                "b on B",
                "I [CI]",
                "pseudo-median",
                "p",
                "adj. p",
                "verdict",
            ],
            [
                [
                    r.stage,
                    f"{r.metric} {arrow(bool(r.higher_is_better))}",
                    f"{md_text(r.a)} ({r.baseline_a})",
                    f"{md_text(r.b)} ({r.baseline_b})",
                    str(r.n),
                    _f(r.a_on_a),
                    _f(r.b_on_a),
                    _f(r.a_on_b),
                    _f(r.b_on_b),
                    ci_text(r.interaction, r.ci_low, r.ci_high, "+.3g"),
                    _f(r.pseudo_median, "+.3g"),
                    _f(r.p, ".3g"),
                    _f(r.p_adj, ".3g"),
                    r.verdict,
                ]
                for r in g.itertuples(index=False)
            ],
            align="llllrrrrrrrrrl",
        )
        differs = sorted({(r.a, r.b, r.also_differs) for r in g.itertuples(index=False) if r.also_differs})
        lines += [""] + [f"{md_text(a)} and {md_text(b)} also differ in: {d}." for a, b, d in differs]
        lines += [""] if differs else []
    if notes:
        lines += ["## Pairs left out", ""] + [f"- {md_text(n, 400)}" for n in notes] + [""]
    return "\n".join(lines)


FILES = ("baseline_substrate.csv", "baseline_substrate.md")


def write_baseline_substrate(
    run_dir: str | Path,
    scores: pd.DataFrame,
    substrates: pd.DataFrame | None,
    manifest: Mapping[str, Any],
    settings: StatsSettings | None = None,
) -> list[Path]:
    """``baseline_substrate.csv`` and ``.md`` when the run has a pair to test; otherwise neither (an
    earlier rebuild's files are removed, so the page never shows a table of another config)."""
    run_dir = Path(run_dir)
    long = by_substrate(scores, substrates, manifest)
    pairs, notes = find_pairs(manifest, long)
    table = interaction_table(long, pairs, settings) if pairs else pd.DataFrame(columns=COLUMNS)
    if not len(table):
        for name in FILES:
            (run_dir / name).unlink(missing_ok=True)
        return []
    return [
        atomic_write_text(run_dir / FILES[0], csv_text(table)),
        atomic_write_text(run_dir / FILES[1], render_md(table, notes)),
    ]
