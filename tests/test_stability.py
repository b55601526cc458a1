"""Issue 15: rankings across training seeds (Kendall's W, hierarchical bootstrap), tuning policies
side by side, and what tuning changed in the maps against retraining and the explainer's noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from bench.cli import main
from bench.core.errors import BenchError
from bench.report.comparisons import goodness_tables
from bench.report.leaderboard import check_scores
from bench.report.stability import pooled, similarity_summary, similarity_tests, stability_tables, variant_table
from bench.run import runner
from bench.run.config import load_config
from bench.run.similarity import map_similarity
from bench.stats.agreement import kendall_w
from bench.stats.settings import StatsSettings

SETTINGS = StatsSettings(draws=4000)


def seed_stability(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stability, pooled leaderboard) of a scores table, as bench report computes them."""
    tables = goodness_tables(scores)
    ptables, comps = pooled(tables, SETTINGS, {})
    return stability_tables(ptables, comps, SETTINGS)


# --- Kendall's W --------------------------------------------------------------------------------


def _w_by_hand(matrix: np.ndarray) -> float:
    """The textbook formula, written out loop by loop (Kendall & Babington Smith 1939)."""
    m, n = matrix.shape
    ranks = np.array([sps.rankdata(row) for row in matrix])
    totals = ranks.sum(axis=0)
    s = sum((r - totals.mean()) ** 2 for r in totals)
    t = 0.0
    for row in matrix:
        _, counts = np.unique(row, return_counts=True)
        t += sum(c**3 - c for c in counts)
    return 12 * s / (m**2 * (n**3 - n) - m * t)


def test_w_is_one_for_identical_rankings_and_small_for_random_ones():
    row = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    assert kendall_w(np.stack([row, row * 2 + 1, row**3])) == pytest.approx(1.0)  # same order, other scales
    rng = np.random.default_rng(0)
    ws = [kendall_w(rng.normal(size=(40, 6))) for _ in range(50)]
    # under independence E[W] = 1/m (= 0.025 for 40 raters)
    assert np.mean(ws) == pytest.approx(1 / 40, abs=0.01) and max(ws) < 0.1
    # two raters in exactly opposite order: no agreement at all
    assert kendall_w(np.stack([row, -row])) == pytest.approx(0.0)


def test_w_matches_the_formula_and_friedmans_chi_square_with_ties():
    rng = np.random.default_rng(1)
    for m, n in [(3, 6), (5, 4), (2, 3), (8, 9)]:
        mat = rng.integers(0, 4, size=(m, n)).astype(float)  # many ties
        w = kendall_w(mat)
        assert w == pytest.approx(_w_by_hand(mat), rel=1e-12)
        chi2 = sps.friedmanchisquare(*mat.T).statistic  # reference: scipy, tie-corrected
        assert w == pytest.approx(chi2 / (m * (n - 1)), rel=1e-9)
    # a hand-computed case: rank sums 3, 6, 9 of m=3 raters, n=3 -> S = 18, W = 12*18/(9*24) = 1
    # and one rater swapping two objects: ranks sums 4, 5, 9 -> S = 14, W = 12*14/216
    mat = np.array([[1, 2, 3], [1, 2, 3], [2, 1, 3]], dtype=float)
    assert kendall_w(mat) == pytest.approx(12 * 14 / 216)
    assert np.isnan(kendall_w(np.ones((3, 4)))) and np.isnan(kendall_w(np.ones((1, 4))))


# --- hierarchical bootstrap over seeds and images ---------------------------------------------------


