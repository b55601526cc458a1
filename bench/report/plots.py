"""Figures from per-image scores, perturbation curves and stored attribution maps.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (no global backend or
state is touched; rendering is Agg) under a fixed rc context, and written as PNG through
:func:`bench.core.io.atomic_write_bytes` with the "Software" metadata removed, so identical inputs
give byte-identical files with the same matplotlib/freetype versions.

Figures (``figures/`` in the run directory, written by :func:`write_figures`):

* ``leaderboard_<model>_<stage>.png`` -- heatmap explainers (in reading order) x metrics, colour =
  the cell's place between its column's worst and best mean, annotated with mean, rank and
  letters; "n/a"/"error" cells are blank with a label.
* ``curves_<model>_<stage>.png`` -- deletion and insertion curves: per explainer the mean
  probability over images at each fraction with a 95 % normal band (mean +- 1.96 SE).

Every explainer keeps one colour, line style and marker across a run's figures
(:func:`method_styles`: Okabe-Ito colours crossed with line styles); legends sit outside the axes;
a panel without data is not drawn, and the figure's title names it.
* ``prepost_<model>.png`` -- per metric, each explainer's pre and post mean with its 95 % CI,
  joined by a line.
* ``attributions_<model>_<explainer>.png`` -- TP/FP/FN/TN examples (cell under the pre model),
  the image in grey beside the pre and post maps, all maps on ONE symmetric colour scale
  (:func:`symmetric_limits`) with a numeric colour bar, diverging colour-blind-safe "RdBu_r".

``attributions.npz`` layout (version ``pneumobench-attributions-v1``), written by
:func:`save_attribution_examples` and read by :func:`load_attribution_examples`. Each model has
its own N example images (chosen by the runner from that model's cells); names must not contain
"|":

==================================  ==============  ============================================
key                                 shape / dtype   meaning
==================================  ==============  ============================================
``layout``                          () str          "pneumobench-attributions-v1"
``images|{model}``                  (N, H, W) f32   the input images (channel mean if C > 1)
``labels|{model}``                  (N,) int64      true labels
``index|{model}``                   (N,) int64      image indices in the test split
``cells|{model}|{stage}``           (N,) <U2        "TP"/"FP"/"FN"/"TN" under that model/stage
``map|{model}|{stage}|{explainer}`` (N, H, W) f32   attribution maps (channel sum if C > 1)
==================================  ==============  ============================================

Channel reduction: maps with C > 1 are summed over channels (the sum keeps completeness:
``map.sum() == values.sum()``); images are averaged (the channels of a grey X-ray are copies).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd
import scikit_posthocs as sp
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from bench.core.errors import BenchError
from bench.core.io import atomic_write_bytes
from bench.core.schema import CELLS, CURVE_COLUMNS, is_cell, ordered_cells, stage_key
from bench.report.format import arrow, card_fails, metric_order, rank_order, rank_text, slug
from bench.report.leaderboard import leaderboard
from bench.report.stability import arch_and_seed

__all__ = [
    "LAYOUT",
    "DIVERGING_CMAP",
    "AttributionExamples",
    "method_styles",
    "ModelExamples",
    "save_attribution_examples",
    "load_attribution_examples",
    "symmetric_limits",
    "leaderboard_heatmap",
    "curves_figure",
    "prepost_figure",
    "attribution_grid",
    "cd_figure",
    "figure_png",
    "write_figures",
]

LAYOUT = "pneumobench-attributions-v1"
DIVERGING_CMAP = "RdBu_r"
PLACE_CMAP = "cividis"  # sequential and colour-blind safe, its lightness rises monotonically
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")  # Okabe & Ito 2008
LINESTYLES = ("-", "--", ":", "-.")
BAND_ALPHA = 0.08
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
PERCENTILE = 99.0
DPI = 110
_RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper"),
    "svg.hashsalt": "pneumobench",
    "font.family": "DejaVu Sans",  # bundled with matplotlib: same glyphs on every machine
    "image.interpolation": "nearest",
    "figure.dpi": DPI,
}


# ----------------------------------------------------------------------------- attribution store


@dataclass(frozen=True)
class ModelExamples:
    """One model's example images with their cells and maps (N images of this model).

    Read back from ``attributions.npz`` the arrays have the shapes below; when the runner builds
    one, ``images`` and ``maps`` may be ``(N, C, H, W)`` tensors (reduced over channels on save).
    """

    images: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N,) int64
    index: np.ndarray  # (N,) int64 test-split indices
    cells: dict[str, np.ndarray] = field(default_factory=dict)  # stage -> (N,) "TP"/"FP"/"FN"/"TN"
    maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (stage, explainer) -> (N, H, W)


@dataclass(frozen=True)
class AttributionExamples:
    """The contents of ``attributions.npz``: model name -> :class:`ModelExamples`."""

    models: dict[str, ModelExamples]

    def pairs(self) -> list[tuple[str, str]]:
        """Sorted (model, explainer) pairs that have at least one stored map."""
        return sorted({(m, e) for m, ex in self.models.items() for _, e in ex.maps})


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_name(name: Any, what: str) -> str:
    name = str(name)
    if "|" in name or not name:
        raise BenchError(
            f"{what} name {name!r} cannot be stored in attributions.npz: it must be non-empty and must not contain '|'"
        )
    return name


def _grey(a: Any, what: str) -> np.ndarray:
    a = _np(a).astype(np.float32)
    if a.ndim == 4:
        a = a.mean(axis=1)
    if a.ndim != 3:
        raise BenchError(f"{what} must be (N, H, W) or (N, C, H, W), got shape {a.shape}")
    return a


def save_attribution_examples(path: str | os.PathLike, examples: AttributionExamples) -> Path:
    """Store example images, cells and maps as ``attributions.npz`` (atomically).

    Each :class:`ModelExamples` may hold tensors or arrays; ``images`` of shape ``(N, C, H, W)``
    are averaged over channels, ``maps`` of that shape summed over channels (the sum keeps
    completeness), and every map must cover the model's N images in the same order. The file
    layout is in the module docstring.
    """
    if not isinstance(examples, AttributionExamples):
        raise BenchError(f"examples must be an AttributionExamples record, got {type(examples).__name__}")
    # Any: np.savez_compressed's keyword allow_pickle could otherwise take one of the ** entries
    arrays: dict[str, Any] = {"layout": np.array(LAYOUT)}
    for model in sorted(examples.models):
        m, ex = _check_name(model, "model"), examples.models[model]
        imgs = _grey(ex.images, f"images of {model}")
        n = imgs.shape[0]
        arrays[f"images|{m}"] = imgs
        for key in ("labels", "index"):
            a = _np(getattr(ex, key)).astype(np.int64).ravel()
            if a.shape != (n,):
                raise BenchError(f"{key} of {model} must have one entry per example image ({n}), got {a.shape}")
            arrays[f"{key}|{m}"] = a
        for stage, v in sorted(ex.cells.items()):
            c = np.asarray(_np(v), dtype=str).ravel()
            bad = sorted(x for x in set(c.tolist()) if not is_cell(x))
            if c.shape != (n,) or bad:
                raise BenchError(
                    f"cells of {model}/{stage} must be {n} values out of {list(CELLS)} or "
                    f"c<k>_ok / c<k>_wrong; got shape {c.shape}, unknown {bad}"
                )
            binary = set(c.tolist()) <= set(CELLS)  # binary files stay byte for byte as they were
            arrays[f"cells|{m}|{_check_name(stage, 'stage')}"] = c.astype("<U2" if binary else str)
        for (stage, explainer), v in sorted(ex.maps.items()):
            a = _np(v).astype(np.float32)
            if a.ndim == 4:
                a = a.sum(axis=1)
            if a.shape != imgs.shape:
                raise BenchError(
                    f"map of {model}/{stage}/{explainer} has shape {a.shape}; expected {imgs.shape} like "
                    f"the model's images (or (N, C, H, W))"
                )
            arrays[f"map|{m}|{_check_name(stage, 'stage')}|{_check_name(explainer, 'explainer')}"] = a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_attribution_examples(path: str | os.PathLike) -> AttributionExamples:
    """Read an ``attributions.npz`` written by :func:`save_attribution_examples`."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"attribution examples not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise BenchError(f"{path} is not a readable attributions.npz ({e}); rerun the benchmark") from None
    if str(data.get("layout", "")) != LAYOUT:
        raise BenchError(
            f"{path} has layout {str(data.get('layout', 'none'))!r}, expected {LAYOUT!r}; "
            f"rerun the benchmark to rewrite it"
        )
    models: dict[str, ModelExamples] = {}
    for k in sorted(data):
        parts = k.split("|")
        if parts[0] == "images" and len(parts) == 2:
            m = parts[1]
            try:
                models[m] = ModelExamples(images=data[k], labels=data[f"labels|{m}"], index=data[f"index|{m}"])
            except KeyError as e:
                raise BenchError(f"{path} lacks the array {e.args[0]!r}; rerun the benchmark") from None
    for k in sorted(data):
        parts = k.split("|")
        if parts[0] in ("cells", "map") and parts[1] not in models:
            raise BenchError(f"{path}: array {k!r} has no images|{parts[1]}; rerun the benchmark")
        if parts[0] == "cells" and len(parts) == 3:
            models[parts[1]].cells[parts[2]] = data[k].astype(str)
        elif parts[0] == "map" and len(parts) == 4:
            models[parts[1]].maps[(parts[2], parts[3])] = data[k]
    return AttributionExamples(models=models)


