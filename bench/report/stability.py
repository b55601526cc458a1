"""Do the rankings survive retraining, what did each tuning policy change, and how much did the maps move?

From ``scores.csv`` and ``similarity.csv`` (:mod:`bench.run.similarity`), written by ``bench
report`` like every other table:

* ``stability.csv`` (models trained with several seeds, ``models.seeds``): per architecture, stage
  and metric, Kendall's W of the explainer rankings across seeds (Kendall & Babington Smith 1939;
  from Friedman's chi-square, ``W = chi2_F / (m (n - 1))``, ``scipy.stats.friedmanchisquare``, with
  its tie correction), a percentile bootstrap CI over images, and the probability that the pooled
  leaderboard's top explainer stays on top under the hierarchical bootstrap;
  ``leaderboard_pooled.csv``: the pooled mean of every explainer with a hierarchical bootstrap CI
  (resample seeds, then images within each seed; Davison & Hinkley 1997, sec. 3.8).
* ``variants.csv`` (several tuning policies, ``[tune.variants]``): every pair of post stages of a
  model, paired differences per explainer and metric with a BCa CI, Wilcoxon p and Holm over the
  model's table.
* ``similarity_summary.csv``: mean map similarity (Spearman; top-15 % overlap) per model,
  explainer and comparison, overall, by the image's pre cell and by its cell move, with BCa CIs;
  ``similarity_tests.csv``: "did tuning change what the model looks at, beyond noise?" per model,
  post stage and explainer: the paired difference between the pre-vs-post similarity and each
  reference on the same images (retraining: the mean similarity to the other seeds' pre maps;
  explainer noise: the same explainer with another seed, 1 for a deterministic explainer), a
  BCa CI, Wilcoxon p, Holm over the table.
"""
from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from bench.core.io import atomic_write_text
from bench.core.schema import ordered_cells, stage_key
from bench.core.text import csv_text, fmt_number, markdown_table
from bench.report import reliability, stats

LABEL = re.compile(r"^(?P<arch>.+)@seed(?P<seed>-?\d+)$")
N_BOOT = 2000
SEED = 0


def arch_and_seed(label: str) -> tuple[str, int | None]:
    """``"resnet18@seed2"`` -> ("resnet18", 2); a label without a seed -> (label, None)."""
    m = LABEL.match(label)
    return (m["arch"], int(m["seed"])) if m else (label, None)


def kendall_w(matrix: np.ndarray) -> float:
    """Kendall's W of the rankings in ``matrix`` (raters = rows, e.g. seeds; objects = columns, e.g.
    explainers; higher = better) with the tie correction (Kendall & Babington Smith 1939):

        W = 12 S / (m^2 (n^3 - n) - m sum_i T_i),   S = sum_j (R_j - mean R)^2,
        T_i = sum over tie groups of rater i of (t^3 - t),

    R_j the rank sum of object j over the m raters (average ranks for ties). It equals Friedman's
    tie-corrected chi-square over ``m (n - 1)`` (``scipy.stats.friedmanchisquare``, checked in the
    tests). NaN with fewer than two raters or two objects, or when no rater orders anything."""
    matrix = np.asarray(matrix, dtype=np.float64)
    m, n = matrix.shape
    if m < 2 or n < 2:
        return float("nan")
    ranks = sps.rankdata(matrix, axis=1)
    s = float(((ranks.sum(0) - m * (n + 1) / 2.0) ** 2).sum())
    ties = sum(float(((c := np.unique(row, return_counts=True)[1]) ** 3 - c).sum()) for row in matrix)
    denom = m * m * (n ** 3 - n) - m * ties
    return float(12.0 * s / denom) if denom > 0 else float("nan")


STABILITY_COLUMNS = ["model", "stage", "metric", "n_seeds", "n_images", "kendall_w", "w_ci_low", "w_ci_high",
                     "top", "p_top_stays"]
POOLED_COLUMNS = ["model", "stage", "metric", "explainer", "higher_is_better", "n_seeds", "n_images", "mean",
                  "ci_low", "ci_high", "rank"]


