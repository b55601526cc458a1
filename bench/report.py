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
    try:
        scores = pd.read_csv(scores_path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchError(f"{scores_path} is not a readable CSV ({exc}); re-run `python -m bench run`") from exc
    from bench.runner import SCORE_COLUMNS

    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise BenchError(f"{scores_path} lacks columns {', '.join(missing)}; it was not written by `bench run`")
    scores["message"] = scores["message"].fillna("")
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