def symmetric_limits(arrays: Iterable[Any], percentile: float = PERCENTILE) -> tuple[float, float]:
    """``(-vmax, vmax)`` with vmax the ``percentile`` of |values| pooled over all ``arrays``.

    One scale for a whole grid, so colours compare across methods' examples and stages; a
    percentile rather than the max keeps one extreme pixel from washing out every map (values
    beyond it saturate). Non-finite values are ignored. Falls back to the max |value| when the
    percentile is 0, and to 1.0 when every value is 0 or none is finite (the colour bar still
    needs a non-empty range).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    flat = [np.abs(_np(a).astype(np.float64).ravel()) for a in arrays]
    v = np.concatenate(flat) if flat else np.zeros(0)
    v = v[np.isfinite(v)]
    vmax = float(np.percentile(v, percentile)) if v.size else 0.0
    if vmax <= 0.0 and v.size:
        vmax = float(v.max())
    if vmax <= 0.0:
        vmax = 1.0
    return (-vmax, vmax)


# ----------------------------------------------------------------------------- figures


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig`` without the version-dependent "Software" metadata."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def method_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{explainer: line colour, line style and marker}, the same explainer alike in every figure of a run.

    Colours: Okabe & Ito's colour-blind-safe palette without its yellow (too faint on white): seven
    colours, then the same seven dashed, dotted, dash-dotted (28 distinct pairs), each with its own
    marker too, so neighbours differ in more than hue.
    """
    out = {}
    for i, name in enumerate(sorted(set(names))):
        out[name] = {
            "color": OKABE_ITO[i % len(OKABE_ITO)],
            "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }
    return out


def _styles(styles: Mapping[str, Mapping[str, Any]] | None, names: Iterable[str]) -> Mapping[str, Mapping[str, Any]]:
    names = list(names)
    return styles if styles is not None and all(n in styles for n in names) else method_styles(names)


def leaderboard_heatmap(board: pd.DataFrame, model: str, stage: str, fails: Collection[str] = ()) -> Figure:
    """Explainers x metrics for one (model, stage), rows in reading order (:func:`bench.report.format.rank_order`).

    Colour: each cell's place between the worst (0) and the best (1) mean of its column, so a
    column whose explainers all share rank 1 still shows how far apart their means are; text: the
    mean and its tested rank and letters, bold at rank 1; ⚠ marks a metric that fails the card.
    """
    sub = board[(board["model"] == model) & (board["stage"] == stage)]
    if sub.empty:
        raise BenchError(f"no leaderboard rows for model {model!r}, stage {stage!r}")
    explainers = rank_order(sub, fails)
    metrics = metric_order(sub["metric"], fails)
    hib = sub.groupby("metric")["higher_is_better"].first()
    good = np.full((len(explainers), len(metrics)), np.nan)
    texts: dict[tuple[int, int], tuple[str, bool]] = {}
    for r in sub.itertuples(index=False):
        i, j = explainers.index(r.explainer), metrics.index(r.metric)
        if r.status == "ok":
            good[i, j] = float(r.mean) if hib[r.metric] else -float(r.mean)
            rank = rank_text(r.rank, r.letters)
            first = not pd.isna(r.rank) and int(r.rank) == 1
            texts[(i, j)] = (f"{r.mean:.3g}" + (f"\n({rank})" if rank else ""), first)
        else:
            texts[(i, j)] = ("n/a" if r.status == "n/a" else "error", False)
    with np.errstate(invalid="ignore"):
        low, high = np.nanmin(good, axis=0, initial=np.inf), np.nanmax(good, axis=0, initial=-np.inf)
        span = np.where(high > low, high - low, np.nan)
        # one explainer, or every mean equal: the column's cells are all its best
        place = np.where(np.isfinite(good), np.nan_to_num((good - low) / span, nan=1.0), np.nan)
    cmap = matplotlib.colormaps[PLACE_CMAP]
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(2.0 + 1.25 * len(metrics), 1.3 + 0.5 * len(explainers)), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(
            place,
            mask=~np.isfinite(place),
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            linewidths=0.5,
            linecolor="white",
            ax=ax,
            cbar_kws={"label": "place in its column: 0 = worst mean, 1 = best"},
            xticklabels=[f"{m} {arrow(bool(hib[m]))}" + (" ⚠" if m in fails else "") for m in metrics],
            yticklabels=explainers,
        )
        for (i, j), (text, first) in sorted(texts.items()):
            v = place[i, j]
            light = np.isfinite(v) and sum(cmap(v)[:3]) < 1.5  # dark cell: white text
            ax.text(
                j + 0.5,
                i + 0.5,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if light else ("0.1" if np.isfinite(v) else "0.35"),
                fontweight="bold" if first else "normal",
            )
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(f"{model} · {stage}: mean (rank letters), rows in reading order; bold: rank 1")
    return fig


def cd_figure(
    pairs: pd.DataFrame,
    ranks: pd.DataFrame,
    model: str,
    stage: str,
    title: str = "",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    fails: Collection[str] = (),
) -> Figure:
    """Critical-difference diagrams (Demsar 2006) of one (model, stage), one panel per metric.

    The axis is each explainer's mean per-image rank (1 = best; ``ranks``' ``mean_rank``); a bar
    joins explainers the table's paired tests do not separate (``pairs``: the table's
    comparisons, max-T over its pairs; Benavoli et al. 2016 on why not Nemenyi's mean-rank
    test). Drawn by ``scikit_posthocs.critical_difference_diagram`` from the separation matrix.
    Four or more metrics are laid out in two columns (the page shows the figure at its width). The
    panels follow the leaderboard's columns: the metrics that pass the reliability card first, then
    those in ``fails`` (marked ⚠), each group alphabetical.
    """
    r = ranks[(ranks["model"] == model) & (ranks["stage"] == stage)]
    # the leaderboard's column order: the metrics that pass the card first (``fails``: those that fail it)
    metrics = metric_order([m for m, g in r.groupby("metric") if g["mean_rank"].notna().sum() >= 2], fails)
    if not metrics:
        raise BenchError(f"no ranked table for model {model!r}, stage {stage!r}")
    styles = _styles(styles, r["explainer"])
    sizes = [int(r[r["metric"] == m]["mean_rank"].notna().sum()) for m in metrics]
    ncols = 2 if len(metrics) >= 4 else 1
    nrows = -(-len(metrics) // ncols)
    heights = [0.9 + 0.28 * max(sizes[i * ncols : (i + 1) * ncols]) for i in range(nrows)]
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        height = sum(heights) + 0.8
        width = 9.0 if ncols == 1 else 15.2
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(nrows, ncols, squeeze=False, height_ratios=heights).ravel()
        # the labels sit left and right of each axis, outside it: 2.2 in (one column: 2.7 in) for the longest names
        margin = 2.7 / width if ncols == 1 else 2.2 / width
        fig.subplots_adjust(
            left=margin,
            right=1 - margin,
            top=1 - 0.8 / height,
            bottom=0.1 / height,
            hspace=0.35,
            wspace=0.0 if ncols == 1 else 4.4 / 3.2,
        )
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        for ax, metric in zip(axes, metrics):
            sub = r[(r["metric"] == metric) & r["mean_rank"].notna()]
            names = sorted(sub["explainer"])
            pos = {n: i for i, n in enumerate(names)}
            # integer labels: scikit-posthocs groups labels in sets, whose order for strings changes with
            # Python's hash seed (the figure would differ from run to run); the names are put back below
            sig = pd.DataFrame(1.0, index=range(len(names)), columns=range(len(names)))
            p = pairs[(pairs["model"] == model) & (pairs["stage"] == stage) & (pairs["metric"] == metric)]
            for row in p.itertuples(index=False):
                if row.separated and row.a in pos and row.b in pos:
                    sig.loc[pos[row.a], pos[row.b]] = sig.loc[pos[row.b], pos[row.a]] = 0.0
            ranks_ = sub.set_index("explainer")["mean_rank"].reindex(names)
            drawn = sp.critical_difference_diagram(
                pd.Series(ranks_.to_numpy(), index=range(len(names))),
                sig,
                ax=ax,
                color_palette={i: styles[n]["color"] for i, n in enumerate(names)},
                label_fmt_left="{label}\t{rank:.2g}",
                label_fmt_right="{label}\t{rank:.2g}",
                label_props={"fontsize": 8},
                crossbar_props={"linewidth": 2.5},
            )
            for text in drawn.get("labels", []):
                i, rank = text.get_text().split("\t")
                left = text.get_horizontalalignment() == "right"
                text.set_text(f"{names[int(i)]} ({rank})" if left else f"({rank}) {names[int(i)]}")
            ax.set_title(
                f"{metric} ⚠ fails the reliability card" if metric in fails else metric, fontsize=9, loc="left"
            )
        fig.suptitle(
            title
            or f"{model} · {stage}: mean rank per image (1 = best); bars join explainers the paired "
            f"tests do not separate",
            fontsize=9,
            y=1 - 0.15 / height,
        )
    return fig


def _check_curves(curves: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise BenchError(f"curves table lacks column(s) {missing}; expected {list(CURVE_COLUMNS)}")
    df = curves.loc[:, list(CURVE_COLUMNS)].copy()
    for c in ("model", "stage", "explainer", "curve"):
        df[c] = df[c].astype(str)
    for c in ("fraction", "prob"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    return df


def curves_figure(
    curves: pd.DataFrame, model: str, stage: str, styles: Mapping[str, Mapping[str, Any]] | None = None
) -> Figure:
    """Deletion/insertion curves for one (model, stage): mean prob per explainer with a 95 % band.

    Band: mean +- 1.96 standard errors over images at each fraction (normal approximation), light
    enough that ten overlapping bands still show the lines; each explainer its colour, line style
    and marker (:func:`method_styles`); the legend outside the axes.
    """
    df = _check_curves(curves)
    df = df[(df["model"] == model) & (df["stage"] == stage)]
    if df.empty:
        raise BenchError(f"no curves for model {model!r}, stage {stage!r}")
    kinds = sorted(df["curve"].unique())
    explainers = sorted(df["explainer"].unique())
    styles = _styles(styles, explainers)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.2 * len(kinds) + 1.9, 3.6), layout="constrained")
        axes = fig.subplots(1, len(kinds), squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            for explainer in explainers:
                d = df[(df["curve"] == kind) & (df["explainer"] == explainer)]
                if d.empty:
                    continue
                g = d.groupby("fraction", sort=True)["prob"]
                mean, se = g.mean(), g.sem(ddof=1).fillna(0.0)
                x = mean.index.to_numpy()
                _line(ax, x, mean.to_numpy(), styles[explainer], explainer)
                ax.fill_between(
                    x,
                    (mean - 1.96 * se).to_numpy(),
                    (mean + 1.96 * se).to_numpy(),
                    color=styles[explainer]["color"],
                    alpha=BAND_ALPHA,
                    lw=0,
                )
            ax.set_xlim(0, 1)
            ax.set_xlabel("fraction of pixels perturbed")
            ax.set_ylabel("probability of the target class")
            ax.set_title(f"{kind}")
        _figure_legend(fig, axes)
        fig.suptitle(f"{model} · {stage}: mean over images ± 1.96 SE")
    return fig


def _line(ax: Any, x: np.ndarray, y: np.ndarray, style: Mapping[str, Any], label: str) -> None:
    """One explainer's curve: its colour and line style, a marker on about eight of the points."""
    ax.plot(
        x,
        y,
        color=style["color"],
        linestyle=style["linestyle"],
        marker=style["marker"],
        ms=3.2,
        lw=1.3,
        markevery=max(1, len(x) // 8),
        label=label,
    )


def _figure_legend(fig: Figure, axes: Iterable[Any]) -> None:
    """One legend for the figure, right of every axis (never on the data), entries by name."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(n, h)
    if seen:
        fig.legend([seen[n] for n in sorted(seen)], sorted(seen), loc="outside right upper", fontsize=7, frameon=False)


def _skipped(skipped: list[str], why: str = "not drawn, no data") -> str:
    """A second title line naming the panels left out for want of data ("" when none was)."""
    return f"\n{why}: " + ", ".join(skipped) if skipped else ""


def prepost_figure(board: pd.DataFrame, model: str, styles: Mapping[str, Mapping[str, Any]] | None = None) -> Figure:
    """Per metric, each explainer's pre and post mean with its 95 % CI, joined by a line."""
    sub = board[(board["model"] == model) & (board["status"] == "ok")]
    stages = sorted(set(sub["stage"]), key=stage_key)
    if sub.empty or "pre" not in stages or len(stages) < 2:
        raise BenchError(f"model {model!r} has no successful scores in both stages to plot")
    metrics = sorted(sub["metric"].unique())
    explainers = sorted(sub["explainer"].unique())
    styles = _styles(styles, explainers)
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    offsets = np.linspace(-0.15, 0.15, len(explainers)) if len(explainers) > 1 else np.zeros(1)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(3.0 * ncols + 1.9, 2.8 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics):
            m = sub[sub["metric"] == metric]
            for off, explainer in zip(offsets, explainers):
                e = m[m["explainer"] == explainer].set_index("stage").reindex(stages)
                x = np.arange(len(stages)) + off
                y = e["mean"].to_numpy(dtype=float)
                lo = np.nan_to_num(y - e["ci_low"].to_numpy(dtype=float), nan=0.0)
                hi = np.nan_to_num(e["ci_high"].to_numpy(dtype=float) - y, nan=0.0)
                st = styles[explainer]
                ax.errorbar(
                    x,
                    y,
                    yerr=np.vstack([lo, hi]),
                    color=st["color"],
                    linestyle=st["linestyle"],
                    marker=st["marker"],
                    ms=3.5,
                    lw=1.2,
                    capsize=2.5,
                    label=explainer,
                )
            ax.set_xticks(range(len(stages)), stages)
            ax.set_xlim(-0.5, len(stages) - 0.5)
            ax.set_title(f"{metric} {arrow(bool(m['higher_is_better'].iloc[0]))}")
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        _figure_legend(fig, axes[: len(metrics)])
        fig.suptitle(f"{model}: pre vs post, mean with 95% t interval")
    return fig


CARD_CRITERIA = (
    ("beat random", "share of real explainers beating random"),
    ("alpha", "Krippendorff alpha"),
    ("split-half", "split-half reliability"),
    ("substrate tau", "min tau between substrates"),
    ("MetaQuantus input", "MC, input tests"),
    ("MetaQuantus model", "MC, model tests"),
)


def reliability_heatmap(card: pd.DataFrame, model: str, stage: str) -> Figure:
    """Metrics x criteria of the reliability card for one (model, stage), on one -1..1 diverging
    scale (1 = reliable); blank where a criterion does not apply to a metric; a criterion the run
    did not compute for any metric (e.g. MetaQuantus when it is off) is left out and named."""
    sub = card[(card["model"] == model) & (card["stage"] == stage)].sort_values("metric", kind="stable")
    if sub.empty:
        raise BenchError(f"no reliability card for model {model!r}, stage {stage!r}")
    share = np.where(sub["beat_random"] >= 0, sub["beat_random"] / sub["real_explainers"].clip(lower=1), np.nan)
    values = np.column_stack(
        [share, sub["alpha"], sub["split_half"], sub["substrate_tau_min"], sub["meta_input"], sub["meta_model"]]
    ).astype(np.float64)
    keep = np.asarray(np.isfinite(values).any(axis=0))
    skipped = [c for (c, _), k in zip(CARD_CRITERIA, keep) if not k]
    if not keep.any():
        raise BenchError(f"the reliability card of model {model!r}, stage {stage!r} has no computed criterion")
    values = values[:, keep]
    labels = [f"{m}{' ⚠' if str(v).startswith('fails') else ''}" for m, v in zip(sub["metric"], sub["verdict"])]
    annot = np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}")(values)
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(2.6 + 1.15 * values.shape[1], 1.5 + 0.45 * len(sub)), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(
            values,
            mask=~np.isfinite(values),
            annot=annot,
            fmt="",
            cmap="RdBu",
            vmin=-1.0,
            vmax=1.0,
            linewidths=0.5,
            linecolor="white",
            ax=ax,
            annot_kws={"fontsize": 7},
            cbar_kws={"label": "1 = reliable, 0 = chance"},
            xticklabels=[c for (c, _), k in zip(CARD_CRITERIA, keep) if k],
            yticklabels=labels,
        )
        ax.tick_params(axis="x", labelrotation=30)
        note = _skipped(skipped, "left out, not computed")
        ax.set_title(f"{model} · {stage}: reliability card (⚠ fails it){note}", fontsize=9)
    return fig


def substrate_figure(
    curves: pd.DataFrame, model: str, stage: str, styles: Mapping[str, Mapping[str, Any]] | None = None
) -> Figure:
    """Mean perturbation curves per curve and substrate (a panel each, only those with data), a line per explainer."""
    df = curves[(curves["model"] == model) & (curves["stage"] == stage)]
    kinds, subs = sorted(df["curve"].unique()), sorted(df["substrate"].unique())
    explainers = sorted(df["explainer"].unique())
    styles = _styles(styles, explainers)
    has = set(map(tuple, df.loc[df["prob_mean"].notna(), ["curve", "substrate"]].drop_duplicates().to_numpy()))
    # rows are curves, columns substrates; a row or column without any data goes, a lone empty cell stays blank
    kinds = [k for k in kinds if any((k, s) in has for s in subs)]
    subs = [s for s in subs if any((k, s) in has for k in kinds)]
    skipped = [f"{k} · {s}" for k in kinds for s in subs if (k, s) not in has]
    if not kinds:
        raise BenchError(f"no substrate curves with data for model {model!r}, stage {stage!r}")
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(2.7 * len(subs) + 1.9, 2.4 * len(kinds) + 0.6), layout="constrained")
        axes = fig.subplots(len(kinds), len(subs), squeeze=False, sharey=True)
        for r, kind in enumerate(kinds):
            for c, sub in enumerate(subs):
                ax = axes[r, c]
                if (kind, sub) not in has:
                    ax.set_axis_off()
                    continue
                for explainer in explainers:
                    d = df[(df["curve"] == kind) & (df["substrate"] == sub) & (df["explainer"] == explainer)]
                    d = d[d["prob_mean"].notna()]
                    if len(d):
                        d = d.sort_values("fraction", kind="stable")
                        _line(ax, d["fraction"].to_numpy(), d["prob_mean"].to_numpy(), styles[explainer], explainer)
                ax.set_xlim(0, 1)
                ax.set_title(f"{kind} · {sub}", fontsize=8)
                ax.set_xlabel("fraction of pixels perturbed")
            axes[r, 0].set_ylabel("mean probability")
        panels = [axes[r, c] for r, k in enumerate(kinds) for c, s in enumerate(subs) if (k, s) in has]
        _figure_legend(fig, panels)
        fig.suptitle(
            f"{model} · {stage}: perturbation curves by substrate (mean over images){_skipped(skipped)}", fontsize=9
        )
    return fig


def similarity_figure(sim: pd.DataFrame, arch: str) -> Figure:
    """Map similarity of an architecture: left, mean Spearman per explainer for every comparison
    (tuning, retraining, explainer noise) with a 95 % normal band; right, pre vs post by the
    image's pre cell. Each panel's legend sits above it, off the bars."""
    df = sim[sim["model"].map(lambda m: arch_and_seed(m)[0]) == arch].copy()
    df["kind"] = df["comparison"].map(
        lambda c: "retraining (seed vs seed)" if c.startswith("seed") else c.replace("pre vs ", "tuning: pre vs ")
    )
    explainers = sorted(df["explainer"].unique())
    kinds = sorted(df["kind"].unique())
    palette = dict(zip(kinds, _cycle(OKABE_ITO, len(kinds))))
    tuned = df[df["comparison"].str.startswith("pre vs ")]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.0 + 0.9 * len(explainers) * 2, 4.0), layout="constrained")
        left, right = fig.subplots(1, 2, squeeze=True)
        width = 0.8 / max(1, len(kinds))
        for k, kind in enumerate(kinds):
            g = df[df["kind"] == kind].groupby("explainer")["spearman"]
            mean, se = g.mean().reindex(explainers), g.sem().reindex(explainers).fillna(0.0)
            x = np.arange(len(explainers)) - 0.4 + width * (k + 0.5)
            left.bar(x, mean.to_numpy(), width, yerr=1.96 * se.to_numpy(), color=palette[kind], label=kind, capsize=2)
        left.set_xticks(range(len(explainers)), explainers, rotation=30, ha="right")
        left.set_ylabel("Spearman similarity of two maps")
        cells = [c for c in ordered_cells(tuned["cell_a"]) if c in set(tuned["cell_a"])]
        cpal = dict(zip(cells, _cycle(OKABE_ITO, len(cells))))
        cw = 0.8 / max(1, len(cells))
        for k, cell in enumerate(cells):
            g = tuned[tuned["cell_a"] == cell].groupby("explainer")["spearman"]
            mean = g.mean().reindex(explainers)
            x = np.arange(len(explainers)) - 0.4 + cw * (k + 0.5)
            right.bar(x, mean.to_numpy(), cw, color=cpal[cell], label=f"pre cell {cell}")
        right.set_xticks(range(len(explainers)), explainers, rotation=30, ha="right")
        for ax, what in (
            (left, "tuning next to retraining and the explainer's noise"),
            (right, "pre vs post by the image's cell under the pre model"),
        ):
            ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(
                    fontsize=7,
                    frameon=False,
                    loc="lower left",
                    bbox_to_anchor=(0.0, 1.0),
                    ncols=4,
                    title=what,
                    title_fontsize=8,
                    alignment="left",
                )
            else:
                ax.set_title(what, fontsize=8)
        fig.suptitle(f"{arch}: how much the maps moved")
    return fig