def stability_tables(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stability, pooled leaderboard) over the seeds of each architecture; empty without seeds."""
    good = reliability.wide_goodness(scores)
    groups: dict[tuple[str, str, str], list[tuple[int, pd.DataFrame, bool]]] = {}
    for (label, stage, metric), (g, hib) in good.items():
        arch, seed = arch_and_seed(label)
        if seed is not None:
            groups.setdefault((arch, stage, metric), []).append((seed, g, hib))
    srows, prows = [], []
    for i, ((arch, stage, metric), members) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                                                 stage_key(kv[0][1]),
                                                                                                 kv[0][2]))):
        members.sort(key=lambda x: x[0])
        explainers = sorted(set.intersection(*(set(g.columns) for _, g, _ in members)))
        mats = [g[explainers].to_numpy(dtype=np.float64) for _, g, _ in members]
        hib = members[0][2]
        rng = np.random.default_rng([SEED, i])
        means = np.stack([m.mean(0) for m in mats])                 # (seeds, explainers)
        pooled = means.mean(0)
        boot = _hierarchical(mats, rng)                             # (N_BOOT, explainers)
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        top = int(np.argmax(pooled))
        w = kendall_w(means)
        w_boot = [kendall_w(np.stack([m[idx].mean(0) for m, idx in zip(mats, draws)]))
                  for draws in _image_draws(mats, rng, 500)]
        w_low, w_high = (np.nanpercentile(w_boot, [2.5, 97.5]) if np.isfinite(w_boot).any() else (np.nan, np.nan))
        srows.append({"model": arch, "stage": stage, "metric": metric, "n_seeds": len(members),
                      "n_images": int(min(m.shape[0] for m in mats)), "kendall_w": w, "w_ci_low": float(w_low),
                      "w_ci_high": float(w_high), "top": explainers[top],
                      "p_top_stays": float(np.mean(np.argmax(boot, axis=1) == top))})
        ranks = stats.rank_with_ties(pooled, low, high, True)  # in goodness: higher is better
        sign = 1.0 if hib else -1.0  # back to the metric's own scale for the pooled table
        for j, e in enumerate(explainers):
            lo, hi = (low[j], high[j]) if hib else (-high[j], -low[j])
            prows.append({"model": arch, "stage": stage, "metric": metric, "explainer": e, "higher_is_better": hib,
                          "n_seeds": len(members), "n_images": int(min(m.shape[0] for m in mats)),
                          "mean": float(sign * pooled[j]), "ci_low": float(lo), "ci_high": float(hi),
                          "rank": ranks[j]})
    pooled_df = pd.DataFrame(prows, columns=POOLED_COLUMNS)
    pooled_df["rank"] = pooled_df["rank"].astype("Int64")
    return pd.DataFrame(srows, columns=STABILITY_COLUMNS), pooled_df


def _image_draws(mats: list[np.ndarray], rng: np.random.Generator, n: int) -> list[list[np.ndarray]]:
    return [[rng.integers(0, m.shape[0], m.shape[0]) for m in mats] for _ in range(n)]


def _hierarchical(mats: list[np.ndarray], rng: np.random.Generator, n: int = N_BOOT) -> np.ndarray:
    """Pooled means of the explainers under the hierarchical bootstrap: draw seeds with replacement,
    then within each drawn seed its images with replacement (the same images for every explainer)."""
    out = np.empty((n, mats[0].shape[1]))
    for b in range(n):
        chosen = rng.integers(0, len(mats), len(mats))
        out[b] = np.mean([mats[s][rng.integers(0, mats[s].shape[0], mats[s].shape[0])].mean(0) for s in chosen], axis=0)
    return out


VARIANT_COLUMNS = ["model", "stage_a", "stage_b", "explainer", "metric", "higher_is_better", "n_pairs", "mean_a",
                   "mean_b", "diff_mean", "diff_ci_low", "diff_ci_high", "p_wilcoxon", "p_holm"]


def variant_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Every pair of post stages of a model: paired differences (b − a) per explainer and metric."""
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].to_numpy(dtype=float))]
    rows = []
    for label, g in ok.groupby("model", sort=True):
        posts = sorted(set(g["stage"]) - {"pre"}, key=stage_key)
        for a, b in combinations(posts, 2):
            for (explainer, metric), h in g[g["stage"].isin([a, b])].groupby(["explainer", "metric"], sort=True):
                wide = h.pivot(index="image", columns="stage", values="value").dropna()
                if a not in wide or b not in wide:
                    continue
                res = stats.paired_difference(wide[a].to_numpy(), wide[b].to_numpy())
                rows.append({"model": label, "stage_a": a, "stage_b": b, "explainer": explainer, "metric": metric,
                             "higher_is_better": bool(h["higher_is_better"].iloc[0]), "n_pairs": res.n,
                             "mean_a": res.pre_mean, "mean_b": res.post_mean, "diff_mean": res.diff_mean,
                             "diff_ci_low": res.ci_low, "diff_ci_high": res.ci_high, "p_wilcoxon": res.p_value})
    table = pd.DataFrame(rows, columns=VARIANT_COLUMNS)
    for _, idx in table.groupby("model", sort=True).groups.items():
        table.loc[idx, "p_holm"] = stats.holm(table.loc[idx, "p_wilcoxon"].to_numpy(dtype=np.float64))
    return table


