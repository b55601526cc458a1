"""A run's files -> every table and figure; ``python -m bench report RUN_DIR`` calls :func:`rebuild`.

:func:`write_outputs` writes what a run measured (``scores.csv``, ``curves.csv``,
``substrates.csv``, ``substrate_curves.csv``, ``meta.csv``, ``prepost_models.json``,
``attributions.npz``) and then calls :func:`rebuild` on those files, so the tables and figures of a
run and of a later ``bench report`` come from the same bytes through the same code: byte for byte
the same. The leaderboard and pre/post tables come from ``scores.csv`` (plus
``prepost_models.json`` for the model-level comparison); the reliability card also from
``substrates.csv`` and ``meta.csv``; the baseline x substrate interaction of explainer variants with
different baselines (:mod:`bench.report.baseline_substrate`) from ``scores.csv`` and
``substrates.csv``; figures also from the curves and ``attributions.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_json, atomic_write_text
from bench.core.text import csv_text
from bench.metrics import METRICS
from bench.report import baseline_substrate, html, leaderboard, plots, reliability, stability
from bench.report.comparisons import compare, goodness_tables
from bench.report.plots import AttributionExamples
from bench.stats.aliases import collapse, find_aliases
from bench.stats.settings import StatsSettings
from bench.stats.weighting import Sampling

CSV_FLOAT_FORMAT = "%.8g"


def write_outputs(
    run_dir: str | Path,
    tables: Mapping[str, pd.DataFrame],
    prepost_models: dict[str, Any] | None,
    examples: AttributionExamples | None,
    *,
    figures: bool = True,
) -> list[Path]:
    """Write a run's measurements, then its tables and figures (:func:`rebuild`); each file atomically.
    ``report.html`` is the caller's to write, after the final manifest it shows
    (:func:`bench.report.html.write_html_report`).

    ``tables``: ``scores`` and, when present, ``curves``, ``substrates``, ``substrate_curves``,
    ``meta`` DataFrames (each written as ``<name>.csv``).
    """
    run_dir = Path(run_dir)
    written = [atomic_write_text(run_dir / "scores.csv", csv_text(tables["scores"], CSV_FLOAT_FORMAT))]
    for name in (*MEASURED, "prepost_models.json", "attributions.npz"):
        (run_dir / name).unlink(missing_ok=True)  # a file of an earlier config must not feed the figures
    for name in MEASURED:
        table = tables.get(name.removesuffix(".csv"))
        if table is not None and len(table):
            written.append(atomic_write_text(run_dir / name, csv_text(table, CSV_FLOAT_FORMAT)))
    if prepost_models:
        written.append(atomic_write_json(run_dir / "prepost_models.json", prepost_models))
    if examples is not None and examples.models:
        written.append(plots.save_attribution_examples(run_dir / "attributions.npz", examples))
    return written + rebuild(run_dir, figures=figures, page=False)


def rebuild(
    run_dir: str | Path, *, figures: bool = True, page: bool = True, truth: pd.DataFrame | None = None
) -> list[Path]:
    """Every table (and, with ``figures``, every figure) of a run from its files, then, with ``page``,
    ``report.html`` (:func:`bench.report.html.write_html_report`, with the figures present); returns the paths.
    ``truth``: for a sub-run of ``bench truth`` only, the model-truth agreement of its polarity, which
    becomes the reliability card's ``truth`` column (:func:`bench.report.reliability.truth_cells`;
    :func:`bench.report.truth.rebuild_truth` passes it).

    The statistics' and the reliability card's settings come from the run's ``manifest.json`` (its
    config's ``[stats]`` and ``[reliability]``; the defaults for a run without them). Explainers whose
    scores are identical everywhere are found first (:func:`bench.stats.aliases.find_aliases`,
    ``aliases.csv``) and counted once in every table.
    """
    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.csv"
    if not scores_path.is_file():
        raise BenchError(f"{scores_path} not found; give the folder of a finished run (results/<run-name>)")
    raw = leaderboard.read_scores(scores_path)
    unknown = sorted(set(raw["metric"]) - set(METRICS.names()))
    if unknown:
        raise BenchError(
            f"{scores_path} has rows of metric(s) {unknown} that no installed package registers; install "
            f"the plug-in that registers them, or delete their rows (python -m bench list metrics)"
        )
    measured = {name: _read_csv(run_dir / name) for name in MEASURED}
    pm_path = run_dir / "prepost_models.json"
    prepost_models = json.loads(pm_path.read_text()) if pm_path.is_file() else None
    attr = run_dir / "attributions.npz"
    manifest = html.read_manifest(run_dir) or {}
    enabled, card_settings = _card_settings(manifest)
    config = manifest.get("config")
    config = config if isinstance(config, dict) else {}
    figures = figures and bool((config.get("figures") or {}).get("enabled", True))  # as the run drew them
    settings = _stats_settings(manifest, card_settings)
    examples = plots.load_attribution_examples(attr) if attr.is_file() else None
    aliases = find_aliases(
        raw,
        rtol=settings.alias_rtol,
        atol=settings.alias_atol,
        extra=[measured["substrates.csv"]],
        maps=_example_maps(examples),
    )
    scores = collapse(raw, aliases)
    raw_substrates = measured["substrates.csv"]  # the baseline pairs are named explainers: never collapsed away
    measured = {name: collapse(t, aliases) for name, t in measured.items()}
    kinds = leaderboard.metric_kinds(scores["metric"].unique())
    tables = goodness_tables(scores)
    comps = compare(tables, settings, kinds)
    sampling, note = _sampling(manifest, scores, measured["sample.csv"])
    board = leaderboard.leaderboard(scores, settings=settings, comparisons=comps, aliases=aliases, sampling=sampling)
    card = None
    written: list[Path] = [atomic_write_text(run_dir / "aliases.csv", csv_text(_alias_table(aliases)))]
    if enabled:
        roles = {
            m: (METRICS.get(m).meta.get("control_role", "baseline") if m in METRICS else "baseline") for m in kinds
        }
        meta_table = reliability.meta_table(measured["meta.csv"], measured["meta_scores.csv"], card_settings)
        card = reliability.card(
            scores,
            card_settings,
            kinds,
            substrates=measured["substrates.csv"],
            meta=meta_table,
            comparisons=comps,
            stats=settings,
            roles=roles,
            truth=truth,
        )
        written += reliability.write_card(run_dir, card, card_settings)
    written = (
        leaderboard.write_tables(
            run_dir, scores, prepost_models, board=board, card=card, comparisons=comps, settings=settings, note=note
        )
        + written
    )
    written += stability.write_stability(
        run_dir, scores, measured["similarity.csv"], settings=settings, kinds=kinds, tables=tables, aliases=aliases
    )
    written += baseline_substrate.write_baseline_substrate(run_dir, raw, raw_substrates, manifest, settings)
    if figures:
        ptables, pooled = stability.pooled(tables, settings, kinds)
        written += plots.write_figures(
            run_dir,
            scores,
            curves=measured["curves.csv"],
            board=board,
            attributions_path=attr if attr.is_file() else None,
            card=card,
            substrate_curves=measured["substrate_curves.csv"],
            similarity=measured["similarity.csv"],
            comparisons=comps,
            pooled=pooled if len(ptables) else None,
            skip=[a for members in aliases.values() for a in members],
        )
    if page:
        written.append(html.write_html_report(run_dir))  # last: it embeds the tables and figures written above
    return written


def _alias_table(aliases: Mapping[str, list[str]]) -> pd.DataFrame:
    rows = [[rep, a] for rep, members in sorted(aliases.items()) for a in members]
    return pd.DataFrame(rows, columns=["explainer", "alias"])


def _example_maps(examples: AttributionExamples | None) -> dict[tuple[str, str, str], Any]:
    if examples is None:
        return {}
    return {(model, stage, e): m for model, ex in examples.models.items() for (stage, e), m in ex.maps.items()}


def _sampling(
    manifest: Mapping[str, Any], scores: pd.DataFrame, sample: pd.DataFrame | None
) -> tuple[dict[str, Sampling], str]:
    """Each model's sampling design ({model label: Sampling}) and a sentence for leaderboard.md.

    A run with ``data.sample = "per_cell"`` drew its images per confusion cell of each
    architecture's first pre model. The cells' sizes in the test split come from the run's
    ``sample.csv`` or, for a run written before it existed, from that model's test accuracy,
    sensitivity and specificity and the split's size in the manifest (binary tasks); the strata
    are the images' cells in that model's pre rows.
    """
    config = manifest.get("config")
    config = config if isinstance(config, dict) else {}
    data = config.get("data") or {}
    if data.get("sample", "per_cell") != "per_cell":
        return {}, "The images are the whole test split: the means are test-split means."
    designs: dict[str, tuple[str, dict[str, int], str]] = {}
    if sample is not None and len(sample):
        for arch, g in sample.groupby("arch", sort=True):
            designs[str(arch)] = (
                str(g["model"].iloc[0]),
                dict(zip(g["cell"].astype(str), g["n_test"].astype(int))),
                "sample.csv",
            )
    else:
        for arch, first in _sampling_models(config):
            sizes = _derived_sizes(manifest, first)
            if sizes:
                designs[arch] = (first, sizes, "derived from the sampling model's test metrics in manifest.json")
    out: dict[str, Sampling] = {}
    for arch, (first, sizes, source) in designs.items():
        pre = scores[(scores["model"] == first) & (scores["stage"] == "pre")]
        if pre.empty:
            continue
        strata = pre.groupby("image")["cell"].first().to_dict()
        for label in sorted(set(scores["model"])):
            if label == arch or stability.arch_and_seed(label)[0] == arch:
                out[label] = Sampling(strata, sizes, source)
    if not out:
        return {}, ""
    return out, (
        f"The images are drawn per confusion cell of the first pre model ({data.get('per_cell')} per cell "
        f"where the cell has that many): the means weigh every kind of decision alike. leaderboard.csv's "
        f"mean_test reweights them to the test split's cells (stratified mean with its 95% t interval)."
    )


def _sampling_models(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(architecture, the label of the model that drew its images) from a run config."""
    models = config.get("models") or {}
    seeds = list(models.get("seeds") or [])
    return [(arch, f"{arch}@seed{seeds[0]}" if seeds else arch) for arch in models.get("names") or []]


