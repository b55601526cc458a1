"""End to end: `python -m bench run` on synthetic data with a tiny model, every output, resume and failure."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from bench.core.schema import SCORE_COLUMNS
from bench.metrics import perturbation
from bench.run import runner
from bench.run.unit import Unit, explainer_code_digest
from bench.report.leaderboard import read_scores
from bench.cli import main
from bench.run.config import load_config
from bench.core.errors import BenchError
from explainers import EXPLAINERS, register_explainer

EXPLAINERS_E2E = ["captum.integrated_gradients", "random", "edge", "test.failing"]
METRICS_E2E = [
    "drop_rate",
    "increase_rate",
    "deletion_auc",
    "insertion_auc",
    "additivity_error",
    "localisation_precision",
    "road_morf",
    "randomisation_similarity",
    "max_sensitivity",
]


@pytest.fixture
def failing_explainer():
    @register_explainer("test.failing", library="test")
    def failing(model, inputs, targets, *, background):
        """Always raises (a broken adapter)."""
        raise RuntimeError("boom from a broken adapter")

    yield "test.failing"
    EXPLAINERS.unregister("test.failing")


def _overrides(tmp_path, name="e2e"):
    return [
        f'name="{name}"',
        f'results_dir="{tmp_path / "results"}"',
        f'checkpoint_dir="{tmp_path / "ck"}"',
        'device="cpu"',
        'data.dataset="synthetic"',
        "data.options.n=96",
        "data.per_cell=2",
        "data.background_size=8",
        'models.names=["tiny"]',
        "train.epochs=4",
        "train.batch_size=32",
        "train.lr=0.01",
        "tune.epochs=1",
        'tune.unfreeze=["fc"]',
        f"explain.names={json.dumps(EXPLAINERS_E2E)}",
        "explain.shard_size=4",
        'explain.params={"captum.integrated_gradients" = {n_steps = 16}}',
        f"metrics.names={json.dumps(METRICS_E2E)}",
        'metrics.params={"deletion_auc" = {steps = 14}, '
        '"insertion_auc" = {steps = 14}, "max_sensitivity" = {samples = 3}}',
        # the card's statistics stay on (cheaply); its substrate re-scoring is tests/test_reliability.py's
        "reliability.substrates=[]",
        "reliability.imputation=false",
        "reliability.bootstrap=100",
    ]


def test_end_to_end_outputs_resume_and_failure(tmp_path, failing_explainer, monkeypatch):
    cfg = load_config(None, _overrides(tmp_path))
    run_dir = runner.run(cfg, progress=False)

    # every file
    for f in (
        "scores.csv",
        "curves.csv",
        "leaderboard.csv",
        "leaderboard.md",
        "prepost.csv",
        "prepost.md",
        "reliability.csv",
        "reliability.md",
        "reliability_controls.csv",
        "reliability_power.csv",
        "manifest.json",
        "prepost_models.json",
        "attributions.npz",
    ):
        assert (run_dir / f).is_file() and (run_dir / f).stat().st_size > 0, f
    assert len(list((run_dir / "figures").glob("*.png"))) >= 3

    scores = read_scores(run_dir / "scores.csv")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert set(scores.explainer) == set(EXPLAINERS_E2E) and set(scores.stage) == {"pre", "post"}
    assert set(scores.metric) == set(METRICS_E2E)
    n_images = scores.image.nunique()
    assert 2 <= n_images <= 8
    assert len(scores) == n_images * 2 * len(EXPLAINERS_E2E) * len(METRICS_E2E)
    assert set(scores.cell) <= {"TP", "FP", "FN", "TN"}
    # the failing explainer is recorded, not fatal
    bad = scores[scores.explainer == "test.failing"]
    assert (bad.status == "error").all() and bad.message.str.contains("boom from a broken adapter").all()
    # additivity: finite for IG (additive), missing (n/a) for the controls, never 0-filled
    add = scores[scores.metric == "additivity_error"]
    assert add[add.explainer == "captum.integrated_gradients"].value.notna().all()
    assert add[add.explainer == "random"].value.isna().all()
    assert (add[add.explainer == "random"].status == "n/a").all()
    # the sanity check: the model-independent edge map is unchanged under randomisation (~1),
    # integrated gradients is not
    rnd = scores[(scores.metric == "randomisation_similarity") & (scores.status == "ok")]
    assert rnd[rnd.explainer == "edge"].value.min() > 0.99
    assert rnd[rnd.explainer == "captum.integrated_gradients"].value.mean() < 0.9
    # robustness re-explains perturbed images through the unit: the random control, drawn afresh
    # for every perturbed image, changes completely (~sqrt 2), integrated gradients far less
    sens = scores[(scores.metric == "max_sensitivity") & (scores.status == "ok")]
    assert sens[sens.explainer == "random"].value.min() > 1.3
    assert sens[sens.explainer == "captum.integrated_gradients"].value.max() < 1.0

    lb = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    assert {
        "model",
        "stage",
        "explainer",
        "metric",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "rank",
        "seconds_per_image",
        "peak_mem_mb",
        "status",
    } <= set(lb.columns)
    assert lb[lb.explainer == "test.failing"].status.str.contains("boom").all()
    pp = pd.read_csv(run_dir / "prepost.csv")
    assert {"model", "explainer", "metric"} <= set(pp.columns) and len(pp) > 0
    md = (run_dir / "leaderboard.md").read_text()
    assert "captum.integrated_gradients" in md and "n/a" in md

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["data"]["dataset"] == "synthetic"
    assert {c["stage"] for c in manifest["checkpoints"]} == {"pre", "post"}
    assert all(len(c["sha256"]) == 64 for c in manifest["checkpoints"])
    assert manifest["versions"]["torch"] == torch.__version__
    assert "git" in manifest and "wall_seconds" in manifest
    assert manifest["platform"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # the explain+score phase next to its floor: passes x the time of one pass of the tiny model
    cost = manifest["cost"]
    assert cost["units_computed"] == manifest["units"]["total"]
    assert cost["explain_and_metrics"]["floor_seconds"] > 0 and cost["explain_and_metrics"]["ratio"] > 0
    assert cost["pass_seconds_per_image"]["tiny"]["batch"] == 4
    assert cost["by_explainer"]["random"]["floor_seconds"] == 0.0  # a control needs no model pass
    assert cost["by_explainer"]["captum.integrated_gradients"]["floor_seconds"] > 0
    assert "test.failing" not in cost["by_explainer"]  # nothing of a failed unit counts
    assert cost["by_metric"]["max_sensitivity"]["floor_seconds"] > 0  # the re-explanations count in the floor
    # curves: those the curve metrics computed, stored once each
    curves = pd.read_csv(run_dir / "curves.csv")
    assert set(curves.curve) == {"deletion", "insertion", "road_morf"}
    assert (  # steps = 14: 15 points per image
        curves.groupby(["stage", "explainer", "curve", "image"]).size().loc[("pre", "random", "deletion")].eq(15).all()
    )

    # re-running a finished run recomputes only its failed units (failures are not cached) and
    # rewrites byte-identical tables (a deterministic failure fails the same way, with no timing)
    failed = len(manifest["units"]["failed"])
    assert failed == 2 and all(u["explainer"] == "test.failing" for u in manifest["units"]["failed"])
    assert bad.seconds_per_image.isna().all()
    tables = {
        f: (run_dir / f).read_bytes()
        for f in ("scores.csv", "leaderboard.csv", "leaderboard.md", "prepost.csv", "prepost.md")
    }
    calls = []
    real = Unit.explain
    monkeypatch.setattr(Unit, "explain", lambda self: calls.append(self.explainer) or real(self))
    runner.run(cfg, progress=False)
    assert calls == ["test.failing"] * failed
    for f, b in tables.items():
        assert (run_dir / f).read_bytes() == b, f
    assert (
        json.loads((run_dir / "manifest.json").read_text())["units"]["from_cache"]
        == manifest["units"]["total"] - failed
    )
    calls.clear()

    # a run killed half-way resumes: drop half the cached units, count what is recomputed
    cached = sorted((run_dir / "cache" / "attributions").glob("*.pt"))
    for p in cached[::2]:
        p.unlink()
    runner.run(cfg, progress=False)
    assert len(calls) == len(cached[::2]) + failed
    # recomputed units give the same scores (only their timings are new)
    timing = ["seconds_per_image", "peak_mem_mb"]
    resumed = read_scores(run_dir / "scores.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(resumed, scores.drop(columns=timing))


def test_report_rebuilds_tables_from_scores(tmp_path, failing_explainer):
    run_dir = runner.run(load_config(None, _overrides(tmp_path, "rep")), progress=False)
    before = (run_dir / "leaderboard.md").read_bytes()
    (run_dir / "leaderboard.md").unlink()
    (run_dir / "prepost.csv").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "leaderboard.md").read_bytes() == before and (run_dir / "prepost.csv").exists()


def test_other_config_in_same_run_dir_is_refused(tmp_path, failing_explainer):
    runner.run(load_config(None, _overrides(tmp_path, "same")), progress=False)
    with pytest.raises(BenchError, match="another config"):
        runner.run(load_config(None, _overrides(tmp_path, "same") + ["data.per_cell=1"]), progress=False)


@pytest.mark.parametrize(
    "override,needle",
    [
        ('explain.names=["nope"]', "unknown explainer 'nope'"),
        ('metrics.names=["nope"]', "unknown metric 'nope'"),
        ('models.names=["vgg"]', "unknown model 'vgg'"),
        ("data.per_cell=0", "data.per_cell"),
        ('explain.output="softmax"', "explain.output"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("data.bogus=1", "unknown config key 'data.bogus'"),
        (
            'explain.params={"random" = {bogus = 1}}',
            "explain.params.random: explainer 'random' has no parameter 'bogus'",
        ),
        ("train.bogus=1", "train.bogus"),
    ],
)
def test_bad_config_values(override, needle):
    with pytest.raises(BenchError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_run_with_progress_bars(tmp_path, capsys):
    """`python -m bench run` without --no-progress: bars and one summary line per unit."""
    over = _overrides(tmp_path, "bars") + ['explain.names=["random", "edge"]', 'metrics.names=["deletion_auc"]']
    run_dir = runner.run(load_config(None, over), progress=True)
    out = capsys.readouterr()
    assert (run_dir / "leaderboard.md").exists()
    assert "units (model, stage, explainer, shard)" in out.err and "s/image" in out.out + out.err


def test_cached_attributions_depend_on_the_engines_code(monkeypatch):
    """An edit to a helper an adapter calls (the batched rescale engine) changes the cache key."""
    from pathlib import Path

    adapter = EXPLAINERS.get("shap.deep").obj
    before = explainer_code_digest(adapter)
    assert before == explainer_code_digest(adapter)
    real = Path.read_bytes

    def edited(self):
        data = real(self)
        return data + b"\n# edited\n" if self.name == "rescale.py" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert explainer_code_digest(adapter) != before


def test_each_curve_is_computed_once(tmp_path, monkeypatch):
    """The runner stores the curves the curve metrics return: one perturbation sweep per metric,
    not a second one for the figures."""
    sweeps = []
    real = perturbation.perturbed_probabilities

    def counted(*args, **kwargs):
        sweeps.append(kwargs.get("mode"))
        return real(*args, **kwargs)

    monkeypatch.setattr(perturbation, "perturbed_probabilities", counted)
    over = _overrides(tmp_path, "once") + [
        'explain.names=["random", "edge"]',
        'metrics.names=["deletion_auc", "insertion_auc"]',
    ]
    run_dir = runner.run(load_config(None, over), progress=False)
    counts = json.loads((run_dir / "manifest.json").read_text())["units"]
    units = counts["total"] - counts["reference"]  # random's second-seed reference unit explains, never scores
    assert counts["reference"] > 0
    assert sorted(sweeps) == sorted(["delete", "insert"] * units)
    curves = pd.read_csv(run_dir / "curves.csv")
    assert set(curves.curve) == {"deletion", "insertion"}
