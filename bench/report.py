"""``python -m bench report RUN_DIR``: rebuild every table and figure of a run from its files.

Tables come from ``scores.csv`` alone (plus ``prepost_models.json`` for the model-level part of
the pre/post comparison); figures also use ``curves.csv`` and ``attributions.npz`` when present.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bench.errors import BenchError


def rebuild(run_dir: str | Path) -> list[Path]:
    from bench import leaderboard, plots

    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.csv"
    if not scores_path.is_file():
        raise BenchError(f"{scores_path} not found; give the folder of a finished run (results/<run-name>)")
    scores = leaderboard.read_scores(scores_path)
    curves = pd.read_csv(run_dir / "curves.csv") if (run_dir / "curves.csv").is_file() else None
    pm_path = run_dir / "prepost_models.json"
    prepost_models = json.loads(pm_path.read_text()) if pm_path.is_file() else None
    attr = run_dir / "attributions.npz"
    written = leaderboard.write_tables(run_dir, scores, curves=curves, prepost_models=prepost_models)
    written += plots.write_figures(run_dir, scores, curves=curves, attributions_path=attr if attr.is_file() else None)
    return written


def main(args: argparse.Namespace) -> int:
    written = rebuild(args.run_dir)
    print(f"rebuilt {len(written)} files in {args.run_dir}")
    return 0
