"""Do the rankings survive retraining, what did each tuning policy change, and how much did the maps move?

From ``scores.csv`` and ``similarity.csv`` (:mod:`bench.run.similarity`), written by ``bench
report`` like every other table. Several training seeds score the *same* images, so every pooled
statistic treats images and seeds as crossed factors (:mod:`bench.stats.estimate`): images are
resampled jointly under every seed, and the seed-to-seed variance enters every pooled interval.

* ``stability.csv`` (models trained with several seeds, ``models.seeds``): per architecture, stage
  and metric, Kendall's W of the explainer rankings across seeds (Kendall & Babington Smith 1939;
  ``W = chi2_F / (m (n - 1))``) with a BCa CI over images resampled jointly in every seed (given
  these seeds: with three seeds the seed-to-seed spread of W itself cannot be estimated, so the
  table also gives the W of the least agreeing pair of seeds), the pooled leader, the probability
  it stays on top under the crossed model's sampling distribution
  (:func:`bench.stats.estimate.p_top`, ties shared) and the explainers the pooled paired tests do
  not separate from it; ``leaderboard_pooled.csv``: the pooled mean of every explainer with its
  crossed-model t interval, and ranks and letters from the pooled paired comparisons
  (``comparisons_pooled.csv``; family: the pooled table's pairs).
* ``variants.csv`` (several tuning policies, ``[tune.variants]``): every pair of post stages of a
  model, paired differences per explainer and metric, paired t, Bonferroni over the model's table,
  intervals at the family's level.
* ``similarity_summary.csv``: mean map similarity (Spearman; top-15 % overlap) per model,
  explainer and comparison, overall, by the image's pre cell and by its cell move, with BCa CIs
  (descriptive); ``similarity_tests.csv``: "did tuning change what the model looks at, beyond
  noise?" per model, post stage and explainer: the paired difference between the pre-vs-post
  similarity and each reference on the same images (retraining: the mean similarity to the other
  seeds' pre maps; explainer noise: the same explainer with another seed, 1 for a deterministic
  explainer), paired t, Bonferroni over the model's table; with several seeds also pooled over
  them (crossed), one family per architecture.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.core.io import atomic_write_text
from bench.core.schema import ordered_cells, stage_key
from bench.core.text import csv_text, fmt_number, markdown_table
from bench.report.comparisons import (
    Comparisons,
    GoodnessTable,
    compare,
    goodness_tables,
    pooled_tables,
    seed_groups,
    with_family,
)
from bench.report.format import alias_name, ci_text, rank_text
from bench.stats.agreement import image_interval, kendall_w
from bench.stats.estimate import bootstrap_ci, mean_estimate, p_top, t_interval
from bench.stats.settings import StatsSettings

LABEL = re.compile(r"^(?P<arch>.+)@seed(?P<seed>-?\d+)$")
W_RESAMPLES = 1000


def arch_and_seed(label: str) -> tuple[str, int | None]:
    """``"resnet18@seed2"`` -> ("resnet18", 2); a label without a seed -> (label, None)."""
    m = LABEL.match(label)
    return (m["arch"], int(m["seed"])) if m else (label, None)


STABILITY_COLUMNS = [
    "model",
    "stage",
    "metric",
    "n_seeds",
    "n_images",
    "kendall_w",
    "w_ci_low",
    "w_ci_high",
    "w_pair_min",
    "top",
    "p_top_stays",
    "not_separated_from_top",
]
POOLED_COLUMNS = [
    "model",
    "stage",
    "metric",
    "explainer",
    "aliases",
    "higher_is_better",
    "n_seeds",
    "n_images",
    "mean",
    "ci_low",
    "ci_high",
    "df",
    "rank",
    "letters",
    "mean_rank",
]


def pooled(
    tables: Mapping[tuple[str, str, str], GoodnessTable], settings: StatsSettings, kinds: Mapping[str, str | None]
) -> tuple[dict[tuple[str, str, str], GoodnessTable], Comparisons]:
    """The pooled tables of every architecture with several seeds, and their paired comparisons."""
    groups = seed_groups(sorted({t.model for t in tables.values()}), arch_and_seed)
    ptables = pooled_tables(tables, groups)
    return ptables, compare(ptables, settings, kinds, family="pooled")


def stability_tables(
    ptables: Mapping[tuple[str, str, str], GoodnessTable],
    comps: Comparisons,
    settings: StatsSettings,
    aliases: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stability, pooled leaderboard) of the pooled tables (:func:`pooled`); empty without seeds."""
    aliases = aliases or {}
    srows, prows = [], []
    ranks = comps.ranks.set_index(["model", "stage", "metric", "explainer"])
    for i, (key, t) in enumerate(ptables.items()):
        arch, stage, metric = key
        y = t.values  # (seeds, images, explainers), goodness
        means = y.mean(axis=(0, 1))
        per_seed = y.mean(axis=1)  # (seeds, explainers)
        w = kendall_w(per_seed)

        def w_of(idx: np.ndarray, y: np.ndarray = y) -> float:
            return kendall_w(y[:, idx, :].mean(axis=1))

        w_low, w_high = image_interval(w_of, y.shape[1], n_resamples=W_RESAMPLES, seed=settings.seed + i)
        pair_min = min(kendall_w(per_seed[[a, b]]) for a, b in combinations(range(y.shape[0]), 2))
        probs = p_top(y, draws=settings.draws, seed=settings.seed + i)
        top = int(np.argmax(means))
        p = comps.pairs
        p = p[(p["model"] == arch) & (p["stage"] == stage) & (p["metric"] == metric)]
        leader = t.explainers[top]
        close = sorted(
            {
                (r.b if r.a == leader else r.a)
                for r in p.itertuples(index=False)
                if leader in (r.a, r.b) and not r.separated
            }
        )
        srows.append(
            [
                arch,
                stage,
                metric,
                y.shape[0],
                y.shape[1],
                w,
                w_low,
                w_high,
                pair_min,
                leader,
                float(probs[top]),
                ", ".join(close),
            ]
        )
        sign = 1.0 if t.higher_is_better else -1.0  # back to the metric's own scale
        for j, e in enumerate(t.explainers):
            est = mean_estimate(y[:, :, j])
            lo, hi = t_interval(est, 0.95)
            lo, hi = (lo, hi) if t.higher_is_better else (-hi, -lo)
            r = ranks.loc[(arch, stage, metric, e)]
            prows.append(
                [
                    arch,
                    stage,
                    metric,
                    e,
                    ", ".join(aliases.get(e, ())),
                    t.higher_is_better,
                    y.shape[0],
                    y.shape[1],
                    sign * float(means[j]),
                    lo,
                    hi,
                    est.df,
                    r["rank"],
                    r["letters"],
                    r["mean_rank"],
                ]
            )
    pooled_df = pd.DataFrame(prows, columns=POOLED_COLUMNS)
    pooled_df["rank"] = pooled_df["rank"].astype("Int64")
    if len(pooled_df):
        pooled_df = (
            pooled_df.assign(_s=pooled_df["stage"].map(stage_key))
            .sort_values(["model", "_s", "metric", "rank", "explainer"], kind="stable")
            .drop(columns="_s")
            .reset_index(drop=True)
        )
    return pd.DataFrame(srows, columns=STABILITY_COLUMNS), pooled_df