def _derived_sizes(manifest: Mapping[str, Any], model: str) -> dict[str, int] | None:
    """TP/FP/FN/TN counts of the test split from the model's acc, sensitivity, specificity and the
    split size: P = n (acc - spec) / (sens - spec); None when they do not give whole counts."""
    n = (manifest.get("data") or {}).get("n")
    entry = next(
        (c for c in manifest.get("checkpoints") or [] if c.get("model") == model and c.get("stage") == "pre"), None
    )
    test = (entry or {}).get("test") or {}
    if n is None:
        return None
    try:
        acc, sens, spec = float(test["acc"]), float(test["sensitivity"]), float(test["specificity"])
        n = int(n)
    except (KeyError, TypeError, ValueError):
        return None
    if sens == spec:
        return None
    pos = n * (acc - spec) / (sens - spec)
    tp, tn = sens * round(pos), spec * (n - round(pos))
    if min(abs(pos - round(pos)), abs(tp - round(tp)), abs(tn - round(tn))) > 1e-6 or not 0 < round(pos) < n:
        return None
    pos, tp, tn = round(pos), round(tp), round(tn)
    return {"TP": tp, "FP": n - pos - tn, "FN": pos - tp, "TN": tn}


MEASURED = (  # besides scores.csv
    "curves.csv",
    "substrates.csv",
    "substrate_curves.csv",
    "meta.csv",
    "similarity.csv",
    "sample.csv",
    "meta_scores.csv",
)


