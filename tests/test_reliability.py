"""The reliability card, validated: statistics against hand computations and references, the power
computation by simulation, a random metric against a metric known to be right, and the card in a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from bench.core.errors import BenchError
from bench.core.schema import SCORE_COLUMNS
from bench.metrics import METRICS, register_metric
from bench.report import reliability as R
from bench.report.leaderboard import check_scores, read_scores
from bench.stats.metaquantus import consistency, mc_interval
from bench.stats.power import min_detectable_difference, n_needed
from bench.report.rebuild import rebuild
from bench.run import meta as MQ
from bench.run import runner
from bench.run.config import load_config

SETTINGS = R.CardSettings(bootstrap=200, splits=40)


def _scores(values: dict[str, np.ndarray], metric: str = "m", hib: bool = True, stage: str = "pre") -> pd.DataFrame:
    """A scores table: one explainer per key, one row per image."""
    rows = []
    for explainer, vals in values.items():
        for i, v in enumerate(vals):
            rows.append(["model", stage, explainer, metric, i, 1, 1, "TP", float(v), "ok", "", hib, 0.1, 1.0])
    return check_scores(pd.DataFrame(rows, columns=list(SCORE_COLUMNS)))


def _known(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """A metric known to be right: per image, exact > edge-like > random > reversed, plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n)
    return {
        "exact": base + 3 + rng.normal(0, 0.3, n),
        "edge": base + 2 + rng.normal(0, 0.3, n),
        "random": base + 1 + rng.normal(0, 0.3, n),
        "reversed": base + rng.normal(0, 0.3, n),
    }


