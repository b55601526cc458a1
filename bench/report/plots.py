"""Figures from per-image scores, perturbation curves and stored attribution maps.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (no global backend or
state is touched; rendering is Agg) under a fixed rc context, and written as PNG through
:func:`bench.core.io.atomic_write_bytes` with the "Software" metadata removed, so identical inputs
give byte-identical files with the same matplotlib/freetype versions.

Figures (``figures/`` in the run directory, written by :func:`write_figures`):

* ``leaderboard_<model>_<stage>.png`` -- heatmap explainers x metrics, colour = tied rank
  (1 = best), annotated with mean and rank; "n/a"/"error" cells are blank with a label.
* ``curves_<model>_<stage>.png`` -- deletion and insertion curves: per explainer the mean
  probability over images at each fraction with a 95 % normal band (mean +- 1.96 SE).
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
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

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
from bench.report.leaderboard import leaderboard
from bench.report.stability import arch_and_seed

__all__ = [
    "LAYOUT", "DIVERGING_CMAP", "AttributionExamples", "ModelExamples", "save_attribution_examples",
    "load_attribution_examples", "symmetric_limits", "leaderboard_heatmap", "curves_figure",
    "prepost_figure", "attribution_grid", "cd_figure", "figure_png", "write_figures",
]

LAYOUT = "pneumobench-attributions-v1"
DIVERGING_CMAP = "RdBu_r"
RANK_CMAP = "viridis_r"
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

    images: np.ndarray                                       # (N, H, W) float32
    labels: np.ndarray                                       # (N,) int64
    index: np.ndarray                                        # (N,) int64 test-split indices
    cells: dict[str, np.ndarray] = field(default_factory=dict)   # stage -> (N,) "TP"/"FP"/"FN"/"TN"
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
        raise BenchError(f"{what} name {name!r} cannot be stored in attributions.npz: it must be non-empty "
                         f"and must not contain '|'")
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
    arrays: dict[str, np.ndarray] = {"layout": np.array(LAYOUT)}
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
                raise BenchError(f"cells of {model}/{stage} must be {n} values out of {list(CELLS)} or "
                                 f"c<k>_ok / c<k>_wrong; got shape {c.shape}, unknown {bad}")
            binary = set(c.tolist()) <= set(CELLS)  # binary files stay byte for byte as they were
            arrays[f"cells|{m}|{_check_name(stage, 'stage')}"] = c.astype("<U2" if binary else str)
        for (stage, explainer), v in sorted(ex.maps.items()):
            a = _np(v).astype(np.float32)
            if a.ndim == 4:
                a = a.sum(axis=1)
            if a.shape != imgs.shape:
                raise BenchError(f"map of {model}/{stage}/{explainer} has shape {a.shape}; expected {imgs.shape} like "
                                 f"the model's images (or (N, C, H, W))")
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
        raise BenchError(f"{path} has layout {str(data.get('layout', 'none'))!r}, expected {LAYOUT!r}; "
                         f"rerun the benchmark to rewrite it")
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


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def leaderboard_heatmap(board: pd.DataFrame, model: str, stage: str) -> Figure:
    """Explainers x metrics for one (model, stage); colour = rank (1 = best), text = mean and rank."""
    sub = board[(board["model"] == model) & (board["stage"] == stage)]
    if sub.empty:
        raise BenchError(f"no leaderboard rows for model {model!r}, stage {stage!r}")
    explainers = sorted(sub["explainer"].unique())
    metrics = sorted(sub["metric"].unique())
    hib = sub.groupby("metric")["higher_is_better"].first()
    rank = np.full((len(explainers), len(metrics)), np.nan)
    annot = np.full(rank.shape, "", dtype=object)
    labels = {}
    for r in sub.itertuples(index=False):
        i, j = explainers.index(r.explainer), metrics.index(r.metric)
        if r.status == "ok":
            rank[i, j] = float(r.rank) if not pd.isna(r.rank) else np.nan
            annot[i, j] = f"{r.mean:.3g}\n({'' if pd.isna(r.rank) else int(r.rank)})"
        else:
            labels[(i, j)] = "n/a" if r.status == "n/a" else "error"
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(1.5 + 1.25 * len(metrics), 1.2 + 0.5 * len(explainers)), layout="constrained")
        ax = fig.add_subplot()
        vmax = max(2.0, float(np.nanmax(rank)) if np.isfinite(rank).any() else 2.0)
        sns.heatmap(rank, mask=~np.isfinite(rank), annot=annot, fmt="", cmap=RANK_CMAP, vmin=1.0, vmax=vmax,
                    linewidths=0.5, linecolor="white", cbar_kws={"label": "rank (1 = best)"}, ax=ax,
                    annot_kws={"fontsize": 7},
                    xticklabels=[f"{m} {_arrow(bool(hib[m]))}" for m in metrics], yticklabels=explainers)
        ax.collections[0].colorbar.set_ticks(np.arange(1, int(vmax) + 1))
        for (i, j), text in sorted(labels.items()):
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7, color="0.35")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(f"{model} · {stage}: mean (rank)")
    return fig


def cd_figure(pairs: pd.DataFrame, ranks: pd.DataFrame, model: str, stage: str, title: str = "") -> Figure:
    """Critical-difference diagrams (Demsar 2006) of one (model, stage), one panel per metric.

    The axis is each explainer's mean per-image rank (1 = best; ``ranks``' ``mean_rank``); a bar
    joins explainers the table's paired tests do not separate (``pairs``: the table's
    comparisons, max-T over its pairs; Benavoli et al. 2016 on why not Nemenyi's mean-rank
    test). Drawn by ``scikit_posthocs.critical_difference_diagram`` from the separation matrix.
    """
    r = ranks[(ranks["model"] == model) & (ranks["stage"] == stage)]
    metrics = sorted(m for m, g in r.groupby("metric") if g["mean_rank"].notna().sum() >= 2)
    if not metrics:
        raise BenchError(f"no ranked table for model {model!r}, stage {stage!r}")
    sizes = [int(r[r["metric"] == m]["mean_rank"].notna().sum()) for m in metrics]
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        height = sum(0.9 + 0.28 * k for k in sizes) + 0.8
        fig = Figure(figsize=(9.0, height))
        axes = fig.subplots(len(metrics), 1, squeeze=False, height_ratios=[0.9 + 0.28 * k for k in sizes])[:, 0]
        # the labels sit left and right of the axis, outside it: keep room for the longest names
        fig.subplots_adjust(left=0.3, right=0.7, top=1 - 0.8 / height, bottom=0.1 / height, hspace=0.35)
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
            colours = sns.color_palette("colorblind", len(names))
            ranks = sub.set_index("explainer")["mean_rank"].reindex(names)
            drawn = sp.critical_difference_diagram(pd.Series(ranks.to_numpy(), index=range(len(names))), sig, ax=ax,
                                                   color_palette={i: colours[i] for i in range(len(names))},
                                                   label_fmt_left="{label}\t{rank:.2g}",
                                                   label_fmt_right="{label}\t{rank:.2g}",
                                                   label_props={"fontsize": 7}, crossbar_props={"linewidth": 2.5})
            for text in drawn.get("labels", []):
                i, rank = text.get_text().split("\t")
                left = text.get_horizontalalignment() == "right"
                text.set_text(f"{names[int(i)]} ({rank})" if left else f"({rank}) {names[int(i)]}")
            ax.set_title(metric, fontsize=8, loc="left")
        fig.suptitle(title or f"{model} · {stage}: mean rank per image (1 = best); bars join explainers the paired "
                              f"tests do not separate", fontsize=8, y=1 - 0.15 / height)
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


def curves_figure(curves: pd.DataFrame, model: str, stage: str) -> Figure:
    """Deletion/insertion curves for one (model, stage): mean prob per explainer with a 95 % band.

    Band: mean +- 1.96 standard errors over images at each fraction (normal approximation).
    """
    df = _check_curves(curves)
    df = df[(df["model"] == model) & (df["stage"] == stage)]
    if df.empty:
        raise BenchError(f"no curves for model {model!r}, stage {stage!r}")
    kinds = sorted(df["curve"].unique())
    explainers = sorted(df["explainer"].unique())
    palette = dict(zip(explainers, sns.color_palette("colorblind", len(explainers))))
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.2 * len(kinds) + 1.5, 3.4), layout="constrained")
        axes = fig.subplots(1, len(kinds), squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            for explainer in explainers:
                d = df[(df["curve"] == kind) & (df["explainer"] == explainer)]
                if d.empty:
                    continue
                g = d.groupby("fraction", sort=True)["prob"]
                mean, se = g.mean(), g.sem(ddof=1).fillna(0.0)
                x = mean.index.to_numpy()
                ax.plot(x, mean.to_numpy(), color=palette[explainer], label=explainer, lw=1.4)
                ax.fill_between(x, (mean - 1.96 * se).to_numpy(), (mean + 1.96 * se).to_numpy(),
                                color=palette[explainer], alpha=0.18, lw=0)
            ax.set_xlim(0, 1)
            ax.set_xlabel("fraction of pixels perturbed")
            ax.set_ylabel("probability of the target class")
            ax.set_title(f"{kind}")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside right upper", fontsize=7, frameon=False)
        fig.suptitle(f"{model} · {stage}: mean over images ± 1.96 SE")
    return fig


def prepost_figure(board: pd.DataFrame, model: str) -> Figure:
    """Per metric, each explainer's pre and post mean with its 95 % CI, joined by a line."""
    sub = board[(board["model"] == model) & (board["status"] == "ok")]
    stages = sorted(set(sub["stage"]), key=stage_key)
    if sub.empty or "pre" not in stages or len(stages) < 2:
        raise BenchError(f"model {model!r} has no successful scores in both stages to plot")
    metrics = sorted(sub["metric"].unique())
    explainers = sorted(sub["explainer"].unique())
    palette = dict(zip(explainers, sns.color_palette("colorblind", len(explainers))))
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    offsets = np.linspace(-0.15, 0.15, len(explainers)) if len(explainers) > 1 else np.zeros(1)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(3.0 * ncols + 1.8, 2.8 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics):
            m = sub[sub["metric"] == metric]
            for off, explainer in zip(offsets, explainers):
                e = m[m["explainer"] == explainer].set_index("stage").reindex(stages)
                x = np.arange(len(stages)) + off
                y = e["mean"].to_numpy(dtype=float)
                lo = np.nan_to_num(y - e["ci_low"].to_numpy(dtype=float), nan=0.0)
                hi = np.nan_to_num(e["ci_high"].to_numpy(dtype=float) - y, nan=0.0)
                ax.errorbar(x, y, yerr=np.vstack([lo, hi]), color=palette[explainer], marker="o", ms=3.5,
                            lw=1.2, capsize=2.5, label=explainer)
            ax.set_xticks(range(len(stages)), stages)
            ax.set_xlim(-0.5, len(stages) - 0.5)
            ax.set_title(f"{metric} {_arrow(bool(m['higher_is_better'].iloc[0]))}")
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        handles, names = axes[0].get_legend_handles_labels()
        seen = dict(zip(names, handles))
        for ax in axes[1:len(metrics)]:
            for h, n in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(n, h)
        fig.legend([seen[n] for n in sorted(seen)], sorted(seen), loc="outside right upper", fontsize=7,
                   frameon=False)
        fig.suptitle(f"{model}: pre vs post, mean with 95% bootstrap CI")
    return fig