def _scores(seed_offsets: dict[int, float], n_images: int = 30, noise: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Synthetic scores.csv rows: explainer quality a < b < c, each seed shifts explainer b."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, off in seed_offsets.items():
        for img in range(n_images):
            for e, base in (("a", 0.2), ("b", 0.5 + off), ("c", 0.8)):
                rows.append(
                    {
                        "model": f"m@seed{s}",
                        "stage": "pre",
                        "metric": "deletion_auc",
                        "explainer": e,
                        "image": img,
                        "value": base + noise * rng.normal(),
                        "status": "ok",
                        "higher_is_better": False,
                        "message": "",
                        "seconds_per_image": 0.0,
                        "peak_mem_mb": 0.0,
                        "label": 1,
                        "pred": 1,
                        "cell": "TP",
                    }
                )
    return check_scores(pd.DataFrame(rows))


def test_crossed_ci_widens_when_seeds_disagree():
    stab_agree, pooled_agree = seed_stability(_scores({0: 0.0, 1: 0.0, 2: 0.0}))
    stab_dis, pooled_dis = seed_stability(_scores({0: -0.25, 1: 0.0, 2: 0.25}))
    width_agree = pooled_agree.set_index("explainer").eval("ci_high - ci_low")
    width_dis = pooled_dis.set_index("explainer").eval("ci_high - ci_low")
    assert width_dis["b"] > 3 * width_agree["b"]  # only b moves between seeds
    assert width_dis["a"] == pytest.approx(width_agree["a"], rel=0.5)
    agree, dis = stab_agree.iloc[0], stab_dis.iloc[0]
    assert agree.kendall_w == pytest.approx(1.0) and agree.n_seeds == 3 and agree.n_images == 30
    # lower is better: a is on top in every draw when the seeds agree, and separated from the rest
    assert agree.top == "a" and agree.p_top_stays == pytest.approx(1.0) and agree.not_separated_from_top == ""
    # b spread over 0.25..0.75 swaps places with a (0.2)? no, with c (0.8)? no: the order holds but
    # b's seed 0 (0.25) sits next to a, so W stays high while b's CI widens
    assert dis.kendall_w == pytest.approx(1.0)
    # seeds that reorder the explainers lower W
    stab_swap, _ = seed_stability(_scores({0: -0.45, 1: 0.0, 2: 0.45}))
    assert stab_swap.iloc[0].kendall_w < 0.5
    # pooled means on the metric's own scale, ranks 1..3 when the paired tests separate them
    pl = pooled_agree.set_index("explainer")
    assert pl.loc["b", "mean"] == pytest.approx(0.5, abs=0.02) and list(pl["rank"]) == [1, 2, 3]
    # seeds that disagree about b leave its pairs with few degrees of freedom: not separable from c's
    assert pooled_dis.set_index("explainer").loc["b", "df"] < 5


def test_single_seed_runs_have_no_stability_table():
    one = _scores({0: 0.0}).assign(model="m")  # no @seed label: a run with one seed
    stab, pl = seed_stability(one)
    assert stab.empty and pl.empty


def test_tuning_policies_are_compared_pairwise_and_paired():
    base = _scores({0: 0.0}, n_images=20).assign(model="m")
    rows = [base.assign(stage="post:head"), base.assign(stage="post:all", value=base["value"] + 0.1)]
    table = variant_table(pd.concat(rows), SETTINGS, {})
    assert set(zip(table.stage_a, table.stage_b)) == {("post:all", "post:head")}
    assert np.allclose(table["diff_mean"], -0.1) and (table["p_adj"] < 0.01).all()
    assert (table["verdict"] == "b lower").all() and (table["diff_ci_high"] < 0).all()


# --- map similarity ------------------------------------------------------------------------------


def test_map_similarity_identical_and_independent():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 1, 28, 28, generator=g)
    rho, overlap = map_similarity(a, a.clone())
    assert np.allclose(rho, 1.0) and np.allclose(overlap, 1.0)
    rho, overlap = map_similarity(a, torch.randn(64, 1, 28, 28, generator=g))
    assert abs(rho.mean()) < 0.02 and np.abs(rho).max() < 0.15
    assert overlap.mean() == pytest.approx(0.15, abs=0.02)  # chance overlap of two top-15 % sets is 15 %
    # a monotone transform keeps the ranking: Spearman 1, same top pixels
    rho, overlap = map_similarity(a, a**3)
    assert np.allclose(rho, 1.0) and np.allclose(overlap, 1.0)


