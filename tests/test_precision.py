"""Scoring precision (``metrics.precision``): the metrics' model passes under autocast, recorded,
keyed, refused where it cannot run; float32 leaves every number and key as it was."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench import evaluate
from bench.cli import main
from bench.core.precision import PRECISIONS, autocast, check_precision
from bench.metrics import METRICS, MetricContext, compute_metric, scoring_logits, scoring_precision, target_outputs
from bench.perf.floor import metric_passes_per_image, time_forward, time_forward_backward
from bench.run.config import load_config
from bench.run.rundir import claim, identity
from bench.run.unit import Stage, Unit
from explainers import Attribution
from tests.conftest import bench_error, calibrated
from tests.test_hardening import CHEAP, _one_line_error, _tree

CPU = torch.device("cpu")
# metrics whose own model passes make the score: every registered metric with forward passes that
# needs no mask and does not re-run the explainer (the registry, not a hand-written list)
SCORED = [
    e.name for e in METRICS.entries() if not e.meta.get("needs") and (metric_passes_per_image(e.name) or (0, 0))[1] > 0
]
# the continuous curve metrics (AUC of probabilities, and infidelity's squared error): bfloat16 keeps
# 8 mantissa bits, a relative error of ~4e-3 per operation; on the tiny model the scores moved by at
# most 1.2e-3 (measured), so 1e-2 is a bound with room that still catches a wrong pass (a logit for
# a probability, a missing softmax: errors of order 1e-1)
CURVES = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "infidelity")
TOL = 1e-2


@pytest.fixture(scope="module")
def case():
    model = calibrated("tiny", head_scale=4.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g)
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t, Attribution(torch.randn(x.shape, generator=g), None, None)


def test_the_registry_has_scored_metrics():
    assert set(CURVES) <= set(SCORED)


@pytest.mark.parametrize("name", CURVES)
def test_bfloat16_scores_are_close_to_float32_but_not_identical(case, name):
    model, x, t, a = case
    with torch.no_grad():
        f32 = compute_metric(name, model, x, t, a).scores
        bf16 = compute_metric(name, model, x, t, a, precision="bfloat16").scores
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert (bf16 - f32).abs().max() < TOL
    assert not torch.equal(bf16, f32), "bfloat16 changed no score: the setting does nothing"


@pytest.mark.parametrize("name", SCORED)
def test_float32_is_the_plain_metric_bit_for_bit(case, name):
    """The default precision runs the metric exactly as calling its function does (no autocast)."""
    model, x, t, a = case
    with torch.no_grad():
        direct = METRICS.get(name).obj(model, x, t, a)
        direct = direct.scores if hasattr(direct, "scores") else direct
        via = compute_metric(name, model, x, t, a, precision="float32").scores
    assert torch.equal(torch.nan_to_num(direct, nan=-7.0), torch.nan_to_num(via, nan=-7.0))


def test_scoring_pass_is_the_autocast_pass_cast_back(case):
    """Oracle: the target probability in bfloat16 is softmax(float32(model(x) under bf16 autocast))."""
    model, x, t, _ = case
    with torch.no_grad():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            logits = model(x)
        want = torch.softmax(logits.float(), dim=1).gather(1, t.view(-1, 1)).squeeze(1)
        with scoring_precision("bfloat16"):
            got = target_outputs(model, x, t)
            raw = scoring_logits(model, x)
        plain = target_outputs(model, x, t)  # outside: float32 again
    assert logits.dtype == torch.bfloat16 and raw.dtype == torch.float32
    assert torch.equal(got, want)
    assert torch.equal(plain, torch.softmax(model(x), 1).gather(1, t.view(-1, 1)).squeeze(1))


class _Probe(nn.Module):
    """A linear classifier that records the dtype its matrix product ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        out = self.fc(x.flatten(1))
        self.seen.append(out.dtype)
        return out