CARD_CRITERIA = (("beat random", "share of real explainers beating random"), ("alpha", "Krippendorff alpha"),
                 ("split-half", "split-half reliability"), ("substrate tau", "min tau between substrates"),
                 ("MetaQuantus input", "MC, input tests"), ("MetaQuantus model", "MC, model tests"))


def reliability_heatmap(card: pd.DataFrame, model: str, stage: str) -> Figure:
    """Metrics x criteria of the reliability card for one (model, stage), on one -1..1 diverging
    scale (1 = reliable); blank where a criterion was not computed or does not apply."""
    sub = card[(card["model"] == model) & (card["stage"] == stage)].sort_values("metric", kind="stable")
    if sub.empty:
        raise BenchError(f"no reliability card for model {model!r}, stage {stage!r}")
    share = np.where(sub["beat_random"] >= 0, sub["beat_random"] / sub["real_explainers"].clip(lower=1), np.nan)
    values = np.column_stack([share, sub["alpha"], sub["split_half"], sub["substrate_tau_min"], sub["meta_input"],
                              sub["meta_model"]]).astype(np.float64)
    labels = [f"{m}{' ⚠' if str(v).startswith('fails') else ''}" for m, v in zip(sub["metric"], sub["verdict"])]
    annot = np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}")(values)
    with matplotlib.rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(2.0 + 1.15 * values.shape[1], 1.3 + 0.45 * len(sub)), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(values, mask=~np.isfinite(values), annot=annot, fmt="", cmap="RdBu", vmin=-1.0, vmax=1.0,
                    linewidths=0.5, linecolor="white", ax=ax, annot_kws={"fontsize": 7},
                    cbar_kws={"label": "1 = reliable, 0 = chance"},
                    xticklabels=[c for c, _ in CARD_CRITERIA], yticklabels=labels)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(f"{model} · {stage}: reliability card (⚠ fails it)")
    return fig