def _sim_rows(model: str, comparison: str, values: np.ndarray, cells=("TP", "TP")) -> list[dict]:
    return [
        {
            "model": model,
            "explainer": "e",
            "comparison": comparison,
            "image": i,
            "cell_a": cells[0],
            "cell_b": cells[1],
            "spearman": v,
            "top_overlap": v,
        }
        for i, v in enumerate(values)
    ]


def test_tuning_against_the_references():
    rng = np.random.default_rng(0)
    n = 30
    rows = (
        _sim_rows("m@seed0", "pre vs post", 0.3 + 0.05 * rng.normal(size=n))
        + _sim_rows("m", "seed0 vs seed1", 0.9 + 0.05 * rng.normal(size=n))
        + _sim_rows("m@seed0", "explainer seed", 0.95 + 0.02 * rng.normal(size=n))
    )
    tests = similarity_tests(pd.DataFrame(rows), SETTINGS).set_index("reference")
    assert tests.loc["retraining", "verdict"] == "changed more than retraining"
    assert tests.loc["explainer noise", "verdict"] == "changed beyond the explainer's noise"
    assert tests.loc["retraining", "diff_mean"] == pytest.approx(-0.6, abs=0.05)
    # tuning that moves the maps no more than the explainer's own noise: not separable
    same = _sim_rows("m@seed0", "pre vs post", 0.95 + 0.02 * rng.normal(size=n)) + _sim_rows(
        "m@seed0", "explainer seed", 0.95 + 0.02 * rng.normal(size=n)
    )
    t = similarity_tests(pd.DataFrame(same), SETTINGS).set_index("reference")
    assert t.loc["explainer noise", "verdict"] in ("equivalent to the explainer's noise", "not separable at n = 30")
    # a deterministic explainer has no explainer-seed rows: its reference is 1
    det = similarity_tests(pd.DataFrame(_sim_rows("m", "pre vs post", np.full(n, 0.5))), SETTINGS)
    assert det.iloc[0].reference == "explainer noise" and det.iloc[0].reference_mean == 1.0


def test_similarity_summary_groups_by_cell_and_move():
    rows = _sim_rows("m", "pre vs post", np.full(4, 0.8), ("FP", "TN")) + _sim_rows(
        "m", "pre vs post", np.full(3, 0.2), ("TP", "TP")
    )
    for i, r in enumerate(rows):
        r["image"] = i
    s = similarity_summary(pd.DataFrame(rows)).set_index("group")
    assert s.loc["all", "n"] == 7 and s.loc["cell FP", "spearman"] == pytest.approx(0.8)
    assert s.loc["move FP→TN", "n"] == 4 and "move TP→TP" not in s.index


# --- end to end: seeds and tuning variants -----------------------------------------------------------


def _overrides(tmp_path, name="seeds", extra=()):
    return [
        f'name="{name}"',
        f'results_dir="{tmp_path / "results"}"',
        'device="cpu"',
        'data.dataset="synthetic"',
        "data.options.n=96",
        "data.per_cell=2",
        "data.background_size=8",
        'models.names=["tiny"]',
        "models.seeds=[0, 1]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.lr=0.01",
        "tune.epochs=1",
        'tune.variants={head = {unfreeze = ["fc"]}, all = {unfreeze = ["*"], lr = 0.01}}',
        'explain.names=["captum.saliency", "random", "edge"]',
        "explain.shard_size=8",
        'metrics.names=["deletion_auc", "drop_rate"]',
        'metrics.params={"deletion_auc" = {steps = 8}}',
        "reliability.substrates=[]",
        "reliability.imputation=false",
        "reliability.bootstrap=100",
        *extra,
    ]