VARIANT_COLUMNS = [
    "model",
    "stage_a",
    "stage_b",
    "explainer",
    "metric",
    "higher_is_better",
    "n_pairs",
    "mean_a",
    "mean_b",
    "diff_mean",
    "level",
    "diff_ci_low",
    "diff_ci_high",
    "p",
    "p_adj",
    "margin",
    "p_equiv",
    "verdict",
    "family",
]


def variant_table(scores: pd.DataFrame, settings: StatsSettings, kinds: Mapping[str, str | None]) -> pd.DataFrame:
    """Every pair of post stages of a model: paired differences (b − a) per explainer and metric,
    one family per model."""
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].to_numpy(dtype=float))]
    rows = []
    for label, g in ok.groupby("model", sort=True):
        posts = sorted(set(g["stage"]) - {"pre"}, key=stage_key)
        for a, b in combinations(posts, 2):
            for (explainer, metric), h in g[g["stage"].isin([a, b])].groupby(["explainer", "metric"], sort=True):
                wide = h.pivot(index="image", columns="stage", values="value").dropna()
                if a not in wide or b not in wide or not len(wide):
                    continue
                d = (wide[b] - wide[a]).to_numpy(dtype=np.float64)
                margin = settings.margin(metric, kinds.get(metric))
                rows.append(
                    {
                        "model": label,
                        "stage_a": a,
                        "stage_b": b,
                        "explainer": explainer,
                        "metric": metric,
                        "higher_is_better": bool(h["higher_is_better"].iloc[0]),
                        "n_pairs": int(len(wide)),
                        "mean_a": float(wide[a].mean()),
                        "mean_b": float(wide[b].mean()),
                        "diff_mean": float(d.mean()),
                        "margin": margin,
                        "_d": d,
                        "_margin": margin,
                    }
                )
    if not rows:
        return pd.DataFrame(columns=VARIANT_COLUMNS)
    table = with_family(pd.DataFrame(rows), ["model"], "variants", settings, higher="b higher", lower="b lower")
    return table[VARIANT_COLUMNS].reset_index(drop=True)