def _read_csv(path: Path) -> pd.DataFrame | None:
    """A measured table, text columns kept as text (pandas would read the status "n/a" as NaN)."""
    if not path.is_file():
        return None
    return pd.read_csv(
        path,
        dtype={
            c: str
            for c in (
                "model",
                "stage",
                "explainer",
                "metric",
                "curve",
                "substrate",
                "status",
                "test",
                "comparison",
                "cell_a",
                "cell_b",
                "arch",
                "cell",
                "kind",
                "kept",
            )
        },
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN"] for c in NUMERIC},
    )


NUMERIC = (
    "value",
    "fraction",
    "prob",
    "prob_mean",
    "n",
    "image",
    "iac_nr",
    "iac_ar",
    "iec_nr",
    "iec_ar",
    "mc",
    "n_images",
    "spearman",
    "top_overlap",
    "n_test",
    "n_sampled",
    "draw",
    "base",
    "new",
)


def _card_settings(manifest: Mapping[str, Any]) -> tuple[bool, reliability.CardSettings]:
    config = manifest.get("config")
    values = (config.get("reliability") if isinstance(config, dict) else None) or {}
    return bool(values.get("enabled", True)), reliability.CardSettings.from_config(values)


def _stats_settings(manifest: Mapping[str, Any], card: reliability.CardSettings) -> StatsSettings:
    """``[stats]`` of the run's config; its alpha defaults to the card's (``reliability.alpha``)."""
    config = manifest.get("config")
    values = (config.get("stats") if isinstance(config, dict) else None) or {}
    return StatsSettings.from_config({"alpha": card.alpha, **values})
