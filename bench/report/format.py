"""The one presentation layer of a run's Markdown tables, figures and ``report.html``.

Everything that decides how a number, a direction, a rank, a reliability mark or a file name is
*written* lives here, so ``leaderboard.md``, ``reliability.md``, ``stability.md``, the figures and
the page say the same thing the same way. Nothing here computes a statistic: the ranks and
letters come from the paired tests (:mod:`bench.report.comparisons`), the marks from the
reliability card (:mod:`bench.report.reliability`).

Reading order (:func:`rank_order`): the rows of a leaderboard are its explainers by the mean of
their tested ranks over the metrics that pass the reliability card (all metrics when none does or
there is no card), then by the mean over every metric, then by name. It is an order to read the
table in, not a test: the verdicts are each metric's rank and letters. Columns
(:func:`metric_order`): the metrics that pass the card first, then those that fail it, each
alphabetical.
"""

from __future__ import annotations

import math
import re
from typing import Any, Collection, Iterable, Mapping

import pandas as pd

from bench.core.errors import one_line
from bench.core.text import fmt_number

__all__ = [
    "SCALARS",
    "arrow",
    "ci_text",
    "rank_text",
    "score_text",
    "md_text",
    "slug",
    "alias_name",
    "card_fails",
    "rank_order",
    "metric_order",
    "fmt_number",
]

SCALARS = ("acc", "auc", "sensitivity", "specificity", "loss")  # a classifier's test metrics, in this order
MD_MAX_TEXT = 200
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def arrow(higher_is_better: bool) -> str:
    """ "↑" when higher is better, "↓" when lower is."""
    return "↑" if higher_is_better else "↓"


def ci_text(value: Any, low: Any, high: Any, spec: str = ".4g", *, inf: str | None = None) -> str:
    """ "value [low, high]" with ``spec``; just "n/a" when the value itself is missing."""
    if fmt_number(value, spec, inf=inf) == "n/a":
        return "n/a"
    return f"{fmt_number(value, spec, inf=inf)} [{fmt_number(low, spec, inf=inf)}, {fmt_number(high, spec, inf=inf)}]"


def rank_text(rank: Any, letters: Any) -> str:
    """ "rank letters" (e.g. "2 bc"); "" when the row has no rank (n/a, error)."""
    if rank is None or pd.isna(rank):
        return ""
    return f"{int(rank)} {'' if letters is None or pd.isna(letters) else letters}"


def score_text(row: Mapping[str, Any], spec: str = ".4g") -> str:
    """A leaderboard cell: "mean [ci_low, ci_high] (rank letters)"; "n/a" / "error" by the row's status."""
    status = str(row.get("status", "ok"))
    if status == "n/a":
        return "n/a"
    if status.startswith("error"):
        return "error"
    rank = rank_text(row["rank"], row["letters"])
    return (
        f"{fmt_number(row['mean'], spec)} [{fmt_number(row['ci_low'], spec)}, {fmt_number(row['ci_high'], spec)}]"
        + (f" ({rank})" if rank else "")
    )


def md_text(s: Any, limit: int = MD_MAX_TEXT) -> str:
    """Free text for a Markdown table cell: one line, at most ``limit`` characters, "|" escaped."""
    return one_line(s, limit).replace("|", "\\|")


def slug(*parts: Any) -> str:
    """A file-name part of a figure: the parts joined by "_", every run of other characters a "-"."""
    return "_".join(_SLUG.sub("-", str(p)) for p in parts)


def alias_name(explainer: str, aliases: Any) -> str:
    """ "explainer (= its aliases)" when it stands for others, else the explainer."""
    aliases = "" if aliases is None or (isinstance(aliases, float) and math.isnan(aliases)) else str(aliases)
    return explainer + (f" (= {aliases})" if aliases else "")


def card_fails(card: Mapping[str, pd.DataFrame] | None, model: str, stage: str) -> dict[str, str]:
    """{metric: why it fails the reliability card} for one (model, stage); {} without a card."""
    if card is None:
        return {}
    c = card["reliability"]
    c = c[(c["model"] == model) & (c["stage"] == stage) & c["verdict"].astype(str).str.startswith("fails")]
    return {r.metric: r.verdict.removeprefix("fails: ") for r in c.itertuples(index=False)}


def metric_order(metrics: Iterable[str], fails: Collection[str] = ()) -> list[str]:
    """Columns of a leaderboard: the metrics that pass the card first, then those that fail it."""
    metrics = sorted(set(metrics))
    return [m for m in metrics if m not in fails] + [m for m in metrics if m in fails]


def rank_order(board: pd.DataFrame, fails: Collection[str] = ()) -> list[str]:
    """The explainers of one (model, stage) leaderboard in reading order (module docstring).

    ``board`` has the columns ``explainer``, ``metric`` and ``rank`` (missing where the metric does
    not apply or the explainer failed); ``fails`` the metrics that fail the reliability card.
    """
    rank = pd.to_numeric(board["rank"].astype("Float64"), errors="coerce").astype(float)
    df = pd.DataFrame(
        {
            "explainer": board["explainer"].astype(str).to_numpy(),
            "metric": board["metric"].to_numpy(),
            "rank": rank.to_numpy(),
        }
    )
    trusted = df[~df["metric"].isin(set(fails))]
    if trusted["rank"].notna().sum() == 0:
        trusted = df
    first = trusted.groupby("explainer")["rank"].mean()
    second = df.groupby("explainer")["rank"].mean()
    names = sorted(set(df["explainer"]))
    key = {n: (_last(first.get(n)), _last(second.get(n)), n) for n in names}
    return sorted(names, key=key.__getitem__)


def _last(x: Any) -> float:
    """A missing mean sorts after every number."""
    return math.inf if x is None or pd.isna(x) else float(x)
