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
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "list", "train", "tune", "report"):
        assert cmd in r.stdout


@pytest.mark.parametrize(
    "kind,expected",
    [("models", ["resnet18", "resnet50", "resnet101", "tiny"]), ("datasets", ["pneumoniamnist", "synthetic"])],
)
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
    assert (
        main(
            [
                "train",
                "--model",
                "tiny",
                "--dataset",
                "synthetic",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--out",
                str(pre),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "test ACC" in capsys.readouterr().out
    side = json.loads((tmp_path / "pre.pt.json").read_text())
    assert side["config"]["dataset"] == "synthetic" and side["stage"] == "pre"
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
                "--dataset",
                "synthetic",
                "--out",
                str(post),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
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


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--model", "vgg16"], "unknown model 'vgg16'"),
        (["train", "--model", "tiny", "--epochs", "0", "--dataset", "synthetic"], "epochs must be >= 1"),
        (["train", "--model", "tiny", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--model", "tiny", "--device", "tpu", "--dataset", "synthetic"], "unknown device 'tpu'"),
        (["tune", "--from", "missing.pt", "--dataset", "synthetic"], "missing.pt not found"),
        (["list", "models", "--bogus"], None),
    ],
)
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


# ----------------------------------------------------------------------------- one line, whatever happens


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--executor", "rya"], "did you mean 'ray'?"),
        (["list", "model"], "did you mean 'models'?"),
        (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["tune"], "the following arguments are required: --from"),
        (["runn"], "did you mean 'run'?"),
    ],
)
def test_argparse_errors_are_one_line(capsys, args, needle):
    assert main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert "--help" in err[0]


def test_list_is_readable_and_fits_the_terminal(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Range(" not in out and "<function" not in out and " at 0x" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
    flat = " ".join(out.split())
    assert "n_steps=50 (>= 1)" in flat and "frac=0.15 (in (0, 1])" in flat  # integrated gradients, drop_rate
    assert "substrate='zero' (one of 'zero', 'mean', 'blur', 'noise')" in flat
    assert "percentages=" in flat and "a non-empty increasing list of fractions in (0, 1)" in flat  # a callable


def _help_texts() -> list[str]:
    from bench.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    return [parser.format_help(), *(p.format_help() for p in subs.values())]


def test_help_examples_work_pasted_into_bash():
    import re
    import shlex

    from bench.run.config import load_config

    examples = [
        m
        for text in _help_texts()
        for m in re.findall(r"--set ('[^']*'|\S+)", " ".join(text.split()))
        if not m.startswith("KEY")
    ]
    assert examples, "no --set example in --help"
    for ex in examples:
        # what bash hands the program (quote removal, globbing of [...] against the current folder)
        argv = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {ex}"], cwd=REPO, capture_output=True, text=True
        ).stdout.split("\0")[:-1]
        assert len(argv) == 1, (ex, argv)
        load_config(None, argv)  # a valid override
        assert shlex.split(ex) == argv


def test_the_summary_line_is_plain_words(tmp_path, capsys):
    import re

    from tests.test_hardening import CHEAP

    assert (
        main(
            [
                "run",
                "--results",
                str(tmp_path),
                "--name",
                "s",
                "--no-progress",
                *[x for o in CHEAP for x in ("--set", o)],
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    last = [ln for ln in out.splitlines() if ln.strip()][-2]  # before "results in ..."
    assert "its floor" not in out and "explain+score" not in out
    assert re.fullmatch(
        r"explained and scored \d+ images with \d+ explainers on 1 model stage in \d+ s "
        r"\(\d+\.\d x the time of the model passes it needs\)",
        last,
    ), last


# ----------------------------------------------------------------------------- signals

RUN_ARGS = [
    "run",
    "--no-progress",
    "--set",
    'data.dataset="synthetic"',
    "--set",
    "data.options.n=200",
    "--set",
    'models.names=["tiny"]',
    "--set",
    'models.stages=["pre"]',
    "--set",
    "train.epochs=500",
    "--set",
    'device="cpu"',
]


def _start_training(tmp_path) -> subprocess.Popen:
    """A run that is training (its first epoch line printed), in its own process."""
    p = subprocess.Popen(
        [sys.executable, "-m", "bench", *RUN_ARGS, "--results", str(tmp_path / "res")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stdout:
        if "epoch 1/500" in line:
            return p
    pytest.fail(f"the run ended before training: {p.communicate()[1]}")


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_sigint_while_starting_up_is_one_line():
    import signal
    import time

    p = subprocess.Popen(
        [sys.executable, "-m", "bench", "list"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.0)  # importing torch and the libraries takes seconds
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and _stderr_lines(err) == ["interrupted; nothing was started"], err


def test_sigterm_says_what_was_kept(tmp_path):
    import signal

    p = _start_training(tmp_path)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert _stderr_lines(err) == ["terminated; finished work is kept and a re-run resumes"], err


def test_a_second_sigint_still_ends_with_one_line(tmp_path):
    import signal
    import time

    p = _start_training(tmp_path)
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)  # while the first one is being handled
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert (
        "Traceback" not in err and _stderr_lines(err)[0] == "interrupted; finished work is kept and a re-run resumes"
    ), err


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["rnu"], "(did you mean 'run'?)"),
        (["list", "explainer"], "(did you mean 'explainers'?)"),
        (["run", "--nmae", "x"], "(did you mean '--name'?)"),
        (["run", "--set", 'explain.names=["shap.gradiant"]'], "(did you mean 'shap.gradient'?)"),
        (["run", "--set", 'metrics.names=["deletion_acu"]'], "(did you mean 'deletion_auc'?)"),
        (["run", "--set", 'models.names=["resnet81"]'], "(did you mean 'resnet18'?)"),
        (["run", "--set", 'data.dataset="pneumoniamnsit"'], "(did you mean 'pneumoniamnist'?)"),
        (["run", "--set", "metrics.namse=[]"], "(did you mean 'names'?)"),
        (["run", "--set", 'reliability.controls=["randm"]'], "(did you mean 'random'?)"),
        (["run", "--set", "stats.margins={faithfulnes = 0.1}"], "(did you mean 'faithfulness'?)"),
        (["run", "--set", "train.epoch=3"], "(did you mean 'epochs'?)"),
    ],
)
def test_unknown_names_say_did_you_mean(argv, hint, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and hint in err, err