SUMMARY_COLUMNS = ["model", "explainer", "comparison", "group", "n", "spearman", "spearman_ci_low",
                   "spearman_ci_high", "top_overlap", "overlap_ci_low", "overlap_ci_high"]
TEST_COLUMNS = ["model", "stage", "explainer", "reference", "n", "tuning", "reference_mean", "diff_mean",
                "diff_ci_low", "diff_ci_high", "p_wilcoxon", "p_holm", "verdict"]


def similarity_summary(sim: pd.DataFrame) -> pd.DataFrame:
    """Mean similarity per model, explainer, comparison: overall, by pre cell, by cell move."""
    rows = []
    for (model, explainer, comparison), g in sim.groupby(["model", "explainer", "comparison"], sort=True):
        groups = [("all", g)]
        groups += [(f"cell {c}", g[g["cell_a"] == c]) for c in ordered_cells(sim["cell_a"])]
        moves = g[g["cell_a"] != g["cell_b"]]
        groups += [(f"move {a}→{b}", h) for (a, b), h in moves.groupby(["cell_a", "cell_b"], sort=True)]
        for name, h in groups:
            if not len(h):
                continue
            s_low, s_high = stats.bootstrap_ci(h["spearman"])
            o_low, o_high = stats.bootstrap_ci(h["top_overlap"])
            rows.append({"model": model, "explainer": explainer, "comparison": comparison, "group": name,
                         "n": int(len(h)), "spearman": float(h["spearman"].mean()), "spearman_ci_low": s_low,
                         "spearman_ci_high": s_high, "top_overlap": float(h["top_overlap"].mean()),
                         "overlap_ci_low": o_low, "overlap_ci_high": o_high})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def similarity_tests(sim: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Tuning against retraining and against the explainer's own noise, paired per image (module docstring)."""
    rows = []
    tuned = sim[sim["comparison"].str.startswith("pre vs ")]
    for (label, comparison, explainer), g in tuned.groupby(["model", "comparison", "explainer"], sort=True):
        arch, seed = arch_and_seed(label)
        t = g.set_index("image")["spearman"]
        refs = {}
        if seed is not None:
            pairs = sim[(sim["model"] == arch) & (sim["explainer"] == explainer)
                        & sim["comparison"].str.fullmatch(r"seed-?\d+ vs seed-?\d+")]
            mine = pairs[pairs["comparison"].str.contains(rf"\bseed{seed}\b")]
            if len(mine):
                refs["retraining"] = mine.groupby("image")["spearman"].mean()
        noise = sim[(sim["explainer"] == explainer) & (sim["comparison"] == "explainer seed")
                    & (sim["model"].map(lambda m: arch_and_seed(m)[0]) == arch)]
        refs["explainer noise"] = noise.groupby("image")["spearman"].mean() if len(noise) else pd.Series(1.0, t.index)
        for name, ref in refs.items():
            both = pd.concat([t.rename("t"), ref.rename("r")], axis=1, join="inner").dropna()
            res = stats.paired_difference(both["r"].to_numpy(), both["t"].to_numpy())
            rows.append({"model": label, "stage": comparison.removeprefix("pre vs "), "explainer": explainer,
                         "reference": name, "n": res.n, "tuning": res.post_mean, "reference_mean": res.pre_mean,
                         "diff_mean": res.diff_mean, "diff_ci_low": res.ci_low, "diff_ci_high": res.ci_high,
                         "p_wilcoxon": res.p_value})
    table = pd.DataFrame(rows, columns=TEST_COLUMNS)
    for _, idx in table.groupby("model", sort=True).groups.items():
        table.loc[idx, "p_holm"] = stats.holm(table.loc[idx, "p_wilcoxon"].to_numpy(dtype=np.float64))
    sig = table["p_holm"] <= alpha
    lower = sig & (table["diff_mean"] < 0)
    higher = sig & (table["diff_mean"] > 0)
    table["verdict"] = np.where(lower, np.where(table["reference"] == "explainer noise",
                                                "changed beyond the explainer's noise", "changed more than retraining"),
                                np.where(higher, np.where(table["reference"] == "explainer noise",
                                                          "more similar than the explainer's noise (?)",
                                                          "changed less than retraining"),
                                         "not separable at this n"))
    return table


def write_stability(run_dir: Path, scores: pd.DataFrame, similarity: pd.DataFrame | None) -> list[Path]:
    """Every stability table that applies to the run (and stability.md); nothing for a run with one
    seed, no tuning variants and no map comparisons."""
    tables: dict[str, pd.DataFrame] = {}
    stab, pooled = stability_tables(scores)
    if len(stab):
        tables["stability"], tables["leaderboard_pooled"] = stab, pooled
    var = variant_table(scores)
    if len(var):
        tables["variants"] = var
    if similarity is not None and len(similarity):
        tables["similarity_summary"] = similarity_summary(similarity)
        tables["similarity_tests"] = similarity_tests(similarity)
    written = [atomic_write_text(run_dir / f"{name}.csv", csv_text(t)) for name, t in sorted(tables.items())]
    if tables:
        written.append(atomic_write_text(run_dir / "stability.md", render_stability_md(tables)))
    return written


def _f(x: Any, spec: str = ".3g") -> str:
    return fmt_number(x, spec)


def _ci(v: Any, low: Any, high: Any, spec: str = ".3g") -> str:
    return f"{_f(v, spec)} [{_f(low, spec)}, {_f(high, spec)}]"


def render_stability_md(tables: Mapping[str, pd.DataFrame]) -> str:
    lines = ["# Stability: seeds, tuning policies, maps", ""]
    if "stability" in tables:
        lines += ["## Do the rankings survive retraining?", "",
                  "Kendall's W of the explainer rankings across training seeds (1 = every seed ranks alike, 0 = no "
                  "agreement), 95% percentile bootstrap CI over images; P(top stays): share of hierarchical "
                  "bootstrap resamples (seeds, then images) in which the pooled leader stays first.", ""]
        lines += markdown_table(["model", "stage", "metric", "seeds", "images", "W [95% CI]", "pooled top", "P(top stays)"],
                                [[r.model, r.stage, r.metric, str(r.n_seeds), str(r.n_images),
                                  _ci(r.kendall_w, r.w_ci_low, r.w_ci_high, ".2f"), r.top, _f(r.p_top_stays, ".2f")]
                                 for r in tables["stability"].itertuples(index=False)]) + [""]
        p = tables["leaderboard_pooled"]
        lines += ["### Pooled leaderboard", "", "Mean of the seeds' means with a 95% hierarchical bootstrap CI; "
                  "rank 1 = best, ties where the CI overlaps the leader's.", ""]
        lines += markdown_table(["model", "stage", "metric", "explainer", "mean [95% CI]", "rank"],
                                [[r.model, r.stage, r.metric, r.explainer, _ci(r.mean, r.ci_low, r.ci_high, ".4g"),
                                  "" if pd.isna(r.rank) else str(int(r.rank))] for r in p.itertuples(index=False)]) + [""]
    if "variants" in tables:
        lines += ["## Tuning policies against each other", "",
                  "Paired over the images scored under both; diff = b − a with a 95% BCa CI; Wilcoxon p; Holm over "
                  "the model's table.", ""]
        lines += markdown_table(["model", "a", "b", "explainer", "metric", "n", "a mean", "b mean", "diff [95% CI]",
                                 "p", "Holm p"],
                                [[r.model, r.stage_a, r.stage_b, r.explainer, r.metric, str(r.n_pairs), _f(r.mean_a, ".4g"),
                                  _f(r.mean_b, ".4g"), _ci(r.diff_mean, r.diff_ci_low, r.diff_ci_high, "+.3g"),
                                  _f(r.p_wilcoxon), _f(r.p_holm)] for r in tables["variants"].itertuples(index=False)])
        lines += [""]
    if "similarity_tests" in tables:
        lines += ["## Did tuning change what the model looks at, beyond noise?", "",
                  "Per image, the Spearman similarity of the pre and post maps (tuning) against the same images' "
                  "similarity between two training seeds (retraining) and between two seeds of the explainer "
                  "(explainer noise; 1 for a deterministic explainer). diff = tuning − reference, 95% BCa CI, "
                  "Wilcoxon p, Holm over the model's table.", ""]
        lines += markdown_table(["model", "post stage", "explainer", "reference", "n", "tuning", "reference",
                                 "diff [95% CI]", "Holm p", "verdict"],
                                [[r.model, r.stage, r.explainer, r.reference, str(r.n), _f(r.tuning), _f(r.reference_mean),
                                  _ci(r.diff_mean, r.diff_ci_low, r.diff_ci_high, "+.3g"), _f(r.p_holm), r.verdict]
                                 for r in tables["similarity_tests"].itertuples(index=False)]) + [""]
        s = tables["similarity_summary"]
        lines += ["### Map similarity", "", "Mean over images with a 95% BCa CI; groups: all images, by the "
                  "image's cell under the first model, by its cell move.", ""]
        lines += markdown_table(["model", "explainer", "comparison", "group", "n", "Spearman [95% CI]",
                                 "top-15% overlap [95% CI]"],
                                [[r.model, r.explainer, r.comparison, r.group, str(r.n),
                                  _ci(r.spearman, r.spearman_ci_low, r.spearman_ci_high, ".2f"),
                                  _ci(r.top_overlap, r.overlap_ci_low, r.overlap_ci_high, ".2f")]
                                 for r in s.itertuples(index=False)]) + [""]
    return "\n".join(lines)