def substrate_figure(curves: pd.DataFrame, model: str, stage: str) -> Figure:
    """Mean perturbation curves per substrate (columns) and curve (rows), a line per explainer."""
    df = curves[(curves["model"] == model) & (curves["stage"] == stage)]
    kinds, subs = sorted(df["curve"].unique()), sorted(df["substrate"].unique())
    explainers = sorted(df["explainer"].unique())
    palette = dict(zip(explainers, sns.color_palette("colorblind", len(explainers))))
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(2.7 * len(subs) + 1.6, 2.4 * len(kinds) + 0.4), layout="constrained")
        axes = fig.subplots(len(kinds), len(subs), squeeze=False, sharey=True)
        for r, kind in enumerate(kinds):
            for c, sub in enumerate(subs):
                ax = axes[r, c]
                for explainer in explainers:
                    d = df[(df["curve"] == kind) & (df["substrate"] == sub) & (df["explainer"] == explainer)]
                    if len(d):
                        d = d.sort_values("fraction", kind="stable")
                        ax.plot(d["fraction"], d["prob_mean"], color=palette[explainer], lw=1.3, label=explainer)
                ax.set_xlim(0, 1)
                ax.set_title(f"{kind} · {sub}", fontsize=8)
                if r == len(kinds) - 1:
                    ax.set_xlabel("fraction of pixels perturbed")
            axes[r, 0].set_ylabel("mean probability")
        seen: dict[str, Any] = {}
        for ax in axes.ravel():
            for h, n in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(n, h)
        fig.legend([seen[n] for n in sorted(seen)], sorted(seen), loc="outside right upper", fontsize=7, frameon=False)
        fig.suptitle(f"{model} · {stage}: perturbation curves by substrate (mean over images)")
    return fig


