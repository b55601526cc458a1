"""Per table: every paired comparison of explainers, and the ranks, letters and Friedman test from them.

A *table* is one (model, stage, metric) of a run, or one (architecture, stage, metric) pooled over
training seeds. Its goodness matrix holds the explainers whose group is "ok" (no failed image; see
:func:`bench.report.leaderboard.group_status`) on the images every one of them scored (and, pooled,
on the images scored under every seed). The comparisons are :func:`bench.stats.compare.pairwise`
(paired t, crossed over seeds when pooled, max-T over the table's pairs, TOST equivalence
with the metric kind's margin); ``rank`` and ``letters`` come from them, never from marginal
intervals. Written as ``comparisons.csv`` / ``comparisons_pooled.csv`` and ``friedman.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from bench.core.schema import stage_key
from bench.stats.compare import (
    PAIR_COLUMNS,
    compact_letters,
    dominance_ranks,
    family_tests,
    friedman,
    mean_ranks,
    pairwise,
    verdict_text,
)
from bench.stats.settings import StatsSettings, family_label

__all__ = [
    "COMPARISON_COLUMNS",
    "FRIEDMAN_COLUMNS",
    "RANK_COLUMNS",
    "Comparisons",
    "GoodnessTable",
    "compare",
    "goodness_tables",
    "pooled_tables",
    "seed_groups",
    "with_family",
]


@dataclass(frozen=True)
class GoodnessTable:
    """One table's goodness (higher is better): ``values (seeds, images, explainers)``."""

    model: str
    stage: str
    metric: str
    higher_is_better: bool
    explainers: tuple[str, ...]
    images: tuple[int, ...]
    seeds: tuple[str, ...]  # the model labels pooled (one for a plain table)
    values: np.ndarray

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.stage, self.metric)


def _ok_groups(scores: pd.DataFrame) -> pd.DataFrame:
    """The "ok" rows of every (model, stage, explainer, metric) group without a failed image."""
    failed = scores.groupby(["model", "stage", "explainer", "metric"])["status"].transform(
        lambda s: (s == "error").any()
    )
    ok = scores[(scores["status"] == "ok") & ~failed]
    return ok[np.isfinite(ok["value"].to_numpy(dtype=np.float64))]


def _matrix(g: pd.DataFrame) -> pd.DataFrame:
    """images x explainers of one table, only images every explainer scored."""
    wide = g.pivot(index="image", columns="explainer", values="value").sort_index(axis=1).sort_index()
    return wide.dropna(axis=0, how="any")


