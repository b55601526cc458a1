"""A run's files -> every table and figure; ``python -m bench report RUN_DIR`` calls :func:`rebuild`.

:func:`write_outputs` writes what a run measured (``scores.csv``, ``curves.csv``,
``prepost_models.json``, ``attributions.npz``) and then calls :func:`rebuild` on those files, so
the tables and figures of a run and of a later ``bench report`` come from the same bytes through
the same code: byte for byte the same. Tables come from ``scores.csv`` alone (plus
``prepost_models.json`` for the model-level part of the pre/post comparison); figures also use
``curves.csv`` and ``attributions.npz`` when present.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.core.io import atomic_write_json, atomic_write_text
from bench.report import leaderboard, plots
from bench.report.plots import AttributionExamples

CSV_FLOAT_FORMAT = "%.8g"


def write_outputs(run_dir: str | Path, scores: pd.DataFrame, curves: pd.DataFrame | None,
                  prepost_models: dict[str, Any] | None, examples: AttributionExamples | None, *,
                  figures: bool = True) -> list[Path]:
    """Write a run's measurements, then its tables and figures (:func:`rebuild`); each file atomically."""
    run_dir = Path(run_dir)
    written = [atomic_write_text(run_dir / "scores.csv", _csv(scores))]
    for name in ("curves.csv", "prepost_models.json", "attributions.npz"):
        (run_dir / name).unlink(missing_ok=True)  # a file of an earlier config must not feed the figures
    if curves is not None and len(curves):
        written.append(atomic_write_text(run_dir / "curves.csv", _csv(curves)))
    if prepost_models:
        written.append(atomic_write_json(run_dir / "prepost_models.json", prepost_models))
    if examples is not None and examples.models:
        written.append(plots.save_attribution_examples(run_dir / "attributions.npz", examples))
    return written + rebuild(run_dir, figures=figures)


def rebuild(run_dir: str | Path, *, figures: bool = True) -> list[Path]:
    """Every table (and, with ``figures``, every figure) of a run from its files; returns the paths."""
    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.csv"
    if not scores_path.is_file():
        raise BenchError(f"{scores_path} not found; give the folder of a finished run (results/<run-name>)")
    scores = leaderboard.read_scores(scores_path)
    curves = pd.read_csv(run_dir / "curves.csv") if (run_dir / "curves.csv").is_file() else None
    pm_path = run_dir / "prepost_models.json"
    prepost_models = json.loads(pm_path.read_text()) if pm_path.is_file() else None
    attr = run_dir / "attributions.npz"
    board = leaderboard.leaderboard(scores)
    written = leaderboard.write_tables(run_dir, scores, prepost_models, board=board)
    if figures:
        written += plots.write_figures(run_dir, scores, curves=curves, board=board,
                                       attributions_path=attr if attr.is_file() else None)
    return written


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")