def test_seeds_and_variants_end_to_end(tmp_path):
    run_dir = runner.run(load_config(None, _overrides(tmp_path)), progress=False)
    scores = pd.read_csv(run_dir / "scores.csv")
    assert set(scores.model) == {"tiny@seed0", "tiny@seed1"}
    assert set(scores.stage) == {"pre", "post:head", "post:all"}
    # the reference unit (random with seed + 1) is not a scored row: one row per image/explainer/metric/stage
    assert not scores.duplicated(["model", "stage", "explainer", "metric", "image"]).any()
    n_images = scores.image.nunique()
    assert len(scores) == 2 * 3 * 3 * 2 * n_images
    # both seeds and every stage explain the same images
    assert scores.groupby(["model", "stage"]).image.apply(frozenset).nunique() == 1
    # every seed trained its own checkpoint; every variant its own tuned one
    manifest = json.loads((run_dir / "manifest.json").read_text())
    hashes = json.dumps(manifest)
    ck = sorted((tmp_path / "results" / "checkpoints").glob("*.pt"))
    assert len(ck) == 2 * 3 and all(json.loads(json.dumps(p.name)) in hashes for p in ck)

    sim = pd.read_csv(run_dir / "similarity.csv")
    assert set(sim.comparison) == {"pre vs post:head", "pre vs post:all", "seed0 vs seed1", "explainer seed"}
    # the references behave: a model-independent map is identical across seeds and stages, the
    # random control's two explainer seeds are independent noise
    edge = sim[sim.explainer == "edge"]
    assert np.allclose(edge.spearman, 1.0) and np.allclose(edge.top_overlap, 1.0)
    noise = sim[(sim.explainer == "random") & (sim.comparison == "explainer seed")]
    assert len(noise) == n_images and abs(noise.spearman.mean()) < 0.1
    assert set(sim[sim.comparison == "explainer seed"].explainer) == {"random"}  # saliency is deterministic

    stab = pd.read_csv(run_dir / "stability.csv")
    assert set(stab.stage) == {"pre", "post:head", "post:all"} and (stab.n_seeds == 2).all()
    w = stab[stab.metric == "deletion_auc"].kendall_w  # (drop rate may tie everywhere on a tiny model: W n/a)
    assert len(w) == 3 and ((w >= 0) & (w <= 1)).all()
    variants = pd.read_csv(run_dir / "variants.csv")
    assert set(variants.model) == {"tiny@seed0", "tiny@seed1"} and set(variants.stage_a) == {"post:all"}
    tests = pd.read_csv(run_dir / "similarity_tests.csv")
    assert set(tests.reference) == {"retraining", "explainer noise"}
    models = json.loads((run_dir / "prepost_models.json").read_text())
    assert "tiny@seed1 · post:all vs post:head" in models and "tiny@seed0 · post:head" in models
    assert (run_dir / "figures" / "similarity_tiny.png").is_file()
    md = (run_dir / "stability.md").read_text()
    assert "Kendall's W" in md and "tiny@seed1" in md

    # bench report rebuilds every stability table byte for byte
    derived = [
        "stability.csv",
        "leaderboard_pooled.csv",
        "comparisons_pooled.csv",
        "variants.csv",
        "similarity_summary.csv",
        "similarity_tests.csv",
        "stability.md",
        "leaderboard.md",
        "prepost.md",
        "comparisons.csv",
        "friedman.csv",
        "aliases.csv",
        "leaderboard.csv",
    ]
    before = {f: (run_dir / f).read_bytes() for f in derived}
    for f in derived:
        (run_dir / f).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert {f: (run_dir / f).read_bytes() for f in derived} == before


@pytest.mark.parametrize(
    "override, needle",
    [
        ("models.seeds=[0, 0]", "models.seeds"),
        ('models.seeds=["a"]', "models.seeds"),
        ('tune.variants={head = {unfreez = ["fc"]}}', "unfreez"),
        ('tune.variants={"a b" = {unfreeze = ["fc"]}}', "tune.variants"),
    ],
)
def test_bad_seed_and_variant_config(tmp_path, override, needle):
    with pytest.raises(BenchError, match=needle):
        load_config(None, _overrides(tmp_path, extra=[override]))