def test_explainers_a_metric_reruns_stay_float32():
    """randomisation_similarity re-runs the explainer: its passes are not under the scoring autocast."""
    probe = _Probe().eval()
    x = torch.rand(2, 1, 28, 28)
    seen = []

    def explain(model, inputs=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        with torch.no_grad():
            model(x)
        return torch.randn(x.shape)

    compute_metric(
        "randomisation_similarity",
        probe,
        x,
        torch.zeros(2, dtype=torch.long),
        Attribution(torch.randn(x.shape)),
        context=MetricContext(explain=explain),
        precision="bfloat16",
    )
    assert seen and not any(seen)
    assert probe.seen == [torch.float32] * len(probe.seen)


def test_timed_passes_run_in_the_precision_asked():
    probe = _Probe().eval()
    x = torch.rand(4, 1, 28, 28)
    time_forward(probe, x, repeats=1, warmup=0, precision="bfloat16")
    time_forward_backward(probe, x, repeats=1, warmup=0, precision="bfloat16")
    assert probe.seen == [torch.bfloat16, torch.bfloat16]
    probe.seen.clear()
    time_forward(probe, x, repeats=1, warmup=0)
    assert probe.seen == [torch.float32]


def test_precision_errors_are_one_line():
    assert check_precision("bfloat16", "cpu") is torch.bfloat16
    msg = bench_error(check_precision, "fp8", "cpu")
    assert "'fp8'" in msg and all(p in msg for p in PRECISIONS)
    assert "CUDA" in bench_error(check_precision, "float16", "cpu")
    with pytest.raises(Exception, match="CUDA only"):
        with autocast("float16", "cpu"):
            pass


def test_compute_metric_refuses_float16_on_cpu_before_any_pass(case):
    model, x, t, a = case
    probe = _Probe().eval()
    msg = bench_error(compute_metric, "deletion_auc", probe, x, t, a, precision="float16")
    assert "CUDA" in msg and "bfloat16" in msg and probe.seen == []


@pytest.mark.parametrize(
    "value, needle", [('"fp8"', "'fp8' is not one of float32, bfloat16, float16"), ("16", "16 is not one of")]
)
def test_config_refuses_unknown_precision(value, needle):
    msg = bench_error(load_config, None, [f"metrics.precision={value}"])
    assert msg.startswith("config value metrics.precision:") and needle in msg


def test_config_refuses_float16_without_cuda():
    msg = bench_error(load_config, None, ['metrics.precision="float16"', 'device="cpu"'])
    assert "float16 runs on CUDA only" in msg and "bfloat16" in msg
    if not torch.cuda.is_available():
        assert "finds no CUDA" in bench_error(load_config, None, ['metrics.precision="float16"', 'device="auto"'])
    assert load_config(None, ['metrics.precision="bfloat16"']).metrics.precision == "bfloat16"
    assert load_config(None).metrics.precision == "float32"


def test_cli_refuses_float16_on_cpu_in_one_line_before_any_work(tmp_path, capsys):
    argv = [
        "run",
        "--results",
        str(tmp_path / "res"),
        "--name",
        "h",
        "--no-progress",
        *[x for o in CHEAP for x in ("--set", o)],
        "--set",
        'metrics.precision="float16"',
    ]
    err = _one_line_error(capsys, argv)
    assert "metrics.precision" in err and "CUDA" in err
    assert _tree(tmp_path / "res") == set()


def test_evaluate_refuses_float16_on_cpu_before_any_work():
    probe = _Probe().eval()
    msg = bench_error(evaluate, probe, torch.rand(2, 1, 28, 28), precision="float16", device="cpu")
    assert "metrics.precision" in msg and probe.seen == []


# ----------------------------------------------------------------------------- keys and identity


def _unit(precision: str) -> Unit:
    cfg = load_config(None, ['device="cpu"', f'metrics.precision="{precision}"'])
    x = torch.zeros(2, 1, 28, 28)
    stage = Stage("resnet18", "pre", Path("ckpt.pt"), "0" * 64, {}, torch.nn.Identity())
    return Unit(
        cfg,
        stage,
        "random",
        {},
        "fingerprint",
        torch.arange(2),
        x,
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, dtype=torch.long),
        None,
        x,
        CPU,
        Path("run"),
    )