def similarity_figure(sim: pd.DataFrame, arch: str) -> Figure:
    """Map similarity of an architecture: left, mean Spearman per explainer for every comparison
    (tuning, retraining, explainer noise) with a 95 % normal band; right, pre vs post by the
    image's pre cell."""
    df = sim[sim["model"].map(lambda m: arch_and_seed(m)[0]) == arch].copy()
    df["kind"] = df["comparison"].map(lambda c: "retraining (seed vs seed)" if c.startswith("seed")
                                      else c.replace("pre vs ", "tuning: pre vs "))
    explainers = sorted(df["explainer"].unique())
    kinds = sorted(df["kind"].unique())
    palette = dict(zip(kinds, sns.color_palette("colorblind", len(kinds))))
    tuned = df[df["comparison"].str.startswith("pre vs ")]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.0 + 0.9 * len(explainers) * 2, 3.6), layout="constrained")
        left, right = fig.subplots(1, 2, squeeze=True)
        width = 0.8 / max(1, len(kinds))
        for k, kind in enumerate(kinds):
            g = df[df["kind"] == kind].groupby("explainer")["spearman"]
            mean, se = g.mean().reindex(explainers), g.sem().reindex(explainers).fillna(0.0)
            x = np.arange(len(explainers)) - 0.4 + width * (k + 0.5)
            left.bar(x, mean.to_numpy(), width, yerr=1.96 * se.to_numpy(), color=palette[kind], label=kind, capsize=2)
        left.set_xticks(range(len(explainers)), explainers, rotation=30, ha="right")
        left.set_ylabel("Spearman similarity of two maps")
        left.set_title("tuning next to retraining and the explainer's noise", fontsize=8)
        left.legend(fontsize=6, frameon=False)
        cells = [c for c in ordered_cells(tuned["cell_a"]) if c in set(tuned["cell_a"])]
        cpal = dict(zip(cells, sns.color_palette("colorblind", len(cells))))
        cw = 0.8 / max(1, len(cells))
        for k, cell in enumerate(cells):
            g = tuned[tuned["cell_a"] == cell].groupby("explainer")["spearman"]
            mean = g.mean().reindex(explainers)
            x = np.arange(len(explainers)) - 0.4 + cw * (k + 0.5)
            right.bar(x, mean.to_numpy(), cw, color=cpal[cell], label=f"pre cell {cell}")
        right.set_xticks(range(len(explainers)), explainers, rotation=30, ha="right")
        right.set_title("pre vs post by the image's cell under the pre model", fontsize=8)
        right.legend(fontsize=6, frameon=False)
        fig.suptitle(f"{arch}: how much the maps moved")
    return fig


