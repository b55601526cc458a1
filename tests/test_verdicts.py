"""The verdicts in a run: aliases of real adapters, a leaderboard that never ties random with its
betters, and the report's refusals (silent NaN rows, unknown metrics, figures the run did not draw)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import bench
from bench.cli import main
from bench.core.errors import BenchError
from bench.report.leaderboard import check_scores, read_scores
from bench.report.rebuild import rebuild
from bench.stats.aliases import find_aliases
from tests.conftest import calibrated

CHEAP = [
    "reliability.substrates=[]",
    "reliability.imputation=false",
    "reliability.bootstrap=50",
    "reliability.splits=10",
    "stats.draws=2000",
]


@pytest.fixture(scope="module")
def alias_run(tmp_path_factory):
    model = calibrated("tiny", seed=0)
    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    res = bench.evaluate(
        model,
        images,
        labels=torch.tensor([0, 1] * 6),
        explainers=["shap.deep", "captum.deeplift_shap", "captum.saliency", "random", "edge"],
        metrics=["deletion_auc", "additivity_error", "road_morf"],
        metric_params={"deletion_auc": {"steps": 7}},
        overrides=CHEAP,
        verbose=False,
    )
    out = tmp_path_factory.mktemp("alias") / "run"
    res.save(out)
    return out


def test_two_adapters_on_one_engine_are_one_method(alias_run):
    aliases = pd.read_csv(alias_run / "aliases.csv")
    assert aliases.to_dict("records") == [{"explainer": "captum.deeplift_shap", "alias": "shap.deep"}]
    board = pd.read_csv(alias_run / "leaderboard.csv", keep_default_na=False)
    assert "shap.deep" not in set(board["explainer"])
    assert set(board[board["explainer"] == "captum.deeplift_shap"]["aliases"]) == {"shap.deep"}
    pairs = pd.read_csv(alias_run / "comparisons.csv")
    assert "shap.deep" not in set(pairs["a"]) | set(pairs["b"])
    assert set(pairs["family_size"]) == {6}  # 4 distinct explainers: 6 pairs, not 10
    card = pd.read_csv(alias_run / "reliability.csv")
    assert set(card[card["metric"] != "additivity_error"]["real_explainers"]) == {2}  # deeplift once, beside saliency


def test_maps_that_differ_by_1e_3_are_not_aliases(alias_run):
    scores = read_scores(alias_run / "scores.csv")
    twin = scores[scores["explainer"] == "shap.deep"].assign(explainer="shap.deep.copy")
    assert find_aliases(pd.concat([scores, twin])) == {"captum.deeplift_shap": ["shap.deep", "shap.deep.copy"]}
    # a map shifted by 1e-3 moves its scores by far more than the tolerance
    model = calibrated("tiny", seed=0)
    from bench.metrics import compute_metric
    from explainers import Attribution, run_explainer

    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    attr = run_explainer("captum.deeplift_shap", model, x, y, background=x[:3])
    moved = Attribution(
        attr.values + 1e-3 * torch.randn(attr.values.shape, generator=torch.Generator().manual_seed(3)),
        attr.outputs,
        attr.base_values,
    )
    rows = []
    for name, a in (("a", attr), ("b", moved)):
        for metric in ("deletion_auc", "additivity_error"):
            vals = compute_metric(metric, model, x, y, a, **({"steps": 7} if metric == "deletion_auc" else {})).scores
            rows += [["m", "pre", name, metric, i, float(v), "ok"] for i, v in enumerate(vals)]
    table = pd.DataFrame(rows, columns=["model", "stage", "explainer", "metric", "image", "value", "status"])
    assert find_aliases(table) == {}


def test_random_is_never_ranked_with_an_explainer_the_paired_test_puts_above_it(alias_run):
    board = pd.read_csv(alias_run / "leaderboard.csv", keep_default_na=False)
    pairs = pd.read_csv(alias_run / "comparisons.csv")
    for (stage, metric), p in pairs.groupby(["stage", "metric"]):
        b = board[(board["stage"] == stage) & (board["metric"] == metric)].set_index("explainer")
        for r in p.itertuples(index=False):
            if r.separated:
                winner, loser = (r.a, r.b) if r.diff > 0 else (r.b, r.a)
                assert int(b.loc[winner, "rank"]) < int(b.loc[loser, "rank"])
            # every interval agrees with its verdict
            assert r.separated == (r.ci_low > 0 or r.ci_high < 0) == (r.p_adj <= 0.05)


def test_an_ok_row_without_a_finite_value_is_refused(alias_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(alias_run, run)
    scores = pd.read_csv(run / "scores.csv", keep_default_na=False)
    i = scores.index[(scores["status"] == "ok")][3]
    scores.loc[i, "value"] = "nan"
    scores.to_csv(run / "scores.csv", index=False)
    before = (run / "leaderboard.csv").read_bytes()
    with pytest.raises(BenchError, match=rf"line {i + 2}: status 'ok' but value"):
        rebuild(run)
    assert (run / "leaderboard.csv").read_bytes() == before  # nothing rewritten
    assert main(["report", str(run)]) == 2


def test_an_unknown_metric_is_refused(alias_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(alias_run, run)
    scores = pd.read_csv(run / "scores.csv", keep_default_na=False)
    scores.loc[scores["metric"] == "road_morf", "metric"] = "road_morff"
    scores.to_csv(run / "scores.csv", index=False)
    with pytest.raises(BenchError, match="road_morff.*no installed package registers"):
        rebuild(run)


def test_a_run_without_figures_is_rebuilt_without_figures(alias_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(alias_run, run)
    shutil.rmtree(run / "figures")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["figures"]["enabled"] = False
    (run / "manifest.json").write_text(json.dumps(manifest))
    rebuild(run)
    assert not (run / "figures").exists()
    first = (run / "report.html").read_bytes()
    rebuild(run)
    assert (run / "report.html").read_bytes() == first


def test_check_scores_accepts_na_rows():
    rows = pd.DataFrame(
        [["m", "pre", "e", "x", 0, 1, 1, "TP", np.nan, "n/a", "", True, 0.1, 1.0]],
        columns=[
            "model",
            "stage",
            "explainer",
            "metric",
            "image",
            "label",
            "pred",
            "cell",
            "value",
            "status",
            "message",
            "higher_is_better",
            "seconds_per_image",
            "peak_mem_mb",
        ],
    )
    assert check_scores(rows)["status"].tolist() == ["n/a"]


def test_plan_sizes_n_from_the_pilots_paired_spread(alias_run, capsys):
    from bench.run.config import load_config
    from bench.run.sizing import plan_sample
    from bench.stats.power import n_needed

    over = [
        'explain.names=["captum.deeplift_shap", "captum.saliency", "random"]',
        'metrics.names=["deletion_auc"]',
        "stats.effects={deletion_auc = 0.05}",
        'models.names=["tiny"]',
        'models.stages=["pre"]',
    ]
    cfg = load_config(None, over)
    table, cost = plan_sample(cfg, alias_run)
    row = table.iloc[0]
    scores = read_scores(alias_run / "scores.csv")
    wide = scores[scores.metric == "deletion_auc"].pivot(index="image", columns="explainer", values="value")
    names = ["captum.deeplift_shap", "captum.saliency", "random"]
    sds = sorted(float((wide[a] - wide[b]).std(ddof=1)) for i, a in enumerate(names) for b in names[i + 1 :])
    assert row.declared and row.effect == 0.05 and row.pairs == 3 and row.sd_median == pytest.approx(sds[1])
    assert row.n_median == n_needed(0.05, sds[1], 0.05 / 3)
    assert cost["n"] == row.n_median and cost["seconds"] > 0
    assert main(["plan", "--pilot", str(alias_run), *sum((["--set", o] for o in over), [])]) == 0
    assert f"n = {int(row.n_median)} distinct images" in capsys.readouterr().out
    assert main(["plan", "--pilot", str(alias_run / "nope")]) == 2