def test_score_key_differs_between_precisions_and_float32_keeps_the_old_key(monkeypatch):
    f32, bf16 = _unit("float32"), _unit("bfloat16")
    # the key recipe of the code before the setting existed: no precision part at all
    monkeypatch.setattr("bench.run.unit.precision_key", lambda precision: {})
    old = _unit("float32")
    assert f32.score_key == old.score_key  # existing float32 caches stay valid
    assert bf16.score_key != f32.score_key
    assert bf16.attr_key == f32.attr_key  # the explainer runs in float32 either way: its attributions are shared


def test_identity_of_a_run_from_before_the_setting_is_unchanged(tmp_path):
    cfg = load_config(None, [f'results_dir="{tmp_path}"'])
    old = cfg.to_dict()
    del old["metrics"]["precision"]
    assert identity(old) == identity(cfg.to_dict())
    bf16 = load_config(None, [f'results_dir="{tmp_path}"', 'metrics.precision="bfloat16"'])
    assert identity(bf16.to_dict()) != identity(cfg.to_dict())
    run_dir = tmp_path / "quick"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"status": "complete", "config": old}))
    with claim(run_dir, cfg):  # the same run: adopted
        pass
    with pytest.raises(Exception, match="metrics.precision"):
        with claim(run_dir, bf16):
            pass


@pytest.mark.parametrize(
    "run",
    sorted(
        p.name
        for p in (Path(__file__).parents[1] / "results" / "published").iterdir()
        if (p / "manifest.json").is_file()
    ),
)
def test_published_configs_keep_their_identity(run):
    """A published run's recorded config (recorded before metrics.precision existed, or with it at
    float32) is the same run as that config today, with the key."""
    path = Path(__file__).parents[1] / "results" / "published" / run / "manifest.json"
    recorded = json.loads(path.read_text())["config"]
    assert recorded.get("metrics", {}).get("precision", "float32") == "float32"
    recorded["metrics"].pop("precision", None)
    today = copy.deepcopy(recorded)
    today["metrics"]["precision"] = "float32"
    assert identity(today) == identity(recorded)


# ----------------------------------------------------------------------------- a run end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The cheap run in float32 and in bfloat16 (same results folder: the checkpoint is shared)."""
    results = tmp_path_factory.mktemp("prec") / "res"
    out = {}
    for precision in ("float32", "bfloat16"):
        sets = [x for o in CHEAP for x in ("--set", o)]
        argv = [
            "run",
            "--results",
            str(results),
            "--name",
            precision,
            "--no-progress",
            *sets,
            "--set",
            f'metrics.precision="{precision}"',
        ]
        assert main(argv) == 0
        out[precision] = results / precision
    return out


def test_run_records_precision_and_its_floor(runs):
    for precision, run_dir in runs.items():
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["config"]["metrics"]["precision"] == precision
        cost = m["cost"]
        assert cost["precision"] == precision
        (passes,) = cost["pass_seconds_per_image"].values()
        key = "forward" if precision == "float32" else f"forward_{precision}"
        assert (f"forward_{precision}" in passes) == (precision != "float32")
        # deletion_auc (steps = 4): 5 forward passes per image, each at the scoring precision's time
        n = len(pd.read_csv(run_dir / "scores.csv").query("metric == 'deletion_auc' and explainer == 'random'"))
        want = 5 * passes[key] * n * 2  # two explainers (random, edge)
        assert cost["by_metric"]["deletion_auc"]["floor_seconds"] == pytest.approx(want, abs=2e-3)


def test_run_scores_differ_between_precisions_within_tolerance(runs):
    a, b = (pd.read_csv(runs[p] / "scores.csv") for p in ("float32", "bfloat16"))
    assert list(a["image"]) == list(b["image"])
    diff = (a["value"] - b["value"]).abs()
    assert diff.max() < TOL and diff.max() > 0