def goodness_tables(scores: pd.DataFrame) -> dict[tuple[str, str, str], GoodnessTable]:
    """Every (model, stage, metric) table of checked scores, in (model, stage, metric) order."""
    out = {}
    ok = _ok_groups(scores)
    for (model, stage, metric), g in ok.groupby(["model", "stage", "metric"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        wide = _matrix(g)
        vals = wide.to_numpy(dtype=np.float64)
        out[(model, stage, metric)] = GoodnessTable(
            model,
            stage,
            metric,
            hib,
            tuple(wide.columns),
            tuple(int(i) for i in wide.index),
            (model,),
            (vals if hib else -vals)[None],
        )
    return out


def seed_groups(models: list[str], arch_and_seed: Callable[[str], tuple[str, int | None]]) -> dict[str, list[str]]:
    """{architecture: its seed labels, by seed} for the labels that carry a seed."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for label in models:
        arch, seed = arch_and_seed(label)
        if seed is not None:
            groups.setdefault(arch, []).append((seed, label))
    return {a: [lab for _, lab in sorted(v)] for a, v in sorted(groups.items())}


def pooled_tables(
    tables: Mapping[tuple[str, str, str], GoodnessTable], groups: Mapping[str, list[str]]
) -> dict[tuple[str, str, str], GoodnessTable]:
    """Per (architecture, stage, metric): the seeds' tables stacked on the explainers every seed
    ranks and the images every seed scored (the same images: the crossed design)."""
    out = {}
    stages_metrics = sorted({(t.stage, t.metric) for t in tables.values()}, key=lambda sm: (stage_key(sm[0]), sm[1]))
    for arch, labels in groups.items():
        for stage, metric in stages_metrics:
            members = [tables[(lab, stage, metric)] for lab in labels if (lab, stage, metric) in tables]
            if len(members) < 2:
                continue
            names = sorted(set.intersection(*(set(t.explainers) for t in members)))
            images = sorted(set.intersection(*(set(t.images) for t in members)))
            if not names or not images:
                continue
            vals = np.stack(
                [
                    t.values[0][np.ix_([t.images.index(i) for i in images], [t.explainers.index(e) for e in names])]
                    for t in members
                ]
            )
            out[(arch, stage, metric)] = GoodnessTable(
                arch,
                stage,
                metric,
                members[0].higher_is_better,
                tuple(names),
                tuple(images),
                tuple(t.model for t in members),
                vals,
            )
    return out


KEY_COLUMNS = ["model", "stage", "metric", "higher_is_better"]
COMPARISON_COLUMNS = KEY_COLUMNS + PAIR_COLUMNS + ["family"]
RANK_COLUMNS = ["model", "stage", "metric", "explainer", "rank", "letters", "mean_rank"]
FRIEDMAN_COLUMNS = ["model", "stage", "metric", "k", "n_seeds", "n_images", "blocks", "chi2", "p"]


@dataclass(frozen=True)
class Comparisons:
    """Every table's pairwise comparisons, the ranks and letters from them, and Friedman's test."""

    pairs: pd.DataFrame  # COMPARISON_COLUMNS
    ranks: pd.DataFrame  # RANK_COLUMNS
    friedman: pd.DataFrame  # FRIEDMAN_COLUMNS


def compare(
    tables: Mapping[tuple[str, str, str], GoodnessTable],
    settings: StatsSettings,
    kinds: Mapping[str, str | None],
    family: str = "table",
) -> Comparisons:
    """:func:`bench.stats.compare.pairwise` on every table (family: the table's pairs), ranks and
    letters from its verdicts, mean per-image ranks and Friedman's chi-square."""
    pair_parts, rank_rows, fried_rows = [], [], []
    for t in tables.values():
        k = len(t.explainers)
        label = family_label(family, t.model, t.stage, t.metric, size=k * (k - 1) // 2)
        pairs = pairwise(
            t.values,
            t.explainers,
            alpha=settings.alpha,
            margin=settings.margin(t.metric, kinds.get(t.metric)),
            draws=settings.draws,
            seed=settings.seed,
        )
        pairs.insert(0, "higher_is_better", t.higher_is_better)
        for c, v in zip(("model", "stage", "metric"), t.key):
            pairs.insert(["model", "stage", "metric"].index(c), c, v)
        pairs["family"] = label
        pair_parts.append(pairs)
        means = t.values.mean(axis=(0, 1)) if t.values.shape[1] else np.full(k, np.nan)
        ranks = dominance_ranks(t.explainers, pairs) if t.values.shape[1] else {e: np.nan for e in t.explainers}
        letters = compact_letters(t.explainers, pairs, means) if t.values.shape[1] else {e: "" for e in t.explainers}
        mr = mean_ranks(t.values)
        for j, e in enumerate(t.explainers):
            rank_rows.append([t.model, t.stage, t.metric, e, ranks[e], letters[e], float(mr[j])])
        chi2, p, blocks = friedman(t.values)
        fried_rows.append([t.model, t.stage, t.metric, k, len(t.seeds), len(t.images), blocks, chi2, p])
    pairs = pd.concat(pair_parts, ignore_index=True) if pair_parts else pd.DataFrame(columns=COMPARISON_COLUMNS)
    ranks = pd.DataFrame(rank_rows, columns=RANK_COLUMNS)
    ranks["rank"] = ranks["rank"].astype("Int64")
    return Comparisons(pairs[COMPARISON_COLUMNS], ranks, pd.DataFrame(fried_rows, columns=FRIEDMAN_COLUMNS))


def with_family(
    rows: pd.DataFrame, by: list[str], kind: str, settings: StatsSettings, *, higher: str, lower: str
) -> pd.DataFrame:
    """Run :func:`bench.stats.compare.family_tests` on the rows' paired differences (``_d``: an
    array, or None for a row without data; ``_margin``), one family per ``by`` group; fills
    ``family``, ``level``, ``diff_ci_low``, ``diff_ci_high``, ``p``, ``p_adj``, ``p_equiv`` and
    ``verdict`` (``higher``/``lower`` for a separated row by its sign, "equivalent", "not
    separable at n = ...", "n/a"), and drops ``_d`` and ``_margin``."""
    if rows.empty:
        return rows
    parts = []
    for keys, g in rows.groupby(by, sort=True):
        g = g.copy()
        live = [i for i, d in zip(g.index, g["_d"]) if d is not None]
        fam = family_tests([g.at[i, "_d"] for i in live], [g.at[i, "_margin"] for i in live], settings.alpha)
        fam.index = live
        size = int(fam["family_size"].iloc[0]) if len(fam) else 0
        keys = keys if isinstance(keys, tuple) else (keys,)
        g["family"] = family_label(kind, *keys, size=size)
        for col, src in (
            ("level", "level"),
            ("diff_ci_low", "ci_low"),
            ("diff_ci_high", "ci_high"),
            ("p", "p"),
            ("p_adj", "p_adj"),
            ("p_equiv", "p_equiv"),
        ):
            g[col] = fam[src].reindex(g.index)
        g["verdict"] = [
            "n/a"
            if i not in fam.index or not np.isfinite(fam.at[i, "p"])
            else verdict_text(
                bool(fam.at[i, "separated"]),
                bool(fam.at[i, "equivalent"]),
                float(fam.at[i, "diff"]),
                int(fam.at[i, "n_images"]),
                int(fam.at[i, "n_seeds"]),
                higher=higher,
                lower=lower,
            )
            for i in g.index
        ]
        parts.append(g)
    return pd.concat(parts).drop(columns=["_d", "_margin"]).sort_index()