def _noise(n: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    """A metric that returns random scores."""
    rng = np.random.default_rng(seed)
    return {e: rng.normal(0, 1, n) for e in ("exact", "edge", "random", "reversed")}


# ----------------------------------------------------------------------------- statistics


def _nominal_alpha(data: np.ndarray) -> float:
    """Krippendorff's alpha for nominal data, raters x units, from the coincidence matrix
    (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"), written out here."""
    values = np.unique(data)
    o = np.zeros((len(values), len(values)))
    for u in data.T:
        m = len(u)
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[np.searchsorted(values, u[i]), np.searchsorted(values, u[j])] += 1 / (m - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    d_o = (o.sum() - np.trace(o)) / n
    d_e = (n * n - (n_c**2).sum()) / (n * (n - 1))
    return 1 - d_o / d_e


@pytest.mark.parametrize("agree", [20, 15, 11, 10])
def test_alpha_matches_a_hand_computation(agree):
    """Two explainers: their ranks are 1/2, where ordinal alpha equals nominal alpha."""
    g = np.array([[1.0, 0.0]] * agree + [[0.0, 1.0]] * (20 - agree))
    assert R.krippendorff_alpha(g) == pytest.approx(_nominal_alpha(R.image_ranks(g)), abs=1e-12)
    if agree == 20:
        assert R.krippendorff_alpha(g) == 1.0
    assert math.isnan(R.krippendorff_alpha(np.ones((20, 3))))  # every score tied: no ranking to agree on


def test_the_right_metric_is_reliable_and_the_random_one_is_not():
    good, noise = R.card(_scores(_known()), SETTINGS, {}), R.card(_scores(_noise()), SETTINGS, {})
    g, r = good["reliability"].iloc[0], noise["reliability"].iloc[0]
    assert g.alpha > 0.8 and g.alpha_ci_low > 0.6 and g.split_half > 0.9
    assert abs(r.alpha) < 0.1 and r.alpha_ci_low < 0 < r.alpha_ci_high and abs(r.split_half) < 0.5
    assert g.beat_random == 1 and g.real_explainers == 2 and g.control_beats_real  # edge beats reversed
    assert r.beat_random == 0 and not r.control_beats_real
    assert r.verdict.startswith("fails") and "no explainer beats random" in r.verdict
    assert "chance" in r.verdict and "chance" not in g.verdict
    c = good["reliability_controls"]
    exact = c[(c.explainer == "exact") & (c.control == "random")].iloc[0]
    assert exact.verdict == "beats the control" and exact.diff_ci_low > 1.5  # the planted difference is 2
    assert c[(c.explainer == "reversed") & (c.control == "edge")].iloc[0].verdict == "LOSES to the control"


def test_a_metric_whose_controls_are_not_baselines_is_not_failed_for_them():
    """Sparseness of a random map is the worst possible, robustness of a constant one the best: "beats
    random" means nothing there (control_role = "none"); the card shows n/a and does not fail on it."""
    card = R.card(_scores(_noise()), SETTINGS, {}, roles={"m": "none"})["reliability"].iloc[0]
    assert card.beat_random == -1 and "beats random" not in card.verdict
    assert R.card(_scores(_noise()), SETTINGS, {})["reliability"].iloc[0].beat_random == 0


def test_directions_are_oriented():
    """A lower-is-better metric with the same values in negation gives the same card."""
    up = R.card(_scores(_known()), SETTINGS, {})["reliability"].iloc[0]
    down = R.card(_scores({e: -v for e, v in _known().items()}, hib=False), SETTINGS, {})["reliability"].iloc[0]
    for col in ("alpha", "split_half", "beat_random", "control_beats_real", "mde_median"):
        assert up[col] == pytest.approx(down[col]) if isinstance(up[col], float) else up[col] == down[col]


def test_agreement_uses_kendall_tau_on_oriented_rankings():
    known = _known()
    a = _scores(known, metric="a", hib=True)
    b = _scores({e: -v * 2 for e, v in known.items()}, metric="b", hib=False)  # the same order, other direction
    c = _scores({e: -v for e, v in known.items()}, metric="c", hib=True)  # the order reversed
    table = R.card(
        pd.concat([a, b, c]).pipe(check_scores),
        SETTINGS,
        {"a": "faithfulness", "b": "faithfulness", "c": "faithfulness"},
    )["reliability_agreement"]
    row = table.set_index(["metric_a", "metric_b"])
    means = {m: s.groupby("explainer")["value"].mean() for m, s in (("a", a), ("c", c))}
    expected = sps.kendalltau(means["a"].sort_index(), means["c"].sort_index()).statistic
    assert row.loc[("a", "b"), "kendall_tau"] == pytest.approx(1.0) and row.loc[("a", "b"), "verdict"] == "agree"
    assert row.loc[("a", "c"), "kendall_tau"] == pytest.approx(expected) == pytest.approx(-1.0)
    assert row.loc[("a", "c"), "verdict"] == "DISAGREE"


def test_the_truth_column_carries_the_truth_rows_and_n_a_elsewhere():
    """A sub-run of ``bench truth`` passes its polarity's truth_agreement.csv rows: the card shows
    them per (stage, metric), "n/a" where the truth test graded nothing; no rows, no column."""
    known = _known()
    scores = pd.concat(
        [_scores(known, metric="a"), _scores(known, metric="b"), _scores(known, metric="a", stage="post")]
    ).pipe(check_scores)
    truth = pd.DataFrame(
        [
            {
                "polarity": "bright",
                "stage": "pre",
                "metric": "a",
                "tau_truth": 0.5138,
                "tau_low": 0.4771,
                "tau_high": 0.5872,
                "verdict": "agrees",
            }
        ]
    )
    out = R.card(scores, SETTINGS, {}, truth=truth)
    main = out["reliability"].set_index(["stage", "metric"])
    assert list(out["reliability"].columns) == R.CARD_COLUMNS + ["truth"]
    assert main.loc[("pre", "a"), "truth"] == "agrees: tau 0.51 [0.48, 0.59]"
    assert main.loc[("pre", "b"), "truth"] == "n/a" and main.loc[("post", "a"), "truth"] == "n/a"
    md = R.render_card_md(out, SETTINGS)
    assert "| verdict | truth |" in md and "| ok | agrees: tau 0.51 [0.48, 0.59] |" in md and R.TRUTH_LEGEND in md
    plain = R.card(scores, SETTINGS, {})
    assert list(plain["reliability"].columns) == R.CARD_COLUMNS
    md = R.render_card_md(plain, SETTINGS)
    assert "truth" not in md
    # the card takes one polarity's rows: two polarities are a caller's mistake, said in one line
    with pytest.raises(BenchError, match="mix the polarities") as e:
        R.card(scores, SETTINGS, {}, truth=pd.concat([truth, truth.assign(polarity="dark")]))
    assert "\n" not in str(e.value)


def test_power_by_simulation():
    """Plant the smallest detectable difference: the table's paired t test at alpha / m finds it ~80 % of the time."""
    n, m, sd = 24, 6, 1.0
    mde = min_detectable_difference(sd, n, 0.05 / m)
    rng = np.random.default_rng(0)
    hits = [sps.ttest_1samp(rng.normal(mde, sd, n), 0).pvalue <= 0.05 / m for _ in range(3000)]
    assert 0.77 <= np.mean(hits) <= 0.83, (mde, np.mean(hits))
    assert n_needed(mde, sd, 0.05 / m) == pytest.approx(n, abs=1)
    assert n_needed(0.0, sd, 0.05) == math.inf
    assert min_detectable_difference(sd, 4 * n, 0.05 / m) < mde  # more images, smaller effects


def test_the_card_and_the_leaderboard_read_the_same_comparisons():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 12)
    vals = {
        "a": base + 1.0 + rng.normal(0, 0.3, 12),
        "b": base + 0.98 + rng.normal(0, 0.3, 12),
        "random": base - 3 + rng.normal(0, 0.3, 12),
    }
    scores = _scores(vals)
    card = R.card(scores, SETTINGS, {})
    p = card["reliability_power"]
    assert p.iloc[0]["verdict"].startswith("not separable") and p.iloc[-1]["verdict"] == "a better"
    from bench.report.leaderboard import leaderboard, render_leaderboard_md

    board = leaderboard(scores).set_index("explainer")
    assert set(board.loc["a", "letters"]) & set(board.loc["b", "letters"])  # not separated: a shared letter
    assert board.loc["random", "rank"] > max(board.loc["a", "rank"], board.loc["b", "rank"])
    c = card["reliability_controls"]
    assert (c[c.control == "random"]["verdict"] == "beats the control").all()
    assert card["reliability"].iloc[0]["beat_random"] == 2
    md = render_leaderboard_md(leaderboard(scores), card)
    assert "(1 a)" in md and "(2 b)" in md


def test_a_failing_metric_is_marked_in_the_leaderboard():
    from bench.report.leaderboard import leaderboard, render_leaderboard_md

    scores = _scores(_noise())
    md = render_leaderboard_md(leaderboard(scores), R.card(scores, SETTINGS, {}))
    assert "| explainer | m ↑ ⚠ |" in md and "⚠ m: no explainer beats random" in md


# ----------------------------------------------------------------------------- MetaQuantus consistency


def test_meta_consistency_by_hand():
    """A metric whose scores collapse under the disruptive perturbation and hold under the minor one
    gets MC near 1; a metric whose scores are redrawn at random gets about 0.5."""
    rng = np.random.default_rng(0)
    explainers, n, draws = ["a", "b", "c"], 30, 3
    base = {e: {"good": rng.normal(i, 0.2, n), "noise": rng.normal(0, 1, n)} for i, e in enumerate(explainers)}
    perturbed = {}
    for k in range(draws):
        for e in explainers:
            perturbed[("input", "nr", k, e)] = {
                "status": "ok",
                "kept": [True] * n,
                "scores": {"good": base[e]["good"] + rng.normal(0, 1e-3, n), "noise": rng.normal(0, 1, n)},
            }
            perturbed[("input", "ar", k, e)] = {
                "status": "ok",
                "kept": [True] * n,
                "scores": {"good": base[e]["good"] - 5, "noise": rng.normal(0, 1, n)},
            }
    raw = {m: MQ.raw_scores(base, perturbed, explainers, m, "input", draws) for m in ("good", "noise")}
    good, noise = consistency(raw["good"], True), consistency(raw["noise"], True)
    assert good["iec_nr"] == 1.0 and good["iec_ar"] == 1.0 and good["iac_ar"] > 0.99
    # under a null effect the Wilcoxon p is uniform: IAC_NR averages about 0.5 even for a perfect metric
    assert 0.2 < good["iac_nr"] < 0.8 and good["mc"] > 0.8
    assert noise["iec_nr"] < 0.4 and 0.35 < noise["iec_ar"] < 0.65 and abs(noise["mc"] - 0.5) < 0.15
    assert good["mc"] > noise["mc"] + 0.25
    assert good["mc"] == pytest.approx(np.mean([good[k] for k in ("iac_nr", "iac_ar", "iec_nr", "iec_ar")]))
    # the interval over images and draws holds the estimate and keeps the two metrics apart
    lo_g, hi_g = mc_interval(raw["good"], True, n_resamples=100, seed=0)
    lo_n, hi_n = mc_interval(raw["noise"], True, n_resamples=100, seed=0)
    assert lo_g <= good["mc"] <= hi_g and lo_n <= noise["mc"] <= hi_n and hi_n < lo_g


# ----------------------------------------------------------------------------- in a run


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    """A tiny run with the card on: substrates, imputation, MetaQuantus, and a metric of pure noise."""

    @register_metric(
        "test.noise", higher_is_better=True, passes=(0, 0), kind="faithfulness", paper="a control metric, 2026"
    )
    def noise_metric(model, inputs, targets, attribution, *, context=None):
        """Random scores (a metric that measures nothing), 2026."""
        return torch.rand(inputs.shape[0], generator=torch.Generator().manual_seed(int(attribution.values.sum() * 1e4)))

    results = tmp_path_factory.mktemp("card")
    try:
        cfg = load_config(
            None,
            [
                'name="card"',
                f'results_dir="{results}"',
                'device="cpu"',
                'data.dataset="synthetic"',
                "data.options.n=96",
                "data.per_cell=4",
                "data.background_size=8",
                'models.names=["tiny"]',
                'models.stages=["pre"]',
                "train.epochs=4",
                "train.batch_size=32",
                "train.lr=0.01",
                'explain.names=["captum.integrated_gradients", "captum.saliency", "random", "edge"]',
                "explain.shard_size=8",
                'metrics.names=["deletion_auc", "road_morf", "test.noise"]',
                'metrics.params={"deletion_auc" = {steps = 7}}',
                "reliability.bootstrap=100",
                "reliability.splits=20",
                "reliability.meta.enabled=true",
                "reliability.meta.n_images=8",
                "reliability.meta.perturbations=2",
            ],
        )
        yield runner.run(cfg, progress=False)
    finally:
        METRICS.unregister("test.noise")


def test_the_card_in_a_run(card_run):
    d = card_run
    card = pd.read_csv(d / "reliability.csv")
    assert set(card.metric) == {"deletion_auc", "road_morf", "test.noise"}
    noise = card[card.metric == "test.noise"].iloc[0]
    assert noise.verdict.startswith("fails")
    # substrate sensitivity: deletion under every substrate, ROAD's imputation beside it
    subs = pd.read_csv(d / "substrates.csv", keep_default_na=False, na_values={"value": ["", "nan"]})
    assert set(subs[subs.metric == "deletion_auc"].substrate) == {"zero", "mean", "blur", "noise", "imputation"}
    scores = read_scores(d / "scores.csv")
    own = scores[scores.metric == "deletion_auc"].set_index(["explainer", "image"])["value"]
    zero = subs[(subs.metric == "deletion_auc") & (subs.substrate == "zero")].set_index(["explainer", "image"])["value"]
    pd.testing.assert_series_equal(zero.sort_index(), own.sort_index(), check_names=False)  # reused, not recomputed
    road = scores[scores.metric == "road_morf"].set_index(["explainer", "image"])["value"]
    imputed = subs[subs.substrate == "imputation"].set_index(["explainer", "image"])["value"]
    np.testing.assert_allclose(imputed.sort_index().to_numpy(), -road.sort_index().to_numpy())  # oriented like deletion
    st = pd.read_csv(d / "reliability_substrates.csv")
    assert len(st[st.metric == "deletion_auc"]) == 10  # 5 substrates, every pair
    # MetaQuantus: the noise metric holds no ranking under a minor perturbation, deletion does
    mq = pd.read_csv(d / "meta.csv").set_index(["metric", "test"])
    assert mq.loc[("deletion_auc", "input"), "iec_nr"] > mq.loc[("test.noise", "input"), "iec_nr"] + 0.3
    assert 0 <= mq["mc"].min() and mq["mc"].max() <= 1
    rm = pd.read_csv(d / "reliability_meta.csv").set_index(["metric", "test"])  # from meta_scores.csv, with its CI
    # meta.csv keeps 8 digits, reliability_meta.csv 6 decimals: equal within half a unit of the 6th
    assert rm["mc"].to_numpy() == pytest.approx(mq.loc[rm.index, "mc"].to_numpy(), abs=5.01e-7)
    assert ((rm["mc_ci_low"] <= rm["mc"]) & (rm["mc"] <= rm["mc_ci_high"])).all()
    # an ordinary run (no marked data): its card has no truth column, in any of its renderings
    assert "truth" not in card.columns and "truth" not in (d / "reliability.md").read_text()
    page = (d / "report.html").read_text()
    assert ">truth</th>" not in page and "truth (a sub-run" not in page
    manifest = json.loads((d / "manifest.json").read_text())
    assert "meta" in manifest["wall_seconds"] and "(substrates)" in manifest["cost"]["by_metric"]
    assert manifest["cost"]["by_metric"]["(substrates)"]["floor_seconds"] > 0


def test_report_rebuilds_the_card_byte_for_byte(card_run):
    d = card_run
    files = sorted(d.glob("reliability*")) + sorted((d / "figures").glob("*.png")) + [d / "leaderboard.md"]
    assert any(f.name.startswith("reliability_tiny") for f in files) and any(
        f.name.startswith("substrates_") for f in files
    )
    before = {f: f.read_bytes() for f in files}
    for f in files:
        f.unlink()
    rebuild(d)
    assert {f: f.read_bytes() for f in files} == before
