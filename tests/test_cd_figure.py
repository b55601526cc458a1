"""The critical-difference figure's panels follow the leaderboard's columns (passing metrics first)."""

from __future__ import annotations

import pandas as pd

from bench.report.plots import cd_figure


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    ranks = pd.DataFrame(
        [
            {"model": "m", "stage": "pre", "metric": metric, "explainer": e, "mean_rank": r}
            for metric in ("a_fails", "b_passes", "c_passes", "d_fails")
            for e, r in (("x", 1.2), ("y", 1.8), ("random", 3.0))
        ]
    )
    pairs = pd.DataFrame(
        [{"model": "m", "stage": "pre", "metric": "b_passes", "a": "x", "b": "random", "separated": True}]
    )
    return pairs, ranks


def _titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible() and ax.get_title(loc="left")]


def test_panels_put_the_metrics_that_pass_the_card_first():
    pairs, ranks = _frames()
    fig = cd_figure(pairs, ranks, "m", "pre", fails={"a_fails", "d_fails"})
    assert _titles(fig) == [
        "b_passes",
        "c_passes",
        "a_fails ⚠ fails the reliability card",
        "d_fails ⚠ fails the reliability card",
    ]


def test_without_a_card_the_panels_are_alphabetical():
    pairs, ranks = _frames()
    assert _titles(cd_figure(pairs, ranks, "m", "pre")) == ["a_fails", "b_passes", "c_passes", "d_fails"]