def _cycle(colours: tuple[str, ...], n: int) -> list[str]:
    return [colours[i % len(colours)] for i in range(n)]


def _grid_selection(ex: ModelExamples, model: str, per_cell: int | None) -> tuple[str, dict[str, list[int]]]:
    stage = "pre" if "pre" in ex.cells else "post"
    if stage not in ex.cells:
        raise BenchError(f"attribution examples have no cells for model {model!r}")
    cells = ex.cells[stage]
    # rows: every binary cell (an empty one says so), or the multi-class cells that have examples
    return stage, {c: [int(i) for i in np.flatnonzero(cells == c)[:per_cell]] for c in ordered_cells(cells.tolist())}


def attribution_grid(
    examples: AttributionExamples,
    model: str,
    explainer: str,
    *,
    per_cell: int | None = None,
    percentile: float = PERCENTILE,
) -> Figure:
    """Rows TP/FP/FN/TN, or per class c<k>_ok / c<k>_wrong (cell under the pre model); per example:
    image | pre map | post map.

    ``per_cell`` examples per row (None: all stored ones; the runner chose how many). All maps
    of the figure share one symmetric scale from :func:`symmetric_limits` over the maps shown;
    the colour bar is in attribution units. Panel titles give the image's cell under each
    stage's model, so cell moves are visible.
    """
    if model not in examples.models:
        raise BenchError(f"no stored examples for model {model!r}; stored: {sorted(examples.models)}")
    ex = examples.models[model]
    stages = sorted({s for s, e in ex.maps if e == explainer}, key=stage_key)
    if not stages:
        raise BenchError(f"no stored maps for model {model!r}, explainer {explainer!r}")
    group_stage, chosen = _grid_selection(ex, model, per_cell)
    shown = sorted(i for ids in chosen.values() for i in ids)
    vmin, vmax = symmetric_limits([ex.maps[(s, explainer)][shown] for s in stages], percentile)
    per_row = max(1, max(len(ids) for ids in chosen.values()))
    per_example = 1 + len(stages)
    ncols = per_row * per_example
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(1.35 * ncols + 1.2, 1.45 * len(chosen) + 0.6), layout="constrained")
        axes = fig.subplots(len(chosen), ncols, squeeze=False)
        norm = Normalize(vmin=vmin, vmax=vmax)
        for r, cell in enumerate(chosen):
            for k in range(per_row):
                block = axes[r, k * per_example : (k + 1) * per_example]
                for ax in block:
                    ax.set_xticks([])
                    ax.set_yticks([])
                if k >= len(chosen[cell]):
                    for ax in block:
                        ax.set_axis_off()
                    if k == 0:
                        block[0].text(
                            0.5,
                            0.5,
                            f"{cell}: no example",
                            ha="center",
                            va="center",
                            transform=block[0].transAxes,
                            fontsize=7,
                        )
                    continue
                i = chosen[cell][k]
                block[0].imshow(ex.images[i], cmap="gray")
                block[0].set_title(f"#{int(ex.index[i])} y={int(ex.labels[i])}", fontsize=7)
                for ax, stage in zip(block[1:], stages):
                    ax.imshow(ex.maps[(stage, explainer)][i], cmap=DIVERGING_CMAP, norm=norm)
                    c = ex.cells.get(stage)
                    ax.set_title(f"{stage}" + (f": {c[i]}" if c is not None else ""), fontsize=7)
            axes[r, 0].set_ylabel(cell, fontsize=9)
        cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=DIVERGING_CMAP), ax=axes, shrink=0.8)
        cbar.set_label(f"attribution (shared scale: ±{percentile:g}th percentile of |values|)", fontsize=7)
        fig.suptitle(f"{model} · {explainer} (rows: cell under the {group_stage} model)", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- files


def _read_curves(curves: pd.DataFrame | str | os.PathLike | None) -> pd.DataFrame | None:
    if curves is None or isinstance(curves, pd.DataFrame):
        return curves
    path = Path(curves)
    if not path.exists():
        raise BenchError(f"curves file not found: {path}")
    return pd.read_csv(
        path,
        dtype={c: str for c in ("model", "stage", "explainer", "curve")},
        keep_default_na=False,
        na_values={"prob": ["", "nan", "NaN"], "fraction": ["", "nan", "NaN"]},
    )


def write_figures(
    run_dir: str | os.PathLike,
    scores: pd.DataFrame,
    curves: pd.DataFrame | str | os.PathLike | None = None,
    attributions_path: str | os.PathLike | None = None,
    *,
    board: pd.DataFrame | None = None,
    card: Mapping[str, pd.DataFrame] | None = None,
    substrate_curves: pd.DataFrame | None = None,
    similarity: pd.DataFrame | None = None,
    comparisons: Any = None,
    pooled: Any = None,
    skip: Iterable[str] = (),
) -> list[Path]:
    """Write every figure of a run to ``run_dir/figures/*.png``; returns the paths, sorted by name.

    ``curves`` is the curves.csv DataFrame or its path; ``attributions_path`` an
    ``attributions.npz``; ``card`` the reliability card's tables and ``substrate_curves`` its
    mean curves per substrate. Figures whose inputs are absent are skipped. ``board`` may pass a
    :func:`bench.report.leaderboard.leaderboard` already computed from ``scores``. ``comparisons``
    and ``pooled`` (:class:`bench.report.comparisons.Comparisons` of the run's tables and of the
    seed-pooled ones) give the critical-difference figures ``cd_<model>_<stage>.png``; ``skip``
    names explainers (aliases) whose example maps are not drawn again.
    """
    out = Path(run_dir) / "figures"
    board = leaderboard(scores) if board is None else board
    styles = method_styles(board["explainer"])  # one explainer, one look, in every figure of the run
    jobs: dict[str, Callable[[], Figure]] = {}  # built one at a time: figures hold a lot of memory
    for model, stage in board[["model", "stage"]].drop_duplicates().itertuples(index=False):
        _add_job(
            jobs,
            f"leaderboard_{slug(model, stage)}.png",
            partial(leaderboard_heatmap, board, model, stage, card_fails(card, model, stage)),
        )
    ok = board[board["status"] == "ok"]
    for model, st in ok.groupby("model", sort=True)["stage"]:
        if "pre" in set(st) and len(set(st)) > 1:
            _add_job(jobs, f"prepost_{slug(model)}.png", partial(prepost_figure, board, model, styles))
    for comps, tag in ((comparisons, ""), (pooled, " (pooled over seeds)")):
        if comps is None or not len(comps.ranks):
            continue
        for model, stage in comps.ranks[["model", "stage"]].drop_duplicates().itertuples(index=False):
            if (
                comps.ranks[(comps.ranks["model"] == model) & (comps.ranks["stage"] == stage)]["mean_rank"]
                .notna()
                .sum()
            ):
                _add_job(
                    jobs,
                    f"cd_{slug(model, stage)}.png",
                    partial(
                        cd_figure,
                        comps.pairs,
                        comps.ranks,
                        model,
                        stage,
                        f"{model} · {stage}{tag}: mean rank per image (1 = best); bars join explainers the "
                        f"paired tests do not separate",
                        styles,
                        card_fails(card, model, stage),
                    ),
                )
    cdf = _read_curves(curves)
    if cdf is not None and len(cdf):
        cdf = _check_curves(cdf)
        for model, stage in cdf[["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(jobs, f"curves_{slug(model, stage)}.png", partial(curves_figure, cdf, model, stage, styles))
    if card is not None and len(card["reliability"]):
        for model, stage in card["reliability"][["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(
                jobs,
                f"reliability_{slug(model, stage)}.png",
                partial(reliability_heatmap, card["reliability"], model, stage),
            )
    if substrate_curves is not None and len(substrate_curves):
        for model, stage in substrate_curves[["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(
                jobs,
                f"substrates_{slug(model, stage)}.png",
                partial(substrate_figure, substrate_curves, model, stage, styles),
            )
    if similarity is not None and len(similarity):
        for arch in sorted({arch_and_seed(m)[0] for m in similarity["model"]}):
            _add_job(jobs, f"similarity_{slug(arch)}.png", partial(similarity_figure, similarity, arch))
    if attributions_path is not None:
        ex = load_attribution_examples(attributions_path)
        for model, explainer in ex.pairs():
            if explainer in set(skip):
                continue
            _add_job(
                jobs, f"attributions_{slug(model, explainer)}.png", partial(attribution_grid, ex, model, explainer)
            )
    return [atomic_write_bytes(out / name, figure_png(jobs[name]())) for name in sorted(jobs)]


def _add_job(jobs: dict[str, Callable[[], Figure]], name: str, job: Callable[[], Figure]) -> None:
    if name in jobs:  # two names with the same slug would silently overwrite one figure
        raise BenchError(
            f"two figures map to the file name {name!r}; rename a model or explainer so that "
            f"names differ in more than punctuation"
        )
    jobs[name] = job
