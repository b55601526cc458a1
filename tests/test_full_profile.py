"""configs/full.toml end to end on the tiny model: every registered method through every metric family.

The profile itself is meant for a GPU (all 624 images, two ResNets); here its explainer and metric
lists run unchanged on a tiny model, synthetic images and cheap sample sizes, so that a method or
metric that cannot run in a real run fails this test instead of a user's run.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench.report.leaderboard import read_scores
from bench.run import runner
from bench.run.config import load_config
from tests.conftest import REPO

CHEAP = {
    "deletion_auc": "{steps = 4}",
    "insertion_auc": "{steps = 4}",
    "infidelity": "{samples = 4}",
    "faithfulness_correlation": "{runs = 4}",
    "monotonicity_correlation": "{steps = 4}",
    "max_sensitivity": "{samples = 2}",
    "avg_sensitivity": "{samples = 2}",
    "local_lipschitz_estimate": "{samples = 2}",
}


@pytest.mark.slow
def test_the_full_profile_runs_on_the_tiny_model(tmp_path):
    overrides = [
        f'results_dir="{tmp_path}"',
        'device="cpu"',
        'data.dataset="synthetic"',
        "data.options={n = 64}",
        'data.sample="per_cell"',
        "data.per_cell=1",
        "data.background_size=4",
        'models.names=["tiny"]',
        'models.stages=["pre"]',
        "train.epochs=2",
        "train.batch_size=32",
        "train.lr=0.01",
        "explain.shard_size=8",
        "reliability.substrates=[]",
        "reliability.imputation=false",
        "reliability.bootstrap=50",
        "reliability.splits=10",
        "stats.draws=2000",
        "figures.enabled=false",
        "metrics.params={" + ", ".join(f'"{m}" = {v}' for m, v in CHEAP.items()) + "}",
    ]
    cfg = load_config(REPO / "configs" / "full.toml", overrides)
    run_dir = runner.run(cfg, progress=False)
    scores = read_scores(run_dir / "scores.csv")
    assert set(scores["explainer"]) == set(cfg.explain.names)
    assert set(scores["metric"]) == set(cfg.metrics.names)
    errors = scores[scores["status"] == "error"]
    assert errors.empty, errors.groupby(["explainer", "metric"])["message"].first().to_dict()
    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False)
    ranked = board[board["status"] == "ok"]
    assert len(ranked) and ranked["rank"].astype(int).min() == 1
    card = pd.read_csv(run_dir / "reliability.csv")
    assert set(card["metric"]) <= set(cfg.metrics.names) and len(card) >= 10
