"""A run's files -> every table and figure; ``python -m bench report RUN_DIR`` calls :func:`rebuild`.

:func:`write_outputs` writes what a run measured (``scores.csv``, ``curves.csv``,
``substrates.csv``, ``substrate_curves.csv``, ``meta.csv``, ``prepost_models.json``,
``attributions.npz``) and then calls :func:`rebuild` on those files, so the tables and figures of a
run and of a later ``bench report`` come from the same bytes through the same code: byte for byte
the same. The leaderboard and pre/post tables come from ``scores.csv`` (plus
``prepost_models.json`` for the model-level comparison); the reliability card also from
``substrates.csv`` and ``meta.csv``; figures also from the curves and ``attributions.npz``.
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
from bench.report import html, leaderboard, plots, reliability, stability
from bench.report.plots import AttributionExamples

CSV_FLOAT_FORMAT = "%.8g"


def write_outputs(run_dir: str | Path, tables: Mapping[str, pd.DataFrame], prepost_models: dict[str, Any] | None,
                  examples: AttributionExamples | None, *, figures: bool = True) -> list[Path]:
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


def rebuild(run_dir: str | Path, *, figures: bool = True, page: bool = True) -> list[Path]:
    """Every table (and, with ``figures``, every figure) of a run from its files, then, with ``page``,
    ``report.html`` (:func:`bench.report.html.write_html_report`, with the figures present); returns the paths.

    The reliability card's settings come from the run's ``manifest.json`` (its config's
    ``[reliability]``; the defaults for a run without one).
    """
    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.csv"
    if not scores_path.is_file():
        raise BenchError(f"{scores_path} not found; give the folder of a finished run (results/<run-name>)")
    scores = leaderboard.read_scores(scores_path)
    measured = {name: _read_csv(run_dir / name) for name in MEASURED}
    pm_path = run_dir / "prepost_models.json"
    prepost_models = json.loads(pm_path.read_text()) if pm_path.is_file() else None
    attr = run_dir / "attributions.npz"
    board = leaderboard.leaderboard(scores)
    enabled, settings = _card_settings(run_dir)
    card = None
    written: list[Path] = []
    if enabled:
        kinds = {m: (METRICS.get(m).meta.get("kind") if m in METRICS else None) for m in scores["metric"].unique()}
        card = reliability.card(scores, settings, kinds, substrates=measured["substrates.csv"],
                                meta=measured["meta.csv"])
        written += reliability.write_card(run_dir, card, settings)
    written = leaderboard.write_tables(run_dir, scores, prepost_models, board=board, card=card) + written
    written += stability.write_stability(run_dir, scores, measured["similarity.csv"])
    if figures:
        written += plots.write_figures(run_dir, scores, curves=measured["curves.csv"], board=board,
                                       attributions_path=attr if attr.is_file() else None, card=card,
                                       substrate_curves=measured["substrate_curves.csv"],
                                       similarity=measured["similarity.csv"])
    if page:
        written.append(html.write_html_report(run_dir))  # last: it embeds the tables and figures written above
    return written


MEASURED = ("curves.csv", "substrates.csv", "substrate_curves.csv", "meta.csv", "similarity.csv")  # besides scores.csv


def _read_csv(path: Path) -> pd.DataFrame | None:
    """A measured table, text columns kept as text (pandas would read the status "n/a" as NaN)."""
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={c: str for c in ("model", "stage", "explainer", "metric", "curve", "substrate",
                                                      "status", "test", "comparison", "cell_a", "cell_b")},
                       keep_default_na=False, na_values={c: ["", "nan", "NaN"] for c in NUMERIC})


NUMERIC = ("value", "fraction", "prob", "prob_mean", "n", "image", "iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc",
           "n_images", "spearman", "top_overlap")


def _card_settings(run_dir: Path) -> tuple[bool, reliability.CardSettings]:
    config = (html.read_manifest(run_dir) or {}).get("config")
    values = (config.get("reliability") if isinstance(config, dict) else None) or {}
    return bool(values.get("enabled", True)), reliability.CardSettings.from_config(values)


