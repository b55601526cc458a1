"""Per-image scores -> leaderboards and pre/post comparisons (CSV and Markdown).

Input: the runner's ``scores.csv`` as a DataFrame, one row per (model, stage, explainer, metric,
image) with columns ``model, stage, explainer, metric, image, label, pred, cell, value, status,
message, higher_is_better, seconds_per_image, peak_mem_mb`` (see :data:`SCORE_COLUMNS`). Read the
file with :func:`read_scores`: plain ``pandas.read_csv`` turns the status "n/a" into NaN.

Group status, used by every table (:func:`group_status`):

* ``"error: <message>"`` when any image of the (model, stage, explainer, metric) group has
  status "error" -- the most frequent message, with "(k of N images)" appended when only some
  images failed. Means over a different subset of images would not be comparable, so such a
  group gets NaN statistics and no rank.
* ``"n/a"`` when no image has a finite value with status "ok" (the metric does not apply, e.g.
  additivity of a non-additive method). Printed "n/a", never 0.
* ``"ok"`` otherwise; statistics use the finite values of the "ok" rows (``n`` counts them).

Statistics (:mod:`bench.stats`): a mean's interval is the 95 % t interval; ranks, letters and every
verdict come from paired tests within a declared family (:mod:`bench.report.comparisons`,
:data:`bench.stats.settings.FAMILIES`), each shown with the interval of the same test and family.

Output files are byte-identical for identical inputs: rows are sorted, floats are printed with
fixed formats (CSV ``%.6g``), nothing carries a timestamp.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_write_text
from bench.core.schema import CELLS, SCORE_COLUMNS, STAGES, is_cell, is_stage, move_cells, ordered_cells, stage_key
from bench.core.text import csv_text, fmt_number as _f, markdown_table
from bench.metrics import METRICS
from bench.report.comparisons import Comparisons, compare, goodness_tables, with_family
from bench.report.format import SCALARS, alias_name, arrow, card_fails, md_text, metric_order, rank_order, score_text
from bench.stats.estimate import finite, mean_estimate, t_interval
from bench.stats.settings import StatsSettings
from bench.stats.weighting import Sampling, stratified_mean

__all__ = [
    "LEADERBOARD_COLUMNS",
    "LEADERBOARD_HEAD",
    "PREPOST_COLUMNS",
    "PREPOST_BY_CELL_COLUMNS",
    "check_scores",
    "group_status",
    "leaderboard",
    "metric_kinds",
    "prepost",
    "prepost_by_cell",
    "render_leaderboard_md",
    "render_prepost_md",
    "write_tables",
    "read_prepost_models",
    "read_scores",
]

KEY = ["model", "stage", "explainer", "metric", "image"]
GROUP = ["model", "stage", "explainer", "metric"]
STATUSES = ("ok", "error", "n/a")
MEAN_CONFIDENCE = 0.95

LEADERBOARD_COLUMNS = [
    "model",
    "stage",
    "explainer",
    "aliases",
    "metric",
    "higher_is_better",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "rank",
    "letters",
    "mean_rank",
    "mean_test",
    "mean_test_ci_low",
    "mean_test_ci_high",
    "seconds_per_image",
    "peak_mem_mb",
    "status",
]
PREPOST_COLUMNS = [
    "model",
    "explainer",
    "metric",
    "higher_is_better",
    "n_pairs",
    "pre_mean",
    "post_mean",
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
    "status",
]
PREPOST_BY_CELL_COLUMNS = PREPOST_COLUMNS[:3] + ["cell"] + PREPOST_COLUMNS[3:]

CSV_FLOAT_FORMAT = "%.6g"


# ----------------------------------------------------------------------------- input checks


def check_scores(
    scores: pd.DataFrame, columns: Iterable[str] = SCORE_COLUMNS, *, source: str | None = None
) -> pd.DataFrame:
    """Validate ``scores`` and return a normalised copy (types, empty messages, rows sorted by key).

    Raises :class:`BenchError` on missing columns, non-numeric numbers, unknown stage/status/cell
    values, duplicate (model, stage, explainer, metric, image) rows, or a metric whose
    ``higher_is_better`` differs between rows. ``source`` is the file the rows came from (its
    header is line 1): messages then name the file and the line of the first bad row.
    """

    def where(row: Any) -> str:
        return f"{source} line {int(row) + 2}" if source else f"scores row {row}"

    if not isinstance(scores, pd.DataFrame):
        raise BenchError(f"scores must be a pandas DataFrame, got {type(scores).__name__}")
    columns = list(columns)
    missing = [c for c in columns if c not in scores.columns]
    if missing:
        raise BenchError(
            f"scores table lacks column(s) {missing}; expected the scores.csv columns {list(SCORE_COLUMNS)}"
        )
    df = scores.loc[:, columns].copy()
    for col in ("model", "stage", "explainer", "metric", "status"):
        if df[col].isna().any():
            raise BenchError(
                f"scores column {col!r} has empty/NaN entries; if it was read with pandas.read_csv, "
                f"read it with bench.report.leaderboard.read_scores "
                f"(pandas turns the text 'n/a' into NaN)"
            )
        df[col] = df[col].astype(str)
    if "message" in df:
        df["message"] = df["message"].fillna("").astype(str)
    if "cell" in df:
        df["cell"] = df["cell"].fillna("").astype(str)
    for col in ("value", "seconds_per_image", "peak_mem_mb"):
        if col in df:
            num = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
            bad = num.isna() & df[col].notna() & (df[col].astype(str).str.strip().str.lower() != "nan")
            if bad.any():
                row = df.index[bad][0]
                raise BenchError(
                    f"{where(row)}: column {col!r} holds {df.loc[row, col]!r}, not a number; fix or "
                    f"delete that row (or re-run the benchmark to rewrite the file)"
                )
            df[col] = num
    image = pd.to_numeric(df["image"], errors="coerce")
    if image.isna().any() or (image != image.round()).any():
        row = df.index[image.isna() | (image != image.round())][0]
        raise BenchError(
            f"{where(row)}: column 'image' holds {df.loc[row, 'image']!r}, not an image index; fix or delete that row"
        )
    df["image"] = image.astype(np.int64)
    for row, v in df["higher_is_better"].items():
        if _as_bool(v) is None:
            raise BenchError(f"{where(row)}: higher_is_better must be True or False, got {v!r}")
    df["higher_is_better"] = df["higher_is_better"].map(_as_bool)
    for col, allowed in (("stage", None), ("status", STATUSES), ("cell", CELLS)):
        if col in df:
            bad = (
                ~df[col].map(is_stage)
                if allowed is None
                else ~df[col].map(is_cell)
                if col == "cell"
                else ~df[col].isin(allowed)
            )
            if bad.any():
                row = df.index[bad][0]
                expected = (
                    ["pre", "post", "post:<variant>"]
                    if allowed is None
                    else list(allowed) + ["c<k>_ok", "c<k>_wrong"]
                    if col == "cell"
                    else list(allowed)
                )
                raise BenchError(f"{where(row)}: unknown {col} {df.loc[row, col]!r}; expected one of {expected}")
    silent = (df["status"] == "ok") & ~np.isfinite(df["value"].to_numpy(dtype=np.float64))
    if silent.any():
        row = df.index[silent][0]
        raise BenchError(
            f"{where(row)}: status 'ok' but value {df.loc[row, 'value']!r} "
            f"({int(silent.sum())} such rows); a value that is not a finite number must have status "
            f"'n/a' (or re-run the benchmark to rewrite the file)"
        )
    dup = df.duplicated(KEY, keep=False)
    if dup.any():
        row = df.loc[dup, KEY].iloc[0].to_dict()
        raise BenchError(
            f"scores has {int(dup.sum())} duplicate rows for the same (model, stage, explainer, metric, "
            f"image), e.g. {row}; each image must be scored once per stage, explainer and metric"
        )
    # statistics must not depend on the row order of the file (the bootstrap resamples positions)
    df = df.sort_values(KEY, kind="stable").reset_index(drop=True)
    hib = df.groupby("metric", sort=True)["higher_is_better"].nunique()
    if (hib > 1).any():
        raise BenchError(
            f"metric(s) {list(hib[hib > 1].index)} have both higher_is_better=True and False rows; "
            f"the direction of a metric must be fixed"
        )
    return df


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    if s in ("true", "1", "1.0"):
        return True
    if s in ("false", "0", "0.0"):
        return False
    return None


# ----------------------------------------------------------------------------- group status


def group_status(status: pd.Series, message: pd.Series, value: pd.Series) -> str:
    """Status of one group: "ok", "n/a" or "error: <message>" (rules in the module docstring)."""
    err = status == "error"
    if err.any():
        counts = Counter(message[err].map(one_line))
        # most frequent message; alphabetical among equally frequent ones, for determinism
        msg = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] or "unknown error"
        k, n = int(err.sum()), len(status)
        return f"error: {msg}" + (f" ({k} of {n} images)" if k < n else "")
    if not np.isfinite(value[status == "ok"].to_numpy(dtype=np.float64)).any():
        return "n/a"
    return "ok"


def _ok_values(g: pd.DataFrame) -> np.ndarray:
    return finite(g.loc[g["status"] == "ok", "value"].to_numpy(dtype=np.float64))


def _nan_reduce(x: pd.Series, how: str) -> float:
    a = x.to_numpy(dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan")
    return float(a.mean() if how == "mean" else a.max())


def _stage_order(stage: pd.Series) -> pd.Series:
    return stage.map(stage_key)


# ----------------------------------------------------------------------------- leaderboard


def metric_kinds(metrics: Iterable[str]) -> dict[str, str | None]:
    """{metric: its registered kind} (None for a metric the registry does not know)."""
    return {m: (METRICS.get(m).meta.get("kind") if m in METRICS else None) for m in metrics}


def _mean_ci(vals: np.ndarray) -> tuple[float, float, float]:
    est = mean_estimate(vals)
    low, high = t_interval(est, MEAN_CONFIDENCE)
    return est.mean, low, high


def leaderboard(
    scores: pd.DataFrame,
    *,
    settings: StatsSettings | None = None,
    comparisons: Comparisons | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    sampling: Mapping[str, Sampling] | None = None,
) -> pd.DataFrame:
    """One row per (model, stage, explainer, metric); columns :data:`LEADERBOARD_COLUMNS`.

    ``mean`` with its 95 % t interval over the group's finite "ok" values (``n``); ``rank`` and
    ``letters`` from the table's paired comparisons (``comparisons``, computed here when not given:
    :func:`bench.report.comparisons.compare`): rank 1 = nothing beats it, a method the paired test
    separates below another always ranks below it, methods sharing a letter are not separated;
    ``mean_rank`` the mean per-image rank (1 = best, the critical-difference figure's axis).
    ``mean_test`` (with its interval) reweights the cell-balanced sample to the test split's
    confusion cells (:func:`bench.stats.weighting.stratified_mean`) where ``sampling`` knows the
    split's cells. ``aliases`` ({representative: [aliases]}) names explainers found identical;
    their rows must already be gone from ``scores``. Error and "n/a" groups have NaN statistics and
    no rank. ``seconds_per_image`` is the mean and ``peak_mem_mb`` the max over the group's rows.
    Sorted by model, stage (pre, post), metric, rank, explainer.
    """
    df = check_scores(scores, [c for c in SCORE_COLUMNS if c not in ("label", "pred")])
    settings = settings or StatsSettings()
    if comparisons is None:
        comparisons = compare(goodness_tables(df), settings, metric_kinds(df["metric"].unique()))
    aliases = aliases or {}
    sampling = sampling or {}
    rows = []
    for (model, stage, explainer, metric), g in df.groupby(GROUP, sort=True):
        status = group_status(g["status"], g["message"], g["value"])
        vals = _ok_values(g)
        mean = low = high = t_mean = t_low = t_high = float("nan")
        if status == "ok":
            mean, low, high = _mean_ci(vals)
            plan = sampling.get(model)
            if plan is not None:
                ok = g[(g["status"] == "ok") & np.isfinite(g["value"].to_numpy(dtype=np.float64))]
                est = stratified_mean(ok["value"].to_numpy(), ok["image"].map(plan.strata).to_numpy(), plan.sizes)
                t_mean = est.mean
                t_low, t_high = t_interval(est, MEAN_CONFIDENCE)
        rows.append(
            {
                "model": model,
                "stage": stage,
                "explainer": explainer,
                "aliases": ", ".join(aliases.get(explainer, ())),
                "metric": metric,
                "higher_is_better": bool(g["higher_is_better"].iloc[0]),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": int(vals.size),
                "mean_test": t_mean,
                "mean_test_ci_low": t_low,
                "mean_test_ci_high": t_high,
                "seconds_per_image": _nan_reduce(g["seconds_per_image"], "mean"),
                "peak_mem_mb": _nan_reduce(g["peak_mem_mb"], "max"),
                "status": status,
            }
        )
    board = pd.DataFrame(rows, columns=[c for c in LEADERBOARD_COLUMNS if c not in ("rank", "letters", "mean_rank")])
    board = board.merge(comparisons.ranks, on=["model", "stage", "metric", "explainer"], how="left")
    board["rank"] = board["rank"].astype("Int64")
    board["letters"] = board["letters"].fillna("").astype(str)
    board["n"] = board["n"].astype(np.int64)
    board = board[LEADERBOARD_COLUMNS].assign(_stage=_stage_order(board["stage"]))
    board = board.sort_values(["model", "_stage", "metric", "rank", "explainer"], na_position="last", kind="stable")
    return board.drop(columns="_stage").reset_index(drop=True)


# ----------------------------------------------------------------------------- pre vs post


def _over_posts(scores: pd.DataFrame, *, by_cell: bool, settings: StatsSettings | None = None) -> pd.DataFrame:
    """The paired table of pre against each post stage, one family per model over all its rows
    (every post stage). With tuning variants the table gains a ``post_stage`` column (after
    ``model``); a run without variants gives exactly the table of pre against "post"."""
    settings = settings or StatsSettings()
    posts = sorted({str(s) for s in scores["stage"]} - {"pre"}, key=stage_key)
    columns = PREPOST_BY_CELL_COLUMNS if by_cell else PREPOST_COLUMNS
    variants = posts not in ([], ["post"])
    rows: list[dict[str, Any]] = []
    for post in posts if variants else ["post"]:
        sub = scores[scores["stage"].astype(str).isin(["pre", post])].copy()
        sub["stage"] = sub["stage"].replace({post: "post"})
        rows += [{**r, "post_stage": post} for r in _prepost_rows(sub, by_cell=by_cell, settings=settings)]
    kind = "prepost_by_cell" if by_cell else "prepost"
    table = with_family(pd.DataFrame(rows), ["model"], kind, settings, higher="higher after", lower="lower after")
    if table.empty:
        return pd.DataFrame(columns=(columns[:1] + ["post_stage"] + columns[1:]) if variants else columns)
    table["n_pairs"] = table["n_pairs"].astype(np.int64)
    order = ["model"] + (["_post"] if variants else []) + ["metric", "explainer"] + (["_cell"] if by_cell else [])
    table = table.assign(_post=table["post_stage"].map(stage_key))
    if by_cell:
        table = table.assign(_cell=table["cell"].map({c: i for i, c in enumerate(ordered_cells(table["cell"]))}))
    table = table.sort_values(order, kind="stable").reset_index(drop=True)
    out = columns[:1] + (["post_stage"] if variants else []) + columns[1:]
    return table[out]


def prepost(scores: pd.DataFrame, settings: StatsSettings | None = None) -> pd.DataFrame:
    """Paired pre/post comparison per (model, explainer, metric); columns :data:`PREPOST_COLUMNS`.

    Only models scored in both stages appear. Pairs are the images with status "ok" and a
    finite value in *both* stages (``n_pairs``); ``pre_mean``/``post_mean`` are means over those
    pairs, so ``diff_mean = post_mean - pre_mean`` (post minus pre, in the metric's own units).
    The family is every row of the model (all post stages; :data:`bench.stats.settings.FAMILIES`,
    named in ``family``): ``p`` the paired t test, ``p_adj`` Bonferroni over the family,
    ``diff_ci_*`` the t interval at ``level = 1 - alpha / m`` (it excludes 0 exactly when
    ``p_adj <= alpha``), ``p_equiv`` the family's TOST against ``+-margin``; ``verdict`` "higher
    after" / "lower after" / "equivalent" / "not separable at n = ...". A row whose explainer
    failed in either stage has status "error: pre: ..." / "error: post: ..." and NaN statistics;
    no pairs -> "n/a". Sorted by model, metric, explainer. With tuning variants, one block per
    post stage (column ``post_stage``).
    """
    return _over_posts(scores, by_cell=False, settings=settings)


def prepost_by_cell(scores: pd.DataFrame, settings: StatsSettings | None = None) -> pd.DataFrame:
    """:func:`prepost` broken down by the image's confusion cell under the *pre* model.

    Columns :data:`PREPOST_BY_CELL_COLUMNS`. ``cell`` is the image's cell in the pre-stage rows
    (TP/FP/FN/TN of the pre model), so each image stays in one cell across explainers, metrics
    and stages. Family: all explainer x metric x cell rows of the model. Sorted by model,
    metric, explainer, cell (TP, FP, FN, TN; with K > 2 classes the cells present, c0_ok, c0_wrong, c1_ok, ...).
    """
    return _over_posts(scores, by_cell=True, settings=settings)


def _prepost_rows(scores: pd.DataFrame, *, by_cell: bool, settings: StatsSettings) -> list[dict[str, Any]]:
    """The rows of pre against "post", each with its paired differences ``_d`` (None for a
    failed explainer) and equivalence margin ``_margin``; the tests are
    :func:`bench.report.comparisons.with_family`'s."""
    cols = [c for c in SCORE_COLUMNS if c not in ("label", "pred", "seconds_per_image", "peak_mem_mb")]
    if not by_cell:
        cols.remove("cell")
    df = check_scores(scores, cols)
    both = [m for m, st in df.groupby("model", sort=True)["stage"] if set(st) >= set(STAGES)]
    df = df[df["model"].isin(both)]
    if df.empty:
        return []
    status = {k: group_status(g["status"], g["message"], g["value"]) for k, g in df.groupby(GROUP, sort=True)}
    ok = df[df["status"] == "ok"]
    wide = ok.set_index(KEY)["value"].unstack("stage")
    wide = wide.reindex(columns=list(STAGES))
    if by_cell:
        cell_of = _pre_cells(df)
        wide = wide.join(cell_of, on=["model", "image"])
    cells = ordered_cells(cell_of) if by_cell else ()
    keys = sorted({k[:1] + k[2:] for k in status})  # (model, explainer, metric) seen in any stage
    direction = df.groupby("metric")["higher_is_better"].first().to_dict()
    kinds = metric_kinds(direction)
    rows = []
    nan = float("nan")
    for model, explainer, metric in keys:
        st = {s: status.get((model, s, explainer, metric)) for s in STAGES}
        errors = [f"{s}: {v[len('error: ') :]}" for s, v in st.items() if v and v.startswith("error")]
        try:
            sub = wide.loc[(model, explainer, metric)]
        except KeyError:
            sub = wide.iloc[0:0]
        parts = [(c, sub[sub["cell"] == c]) for c in cells] if by_cell else [(None, sub)]
        for cell, part in parts:
            row: dict[str, Any] = {
                "model": model,
                "explainer": explainer,
                "metric": metric,
                "higher_is_better": bool(direction[metric]),
            }
            if by_cell:
                row["cell"] = cell
            a, b = part["pre"].to_numpy(dtype=np.float64), part["post"].to_numpy(dtype=np.float64)
            keep = np.isfinite(a) & np.isfinite(b)
            a, b = (a[keep], b[keep]) if not errors else (a[:0], b[:0])
            n = int(a.size)
            row.update(
                n_pairs=n,
                pre_mean=float(a.mean()) if n else nan,
                post_mean=float(b.mean()) if n else nan,
                diff_mean=float((b - a).mean()) if n else nan,
                margin=settings.margin(metric, kinds[metric]),
                _margin=settings.margin(metric, kinds[metric]),
                _d=(b - a) if n else None,
                status="error: " + "; ".join(errors) if errors else ("ok" if n else "n/a"),
            )
            rows.append(row)
    return rows


def _pre_cells(df: pd.DataFrame) -> pd.Series:
    """The pre-model cell of each (model, image); raises when pre rows disagree."""
    pre = df[df["stage"] == "pre"]
    n = pre.groupby(["model", "image"])["cell"].nunique()
    if (n > 1).any():
        model, image = n[n > 1].index[0]
        raise BenchError(
            f"image {image} of model {model} has different pre-stage cells in different rows; "
            f"the cell is a property of (model, stage, image) and must agree across explainers"
        )
    return pre.groupby(["model", "image"])["cell"].first().rename("cell")


# ----------------------------------------------------------------------------- markdown


LEADERBOARD_HEAD = (
    "Cells: mean over the images [95% t interval] (rank letters). Ranks and letters come from paired tests of "
    "every two explainers on the same images: the mean paired difference, a t test, max-T over the table's "
    "pairs (its family, named under the table; adj. p 0 means below the Monte Carlo resolution), each verdict "
    "with the interval of the same test and family "
    "(comparisons.csv). Rank 1: no explainer is separated above it; an explainer separated below another always "
    "ranks below it. Two explainers sharing a letter are not separated at this n: not separable, which is not "
    "equal; pairs shown equivalent within the metric's margin (TOST, same family) are listed under the table. "
    "↑ higher is better, ↓ lower is better. n/a: the metric does not apply (no finite value); error: the "
    'explainer failed (see status). "a (= b)": b gave the same scores as a on every image and is counted once. '
    "Rows are in reading order: by the mean of each explainer's ranks over the metrics that pass the reliability "
    "card (an order to read in, not a test); the metrics that pass the card come first."
)


def render_leaderboard_md(
    board: pd.DataFrame,
    card: Mapping[str, pd.DataFrame] | None = None,
    comparisons: Comparisons | None = None,
    note: str = "",
) -> str:
    """leaderboard.md: one table per (model, stage); rows explainers, columns metrics.

    Cells read "mean [ci_low, ci_high] (rank letters)" (:func:`leaderboard`); "n/a" where the
    metric does not apply; "error" where the explainer failed, its message in the row's status
    column. Under each table, per metric: the family of its tests, Friedman's test and the pairs
    shown equivalent (``comparisons``). With the reliability card (:func:`bench.report.reliability.card`)
    a metric column that fails the card is marked ⚠ (the reasons follow the table). ``note``: a
    sentence on the sample (e.g. how the means relate to the test split).
    """
    lines = [
        "# Leaderboard",
        "",
        LEADERBOARD_HEAD
        + (" ⚠: the metric fails its reliability card (reliability.md)." if card is not None else "")
        + (f" {note}" if note else ""),
        "",
    ]
    if board.empty:
        return "\n".join(lines + ["No scores.", ""])
    board = board.assign(_stage=_stage_order(board["stage"]))
    pairs = comparisons.pairs if comparisons is not None else None
    fried = comparisons.friedman if comparisons is not None else None
    for (model, _, stage), sub in board.groupby(["model", "_stage", "stage"], sort=True):
        fails = card_fails(card, model, stage)
        metrics = metric_order(sub["metric"], fails)
        hib = sub.groupby("metric")["higher_is_better"].first()
        header = (
            ["explainer"]
            + [f"{m} {arrow(bool(hib[m]))}" + (" ⚠" if m in fails else "") for m in metrics]
            + ["s/image", "peak MB", "status"]
        )
        rows = []
        by_explainer = dict(list(sub.groupby("explainer", sort=True)))
        for explainer in rank_order(sub, fails):
            e = by_explainer[explainer]
            by_metric = e.set_index("metric")
            cells = [score_text(by_metric.loc[m]) if m in by_metric.index else "—" for m in metrics]
            secs = _nan_reduce(e["seconds_per_image"], "mean")
            mem = _nan_reduce(e["peak_mem_mb"], "max")
            rows.append(
                [md_text(alias_name(explainer, e["aliases"].iloc[0]))]
                + cells
                + [_f(secs, ".3g"), _f(mem, ".1f"), _row_status(e)]
            )
        lines += [f"## {model} · {stage}", ""] + markdown_table(header, rows) + [""]
        ns = sub[sub["status"] == "ok"].groupby("metric")["n"].agg(lambda s: sorted(set(int(v) for v in s)))
        if len(ns):
            desc = ", ".join(f"{m} {'/'.join(map(str, v))}" for m, v in ns.items())
            lines += [f"n (finite values per metric): {desc}", ""]
        for m in metrics:
            lines += _tests_line(pairs, fried, model, stage, m)
            if m in fails:
                lines += [f"⚠ {m}: {fails[m]}", ""]
    return "\n".join(lines)


def _tests_line(
    pairs: pd.DataFrame | None, fried: pd.DataFrame | None, model: str, stage: str, metric: str
) -> list[str]:
    """ "metric: family ...; Friedman ...; equivalent: a ≡ b (±margin)" under a leaderboard table."""
    if pairs is None or fried is None:
        return []
    p = pairs[(pairs["model"] == model) & (pairs["stage"] == stage) & (pairs["metric"] == metric)]
    f = fried[(fried["model"] == model) & (fried["stage"] == stage) & (fried["metric"] == metric)]
    if not len(p) and not len(f):
        return []
    parts = [f"{metric}:"]
    if len(p):
        parts.append(f"{p['family'].iloc[0]}, intervals at {_f(100 * p['level'].iloc[0], '.4g')}%;")
    if len(f) and np.isfinite(float(f["chi2"].iloc[0])):
        parts.append(
            f"Friedman chi2 = {_f(f['chi2'].iloc[0], '.4g')}, p = {_f(f['p'].iloc[0], '.3g')} "
            f"({int(f['blocks'].iloc[0])} blocks);"
        )
    eq = p[p["verdict"] == "equivalent"]
    if len(p):
        parts.append(
            "equivalent within ±"
            + _f(p["margin"].iloc[0], ".3g")
            + ": "
            + (", ".join(f"{r.a} ≡ {r.b}" for r in eq.itertuples(index=False)) if len(eq) else "none")
            + "."
        )
    return [" ".join(parts), ""]


def _row_status(e: pd.DataFrame) -> str:
    errs = e[e["status"].str.startswith("error")]
    if errs.empty:
        return "ok"
    parts = []
    for status, g in errs.groupby("status", sort=True):
        metrics = sorted(g["metric"])
        scope = "" if len(metrics) == len(e) else f" [{', '.join(metrics)}]"
        parts.append(md_text(status) + scope)
    return "; ".join(parts)


def _paired_rows(table: pd.DataFrame, with_cell: bool) -> list[list[str]]:
    rows = []
    for _, r in table.iterrows():
        lead = ([r["cell"]] if with_cell else []) + [
            md_text(r["explainer"]),
            f"{r['metric']} {arrow(bool(r['higher_is_better']))}",
        ]
        if str(r["status"]).startswith("error"):
            rows.append(lead + [str(r["n_pairs"]), "error", "error", "error", "", "", md_text(r["status"])])
            continue
        diff = f"{_f(r['diff_mean'], '+.4g')} [{_f(r['diff_ci_low'], '+.4g')}, {_f(r['diff_ci_high'], '+.4g')}]"
        if r["status"] == "n/a":
            diff = "n/a"
        rows.append(
            lead
            + [
                str(r["n_pairs"]),
                _f(r["pre_mean"]),
                _f(r["post_mean"]),
                diff,
                _f(r["p_adj"], ".3g"),
                md_text(str(r["verdict"])),
            ]
        )
    return rows


_PAIRED_HEADER = ["explainer", "metric", "n", "pre", "post", "diff [CI]", "adj. p", "verdict"]


def render_prepost_md(
    table: pd.DataFrame, by_cell: pd.DataFrame | None = None, models: Mapping[str, Any] | None = None
) -> str:
    """prepost.md: per model the paired differences, the model-level comparison, the per-cell breakdown.

    ``table`` is :func:`prepost`, ``by_cell`` :func:`prepost_by_cell`, ``models`` the parsed
    ``prepost_models.json`` ({model: {"delta", "mcnemar", "cell_moves", "test_pre", "test_post"}}).
    """
    lines = [
        "# Pre vs post",
        "",
        "Paired over the test images scored (status ok, finite) in both stages; n = pairs. "
        "pre/post: means over those pairs; diff = post − pre, the mean paired difference in the metric's own "
        "units, with its t interval at the family's level (1 − alpha/m: it excludes 0 exactly when the "
        "adjusted p is below alpha); adj. p: paired t test, Bonferroni over the family (every row of the "
        "model's table, over all its post stages; the per-cell table is its own family, named in "
        "prepost.csv); verdict: higher / lower after tuning, equivalent (the interval lies within the "
        "metric's margin: TOST), or not separable at this n. ↑/↓: whether higher or lower is better.",
        "",
    ]
    models = dict(models or {})
    by_cell = by_cell if by_cell is not None else pd.DataFrame(columns=PREPOST_BY_CELL_COLUMNS)
    if "post_stage" in table.columns:  # tuning variants: a section per (model, post stage)
        table = table.assign(model=table["model"] + " · " + table["post_stage"])
        by_cell = by_cell.assign(model=by_cell["model"] + " · " + by_cell["post_stage"])
    names = sorted(set(table["model"]) | set(models))
    if not names:
        return "\n".join(lines + ["No model was scored in both stages.", ""])
    for model in names:
        lines += [f"## {md_text(model)}", ""]
        sub = table[table["model"] == model]
        if len(sub):
            lines += ["### Attribution metrics", "", f"Family: {sub['family'].iloc[0]}.", ""]
            lines += markdown_table(_PAIRED_HEADER, _paired_rows(sub, False)) + [""]
        if model in models:
            lines += _model_comparison_md(model, models[model])
        cells = by_cell[(by_cell["model"] == model) & (by_cell["status"] == "ok")]
        if len(cells):
            lines += [
                "### By cell of the pre model",
                "",
                "Images grouped by their confusion cell under the pre model; rows without pairs "
                "(failed or not applicable, see above) are left out.",
                "",
            ]
            lines += markdown_table(["cell"] + _PAIRED_HEADER, _paired_rows(cells, True)) + [""]
    return "\n".join(lines)


def _model_comparison_md(model: str, comp: Any) -> list[str]:
    if not isinstance(comp, Mapping):
        raise BenchError(
            f"prepost_models[{model!r}] must be an object with delta/mcnemar/cell_moves, got {type(comp).__name__}"
        )
    # "label · post:a vs post:b" compares two tuning variants; every other entry a tuned model with its parent
    a, b = model.split(" · ", 1)[1].split(" vs ") if " vs " in model else ("pre", "post")
    lines = [f"### Classifier: {a} vs {b} (test split)", ""]
    pre, post, delta = (dict(comp.get(k) or {}) for k in ("test_pre", "test_post", "delta"))
    keys = [k for k in SCALARS if k in pre or k in post or k in delta]
    keys += sorted((set(pre) | set(post) | set(delta)) - set(keys))
    if keys:
        rows = [[k, _f(pre.get(k)), _f(post.get(k)), _f(delta.get(k), "+.4g")] for k in keys]
        lines += markdown_table(["metric", a, b, f"delta ({b} − {a})"], rows) + [""]
    mc = comp.get("mcnemar")
    if isinstance(mc, Mapping):
        lines += [
            f"McNemar exact test: b ({a} right, {b} wrong) = {mc.get('a_right_b_wrong', 'n/a')}, "
            f"c ({a} wrong, {b} right) = {mc.get('a_wrong_b_right', 'n/a')}, "
            f"p = {_f(mc.get('p_value'), '.3g')}.",
            "",
        ]
    moves = comp.get("cell_moves")
    if isinstance(moves, Mapping):
        cells = move_cells(moves)
        rows = [[x] + [str((moves.get(x) or {}).get(y, 0)) for y in cells] for x in cells]
        lines += [f"Cell moves (rows: cell under the {a} model, columns: under the {b} model):", ""]
        lines += markdown_table([f"{a} \\ {b}"] + list(cells), rows) + [""]
    return lines


# ----------------------------------------------------------------------------- files


def read_prepost_models(source: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """``prepost_models.json`` as a dict: pass the parsed object, a path, or None (-> {})."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"prepost models file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON ({e}); rerun the tuning step that writes it") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{path} must hold an object keyed by model name")
    return obj


TEXT_COLUMNS = ("model", "stage", "explainer", "metric", "cell", "status", "message")
NUMERIC_COLUMNS = ("value", "seconds_per_image", "peak_mem_mb")


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``scores.csv`` without pandas' NA guessing in text columns.

    Plain ``pandas.read_csv`` turns the status "n/a" (and a model called "null"/"None") into
    NaN; here text columns stay text ("" stays ""), and only the numeric columns read "", "nan"
    and "NaN" as missing. The result is validated by :func:`check_scores`.
    """
    path = Path(path)
    if not path.exists():
        raise BenchError(f"scores file not found: {path}; run the benchmark first")
    try:
        df = pd.read_csv(
            path,
            dtype={c: str for c in TEXT_COLUMNS},
            keep_default_na=False,
            na_values={c: ["", "nan", "NaN"] for c in NUMERIC_COLUMNS},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BenchError(f"{path} is not a readable CSV ({one_line(e, 200)})") from None
    return check_scores(df, source=str(path))


def write_tables(
    run_dir: str | os.PathLike,
    scores: pd.DataFrame,
    prepost_models: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    board: pd.DataFrame | None = None,
    card: Mapping[str, pd.DataFrame] | None = None,
    comparisons: Comparisons | None = None,
    settings: StatsSettings | None = None,
    note: str = "",
) -> list[Path]:
    """Write leaderboard.csv/.md, comparisons.csv, friedman.csv and, when some model has both stages,
    prepost.csv, prepost_by_cell.csv, prepost.md.

    ``prepost_models`` is the parsed ``prepost_models.json`` or its path; ``board`` and
    ``comparisons`` may pass :func:`leaderboard` and :func:`bench.report.comparisons.compare` of
    ``scores`` already computed; ``card`` the reliability card, whose verdicts mark leaderboard.md
    (:func:`render_leaderboard_md`); ``note`` a sentence on the sample for leaderboard.md. All
    files are written atomically and are byte-identical for identical inputs. Returns the
    written paths.
    """
    run_dir = Path(run_dir)
    df = check_scores(scores)
    if df.empty:
        raise BenchError("scores has no rows; nothing to tabulate (did the run score any image?)")
    settings = settings or StatsSettings()
    models = read_prepost_models(prepost_models)
    if comparisons is None:
        comparisons = compare(goodness_tables(df), settings, metric_kinds(df["metric"].unique()))
    board = leaderboard(df, settings=settings, comparisons=comparisons) if board is None else board
    written = [
        atomic_write_text(run_dir / "leaderboard.csv", csv_text(board, CSV_FLOAT_FORMAT)),
        atomic_write_text(run_dir / "leaderboard.md", render_leaderboard_md(board, card, comparisons, note)),
        atomic_write_text(run_dir / "comparisons.csv", csv_text(comparisons.pairs, CSV_FLOAT_FORMAT)),
        atomic_write_text(run_dir / "friedman.csv", csv_text(comparisons.friedman, CSV_FLOAT_FORMAT)),
    ]
    if any("pre" in set(st) and len(set(st)) > 1 for _, st in df.groupby("model")["stage"]):
        pp, pc = prepost(df, settings), prepost_by_cell(df, settings)
        written += [
            atomic_write_text(run_dir / "prepost.csv", csv_text(pp, CSV_FLOAT_FORMAT)),
            atomic_write_text(run_dir / "prepost_by_cell.csv", csv_text(pc, CSV_FLOAT_FORMAT)),
            atomic_write_text(run_dir / "prepost.md", render_prepost_md(pp, pc, models)),
        ]
    return written