def _grid_selection(ex: ModelExamples, model: str, per_cell: int | None) -> tuple[str, dict[str, list[int]]]:
    stage = "pre" if "pre" in ex.cells else "post"
    if stage not in ex.cells:
        raise BenchError(f"attribution examples have no cells for model {model!r}")
    cells = ex.cells[stage]
    # rows: every binary cell (an empty one says so), or the multi-class cells that have examples
    return stage, {c: [int(i) for i in np.flatnonzero(cells == c)[:per_cell]] for c in ordered_cells(cells.tolist())}


def attribution_grid(examples: AttributionExamples, model: str, explainer: str, *, per_cell: int | None = None,
                     percentile: float = PERCENTILE) -> Figure:
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
                block = axes[r, k * per_example:(k + 1) * per_example]
                for ax in block:
                    ax.set_xticks([])
                    ax.set_yticks([])
                if k >= len(chosen[cell]):
                    for ax in block:
                        ax.set_axis_off()
                    if k == 0:
                        block[0].text(0.5, 0.5, f"{cell}: no example", ha="center", va="center",
                                      transform=block[0].transAxes, fontsize=7)
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


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(*parts: str) -> str:
    return "_".join(_SLUG.sub("-", str(p)) for p in parts)


def _read_curves(curves: pd.DataFrame | str | os.PathLike | None) -> pd.DataFrame | None:
    if curves is None or isinstance(curves, pd.DataFrame):
        return curves
    path = Path(curves)
    if not path.exists():
        raise BenchError(f"curves file not found: {path}")
    return pd.read_csv(path, dtype={c: str for c in ("model", "stage", "explainer", "curve")},
                       keep_default_na=False, na_values={"prob": ["", "nan", "NaN"], "fraction": ["", "nan", "NaN"]})


