"""The baseline x substrate interaction (bench/report/baseline_substrate.py): analytic 2 x 2 tables whose
interaction is known exactly, the pair detection from a run's config, and a rebuild end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.core.schema import SCORE_COLUMNS, SUBSTRATE_COLUMNS
from bench.report import baseline_substrate as B
from bench.report.rebuild import rebuild
from bench.stats.settings import StatsSettings

IG = "captum.integrated_gradients"
IGB = f"{IG}@blur"
DL = "captum.deeplift"
N = 20
SETTINGS = StatsSettings(bootstrap=500)


def _long(
    cells: dict[tuple[str, str], np.ndarray],
    metric: str = "insertion_auc",
    hib: bool = True,
    model: str = "m",
    stage: str = "pre",
) -> pd.DataFrame:
    """A by-substrate table: {(explainer, substrate): values per image 0..n-1}."""
    rows = [
        [model, stage, e, metric, s, i, float(v), "ok", hib]
        for (e, s), vals in cells.items()
        for i, v in enumerate(vals)
    ]
    return pd.DataFrame(rows, columns=list(SUBSTRATE_COLUMNS))


def _pair(metric: str = "insertion_auc") -> B.Pair:
    return B.Pair(IG, IGB, "zero", "blur", metric, 2.0)


def _own_wins(n: int = N) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray]:
    """IG (zero baseline) wins by 0.25 on zero, IG@blur wins by 0.5 + e_i on blur (distinct e_i summing to
    0, dyadic: exact in binary), on top of a per-image level: per image I = 0.75 + e_i, mean exactly 0.75."""
    u = np.random.default_rng(0).uniform(0.2, 0.4, n)
    e = (2 * np.arange(n) - (n - 1)) / 128
    cells = {(IG, "zero"): u + 0.25, (IGB, "zero"): u, (IG, "blur"): u, (IGB, "blur"): u + 0.5 + e}
    return cells, 0.75 + e


def test_a_variant_that_wins_only_on_its_own_substrate_gives_the_exact_positive_interaction():
    cells, expected = _own_wins()
    long = _long(cells)
    wide, hib = B.cells(long, _pair(), "m", "pre")
    np.testing.assert_allclose(B.interactions(wide, hib), expected, atol=1e-12)
    t = B.interaction_table(long, [_pair()], SETTINGS)
    assert len(t) == 1 and list(t.columns) == B.COLUMNS
    r = t.iloc[0]
    assert r.n == N and r.interaction == pytest.approx(0.75, abs=1e-12)
    assert r.pseudo_median == pytest.approx(0.75, abs=0.07)
    for col, key in (
        ("a_on_a", (IG, "zero")),
        ("b_on_a", (IGB, "zero")),
        ("a_on_b", (IG, "blur")),
        ("b_on_b", (IGB, "blur")),
    ):
        assert r[col] == pytest.approx(cells[key].mean(), abs=1e-12)
    # every image positive, no ties: the exact signed-rank p is 2 / 2^n; one row, so Bonferroni leaves it
    assert r.p == pytest.approx(2.0 / 2**N) and r.p_adj == pytest.approx(r.p)
    assert r.level == pytest.approx(0.95) and 0 < r.ci_low <= 0.75 <= r.ci_high
    assert r.verdict == B.VERDICT_MATCH
    assert r.family == "baseline_substrate: m (m = 1)"


def test_swapping_the_two_methods_leaves_the_interaction_unchanged():
    cells, _ = _own_wins()
    long = _long(cells)
    swapped = B.Pair(IGB, IG, "blur", "zero", "insertion_auc", 2.0)
    a = B.interaction_table(long, [_pair()], SETTINGS).iloc[0]
    b = B.interaction_table(long, [swapped], SETTINGS).iloc[0]
    assert b.interaction == pytest.approx(a.interaction) and b.p == pytest.approx(a.p)
    assert (b.a_on_a, b.b_on_b) == (a.b_on_b, a.a_on_a)  # the cells trade places


@pytest.mark.parametrize(
    "metric, hib, verdict", [("insertion_auc", True, B.VERDICT_MATCH), ("deletion_auc", False, B.VERDICT_OPPOSITE)]
)
def test_the_orientation_follows_higher_is_better(metric, hib, verdict):
    # the same numbers: a gain under insertion (higher is better) is a loss under deletion (lower is better)
    cells, expected = _own_wins()
    t = B.interaction_table(_long(cells, metric, hib), [_pair(metric)], SETTINGS).iloc[0]
    assert t.interaction == pytest.approx(0.75 if hib else -0.75, abs=1e-12)
    assert t.verdict == verdict and t.higher_is_better == hib


def test_deletion_rewards_the_baseline_with_the_lower_score_on_its_own_substrate():
    u = np.linspace(0.3, 0.6, N)
    # deletion: lower is better; each method is 0.1 lower (better) on its own substrate
    cells = {(IG, "zero"): u - 0.1, (IGB, "zero"): u, (IG, "blur"): u, (IGB, "blur"): u - 0.1}
    r = B.interaction_table(_long(cells, "deletion_auc", False), [_pair("deletion_auc")], SETTINGS).iloc[0]
    assert r.interaction == pytest.approx(0.2, abs=1e-12) and r.verdict == B.VERDICT_MATCH


def test_main_effects_alone_give_no_interaction():
    # g(b, s) = image + baseline effect + substrate effect, in floats that do not cancel exactly
    rng = np.random.default_rng(1)
    u = rng.uniform(0.1, 0.9, N)
    beta = {IG: 0.1, IGB: -0.03}
    sigma = {"zero": 0.07, "blur": -0.21}
    cells = {(e, s): u + beta[e] + sigma[s] for e in beta for s in sigma}
    long = _long(cells)
    wide, hib = B.cells(long, _pair(), "m", "pre")
    raw = (wide.a_on_a - wide.b_on_a) - (wide.a_on_b - wide.b_on_b)
    assert np.abs(raw).max() > 0  # float rounding leaves ~1e-17 ...
    assert np.all(B.interactions(wide, hib) == 0.0)  # ... which counts as 0
    r = B.interaction_table(long, [_pair()], SETTINGS).iloc[0]
    assert r.interaction == 0.0 and r.p == 1.0 and r.ci_low == r.ci_high == 0.0
    assert r.verdict == f"no interaction detectable at n = {N}"


def test_noise_without_interaction_is_not_detected():
    rng = np.random.default_rng(2)
    cells = {(e, s): rng.uniform(0, 1, N) for e in (IG, IGB) for s in ("zero", "blur")}
    r = B.interaction_table(_long(cells), [_pair()], SETTINGS).iloc[0]
    assert r.p > 0.05 and r.verdict == f"no interaction detectable at n = {N}"


def test_images_missing_a_cell_or_not_ok_are_dropped():
    cells, expected = _own_wins()
    long = _long(cells)
    drop = (long.explainer == IGB) & (long.substrate == "blur") & (long.image == 3)
    long = long[~drop].copy()
    long.loc[(long.explainer == IG) & (long.substrate == "zero") & (long.image == 0), "status"] = "n/a"
    long.loc[(long.explainer == IG) & (long.substrate == "blur") & (long.image == 5), "value"] = np.nan
    r = B.interaction_table(long, [_pair()], SETTINGS).iloc[0]
    keep = np.setdiff1d(np.arange(N), [0, 3, 5])
    assert r.n == len(keep) == 17
    assert r.interaction == pytest.approx(expected[keep].mean(), abs=1e-12)
    assert r.a_on_a == pytest.approx(cells[(IG, "zero")][keep].mean(), abs=1e-12)


def test_rows_of_one_model_form_one_bonferroni_family():
    cells, _ = _own_wins()
    long = pd.concat(
        [
            _long(cells, "insertion_auc", True),
            _long(cells, "deletion_auc", False),
            _long(cells, "insertion_auc", True, stage="post"),
        ],
        ignore_index=True,
    )
    t = B.interaction_table(long, [_pair("insertion_auc"), _pair("deletion_auc")], SETTINGS)
    assert list(zip(t.stage, t.metric)) == [
        ("pre", "insertion_auc"),
        ("pre", "deletion_auc"),
        ("post", "insertion_auc"),  # post has no deletion rows: no row
    ]
    assert set(t.family) == {"baseline_substrate: m (m = 3)"}
    np.testing.assert_allclose(t.p_adj, np.minimum(1, 3 * t.p))
    assert np.allclose(t.level, 1 - 0.05 / 3)


# --------------------------------------------------------------------------------------------
# pair detection from the run's config
# --------------------------------------------------------------------------------------------


def _config(names, params=None, metric_params=None):
    return {
        "config": {
            "explain": {"names": list(names), "params": params or {}},
            "metrics": {"params": metric_params or {}},
        }
    }


def _all_cells(substrates=("zero", "blur"), explainers=(IG, IGB, f"{IG}@same", DL, f"{DL}@blur")):
    parts = []
    for metric, hib in (("deletion_auc", False), ("insertion_auc", True)):
        parts.append(_long({(e, s): np.linspace(0, 1, 8) for e in explainers for s in substrates}, metric, hib))
    return pd.concat(parts, ignore_index=True)


def test_pairs_are_variants_with_different_baselines_mapped_to_scored_substrates():
    cfg = _config(
        [IG, IGB, f"{IG}@same", DL, f"{DL}@blur", "random", "random@x"],
        {
            IGB: {"baseline": "blur"},
            f"{IG}@same": {"baseline": "zero", "n_steps": 8},
            f"{DL}@blur": {"baseline": "blur", "blur_sigma": 1.0},
        },
        {"deletion_auc": {"blur_sigma": 1.0}},
    )
    pairs, notes = B.find_pairs(cfg, _all_cells())
    got = {(p.a, p.b, p.metric): p for p in pairs}
    # IG vs IG@same: both zero (the default and the explicit one): not a pair; random has no baseline
    assert set(got) == {
        (IG, IGB, "insertion_auc"),
        (IGB, f"{IG}@same", "insertion_auc"),
        (DL, f"{DL}@blur", "deletion_auc"),
    }
    assert got[(IG, IGB, "insertion_auc")].baseline_a == "zero" and got[(IG, IGB, "insertion_auc")].baseline_b == "blur"
    assert got[(IGB, f"{IG}@same", "insertion_auc")].also_differs == "n_steps"
    assert got[(DL, f"{DL}@blur", "deletion_auc")].blur_sigma == 1.0
    # a blur baseline at another sigma than the metric's blur is not the same images: left out, with a note
    sigma_notes = [n for n in notes if "blur_sigma" in n]
    assert len(sigma_notes) == 3  # IG@blur (2) on deletion (1), in two pairs; deeplift@blur (1) on insertion (2)
    assert any(n.startswith(f"{DL} vs {DL}@blur on insertion_auc") for n in sigma_notes)


def test_a_substrate_not_scored_leaves_the_pair_out_with_a_note():
    pairs, notes = B.find_pairs(_config([IG, IGB], {IGB: {"baseline": "blur"}}), _all_cells(substrates=("zero",)))
    assert pairs == [] and len(notes) == 2 and all("substrate 'blur' not scored" in n for n in notes)


def test_a_baseline_without_a_substrate_is_named():
    pairs, notes = B.find_pairs(_config([IG, f"{IG}@bg"], {f"{IG}@bg": {"baseline": "background_mean"}}), _all_cells())
    assert pairs == [] and notes == [f"{IG} vs {IG}@bg: baseline 'background_mean' has no substrate of the same images"]


def test_the_run_s_own_substrate_comes_from_scores_csv():
    scores = pd.DataFrame(
        [["m", "pre", IG, "deletion_auc", 0, 1, 1, "TP", 0.5, "ok", "", False, 0.1, 1.0]], columns=list(SCORE_COLUMNS)
    )
    subs = pd.DataFrame(
        [["m", "pre", IG, "deletion_auc", s, 0, v, "ok", False] for s, v in (("zero", 0.9), ("blur", 0.7))],
        columns=list(SUBSTRATE_COLUMNS),
    )
    cfg = _config([IG], metric_params={"deletion_auc": {"substrate": "blur"}})
    long = B.by_substrate(scores, subs, cfg).set_index("substrate")["value"]
    assert long.to_dict() == {"blur": 0.5, "zero": 0.9}  # blur from scores.csv (once), zero from substrates.csv


# --------------------------------------------------------------------------------------------
# files: only for a run with a pair; rebuild end to end
# --------------------------------------------------------------------------------------------


def _run(tmp_path, names, params):
    """A run folder with scores.csv, substrates.csv and manifest.json: IG (zero) and its variant, where the
    variant wins on blur and IG on zero, plus the random control."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(3)
    n = 12
    u = rng.uniform(0.3, 0.6, n)
    value = {
        (IG, "zero"): u - 0.1,
        (IGB, "zero"): u,
        (IG, "blur"): u,
        (IGB, "blur"): u - 0.1,
        ("random", "zero"): u + 0.1,
        ("random", "blur"): u + 0.1,
    }
    rows, subs = [], []
    for metric, hib, own, sign in (("deletion_auc", False, "zero", 1.0), ("insertion_auc", True, "blur", -1.0)):
        for (e, s), v in value.items():
            if e not in names:
                continue
            for i in range(n):
                x = 0.5 + sign * (float(v[i]) - 0.5) + rng.normal(0, 0.005)
                subs.append(["resnet18", "pre", e, metric, s, i, x, "ok", hib])
                if s == own:
                    rows.append(["resnet18", "pre", e, metric, i, 1, 1, "TP", x, "ok", "", hib, 0.1, 1.0])
    pd.DataFrame(rows, columns=list(SCORE_COLUMNS)).to_csv(run / "scores.csv", index=False)
    pd.DataFrame(subs, columns=list(SUBSTRATE_COLUMNS)).to_csv(run / "substrates.csv", index=False)
    manifest = {
        "config": {
            "explain": {"names": names, "params": params},
            "metrics": {"params": {}},
            "reliability": {"enabled": False},
            "figures": {"enabled": False},
        }
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_rebuild_writes_the_table_and_the_page_section(tmp_path):
    run = _run(tmp_path, [IG, IGB, "random"], {IGB: {"baseline": "blur"}})
    written = rebuild(run, figures=False)
    csv = run / "baseline_substrate.csv"
    assert csv in written and (run / "baseline_substrate.md") in written
    t = pd.read_csv(csv)
    assert list(t.columns) == B.COLUMNS
    assert list(t.metric) == ["deletion_auc", "insertion_auc"] and set(t.n) == {12}
    assert (t.interaction > 0.15).all() and set(t.verdict) == {B.VERDICT_MATCH}
    page = (run / "report.html").read_text()
    assert 'id="baseline_substrate"' in page and "resnet18 · pre: 2 of 2 rows win on their own substrate" in page
    md = (run / "baseline_substrate.md").read_text()
    assert "baseline_substrate: resnet18 (m = 2)" in md
    first = csv.read_bytes()
    rebuild(run, figures=False)
    assert csv.read_bytes() == first  # seeded: byte for byte


def test_a_run_without_variants_writes_no_file_and_drops_a_stale_one(tmp_path):
    run = _run(tmp_path, [IG, "random"], {})
    (run / "baseline_substrate.csv").write_text("stale\n")
    written = rebuild(run, figures=False)
    assert not any(p.name.startswith("baseline_substrate") for p in written)
    assert not (run / "baseline_substrate.csv").exists() and not (run / "baseline_substrate.md").exists()
    assert 'id="baseline_substrate"' not in (run / "report.html").read_text()


def test_a_variant_with_the_same_baseline_writes_no_file(tmp_path):
    run = _run(tmp_path, [IG, IGB, "random"], {IGB: {"baseline": "zero"}})
    rebuild(run, figures=False)
    assert not (run / "baseline_substrate.csv").exists()


def test_a_real_run_with_baseline_variants_writes_the_table(tmp_path):
    """bench run end to end: integrated gradients with a zero and a blur baseline, scored on the zero
    and blur substrates (the card's re-scoring), gives one row per metric with the four cells and a
    verdict; the cells are the run's own scores (scores.csv, substrates.csv)."""
    from bench.report.leaderboard import read_scores
    from bench.run import runner
    from bench.run.config import load_config

    over = [
        f'results_dir="{tmp_path / "results"}"',
        f'checkpoint_dir="{tmp_path / "ck"}"',
        'name="bs"',
        'device="cpu"',
        'data.dataset="synthetic"',
        "data.options.n=96",
        "data.per_cell=2",
        "data.background_size=8",
        'models.names=["tiny"]',
        'models.stages=["pre"]',
        "train.epochs=3",
        "train.batch_size=32",
        'explain.names=["captum.integrated_gradients", "captum.integrated_gradients@blur", "random"]',
        'explain.params={"captum.integrated_gradients" = {n_steps = 8}, '
        '"captum.integrated_gradients@blur" = {n_steps = 8, baseline = "blur"}}',
        'metrics.names=["deletion_auc", "insertion_auc"]',
        'metrics.params={"deletion_auc" = {steps = 8}, "insertion_auc" = {steps = 8}}',
        'reliability.substrates=["zero", "blur"]',
        "reliability.imputation=false",
        "reliability.bootstrap=100",
        "figures.enabled=false",
    ]
    run_dir = runner.run(load_config(None, over), progress=False)
    table = pd.read_csv(run_dir / "baseline_substrate.csv")
    assert sorted(table["metric"]) == ["deletion_auc", "insertion_auc"]
    assert set(table["a"]) | set(table["b"]) == {"captum.integrated_gradients", "captum.integrated_gradients@blur"}
    subs = pd.read_csv(run_dir / "substrates.csv")
    scores = read_scores(run_dir / "scores.csv")
    row = table[table["metric"] == "deletion_auc"].iloc[0]
    zero_name = row["a"] if row["baseline_a"] == "zero" else row["b"]
    own = subs[(subs["metric"] == "deletion_auc") & (subs["substrate"] == "zero") & (subs["explainer"] == zero_name)]
    col = "a_on_a" if row["baseline_a"] == "zero" else "b_on_b"
    assert row[col] == pytest.approx(own["value"].mean(), rel=1e-6)
    assert len(scores[scores["metric"] == "deletion_auc"]["image"].unique()) == row["n"]
    assert isinstance(row["verdict"], str) and row["verdict"]