SUMMARY_COLUMNS = [
    "model",
    "explainer",
    "comparison",
    "group",
    "n",
    "spearman",
    "spearman_ci_low",
    "spearman_ci_high",
    "top_overlap",
    "overlap_ci_low",
    "overlap_ci_high",
]
TEST_COLUMNS = [
    "model",
    "stage",
    "explainer",
    "reference",
    "seeds",
    "n",
    "tuning",
    "reference_mean",
    "diff_mean",
    "level",
    "diff_ci_low",
    "diff_ci_high",
    "p",
    "p_adj",
    "margin",
    "p_equiv",
    "verdict",
    "family",
]


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
            s_low, s_high = bootstrap_ci(h["spearman"])
            o_low, o_high = bootstrap_ci(h["top_overlap"])
            rows.append(
                {
                    "model": model,
                    "explainer": explainer,
                    "comparison": comparison,
                    "group": name,
                    "n": int(len(h)),
                    "spearman": float(h["spearman"].mean()),
                    "spearman_ci_low": s_low,
                    "spearman_ci_high": s_high,
                    "top_overlap": float(h["top_overlap"].mean()),
                    "overlap_ci_low": o_low,
                    "overlap_ci_high": o_high,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def similarity_tests(sim: pd.DataFrame, settings: StatsSettings) -> pd.DataFrame:
    """Tuning against retraining and against the explainer's own noise, paired per image (module
    docstring): one family per model; with several seeds, pooled rows per architecture (crossed
    over seeds and images; ``seeds`` > 1), one family per architecture."""
    rows = []
    margin = settings.margin("similarity", "similarity")
    tuned = sim[sim["comparison"].str.startswith("pre vs ")]
    for (label, comparison, explainer), g in tuned.groupby(["model", "comparison", "explainer"], sort=True):
        arch, seed = arch_and_seed(label)
        t = g.set_index("image")["spearman"]
        refs = {}
        if seed is not None:
            pairs = sim[
                (sim["model"] == arch)
                & (sim["explainer"] == explainer)
                & sim["comparison"].str.fullmatch(r"seed-?\d+ vs seed-?\d+")
            ]
            mine = pairs[pairs["comparison"].str.contains(rf"\bseed{seed}\b")]
            if len(mine):
                refs["retraining"] = mine.groupby("image")["spearman"].mean()
        noise = sim[
            (sim["explainer"] == explainer)
            & (sim["comparison"] == "explainer seed")
            & (sim["model"].map(lambda m: arch_and_seed(m)[0]) == arch)
        ]
        refs["explainer noise"] = noise.groupby("image")["spearman"].mean() if len(noise) else pd.Series(1.0, t.index)
        for name, ref in refs.items():
            both = pd.concat([t.rename("t"), ref.rename("r")], axis=1, join="inner").dropna()
            d = (both["t"] - both["r"]).to_numpy(dtype=np.float64)
            rows.append(
                {
                    "model": label,
                    "arch": arch,
                    "seed": seed,
                    "stage": comparison.removeprefix("pre vs "),
                    "explainer": explainer,
                    "reference": name,
                    "seeds": 1,
                    "n": int(len(both)),
                    "tuning": float(both["t"].mean()) if len(both) else float("nan"),
                    "reference_mean": float(both["r"].mean()) if len(both) else float("nan"),
                    "diff_mean": float(d.mean()) if len(d) else float("nan"),
                    "_d": d if len(d) else None,
                    "_margin": margin,
                    "_images": both.index.to_numpy(),
                }
            )
    if not rows:
        return pd.DataFrame(columns=TEST_COLUMNS)
    per_model = pd.DataFrame(rows)
    pooled_rows = []
    seeded = per_model[per_model["seed"].notna()]
    for (arch, stage, explainer, reference), g in seeded.groupby(
        ["arch", "stage", "explainer", "reference"], sort=True
    ):
        if len(g) < 2 or any(d is None for d in g["_d"]):
            continue
        images = sorted(set.intersection(*(set(i.tolist()) for i in g["_images"])))
        y = np.stack([pd.Series(d, index=i).reindex(images).to_numpy() for d, i in zip(g["_d"], g["_images"])])
        pooled_rows.append(
            {
                "model": arch,
                "arch": arch,
                "seed": None,
                "stage": stage,
                "explainer": explainer,
                "reference": reference,
                "seeds": len(g),
                "n": len(images),
                "tuning": float(g["tuning"].mean()),
                "reference_mean": float(g["reference_mean"].mean()),
                "diff_mean": float(y.mean()) if y.size else float("nan"),
                "_d": y if y.size else None,
                "_margin": margin,
            }
        )
    parts = [with_family(per_model, ["model"], "similarity", settings, higher="more similar", lower="less similar")]
    if pooled_rows:
        parts.append(
            with_family(
                pd.DataFrame(pooled_rows),
                ["model"],
                "similarity",
                settings,
                higher="more similar",
                lower="less similar",
            )
        )
    table = pd.concat(parts, ignore_index=True)
    table["verdict"] = [_similarity_verdict(v, ref) for v, ref in zip(table["verdict"], table["reference"])]
    table["margin"] = margin
    return table[TEST_COLUMNS].reset_index(drop=True)


def _similarity_verdict(verdict: str, reference: str) -> str:
    noise = reference == "explainer noise"
    if verdict == "less similar":
        return "changed beyond the explainer's noise" if noise else "changed more than retraining"
    if verdict == "more similar":
        return "more similar than the explainer's noise (?)" if noise else "changed less than retraining"
    if verdict == "equivalent":
        return "equivalent to the explainer's noise" if noise else "equivalent to retraining"
    return verdict


def write_stability(
    run_dir: Path,
    scores: pd.DataFrame,
    similarity: pd.DataFrame | None,
    *,
    settings: StatsSettings | None = None,
    kinds: Mapping[str, str | None] | None = None,
    tables: Mapping[tuple[str, str, str], GoodnessTable] | None = None,
    aliases: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Every stability table that applies to the run (and stability.md); nothing for a run with one
    seed, no tuning variants and no map comparisons. ``tables``: the run's goodness tables
    (:func:`bench.report.comparisons.goodness_tables` of ``scores``, computed here when not given)."""
    settings = settings or StatsSettings()
    kinds = kinds if kinds is not None else {}
    if tables is None:
        tables = goodness_tables(scores)
    out: dict[str, pd.DataFrame] = {}
    ptables, comps = pooled(tables, settings, kinds)
    stab, pooled_board = stability_tables(ptables, comps, settings, aliases)
    if len(stab):
        out["stability"], out["leaderboard_pooled"] = stab, pooled_board
        out["comparisons_pooled"] = comps.pairs
    var = variant_table(scores, settings, kinds)
    if len(var):
        out["variants"] = var
    if similarity is not None and len(similarity):
        out["similarity_summary"] = similarity_summary(similarity)
        out["similarity_tests"] = similarity_tests(similarity, settings)
    written = [atomic_write_text(run_dir / f"{name}.csv", csv_text(t)) for name, t in sorted(out.items())]
    if out:
        written.append(atomic_write_text(run_dir / "stability.md", render_stability_md(out)))
    return written


def _f(x: Any, spec: str = ".3g") -> str:
    return fmt_number(x, spec)


def _family_note(table: pd.DataFrame) -> str:
    fams = sorted(set(table["family"].astype(str)))
    return "Families: " + "; ".join(fams) + "." if fams else ""


def render_stability_md(tables: Mapping[str, pd.DataFrame]) -> str:
    lines = ["# Stability: seeds, tuning policies, maps", ""]
    if "stability" in tables:
        lines += [
            "## Do the rankings survive retraining?",
            "",
            "Kendall's W of the explainer rankings across training seeds (1 = every seed ranks alike, 0 = no "
            "agreement), 95% BCa CI over images resampled jointly under every seed, given these seeds; "
            "least pair: the W of the two seeds that agree least (with three seeds the seed-to-seed spread of W "
            "cannot be estimated beyond this). P(top stays): the probability that the pooled leader has the "
            "best pooled mean under the sampling distribution of the crossed image x seed model (ties shared); "
            "not separated: explainers the pooled paired tests do not separate from the leader.",
            "",
        ]
        lines += markdown_table(
            [
                "model",
                "stage",
                "metric",
                "seeds",
                "images",
                "W [95% CI]",
                "least pair",
                "pooled top",
                "P(top stays)",
                "not separated from the top",
            ],
            [
                [
                    r.model,
                    r.stage,
                    r.metric,
                    str(r.n_seeds),
                    str(r.n_images),
                    ci_text(r.kendall_w, r.w_ci_low, r.w_ci_high, ".2f"),
                    _f(r.w_pair_min, ".2f"),
                    r.top,
                    _f(r.p_top_stays, ".2f"),
                    r.not_separated_from_top or "none",
                ]
                for r in tables["stability"].itertuples(index=False)
            ],
        ) + [""]
        p = tables["leaderboard_pooled"]
        lines += [
            "### Pooled leaderboard",
            "",
            "Mean over seeds and images with its 95% t interval from the crossed image x seed model "
            "(Satterthwaite df: few when the seeds disagree). Rank and letters from the pooled paired tests "
            "(comparisons_pooled.csv; family: the pooled table's pairs, max-T): rank 1 = nothing is "
            "separated above it; explainers sharing a letter are not separated at this n.",
            "",
        ]
        lines += markdown_table(
            ["model", "stage", "metric", "explainer", "mean [95% CI]", "df", "rank"],
            [
                [
                    r.model,
                    r.stage,
                    r.metric,
                    alias_name(r.explainer, r.aliases),
                    ci_text(r.mean, r.ci_low, r.ci_high, ".4g"),
                    _f(r.df, ".3g"),
                    rank_text(r.rank, r.letters),
                ]
                for r in p.itertuples(index=False)
            ],
        ) + [""]
    if "variants" in tables:
        v = tables["variants"]
        lines += [
            "## Tuning policies against each other",
            "",
            "Paired over the images scored under both; diff = b − a with its t interval at the family's level; "
            "adj. p: paired t, Bonferroni over the model's table. " + _family_note(v),
            "",
        ]
        lines += markdown_table(
            ["model", "a", "b", "explainer", "metric", "n", "a mean", "b mean", "diff [CI]", "adj. p", "verdict"],
            [
                [
                    r.model,
                    r.stage_a,
                    r.stage_b,
                    r.explainer,
                    r.metric,
                    str(r.n_pairs),
                    _f(r.mean_a, ".4g"),
                    _f(r.mean_b, ".4g"),
                    ci_text(r.diff_mean, r.diff_ci_low, r.diff_ci_high, "+.3g"),
                    _f(r.p_adj),
                    r.verdict,
                ]
                for r in v.itertuples(index=False)
            ],
        )
        lines += [""]
    if "similarity_tests" in tables:
        st = tables["similarity_tests"]
        lines += [
            "## Did tuning change what the model looks at, beyond noise?",
            "",
            "Per image, the Spearman similarity of the pre and post maps (tuning) against the same images' "
            "similarity between two training seeds (retraining) and between two seeds of the explainer "
            "(explainer noise; 1 for a deterministic explainer). diff = tuning − reference with its t interval "
            "at the family's level; adj. p: paired t, Bonferroni over the model's table; rows with seeds > 1 "
            "pool the seeds (crossed image x seed model). " + _family_note(st),
            "",
        ]
        lines += markdown_table(
            [
                "model",
                "post stage",
                "explainer",
                "reference",
                "seeds",
                "n",
                "tuning",
                "reference",
                "diff [CI]",
                "adj. p",
                "verdict",
            ],
            [
                [
                    r.model,
                    r.stage,
                    r.explainer,
                    r.reference,
                    str(r.seeds),
                    str(r.n),
                    _f(r.tuning),
                    _f(r.reference_mean),
                    ci_text(r.diff_mean, r.diff_ci_low, r.diff_ci_high, "+.3g"),
                    _f(r.p_adj),
                    r.verdict,
                ]
                for r in st.itertuples(index=False)
            ],
        ) + [""]
        s = tables["similarity_summary"]
        lines += [
            "### Map similarity",
            "",
            "Mean over images with a 95% BCa CI (descriptive); groups: all images, by "
            "the image's cell under the first model, by its cell move.",
            "",
        ]
        lines += markdown_table(
            ["model", "explainer", "comparison", "group", "n", "Spearman [95% CI]", "top-15% overlap [95% CI]"],
            [
                [
                    r.model,
                    r.explainer,
                    r.comparison,
                    r.group,
                    str(r.n),
                    ci_text(r.spearman, r.spearman_ci_low, r.spearman_ci_high, ".2f"),
                    ci_text(r.top_overlap, r.overlap_ci_low, r.overlap_ci_high, ".2f"),
                ]
                for r in s.itertuples(index=False)
            ],
        ) + [""]
    return "\n".join(lines)