def write_figures(run_dir: str | os.PathLike, scores: pd.DataFrame,
                  curves: pd.DataFrame | str | os.PathLike | None = None,
                  attributions_path: str | os.PathLike | None = None, *,
                  board: pd.DataFrame | None = None, card: Mapping[str, pd.DataFrame] | None = None,
                  substrate_curves: pd.DataFrame | None = None, similarity: pd.DataFrame | None = None,
                  comparisons: Any = None, pooled: Any = None, skip: Iterable[str] = ()) -> list[Path]:
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
    jobs: dict[str, Callable[[], Figure]] = {}  # built one at a time: figures hold a lot of memory
    for model, stage in board[["model", "stage"]].drop_duplicates().itertuples(index=False):
        _add_job(jobs, f"leaderboard_{_slug(model, stage)}.png", partial(leaderboard_heatmap, board, model, stage))
    ok = board[board["status"] == "ok"]
    for model, st in ok.groupby("model", sort=True)["stage"]:
        if "pre" in set(st) and len(set(st)) > 1:
            _add_job(jobs, f"prepost_{_slug(model)}.png", partial(prepost_figure, board, model))
    for comps, tag in ((comparisons, ""), (pooled, " (pooled over seeds)")):
        if comps is None or not len(comps.ranks):
            continue
        for model, stage in comps.ranks[["model", "stage"]].drop_duplicates().itertuples(index=False):
            if comps.ranks[(comps.ranks["model"] == model) & (comps.ranks["stage"] == stage)]["mean_rank"].notna().sum():
                _add_job(jobs, f"cd_{_slug(model, stage)}.png",
                         partial(cd_figure, comps.pairs, comps.ranks, model, stage,
                                 f"{model} · {stage}{tag}: mean rank per image (1 = best); bars join explainers the "
                                 f"paired tests do not separate"))
    cdf = _read_curves(curves)
    if cdf is not None and len(cdf):
        cdf = _check_curves(cdf)
        for model, stage in cdf[["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(jobs, f"curves_{_slug(model, stage)}.png", partial(curves_figure, cdf, model, stage))
    if card is not None and len(card["reliability"]):
        for model, stage in card["reliability"][["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(jobs, f"reliability_{_slug(model, stage)}.png",
                     partial(reliability_heatmap, card["reliability"], model, stage))
    if substrate_curves is not None and len(substrate_curves):
        for model, stage in substrate_curves[["model", "stage"]].drop_duplicates().itertuples(index=False):
            _add_job(jobs, f"substrates_{_slug(model, stage)}.png",
                     partial(substrate_figure, substrate_curves, model, stage))
    if similarity is not None and len(similarity):
        for arch in sorted({arch_and_seed(m)[0] for m in similarity["model"]}):
            _add_job(jobs, f"similarity_{_slug(arch)}.png", partial(similarity_figure, similarity, arch))
    if attributions_path is not None:
        ex = load_attribution_examples(attributions_path)
        for model, explainer in ex.pairs():
            if explainer in set(skip):
                continue
            _add_job(jobs, f"attributions_{_slug(model, explainer)}.png",
                     partial(attribution_grid, ex, model, explainer))
    return [atomic_write_bytes(out / name, figure_png(jobs[name]())) for name in sorted(jobs)]


def _add_job(jobs: dict[str, Callable[[], Figure]], name: str, job: Callable[[], Figure]) -> None:
    if name in jobs:  # two names with the same slug would silently overwrite one figure
        raise BenchError(f"two figures map to the file name {name!r}; rename a model or explainer so that "
                         f"names differ in more than punctuation")
    jobs[name] = job
