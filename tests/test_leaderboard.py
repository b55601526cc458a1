"""Leaderboard, pre/post tables, Markdown and figures on synthetic scores with known differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.report import leaderboard as lb
from bench.report import format as F
from bench.report import plots
from bench.stats import estimate
from bench.core.errors import BenchError

N = 20
# explainer -> (pre mean of every metric, post - pre shift); lower is better for both metrics
TRUTH = {"alpha": (0.2, 0.1), "beta": (0.5, 0.0), "gamma": (0.8, -0.1)}
METRICS = {"deletion_auc": False, "additivity_error": False}
OOM = "CUDA out of memory | tried to allocate 2 GiB"


def _cell(label: int, pred: int) -> str:
    return {(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}[(label, pred)]


def make_scores(seed: int = 0, models=("resnet18",), stages=("pre", "post")) -> pd.DataFrame:
    """3 explainers x 2 metrics x stages x N images, plus a failing explainer.

    gamma is non-additive (additivity_error is NaN with status n/a); "broken" fails everywhere.
    Values are pre + shift + small noise on a per-image base, so pairs are correlated.
    """
    rng = np.random.default_rng(seed)
    rows = []
    labels = np.array([i % 2 for i in range(N)])
    for model in models:
        preds = {"pre": labels.copy(), "post": labels.copy()}
        preds["pre"][[0, 1, 2, 3, 5, 7]] ^= 1  # some FN/FP under the pre model
        preds["post"][[0, 1, 4]] ^= 1  # post fixes 2, 3, 5, 7 and breaks 4
        for explainer, (mu, shift) in TRUTH.items():
            for metric, hib in METRICS.items():
                base = mu + rng.normal(0, 0.05, N)
                for stage in stages:
                    vals = base + (shift if stage == "post" else 0.0) + rng.normal(0, 0.01, N)
                    for i in range(N):
                        na = explainer == "gamma" and metric == "additivity_error"
                        rows.append(
                            dict(
                                model=model,
                                stage=stage,
                                explainer=explainer,
                                metric=metric,
                                image=i,
                                label=int(labels[i]),
                                pred=int(preds[stage][i]),
                                cell=_cell(int(labels[i]), int(preds[stage][i])),
                                value=np.nan if na else float(vals[i]),
                                status="n/a" if na else "ok",
                                message="",
                                higher_is_better=hib,
                                seconds_per_image=0.02 + 0.01 * i / N,
                                peak_mem_mb=10.0 + i,
                            )
                        )
        for stage in stages:
            for metric, hib in METRICS.items():
                for i in range(N):
                    rows.append(
                        dict(
                            model=model,
                            stage=stage,
                            explainer="broken",
                            metric=metric,
                            image=i,
                            label=int(labels[i]),
                            pred=int(preds[stage][i]),
                            cell=_cell(int(labels[i]), int(preds[stage][i])),
                            value=np.nan,
                            status="error",
                            message=OOM,
                            higher_is_better=hib,
                            seconds_per_image=np.nan,
                            peak_mem_mb=np.nan,
                        )
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    return make_scores()


@pytest.fixture(scope="module")
def board(scores) -> pd.DataFrame:
    return lb.leaderboard(scores)


def _row(df: pd.DataFrame, **kw) -> pd.Series:
    mask = np.ones(len(df), dtype=bool)
    for k, v in kw.items():
        mask &= (df[k] == v).to_numpy()
    assert mask.sum() == 1, kw
    return df[mask].iloc[0]


def _md_row(md: str, section: str, first_cell: str) -> list[str]:
    """Cells of the table row starting with ``first_cell`` in the Markdown section ``section``."""
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in section {section!r}")


# ----------------------------------------------------------------------------- leaderboard


def test_leaderboard_columns_stats_and_ranks(scores, board):
    assert list(board.columns) == lb.LEADERBOARD_COLUMNS
    assert len(board) == 2 * 4 * 2  # stages x explainers x metrics
    for stage in ("pre", "post"):
        for explainer in TRUTH:
            values = scores[
                (scores.stage == stage) & (scores.explainer == explainer) & (scores.metric == "deletion_auc")
            ]["value"].to_numpy()
            r = _row(board, stage=stage, explainer=explainer, metric="deletion_auc")
            assert r["n"] == N and r["status"] == "ok"
            assert r["mean"] == pytest.approx(values.mean())
            ci = sps.ttest_1samp(values, 0).confidence_interval(0.95)
            assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
            assert r["seconds_per_image"] == pytest.approx(0.02 + 0.01 * np.arange(N).mean() / N)
            assert r["peak_mem_mb"] == 10.0 + N - 1
        ranks = {e: _row(board, stage=stage, explainer=e, metric="deletion_auc")["rank"] for e in TRUTH}
        assert ranks == {"alpha": 1, "beta": 2, "gamma": 3}  # lower is better, well separated


def test_leaderboard_order_is_model_stage_metric_rank_explainer(board):
    assert list(board["stage"].iloc[:8]) == ["pre"] * 8
    pre_del = board[(board.stage == "pre") & (board.metric == "deletion_auc")]
    assert list(pre_del["explainer"]) == ["alpha", "beta", "gamma", "broken"]  # unranked last


def test_ranks_come_from_paired_tests_not_overlapping_intervals(scores):
    rng = np.random.default_rng(5)
    twin = scores[scores.explainer == "alpha"].assign(explainer="alpha2")
    twin["value"] = twin["value"] + 0.002  # overlapping CIs, but a constant paired gap
    noisy = scores[scores.explainer == "alpha"].assign(explainer="alpha3")
    noisy["value"] = noisy["value"] + 0.002 + rng.normal(0, 0.05, len(noisy))  # the same gap in independent noise
    board = lb.leaderboard(pd.concat([scores, twin, noisy]))
    pre = board[(board.stage == "pre") & (board.metric == "deletion_auc")].set_index("explainer")
    assert pre.loc["alpha", "ci_high"] > pre.loc["alpha2", "ci_low"]  # the marginal intervals overlap
    assert pre.loc["alpha", "rank"] == 1 and pre.loc["alpha2", "rank"] == 2  # ... yet paired, alpha2 is worse
    assert not set(pre.loc["alpha", "letters"]) & set(pre.loc["alpha2", "letters"])
    assert set(pre.loc["alpha", "letters"]) & set(pre.loc["alpha3", "letters"])  # not separable: share a letter
    assert pre.loc["beta", "rank"] > pre.loc["alpha3", "rank"]


def test_failed_explainer_has_its_message_and_no_rank(scores, board):
    r = _row(board, stage="pre", explainer="broken", metric="deletion_auc")
    assert r["status"] == f"error: {OOM}"
    assert pd.isna(r["rank"]) and math.isnan(r["mean"]) and math.isnan(r["ci_low"]) and r["n"] == 0
    md = lb.render_leaderboard_md(board)
    row = _md_row(md, "resnet18 · pre", "broken")
    assert row[1:3] == ["error", "error"]
    assert row[-1] == "error: " + OOM.replace("|", "\\|")


def test_partly_failed_explainer_is_an_error_with_a_count(scores):
    s = scores.copy()
    hit = (s.explainer == "beta") & (s.stage == "pre") & (s.metric == "deletion_auc") & (s.image < 5)
    s.loc[hit, ["status", "message", "value"]] = ["error", "timeout", np.nan]
    r = _row(lb.leaderboard(s), stage="pre", explainer="beta", metric="deletion_auc")
    assert r["status"] == f"error: timeout (5 of {N} images)" and pd.isna(r["rank"])


def test_non_additive_method_is_na_never_zero(tmp_path, scores, board):
    r = _row(board, stage="pre", explainer="gamma", metric="additivity_error")
    assert r["status"] == "n/a" and math.isnan(r["mean"]) and pd.isna(r["rank"]) and r["n"] == 0
    md = lb.render_leaderboard_md(board)
    header = _md_row(md, "resnet18 · pre", "explainer")
    col = header.index("additivity_error ↓")
    assert _md_row(md, "resnet18 · pre", "gamma")[col] == "n/a"
    assert _md_row(md, "resnet18 · pre", "gamma")[header.index("deletion_auc ↓")].endswith("(3 c)")
    lb.write_tables(tmp_path, scores)
    csv = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=False)
    g = csv[(csv.explainer == "gamma") & (csv.metric == "additivity_error")]
    assert set(g["mean"]) == {""} and set(g["status"]) == {"n/a"}


def test_scores_are_validated(scores):
    with pytest.raises(BenchError, match="lacks column"):
        lb.leaderboard(scores.drop(columns=["status"]))
    with pytest.raises(BenchError, match="duplicate"):
        lb.leaderboard(pd.concat([scores, scores.iloc[:1]]))
    with pytest.raises(BenchError, match="stage"):
        lb.leaderboard(scores.assign(stage="middle"))
    bad = scores.copy()
    bad.loc[bad.index[0], "higher_is_better"] = True
    with pytest.raises(BenchError, match="higher_is_better"):
        lb.leaderboard(bad)


def test_read_scores_keeps_na_status_text(tmp_path, scores, board):
    scores.to_csv(tmp_path / "scores.csv", index=False)
    again = lb.leaderboard(lb.read_scores(tmp_path / "scores.csv"))
    pd.testing.assert_frame_equal(again, board)
    with pytest.raises(BenchError, match="read_scores"):  # plain read_csv: "n/a" -> NaN
        lb.leaderboard(pd.read_csv(tmp_path / "scores.csv"))
    with pytest.raises(BenchError, match="not found"):
        lb.read_scores(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- pre vs post


def test_prepost_known_differences_and_scipy_paired_t(scores):
    pp = lb.prepost(scores)
    assert list(pp.columns) == lb.PREPOST_COLUMNS
    for explainer, (_, shift) in TRUTH.items():
        r = _row(pp, explainer=explainer, metric="deletion_auc")
        sel = scores[(scores.explainer == explainer) & (scores.metric == "deletion_auc")]
        pre = sel[sel.stage == "pre"].sort_values("image")["value"].to_numpy()
        post = sel[sel.stage == "post"].sort_values("image")["value"].to_numpy()
        assert r["n_pairs"] == N and r["status"] == "ok"
        assert r["diff_mean"] == pytest.approx(shift, abs=0.01)
        assert r["diff_ci_low"] <= shift <= r["diff_ci_high"]
        assert r["p"] == pytest.approx(sps.ttest_rel(post, pre).pvalue, rel=1e-9)
        ci = sps.ttest_rel(post, pre).confidence_interval(r["level"])  # the interval at the family's level
        assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert r["verdict"] == ("equivalent" if shift == 0 else "lower after" if shift < 0 else "higher after")
    assert _row(pp, explainer="alpha", metric="deletion_auc")["p_adj"] < 1e-4
    assert _row(pp, explainer="gamma", metric="additivity_error")["status"] == "n/a"
    assert _row(pp, explainer="broken", metric="deletion_auc")["status"] == f"error: pre: {OOM}; post: {OOM}"


def test_prepost_uses_only_paired_images(scores):
    s = scores[~((scores.explainer == "alpha") & (scores.stage == "post") & (scores.image < 5))].copy()
    s.loc[(s.explainer == "alpha") & (s.stage == "pre") & (s.image == 7), ["value", "status"]] = [np.nan, "n/a"]
    r = _row(lb.prepost(s), explainer="alpha", metric="deletion_auc")
    paired = [i for i in range(N) if i >= 5 and i != 7]
    sel = s[(s.explainer == "alpha") & (s.metric == "deletion_auc") & s.image.isin(paired)]
    pre = sel[sel.stage == "pre"].sort_values("image")["value"].to_numpy()
    post = sel[sel.stage == "post"].sort_values("image")["value"].to_numpy()
    assert r["n_pairs"] == len(paired) == 14
    assert r["pre_mean"] == pytest.approx(pre.mean()) and r["post_mean"] == pytest.approx(post.mean())
    assert r["p"] == pytest.approx(sps.ttest_rel(post, pre).pvalue, rel=1e-9)


def test_the_family_is_all_rows_of_a_model_and_named():
    s = make_scores(models=("resnet18", "resnet50"))
    pp = lb.prepost(s)
    for model, g in pp.groupby("model"):
        assert g["p_adj"].to_numpy() == pytest.approx(estimate.bonferroni(g["p"].to_numpy()), nan_ok=True)
        assert g["p"].notna().sum() == 5  # 3 x 2 minus gamma's n/a
        assert set(g["family"]) == {f"prepost: {model} (m = 5)"}
        sep = (g["diff_ci_low"] > 0) | (g["diff_ci_high"] < 0)
        assert (sep == (g["p_adj"] <= 0.05)).all()  # every interval agrees with its verdict
    one = pp[pp.model == "resnet18"]
    assert one["p_adj"].to_numpy() == pytest.approx(lb.prepost(make_scores())["p_adj"].to_numpy(), nan_ok=True)


def test_prepost_by_cell_groups_by_the_pre_cell(scores):
    bc = lb.prepost_by_cell(scores)
    pp = lb.prepost(scores)
    assert list(bc.columns) == lb.PREPOST_BY_CELL_COLUMNS
    sub = bc[(bc.explainer == "beta") & (bc.metric == "deletion_auc")]
    assert list(sub["cell"]) == list(lb.CELLS)
    assert sub["n_pairs"].sum() == _row(pp, explainer="beta", metric="deletion_auc")["n_pairs"]
    # images 2, 3, 5, 7 are FN/FP under pre but TP/TN under post: they count in the pre cell
    pre_cells = scores[(scores.stage == "pre")].drop_duplicates("image").set_index("image")["cell"]
    assert dict(zip(sub["cell"], sub["n_pairs"])) == pre_cells.value_counts().reindex(list(lb.CELLS)).to_dict()
    fn = [i for i in range(N) if pre_cells[i] == "FN"]
    sel = scores[(scores.explainer == "beta") & (scores.metric == "deletion_auc") & scores.image.isin(fn)]
    pre = sel[sel.stage == "pre"].sort_values("image")["value"].to_numpy()
    post = sel[sel.stage == "post"].sort_values("image")["value"].to_numpy()
    assert _row(sub, cell="FN")["p"] == pytest.approx(sps.ttest_rel(post, pre).pvalue)
    for _, g in bc.groupby("model"):
        assert g["p_adj"].to_numpy() == pytest.approx(estimate.bonferroni(g["p"].to_numpy()), nan_ok=True)


def test_prepost_by_cell_rejects_inconsistent_pre_cells(scores):
    s = scores.copy()
    s.loc[(s.stage == "pre") & (s.explainer == "alpha") & (s.image == 0), "cell"] = "TN"
    with pytest.raises(BenchError, match="different pre-stage cells"):
        lb.prepost_by_cell(s)


PREPOST_MODELS = {
    "resnet18": {
        "delta": {"acc": 0.05, "auc": 0.01, "sensitivity": 0.1, "specificity": -0.02},
        "mcnemar": {"a_right_b_wrong": 1, "a_wrong_b_right": 4, "p_value": 0.375},
        "cell_moves": {"TP": {"TP": 8, "FN": 1}, "FN": {"TP": 3}, "TN": {"TN": 7}, "FP": {"TN": 1}},
        "test_pre": {"acc": 0.70, "auc": 0.8},
        "test_post": {"acc": 0.75, "auc": 0.81},
    }
}


def test_prepost_markdown_has_differences_model_comparison_and_cells(scores):
    pp, bc = lb.prepost(scores), lb.prepost_by_cell(scores)
    md = lb.render_prepost_md(pp, bc, PREPOST_MODELS)
    assert "b (pre right, post wrong) = 1, c (pre wrong, post right) = 4, p = 0.375" in md
    assert "| FN | 0 | 0 | 0 | 0 |" not in md and "| FN | 3 | 0 | 0 | 0 |" in md
    assert "| acc | 0.7 | 0.75 | +0.05 |" in md
    assert "### By cell of the pre model" in md
    alpha = [line for line in md.splitlines() if line.startswith("| alpha | deletion_auc ↓ | 20 |")]
    assert len(alpha) == 1 and "[+0.0" in alpha[0]


# ----------------------------------------------------------------------------- files


def test_write_tables_is_byte_identical_and_order_free(tmp_path, scores):
    a = lb.write_tables(tmp_path / "a", scores, prepost_models=PREPOST_MODELS)
    b = lb.write_tables(tmp_path / "b", scores.sample(frac=1.0, random_state=3), prepost_models=PREPOST_MODELS)
    names = [p.name for p in a]
    assert names == [
        "leaderboard.csv",
        "leaderboard.md",
        "comparisons.csv",
        "friedman.csv",
        "prepost.csv",
        "prepost_by_cell.csv",
        "prepost.md",
    ]
    assert names == [p.name for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        assert pa.stat().st_size > 0
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_write_tables_without_both_stages_skips_prepost(tmp_path):
    written = lb.write_tables(tmp_path, make_scores(stages=("pre",)))
    assert [p.name for p in written] == ["leaderboard.csv", "leaderboard.md", "comparisons.csv", "friedman.csv"]
    assert not (tmp_path / "prepost.md").exists()
    with pytest.raises(BenchError, match="no rows"):
        lb.write_tables(tmp_path, make_scores().iloc[0:0])


# ----------------------------------------------------------------------------- figures


def make_curves(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for stage in ("pre", "post"):
        for explainer in TRUTH:
            for curve in ("deletion", "insertion"):
                for i in range(N):
                    for f in np.linspace(0, 1, 6):
                        p = (1 - f if curve == "deletion" else f) + rng.normal(0, 0.05)
                        rows.append(
                            dict(
                                model="resnet18",
                                stage=stage,
                                explainer=explainer,
                                curve=curve,
                                image=i,
                                fraction=f,
                                prob=float(np.clip(p, 0, 1)),
                            )
                        )
    return pd.DataFrame(rows)


def save_examples(path, n: int = 6, seed: int = 0) -> plots.AttributionExamples:
    """Examples as the runner stores them for one model: pre cells TP, FP, FN, TN, TP, TN; maps (N, 1, H, W)."""
    rng = np.random.default_rng(seed)
    maps = {
        (s, e): rng.normal(size=(n, 1, 8, 8)) * (3.0 if s == "post" else 1.0)
        for s in ("pre", "post")
        for e in ("alpha", "beta")
    }
    examples = plots.AttributionExamples(
        models={
            "resnet18": plots.ModelExamples(
                images=rng.random((n, 1, 8, 8)),
                labels=np.array([1, 0, 1, 0, 1, 0][:n]),
                index=np.array([3, 5, 8, 9, 11, 12][:n]),
                cells={
                    "pre": ["TP", "FP", "FN", "TN", "TP", "TN"][:n],
                    "post": ["TP", "TN", "TP", "TN", "TP", "TN"][:n],
                },
                maps=maps,
            )
        }
    )
    plots.save_attribution_examples(path, examples)
    return examples


def _one(images=None, **maps) -> plots.AttributionExamples:
    """One model "m" with one 2x2 example image and the given maps."""
    return plots.AttributionExamples(
        models={
            "m": plots.ModelExamples(
                images=np.zeros((1, 2, 2)) if images is None else images,
                labels=np.array([0]),
                index=np.array([0]),
                maps={tuple(k.split("__")): v for k, v in maps.items()},
            )
        }
    )


def test_attribution_store_round_trip(tmp_path):
    examples = save_examples(tmp_path / "attributions.npz")
    store = plots.load_attribution_examples(tmp_path / "attributions.npz")
    ex = store.models["resnet18"]
    assert ex.images.shape == (6, 8, 8) and ex.index.tolist() == [3, 5, 8, 9, 11, 12]
    np.testing.assert_allclose(ex.images, examples.models["resnet18"].images[:, 0], rtol=1e-6)  # channel mean
    assert ex.cells["post"].tolist()[1] == "TN"
    got = ex.maps[("pre", "alpha")]
    assert got.shape == (6, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, examples.models["resnet18"].maps[("pre", "alpha")].sum(1), rtol=1e-6)  # channel sum
    assert store.pairs() == [("resnet18", "alpha"), ("resnet18", "beta")]
    rgb = np.stack([np.zeros((1, 2, 2)), np.ones((1, 2, 2)) * 2, np.ones((1, 2, 2)) * 4], axis=1)  # (1, 3, 2, 2)
    plots.save_attribution_examples(tmp_path / "rgb.npz", _one(images=rgb, pre__e=rgb))
    rgb_store = plots.load_attribution_examples(tmp_path / "rgb.npz").models["m"]
    assert rgb_store.images.tolist() == [[[2.0, 2.0], [2.0, 2.0]]] and rgb_store.maps[("pre", "e")].max() == 6.0
    with pytest.raises(BenchError, match="must not contain"):
        plots.save_attribution_examples(
            tmp_path / "x.npz", plots.AttributionExamples(models={"a|b": _one().models["m"]})
        )
    with pytest.raises(BenchError, match="must not contain"):
        plots.save_attribution_examples(tmp_path / "x.npz", _one(**{"pre__a|b": np.zeros((1, 2, 2))}))
    with pytest.raises(BenchError, match="shape"):
        plots.save_attribution_examples(tmp_path / "x.npz", _one(pre__e=np.zeros((2, 2, 2))))
    with pytest.raises(BenchError, match="AttributionExamples"):
        plots.save_attribution_examples(tmp_path / "x.npz", {"m|pre|e": np.zeros((1, 2, 2))})
    assert not (tmp_path / "x.npz").exists()


def test_symmetric_limits():
    a, b = np.array([[-4.0, 1.0], [np.nan, 0.5]]), np.array([2.0, -3.0, np.inf])
    vmin, vmax = plots.symmetric_limits([a, b], percentile=100)
    assert (vmin, vmax) == (-4.0, 4.0)
    vmin, vmax = plots.symmetric_limits([a, b], percentile=50)
    assert vmin == -vmax and vmax == pytest.approx(np.percentile([4, 1, 0.5, 2, 3], 50))
    assert plots.symmetric_limits([np.zeros(5)]) == (-1.0, 1.0)
    big = np.concatenate([np.full(999, 0.1), [1000.0]])
    assert plots.symmetric_limits([big], percentile=99)[1] < 1.0  # one outlier does not set the scale


def test_attribution_grid_uses_one_symmetric_scale(tmp_path):
    save_examples(tmp_path / "attributions.npz")
    store = plots.load_attribution_examples(tmp_path / "attributions.npz")
    ex = store.models["resnet18"]
    fig = plots.attribution_grid(store, "resnet18", "alpha", per_cell=1)
    shown = [0, 1, 2, 3]  # first TP, FP, FN, TN under pre
    expect = plots.symmetric_limits([ex.maps[(s, "alpha")][shown] for s in ("pre", "post")])
    maps = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == plots.DIVERGING_CMAP]
    assert len(maps) == 8
    everything = plots.attribution_grid(store, "resnet18", "alpha")  # all 6 stored examples
    assert len([im for ax in everything.axes for im in ax.get_images()]) == 6 * 3
    assert all(im.get_clim() == pytest.approx(expect) for im in maps)
    # not vacuous: a scale per stage, or over all six stored examples instead of the shown ones, differs
    others = [plots.symmetric_limits([ex.maps[(s, "alpha")][shown]]) for s in ("pre", "post")]
    others.append(plots.symmetric_limits([ex.maps[(s, "alpha")] for s in ("pre", "post")]))
    assert all(abs(vmax - expect[1]) > 0.01 * expect[1] for _, vmax in others), (expect, others)


def test_write_figures_non_empty_and_byte_identical(tmp_path, scores, board):
    save_examples(tmp_path / "attributions.npz", n=4)
    curves = make_curves()
    first = plots.write_figures(tmp_path / "run", scores, curves, tmp_path / "attributions.npz", board=board)
    blobs = [p.read_bytes() for p in first]
    assert [p.name for p in first] == sorted(
        [
            "attributions_resnet18_alpha.png",
            "attributions_resnet18_beta.png",
            "curves_resnet18_post.png",
            "curves_resnet18_pre.png",
            "leaderboard_resnet18_post.png",
            "leaderboard_resnet18_pre.png",
            "prepost_resnet18.png",
        ]
    )
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 2000 for b in blobs)
    assert all(b"Software" not in b for b in blobs)
    again = plots.write_figures(tmp_path / "run", scores, curves, tmp_path / "attributions.npz")
    assert [p.read_bytes() for p in again] == blobs


# ----------------------------------------------------------------------------- shared formatting (format.py)


def _ranks(rows: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"explainer": e, "metric": m, "rank": r} for e, ms in rows.items() for m, r in ms.items()])


def test_reading_order_is_the_mean_rank_over_the_trusted_metrics():
    """By hand: a/b/c over metrics x (trusted) and y (fails the card); a missing rank is left out, a row with none
    goes last, ties fall to the mean over every metric, then to the name."""
    t = _ranks(
        {
            "a": {"x": 2, "y": 1},
            "b": {"x": 1, "y": 3},
            "c": {"x": 2, "y": 2},
            "d": {"x": None, "y": 1},
            "e": {"x": 1, "y": 3},
        }
    )
    assert F.rank_order(t, fails={"y"}) == ["b", "e", "a", "c", "d"]  # x: b=e=1 (y: 3 = 3: name), a (y 1) < c
    assert F.rank_order(t) == ["d", "a", "b", "c", "e"]  # all metrics: d 1, a 1.5, b=c=e 2 ...
    assert F.rank_order(t, fails={"x", "y"}) == F.rank_order(t)  # nothing trusted: every metric
    t["rank"] = t["rank"].astype("Int64")  # leaderboard.csv's nullable ranks
    assert F.rank_order(t, fails={"y"}) == ["b", "e", "a", "c", "d"]
    assert F.metric_order(["y", "x", "z", "x"], {"x"}) == ["y", "z", "x"]


def test_shared_text_pieces():
    assert (F.arrow(True), F.arrow(False)) == ("↑", "↓")
    assert F.ci_text(0.123456, 0.1, 0.2) == "0.1235 [0.1, 0.2]" and F.ci_text(float("nan"), 0, 1) == "n/a"
    assert F.ci_text(float("inf"), 1, float("inf"), ".3g", inf="∞") == "∞ [1, ∞]"
    assert F.rank_text(2, "bc") == "2 bc" and F.rank_text(pd.NA, "a") == "" and F.rank_text(1, float("nan")) == "1 "
    row = {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "rank": 1, "letters": "a", "status": "ok"}
    assert F.score_text(row) == "0.5 [0.25, 0.75] (1 a)"
    assert F.score_text({**row, "status": "n/a"}) == "n/a" and F.score_text({**row, "status": "error: x"}) == "error"
    assert F.slug("resnet18@seed0", "post:head") == "resnet18-seed0_post-head"
    assert F.md_text("a |\n b") == "a \\| b"
    assert F.alias_name("a", "b, c") == "a (= b, c)" and F.alias_name("a", "") == F.alias_name("a", float("nan")) == "a"


def test_markdown_leaderboard_rows_follow_the_reading_order(board):
    md = lb.render_leaderboard_md(board)
    section = md[md.index("## resnet18 · pre") : md.index("## resnet18 · post")]
    rows = [line.split(" | ")[0].strip("| ") for line in section.splitlines()[4:] if line.startswith("| ")]
    assert rows == F.rank_order(board[(board.model == "resnet18") & (board.stage == "pre")])
    assert rows[:3] == ["alpha", "beta", "gamma"] and rows[-1] == "broken"  # TRUTH's order; the failed one last


def _colours(fig) -> np.ndarray:
    mesh = fig.axes[0].collections[0]  # the cells' colours, row by row
    return np.asarray(mesh.cmap(mesh.norm(np.ma.compressed(mesh.get_array()))))


def test_heatmap_colour_separates_means_that_share_a_rank(board):
    """All three explainers at rank 1 in a column: the colours still follow their means (best brightest)."""
    b = board[(board.stage == "pre") & (board.metric == "deletion_auc") & (board.explainer != "broken")].copy()
    b["rank"], b["letters"] = 1, "a"
    b["rank"] = b["rank"].astype("Int64")
    fig = plots.leaderboard_heatmap(b, "resnet18", "pre")
    colours = _colours(fig)
    assert len(colours) == 3 and len({tuple(c) for c in colours}) == 3  # rank colouring would give one colour
    order = F.rank_order(b)  # all tied: by name
    means = b.set_index("explainer")["mean"].reindex(order).to_numpy()
    lightness = colours[:, :3].sum(axis=1)  # cividis: brighter = better
    assert np.argsort(lightness).tolist() == np.argsort(-means).tolist()  # lower deletion AUC is better


def test_figures_leave_out_empty_panels(board):
    card = pd.DataFrame(
        {
            "model": "m",
            "stage": "pre",
            "metric": ["x", "y"],
            "beat_random": [1, -1],
            "real_explainers": 2,
            "alpha": [0.5, 0.2],
            "split_half": [0.9, 0.1],
            "substrate_tau_min": [np.nan, np.nan],
            "meta_input": np.nan,
            "meta_model": np.nan,
            "verdict": ["ok", "fails: noise"],
        }
    )
    fig = plots.reliability_heatmap(card, "m", "pre")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["beat random", "alpha", "split-half"]
    assert "substrate tau, MetaQuantus input, MetaQuantus model" in fig.axes[0].get_title()
    rows = [
        dict(model="m", stage="pre", explainer=e, curve=c, substrate=s, fraction=f, prob_mean=0.5, n=3)
        for e in ("a", "b")
        for c in ("deletion", "insertion")
        for s in ("blur", "imputation", "zero")
        for f in (0.0, 0.5, 1.0)
        if not (c == "insertion" and s == "imputation")
    ]
    fig = plots.substrate_figure(pd.DataFrame(rows), "m", "pre")
    drawn = [ax.get_title() for ax in fig.axes if ax.axison]
    assert len(drawn) == 5 and "insertion · imputation" not in drawn
    assert "insertion · imputation" in fig._suptitle.get_text()


def test_method_styles_keep_a_dozen_methods_apart():
    styles = plots.method_styles([f"e{i:02d}" for i in range(14)])
    looks = {(s["color"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == 14 and len({s["marker"] for s in styles.values()}) >= 11
    assert "#F0E442" not in {s["color"] for s in styles.values()}  # no faint yellow line on white
    assert plots.method_styles(["b", "a"])["a"] == plots.method_styles(["a", "c", "b"])["a"]  # by name, not input order
