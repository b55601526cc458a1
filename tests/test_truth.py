"""The model-truth test: marked data, mask_share, the truth tables and `bench truth` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core.errors import BenchError
from bench.metrics import MetricContext, compute_metric
from bench.report.truth import RELIANCE_COLUMNS, agreement_table, explainer_table, model_table, planting_problems
from bench.run.config import load_config
from datasets import load_split
from datasets.marked import glyph
from explainers.base import Attribution
from tests.conftest import REPO

SYN = {"base": "synthetic", "base_options": {"n": 200}}


# ----------------------------------------------------------------------------- marked data


@pytest.mark.parametrize("condition", ["none", "confound", "noise"])
def test_conditions_plant_the_marker_at_their_rates(condition):
    s = load_split("marked", "train", **SYN, condition=condition, rate_positive=0.8, rate_negative=0.2)
    on = s.masks.flatten(1).any(1)
    pos = s.labels == 1
    if condition == "none":
        assert not on.any()
    elif condition == "confound":
        assert abs(on[pos].float().mean() - 0.8) < 0.12 and abs(on[~pos].float().mean() - 0.2) < 0.12
    else:  # the same overall share, independent of the label
        overall = (0.8 * pos.sum() + 0.2 * (~pos).sum()).item() / len(pos)
        assert abs(on.float().mean() - overall) < 0.1
        assert abs(on[pos].float().mean() - on[~pos].float().mean()) < 0.2
    assert s.info["n_marked"] == int(on.sum()) and s.info["condition"] == condition


def test_counterfactual_toggles_exactly_the_marker_and_test_split_is_shared():
    kw = dict(**SYN, marker="tag", marker_size=5, position="random", test_n=40, seed=3)
    a = load_split("marked", "test", **kw, condition="confound")
    b = load_split("marked", "test", **kw, condition="noise")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)  # same test images under every condition
    assert len(a) == 40 and int(a.labels.sum()) == 20  # balanced subset
    on = a.masks.flatten(1).any(1)
    assert 0 < on.sum() < len(a)
    diff = (a.images != a.counterfactual).flatten(1)
    region_of_planted = a.masks.flatten(1)
    # where the marker is, the counterfactual removes it, and nothing else changes
    assert not (diff[on] & ~region_of_planted[on]).any()
    # where it is absent, the counterfactual adds it inside a 5x5 box
    for i in torch.nonzero(~on).flatten():
        ys, xs = torch.nonzero(a.images[i, 0] != a.counterfactual[i, 0], as_tuple=True)
        assert len(ys) and ys.max() - ys.min() < 5 and xs.max() - xs.min() < 5
    again = load_split("marked", "test", **kw, condition="confound")
    assert torch.equal(again.images, a.images) and torch.equal(again.counterfactual, a.counterfactual)
    assert a.fingerprint != load_split("marked", "test", **{**kw, "seed": 4}, condition="confound").fingerprint


def test_glyphs_and_polarity():
    a, v = glyph("patch", 3, "bright")
    assert torch.all(a == 1) and torch.all(v == 1)
    a, v = glyph("patch", 3, "dark")
    assert torch.all(v == 0)
    a, v = glyph("watermark", 7, "bright")
    assert a[3, 3] == 0 and a[0, 3] == 1 and a[0, 0] == 0  # a ring: hollow centre, no corners
    a, v = glyph("tag", 5, "bright")
    assert torch.all(a == 1) and v[2, 1] == 1 and v[0, 0] == 0  # an L at 1 in a box at 0
    s = load_split("marked", "test", **SYN, polarity="dark", marker_size=4, test_rate=1.0)
    assert torch.all(s.images[:, 0, 1:5, 1:5] == 0)
    w = load_split("marked", "test", **SYN, marker="watermark", marker_size=5, test_rate=1.0)
    blended = w.images[:, 0, 1, 3]  # a ring pixel: half the marker, half the image
    assert torch.allclose(blended, 0.5 * w.counterfactual[:, 0, 1, 3] + 0.5, atol=1e-6)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"marker_size": 40}, "does not fit"),
        ({"base": "marked"}, "another data set"),
        ({"marker": "star"}, "marker"),
        ({"rate_positive": 1.5}, "rate_positive"),
    ],
)
def test_bad_marked_options_are_one_line(options, fragment):
    with pytest.raises(BenchError, match=fragment) as e:
        load_split("marked", "train", **{**SYN, **options})
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- mask_share


def _share(values: torch.Tensor, mask: torch.Tensor, name: str = "mask_share") -> torch.Tensor:
    x = torch.rand(values.shape[0], 1, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    ctx = MetricContext(masks=mask)
    return compute_metric(
        name, model, x, torch.zeros(len(x), dtype=torch.long), Attribution(values), context=ctx
    ).scores


def test_mask_share_analytic_cases():
    mask = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :2, :2] = True  # 4 of 64 pixels
    mask[3] = False  # no marker on the last image
    v = torch.zeros(4, 1, 8, 8)
    v[0, :, :2, :2] = 1.0  # all mass inside: 64 / 4
    v[1] = 1.0  # uniform: as much as the area
    v[2, :, 4:, 4:] = -2.0  # all outside
    v[3] = 1.0
    s = _share(v, mask)
    assert s[0].item() == pytest.approx(16.0) and s[1].item() == pytest.approx(1.0) and s[2].item() == 0
    assert math.isnan(s[3].item())
    w = torch.zeros(4, 1, 8, 8)
    w[:, :, :2, :2] = -1.0
    w[:, :, 4:, 4:] = 1.0  # inside 4 negative, outside 16 positive: signed (-4/20) / (4/64)
    signed = _share(w, mask, "mask_share_signed")
    assert signed[0].item() == pytest.approx(-4 / 20 * 16)
    assert _share(w, mask)[0].item() == pytest.approx(4 / 20 * 16)
    assert math.isnan(_share(torch.zeros(4, 1, 8, 8), mask)[0].item())  # an all-zero map


# ----------------------------------------------------------------------------- the tables


def _fake(seed: int = 0, n: int = 30):
    """Scores of four explainers under three conditions, two seeds: `follows` puts more on the
    marker under confound, `blind` the same everywhere, `reversed` less; a metric that ranks them
    like the truth and one that ranks them the other way."""
    rng = np.random.default_rng(seed)
    rows, rel = [], []
    effect = {"follows": 2.0, "blind": 0.0, "reversed": -1.5, "weak": 0.8}
    for cond in ("none", "confound", "noise"):
        for s in (0, 1):
            model = f"m@seed{s}"
            for i in range(n):
                base = 1.5 + rng.normal(0, 0.1)
                for e, eff in effect.items():
                    share = base + (eff if cond == "confound" else 0.0) + rng.normal(0, 0.05)
                    rows += [
                        {
                            "condition": cond,
                            "polarity": "bright",
                            "model": model,
                            "seed": s,
                            "stage": "pre",
                            "explainer": e,
                            "image": i,
                            "metric": "mask_share",
                            "value": share,
                        },
                        {
                            "condition": cond,
                            "polarity": "bright",
                            "model": model,
                            "seed": s,
                            "stage": "pre",
                            "explainer": e,
                            "image": i,
                            "metric": "mask_share_signed",
                            "value": share / 2,
                        },
                        {
                            "condition": cond,
                            "polarity": "bright",
                            "model": model,
                            "seed": s,
                            "stage": "pre",
                            "explainer": e,
                            "image": i,
                            "metric": "deletion_auc",  # lower is better
                            "value": 0.5 - 0.1 * eff + rng.normal(0, 0.01),
                        },
                        {
                            "condition": cond,
                            "polarity": "bright",
                            "model": model,
                            "seed": s,
                            "stage": "pre",
                            "explainer": e,
                            "image": i,
                            "metric": "insertion_auc",  # higher is better, reversed
                            "value": 0.5 - 0.1 * eff + rng.normal(0, 0.01),
                        },
                    ]
                r = 0.3 if cond == "confound" else 0.0
                rel.append(
                    {
                        "condition": cond,
                        "polarity": "bright",
                        "model": model,
                        "seed": s,
                        "image": i,
                        "label": 1,
                        "planted": True,
                        "score_with": r + rng.normal(0, 0.01),
                        "score_without": 0.0,
                        "p1_with": 0.5 + r,
                        "p1_without": 0.5,
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(rel, columns=list(RELIANCE_COLUMNS))


def test_truth_tables_on_a_planted_case():
    scores, rel = _fake()
    truth = explainer_table(scores, rel, alpha=0.05, margin=0.25, bootstrap=200).set_index("explainer")
    assert truth.loc["follows", "verdict"] == "follows the model"
    assert truth.loc["weak", "verdict"] == "follows the model"
    assert truth.loc["blind", "verdict"] == "does not react (equivalent)"
    assert truth.loc["reversed", "verdict"] == "reversed"
    assert truth.loc["follows", "discrimination"] == pytest.approx(2.0, abs=0.05)
    assert truth.loc["follows", "auroc"] == 1.0 and truth.loc["reversed", "auroc"] == 0.0
    assert truth.loc["follows", "disc_signed"] == pytest.approx(1.0, abs=0.05)
    assert truth.loc["blind", "salience"] == "elevated"  # 1.5 > 1 under the model that never saw it
    assert truth.loc["follows", "rho_reliance"] > 0.5  # its share rises where the model relies on the marker
    agree = agreement_table(scores, truth.reset_index(), alpha=0.05, bootstrap=200).set_index("metric")
    assert agree.loc["deletion_auc", "tau_truth"] == pytest.approx(1.0)
    assert agree.loc["deletion_auc", "verdict"] == "agrees"
    assert agree.loc["insertion_auc", "tau_truth"] == pytest.approx(-1.0)
    assert agree.loc["insertion_auc", "verdict"] == "disagrees"


def test_the_planting_check():
    d_use = np.full(100, 0.3) + np.random.default_rng(0).normal(0, 0.05, 100)
    d_not = np.random.default_rng(1).normal(0, 0.01, 100)
    labels = np.r_[np.zeros(50), np.ones(50)]

    def rec(cond, d):
        return {
            "condition": cond,
            "polarity": "bright",
            "model": f"m-{cond}",
            "seed": 0,
            "checkpoint_sha256": "x",
            "n_test": 100,
            "acc_without": 0.9,
            "acc_with": 0.8,
            "_reliance": d,
            "_labels": labels,
        }

    good = model_table(pd.DataFrame([rec("confound", d_use), rec("noise", d_not)]), alpha=0.05, margin=0.05)
    assert list(good["verdict"]) == ["uses", "does not use"] and planting_problems(good) == []
    bad = model_table(pd.DataFrame([rec("confound", d_not), rec("noise", d_use)]), alpha=0.05, margin=0.05)
    problems = planting_problems(bad)
    assert len(problems) == 2 and "confound" in problems[0] and "noise" in problems[1]


def _truth_folder(parent, n: int = 12):
    """A finished truth folder without training: confound and noise sub-runs of two polarities from
    :func:`_fake`, with deletion and insertion ranking like the truth under ``bright`` and the other
    way under ``dark`` (so a card showing the other polarity's row is caught)."""
    from bench.core.schema import SCORE_COLUMNS
    from bench.report.truth import MODEL_COLUMNS

    parts, rel = [], []
    for polarity, sign in (("bright", 1.0), ("dark", -1.0)):
        scores, r = _fake(n=n)
        faith = scores["metric"].isin(["deletion_auc", "insertion_auc"])
        scores.loc[faith, "value"] = 0.5 + sign * (scores.loc[faith, "value"] - 0.5)
        parts.append(scores.assign(polarity=polarity))
        rel.append(r.assign(polarity=polarity))
    scores, reliance = pd.concat(parts, ignore_index=True), pd.concat(rel, ignore_index=True)
    runs, models = [], []
    for (cond, pol), s in scores[scores["condition"] != "none"].groupby(["condition", "polarity"]):
        run = f"runs/{cond}-{pol}"
        (parent / run).mkdir(parents=True)
        s = s.assign(
            label=1,
            pred=1,
            cell="TP",
            status="ok",
            message="",
            higher_is_better=s["metric"] != "deletion_auc",
            seconds_per_image=0.1,
            peak_mem_mb=1.0,
        )
        s[list(SCORE_COLUMNS)].to_csv(parent / run / "scores.csv", index=False)
        (parent / run / "manifest.json").write_text(
            json.dumps({"config": {"reliability": {"bootstrap": 20, "splits": 4}, "figures": {"enabled": False}}})
        )
        runs.append({"condition": cond, "polarity": pol, "run": run})
        for seed in (0, 1):
            models.append(
                [
                    cond,
                    pol,
                    f"m@seed{seed}",
                    seed,
                    "x",
                    n,
                    0.9,
                    0.8,
                    0.3 if cond == "confound" else 0.0,
                    0.2,
                    0.4,
                    0.0,
                    "uses" if cond == "confound" else "does not use",
                ]
            )
    pd.DataFrame(runs).to_csv(parent / "truth_runs.csv", index=False)
    reliance[reliance["condition"] != "none"].to_csv(parent / "reliance.csv", index=False)
    pd.DataFrame(models, columns=list(MODEL_COLUMNS)).to_csv(parent / "truth_models.csv", index=False)
    return runs


def test_each_sub_run_card_shows_the_truth_of_its_own_polarity(tmp_path):
    """rebuild_truth hands every sub-run its polarity's rows of truth_agreement.csv: its
    reliability.csv, reliability.md and report.html carry them, "n/a" for the metrics the
    agreement table does not grade (mask_share is not a faithfulness metric)."""
    from bench.report.truth import rebuild_truth
    from bench.stats.settings import StatsSettings

    runs = _truth_folder(tmp_path)
    written = rebuild_truth(tmp_path, name="t", options={}, stats=StatsSettings(), share_margin=0.25, bootstrap=50)
    assert tmp_path / "runs" / "noise-dark" / "reliability.csv" in written
    agree = pd.read_csv(tmp_path / "truth_agreement.csv").set_index(["polarity", "metric"])
    assert agree.loc[("bright", "deletion_auc"), "verdict"] == "agrees"
    assert agree.loc[("dark", "deletion_auc"), "verdict"] == "disagrees"
    for r in runs:
        d = tmp_path / r["run"]
        card = pd.read_csv(d / "reliability.csv", keep_default_na=False)
        assert set(card["model"]) == {"m@seed0", "m@seed1"}
        for _, row in card.iterrows():
            if row["metric"] in ("deletion_auc", "insertion_auc"):
                a = agree.loc[(r["polarity"], row["metric"])]
                assert row["truth"] == (
                    f"{a['verdict']}: tau {a['tau_truth']:.2f} [{a['tau_low']:.2f}, {a['tau_high']:.2f}]"
                ), (r["run"], row["metric"])
            else:
                assert row["truth"] == "n/a", (r["run"], row["metric"])
        verdicts = set(card.loc[card["metric"] == "deletion_auc", "truth"].str.split(":").str[0])
        assert verdicts == {"agrees" if r["polarity"] == "bright" else "disagrees"}
        md = (d / "reliability.md").read_text()
        assert "| verdict | truth |" in md and md.count("| n/a |\n") >= 4  # mask_share(_signed), two models
        assert ">truth</th>" in (d / "report.html").read_text()
    assert "`truth` column" in (tmp_path / "truth.md").read_text()


# ----------------------------------------------------------------------------- end to end

TINY = [
    'device="cpu"',
    'data.options={base = "synthetic", base_options = {n = 600}, marker_size = 5, '
    "rate_positive = 1.0, rate_negative = 0.0, test_n = 16}",
    "data.background_size=8",
    'models.names=["tiny"]',
    "train.epochs=8",
    "train.batch_size=32",
    "train.lr=0.003",
    'explain.names=["captum.input_x_gradient", "captum.saliency", "random", "edge"]',
    "explain.shard_size=16",
    "reliability.substrates=[]",
    "reliability.imputation=false",
    "reliability.bootstrap=100",
    "reliability.splits=10",
    "truth.bootstrap=100",
    'truth.polarities=["bright"]',
    "models.seeds=[0]",
    "figures.enabled=false",
    "metrics.params={deletion_auc = {steps = 8}, insertion_auc = {steps = 8}}",
]


@pytest.mark.slow
def test_bench_truth_end_to_end(tmp_path):
    from bench.run.truth import run_truth

    cfg = load_config(REPO / "configs" / "truth.toml", [f'results_dir="{tmp_path}"', *TINY])
    out = run_truth(cfg, progress=False)
    models = pd.read_csv(out / "truth_models.csv")
    assert set(models["condition"]) == {"none", "confound", "noise"}
    conf = models[models["condition"] == "confound"].iloc[0]
    noise = models[models["condition"] == "noise"].iloc[0]
    assert conf["verdict"] == "uses" and noise["verdict"] == "does not use"
    truth = pd.read_csv(out / "truth.csv").set_index("explainer")
    assert set(truth.index) == {"captum.input_x_gradient", "captum.saliency", "random", "edge"}
    # the controls ignore the model: the same map under every condition, so they cannot follow it
    for control in ("random", "edge"):
        assert truth.loc[control, "discrimination"] == 0 and truth.loc[control, "verdict"].startswith("does not react")
    agree = pd.read_csv(out / "truth_agreement.csv")
    assert {"deletion_auc", "insertion_auc"} <= set(agree["metric"])
    assert agree["tau_truth"].between(-1, 1).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "truth" and len(manifest["runs"]) == 3
    assert all(r["checkpoints"] and r["data"]["condition"] == r["condition"] for r in manifest["runs"])
    assert (out / "truth.md").read_text().count("| bright |") >= 3 + 4
    card = pd.read_csv(out / "runs" / "confound-bright" / "reliability.csv", keep_default_na=False)
    assert set(card.loc[card["metric"] == "mask_share", "truth"]) == {"n/a"}  # the sub-runs' cards got the column
    assert card.loc[card["metric"] == "deletion_auc", "truth"].str.contains(": tau ").all()
    # re-running reuses every sub-run (nothing retrained, same tables)
    before = (out / "truth.csv").read_bytes()
    run_truth(cfg, progress=False)
    assert (out / "truth.csv").read_bytes() == before


def test_bench_truth_refuses_unmarked_data(tmp_path, capsys):
    from bench.cli import main

    code = main(["truth", "--config", str(REPO / "configs" / "quick.toml"), "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "marked data" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.realdata
def test_bench_report_rebuilds_the_published_truth_run_byte_for_byte(tmp_path):
    """``bench report`` of a truth folder rebuilds every sub-run and the truth tables from what the
    run recorded (the model truth, the sub-runs' scores), byte for byte as published."""
    import shutil

    from bench.cli import main

    published = REPO / "results" / "published" / "truth"
    out = tmp_path / "truth"
    shutil.copytree(published, out)
    derived = ("truth.csv", "truth_agreement.csv", "truth.md", "report.html")
    sub = (
        "runs/noise-bright/leaderboard.md",
        "runs/confound-bright/reliability.csv",
        "runs/confound-bright/reliability.md",
        "runs/none-bright/report.html",
    )  # the cards with the truth column
    for name in (*derived, *sub):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    for name in (*derived, *sub):
        assert (out / name).read_bytes() == (published / name).read_bytes(), name
    # what the model truth recorded is an input, not rebuilt: without it the report says so in one line
    (out / "truth_models.csv").unlink()
    with pytest.raises(Exception, match="truth_models.csv not found"):
        from bench.report.truth import rebuild_truth
        from bench.run.config import load_config, stats_settings

        cfg = load_config("truth")
        rebuild_truth(
            out,
            name=cfg.name,
            options=cfg.data.options,
            stats=stats_settings(cfg),
            share_margin=cfg.truth.share_margin,
            bootstrap=cfg.truth.bootstrap,
        )
