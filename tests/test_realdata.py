"""Integration on the real PneumoniaMNIST file (skipped when ../shared is absent): train, tune,
explain trained ResNets exactly, and run the benchmark pipeline on a small subset."""

from __future__ import annotations

import json

import pytest
import torch

from bench.run import runner
from bench.cli import main
from bench.run.config import load_config
from bench.report.leaderboard import read_scores
from explainers import relative_completeness_gap, run_explainer
from models.checkpoints import load_checkpoint, sidecar_path
from models.recipes import TrainConfig
from models.training import train_model

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
SHARED_MD5 = "57c53b2150674bf50e93e69b793c5728"


@pytest.fixture(scope="module")
def real(request):
    shared = request.getfixturevalue("shared_data_file")
    from datasets import load_split

    return shared, [load_split("pneumoniamnist", s, data_file=shared) for s in ("train", "val", "test")]


def test_train_and_tune_cli_on_real_data(tmp_path, real, capsys):
    shared, _ = real
    pre, post = tmp_path / "pre.pt", tmp_path / "post.pt"
    assert (
        main(
            [
                "train",
                "--model",
                "tiny",
                "--epochs",
                "1",
                "--data-file",
                str(shared),
                "--out",
                str(pre),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    side = json.loads(sidecar_path(pre).read_text())
    assert side["data"]["md5"] == SHARED_MD5 and side["data"]["md5_official"] is False
    assert side["data"]["n"] == {"train": 4708, "val": 524, "test": 624}
    assert side["test"]["n"] == 624 and sum(map(sum, side["test"]["confusion"])) == 624
    assert (
        main(
            [
                "tune",
                "--from",
                str(pre),
                "--unfreeze",
                "fc",
                "--epochs",
                "1",
                "--data-file",
                str(shared),
                "--out",
                str(post),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    comp = json.loads(sidecar_path(post).read_text())["comparison"]
    assert sum(sum(r.values()) for r in comp["cell_moves"].values()) == 624


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_shap_deep_is_exact_on_trained_resnets(tmp_path, real, name):
    """DeepExplainer's relative additivity error <= 1e-4 on a ResNet trained on real images."""
    _, (train, val, test) = real
    sub = train.subset(torch.arange(256))
    train_model(
        TrainConfig(model=name, epochs=1, batch_size=64),
        sub,
        val.subset(torch.arange(64)),
        test.subset(torch.arange(64)),
        out=tmp_path / "m.pt",
        device="cpu",
        progress=False,
    )
    model, _ = load_checkpoint(tmp_path / "m.pt")
    x, bg = test.images[:3], train.images[300:316]
    targets = model(x).argmax(1)
    attr = run_explainer("shap.deep", model, x, targets, background=bg)
    assert relative_completeness_gap(attr).abs().max() <= 1e-4
    # trained, not random: the model separates the classes at least a little
    assert (attr.outputs - attr.base_values).abs().max() > 1e-3


def test_benchmark_pipeline_on_real_subset(tmp_path, real):
    shared, _ = real
    cfg = load_config(
        None,
        [
            'name="real"',
            f'results_dir="{tmp_path}"',
            f'checkpoint_dir="{tmp_path / "ck"}"',
            'device="cpu"',
            f'data.options.data_file="{shared}"',
            "data.per_cell=1",
            "data.background_size=8",
            'models.names=["tiny"]',
            "train.epochs=1",
            "tune.epochs=1",
            'tune.unfreeze=["fc"]',
            'explain.names=["shap.deep", "captum.integrated_gradients", "edge"]',
            'metrics.names=["deletion_auc", "insertion_auc", "additivity_error_relative"]',
        ],
    )
    run_dir = runner.run(cfg, progress=False)
    scores = read_scores(run_dir / "scores.csv")
    assert (scores.status == "ok").sum() > 0 and set(scores.stage) == {"pre", "post"}
    deep = scores[(scores.explainer == "shap.deep") & (scores.metric == "additivity_error_relative")]
    assert len(deep) > 0 and (deep.value <= 1e-4).all()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["md5"] == SHARED_MD5 and manifest["data"]["md5_official"] is False
