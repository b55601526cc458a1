"""The command line: list, train, tune and the one-line errors (synthetic data, tiny model)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import datasets

from bench.cli import main
from tests.conftest import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "list", "train", "tune", "report"):
        assert cmd in r.stdout


@pytest.mark.parametrize("kind,expected", [("models", ["resnet18", "resnet50", "resnet101", "tiny"]),
                                           ("datasets", ["pneumoniamnist", "synthetic"])])
def test_list_enumerates_the_registry(capsys, kind, expected):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert f"  {name} " in out


def test_list_everything(capsys):
    import datasets
    import explainers
    import models
    from bench import metrics

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for reg in (models.MODELS, datasets.DATASETS, explainers.EXPLAINERS, metrics.METRICS):
        for name in reg.names():
            assert name in out


def test_train_then_tune_on_synthetic(tmp_path, capsys):
    pre, post = tmp_path / "pre.pt", tmp_path / "post.pt"
    assert main(["train", "--model", "tiny", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64",
                 "--out", str(pre), "--no-progress", "--device", "cpu"]) == 0
    assert "test ACC" in capsys.readouterr().out
    side = json.loads((tmp_path / "pre.pt.json").read_text())
    assert side["config"]["dataset"] == "synthetic" and side["stage"] == "pre"
    assert main(["tune", "--from", str(pre), "--unfreeze", "fc", "--epochs", "1", "--dataset", "synthetic",
                 "--out", str(post), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    post_side = json.loads((tmp_path / "post.pt.json").read_text())
    # McNemar from the two sidecars' own test predictions, recomputed with scipy
    labels = np.array([int(x) for x in datasets.load_split("synthetic", "test").labels])
    right_pre = np.array(side["test_preds"]) == labels
    right_post = np.array(post_side["test_preds"]) == labels
    b, c = int((right_pre & ~right_post).sum()), int((~right_pre & right_post).sum())
    expected = 1.0 if b + c == 0 else scipy.stats.binomtest(b, b + c, 0.5).pvalue
    mc = post_side["comparison"]["mcnemar"]
    assert (mc["a_right_b_wrong"], mc["a_wrong_b_right"]) == (b, c)
    assert mc["p_value"] == pytest.approx(expected, abs=1e-12)
    assert f"McNemar p = {expected:.4g}" in out


@pytest.mark.parametrize("args,needle", [
    (["train", "--model", "vgg16"], "unknown model 'vgg16'"),
    (["train", "--model", "tiny", "--epochs", "0", "--dataset", "synthetic"], "epochs must be >= 1"),
    (["train", "--model", "tiny", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--model", "tiny", "--device", "tpu", "--dataset", "synthetic"], "unknown device 'tpu'"),
    (["tune", "--from", "missing.pt", "--dataset", "synthetic"], "missing.pt not found"),
    (["list", "models", "--bogus"], None),
])
def test_bad_input_is_one_line_and_nonzero(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    if needle is not None:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_missing_data_file_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.npz"
    r = run_cli("train", "--model", "tiny", "--data-file", str(missing))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "nope.npz" in lines[0], r.stderr
