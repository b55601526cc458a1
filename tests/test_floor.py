"""bench.perf.floor: pass counting from the registrations, one-pass timing, floor ratio, JSON -> Markdown."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import bench.perf.floor as F
from bench.core.errors import BenchError
from bench.metrics import METRICS, randomisation_layers, register_metric
from explainers import EXPLAINERS, register_explainer
from explainers.base import Attribution
from models import build_model

IN_REPO_LIBRARIES = ("captum", "shap", "control", "gradcam", "zennit", "pneumobench")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return build_model("resnet18").eval()


# --------------------------------------------------------------------------------------------
# Pass counting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [e.name for e in EXPLAINERS.entries() if e.meta.get("library") in IN_REPO_LIBRARIES])
def test_every_in_repo_explainer_has_a_pass_count(name, resnet18):
    """A new in-repo adapter registered without ``passes=`` fails here (no drifting hand list); a rule
    may need the image shape or the model (occlusion's windows, Score-CAM's channels)."""
    passes = F.passes_per_image(name, background_size=50, shape=(1, 28, 28), model=resnet18)
    assert passes is not None, f"register {name!r} with passes=... (register_explainer)"
    n_fb, n_f = passes
    assert n_fb >= 0 and n_f >= 0


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_has_a_pass_rule(name):
    """Every metric declares its passes where it is registered; randomisation needs the explainer's."""
    assert METRICS.get(name).meta.get("passes") is not None, f"register metric {name!r} with passes=..."
    passes = F.metric_passes_per_image(name, explainer_passes=(2.0, 3.0), n_layers=4)
    assert passes is not None and min(passes) >= 0


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("captum.integrated_gradients", {}, (50, 0)),
        ("captum.integrated_gradients", {"n_steps": 20}, (20, 0)),
        ("shap.gradient", {}, (50, 0)),
        ("shap.gradient", {"nsamples": 200}, (200, 0)),
        ("captum.gradient_shap", {"n_samples": 7}, (7, 0)),
        ("shap.deep", {}, (50, 0)),
        ("captum.deeplift_shap", {}, (50, 0)),
        ("shap.partition", {}, (0, 300)),
        ("shap.partition", {"max_evals": 64}, (0, 64)),
        ("captum.saliency", {}, (1, 0)),
        ("captum.smoothgrad", {"n_samples": 20}, (20, 0)),
        ("captum.lime", {}, (0, 200)),
        ("captum.kernel_shap", {"n_samples": 64}, (0, 64)),
        ("captum.guided_gradcam", {}, (2, 0)),
        ("captum.deeplift", {}, (1, 0)),
        ("gradcam.grad_cam", {}, (1, 0)),
        ("zennit.epsilon_gamma_box", {}, (1, 0)),
        ("random", {}, (0, 0)),
        ("edge", {}, (0, 0)),
    ],
)
def test_explainer_passes(name, params, expected):
    assert F.passes_per_image(name, params, background_size=50) == expected


def test_passes_that_need_the_image_or_the_model(resnet18):
    """Occlusion's windows depend on the image size, Score-CAM's forwards on the layer's channels; a
    rule says so with keyword-only parameters, and without that context the count is unknown."""
    assert F.passes_per_image("captum.occlusion", {}, 50, shape=(1, 28, 28)) == (0, 13 * 13 + 1)
    assert F.passes_per_image("captum.occlusion", {"window": 8, "stride": 8}, 50, shape=(1, 64, 64)) == (0, 65)
    assert F.passes_per_image("captum.occlusion", {}, 50) is None
    assert F.passes_per_image("gradcam.score_cam", {"layer": "layer3"}, 50, shape=(1, 28, 28), model=resnet18) == (
        0,
        257,
    )
    assert F.passes_per_image("gradcam.score_cam", {}, 50, shape=(1, 28, 28)) is None

    @register_explainer("test_floor.shaped", library="custom", passes=lambda p, n_bg, *, shape: (shape[-1], 0))
    def shaped(model, inputs, targets, *, background) -> Attribution:  # pragma: no cover
        raise AssertionError

    try:
        assert F.passes_per_image("test_floor.shaped", shape=[3, 5, 7]) == (7, 0)
        assert F.passes_per_image("test_floor.shaped", model=resnet18) is None
    finally:
        EXPLAINERS.unregister("test_floor.shaped")


def test_deep_passes_follow_the_background_size():
    assert F.passes_per_image("shap.deep", {}, 8) == (8, 0)
    assert F.passes_per_image("captum.deeplift_shap", None, 13) == (13, 0)


def test_defaults_are_read_from_the_adapter():
    """The rule sees the adapter's own defaults, so changing a default changes the count."""
    default = EXPLAINERS.get("captum.integrated_gradients").params()["n_steps"]
    assert F.passes_per_image("captum.integrated_gradients") == (default, 0)


def test_unknown_adapter_has_no_floor_and_unknown_names_raise():
    @register_explainer("test_floor.plugin", library="custom")
    def plugin(model, inputs, targets, *, background, k: int = 3) -> Attribution:  # pragma: no cover
        raise AssertionError

    try:
        assert F.passes_per_image("test_floor.plugin", {"k": 5}, 50) is None
        with pytest.raises(BenchError, match="no parameter 'nope'"):
            F.passes_per_image("test_floor.plugin", {"nope": 1}, 50)
    finally:
        EXPLAINERS.unregister("test_floor.plugin")
    with pytest.raises(BenchError, match="unknown explainer"):
        F.passes_per_image("test_floor.plugin")


def test_a_plugin_declares_its_passes_at_registration():
    """The rule travels with the registration: no edit of bench/perf/floor.py for a new method."""

    @register_explainer("test_floor.counted", library="custom", passes=lambda p, n_bg: (p["k"] * 2, n_bg))
    def counted(model, inputs, targets, *, background, k: int = 3) -> Attribution:  # pragma: no cover
        raise AssertionError

    @register_metric("test_floor.metric", higher_is_better=True, passes=(0, 7))
    def metric(model, inputs, targets, attribution, *, context=None):  # pragma: no cover
        raise AssertionError

    try:
        assert F.passes_per_image("test_floor.counted", background_size=5) == (6, 5)
        assert F.passes_per_image("test_floor.counted", {"k": 10}, 1) == (20, 1)
        assert F.metric_passes_per_image("test_floor.metric") == (0, 7)
    finally:
        EXPLAINERS.unregister("test_floor.counted")
        METRICS.unregister("test_floor.metric")
    with pytest.raises(BenchError, match="passes must be"):
        register_metric("test_floor.bad", higher_is_better=True, passes=7)
    with pytest.raises(BenchError, match="unknown explainer"):
        F.passes_per_image("no.such.explainer")
    with pytest.raises(BenchError, match="no parameter 'n_step'"):
        F.passes_per_image("captum.integrated_gradients", {"n_step": 3})


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("deletion_auc", {}, (0, 50)),
        ("insertion_auc", {"steps": 7}, (0, 8)),
        ("drop_rate", {}, (0, 2)),
        ("increase_rate", {}, (0, 2)),
        ("road_morf", {}, (0, 9)),
        ("road_lerf", {"percentages": (0.2, 0.5)}, (0, 2)),
        ("additivity_error", {}, (0, 0)),
        ("additivity_error_relative", {}, (0, 0)),
        ("localisation_precision", {}, (0, 0)),
        ("pointing_game", {}, (0, 0)),
        ("sparseness", {}, (0, 0)),
        ("complexity", {}, (0, 0)),
        ("infidelity", {}, (0, 51)),  # f(x) and one forward per perturbation
        ("infidelity", {"samples": 8}, (0, 9)),
        ("faithfulness_correlation", {}, (0, 101)),
        ("faithfulness_correlation", {"runs": 20}, (0, 21)),
        ("monotonicity_correlation", {}, (0, 50)),
        ("monotonicity_correlation", {"steps": 7}, (0, 8)),
    ],
)
def test_metric_passes(name, params, expected):
    assert F.metric_passes_per_image(name, params) == expected


@pytest.mark.parametrize("name", ["max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate"])
def test_robustness_passes_are_samples_times_the_explainer(name):
    """A robustness metric re-explains every image `samples` times: the floor (and the run's cost
    report, bench.run.manifest.unit_floor) counts those explanations; unknown without the explainer."""
    assert F.metric_passes_per_image(name) is None
    ig = F.passes_per_image("captum.integrated_gradients", {"n_steps": 10})
    assert F.metric_passes_per_image(name, explainer_passes=ig) == (100, 0)
    assert F.metric_passes_per_image(name, {"samples": 3}, explainer_passes=(0, 300)) == (0, 900)
    assert F.metric_passes_per_image(name, explainer_passes=F.passes_per_image("random")) == (0, 0)


def test_randomisation_passes_are_cascade_steps_times_the_explainer():
    assert F.metric_passes_per_image("randomisation_similarity") is None  # no explainer given
    ig = F.passes_per_image("captum.integrated_gradients", {"n_steps": 10})
    n = len(randomisation_layers(build_model("tiny")))
    assert F.metric_passes_per_image("randomisation_similarity", explainer_passes=ig, n_layers=n) == (10 * n, 0)
    assert F.metric_passes_per_image("randomisation_similarity", explainer_passes=(0, 300), n_layers=2) == (0, 600)
    assert F.metric_passes_per_image("randomisation_similarity", {"steps": 2}, explainer_passes=ig, n_layers=n) == (
        20,
        0,
    )
    assert F.metric_passes_per_image("randomisation_similarity", {"steps": 99}, explainer_passes=ig, n_layers=n) == (
        10 * n,
        0,
    )
    with pytest.raises(BenchError, match="unknown metric"):
        F.metric_passes_per_image("no_such_metric")
    with pytest.raises(BenchError, match="no parameter 'step'"):
        F.metric_passes_per_image("deletion_auc", {"step": 3})


# --------------------------------------------------------------------------------------------
# Timing and the floor
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def test_time_forward_backward_leaves_the_model_alone(tiny):
    before = copy.deepcopy(tiny.state_dict())
    x = torch.rand(4, 1, 28, 28)
    t = torch.tensor([0, 1, 1, 0])
    fb = F.time_forward_backward(tiny, x, targets=t, repeats=2)
    f = F.time_forward(tiny, x, targets=t, repeats=2)
    assert fb > 0 and f > 0 and fb < 10 and f < 10
    assert not tiny.training
    assert all(p.grad is None for p in tiny.parameters())
    assert not x.requires_grad
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_timing_is_per_image_and_best_of_repeats(monkeypatch):
    """One call per repeat plus warm-up, the minimum divided by the batch size."""
    clock = iter([0.0, 4.0, 10.0, 12.0])  # repeats of 4 s and 2 s
    monkeypatch.setattr(F, "perf_counter", lambda: next(clock))
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    orig = model.forward
    model.forward = lambda x: (calls.append(1), orig(x))[1]
    assert F.time_forward(model, torch.rand(8, 1, 2, 2), repeats=2, warmup=1) == pytest.approx(2.0 / 8)
    assert len(calls) == 3
    with pytest.raises(BenchError, match="repeats"):
        F.time_forward(model, torch.rand(8, 1, 2, 2), repeats=0)


def test_floor_and_ratio():
    assert F.floor_seconds((50, 0), 0.01, 0.004) == pytest.approx(0.5)
    assert F.floor_seconds((2, 300), 0.01, 0.004) == pytest.approx(1.22)
    assert F.floor_seconds(None, 0.01, 0.004) is None
    assert F.floor_ratio(1.0, 0.5) == pytest.approx(2.0)
    assert F.floor_ratio(1.0, 0.0) is None  # controls, additivity: no model pass, no ratio
    assert F.floor_ratio(1.0, None) is None


def test_format_passes():
    assert F.format_passes((50, 0)) == "50 fb"
    assert F.format_passes([0.0, 300.0]) == "300 f"
    assert F.format_passes((49, 2)) == "49 fb + 2 f"
    assert F.format_passes((0, 0)) == "0"
    assert F.format_passes(None) == "n/a"


# --------------------------------------------------------------------------------------------
# Saved JSON -> Markdown
# --------------------------------------------------------------------------------------------


def _bench(extra, s_min=1.0):
    return {"name": "x", "stats": {"min": s_min, "mean": s_min}, "extra_info": extra}


def test_benchmark_table_on_a_fabricated_run(tmp_path):
    common = {"batch": 16, "background": 50, "rounds": 1, "device": "cpu"}
    data = {
        "machine_info": {"device": "cpu", "device_name": "Test CPU", "torch_version": "2.14.1", "torch_threads": 2},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [
            _bench(
                {
                    "kind": "explainer",
                    "explainer": "shap.deep",
                    "model": "resnet18",
                    **common,
                    "s_per_image": 3.65,
                    "peak_mb": 812.4,
                    "passes": [50, 0],
                    "floor_s_per_image": 0.65,
                    "floor_ratio": 5.615,
                }
            ),
            _bench(
                {
                    "kind": "explainer",
                    "explainer": "captum.integrated_gradients",
                    "model": "resnet18",
                    **common,
                    "peak_mb": 100.0,
                    "passes": [50, 0],
                    "floor_s_per_image": 0.65,
                    "floor_ratio": 1.03,
                },
                s_min=16 * 0.67,  # no s_per_image: taken from stats.min / batch
            ),
            _bench(
                {
                    "kind": "explainer",
                    "explainer": "plugin",
                    "model": "resnet50",
                    **common,
                    "s_per_image": 0.5,
                    "peak_mb": float("nan"),
                    "passes": None,
                    "floor_s_per_image": None,
                    "floor_ratio": None,
                }
            ),
            _bench(
                {
                    "kind": "metric",
                    "metric": "deletion_auc",
                    "model": "resnet18",
                    **common,
                    "s_per_image": 0.2,
                    "passes": [0, 50],
                    "floor_ratio": 1.5,
                    "quantus_metric": "quantus.PixelFlipping",
                    "quantus_s_per_image": 0.25,
                }
            ),
            _bench(
                {
                    "kind": "metric",
                    "metric": "additivity_error",
                    "model": "resnet18",
                    **common,
                    "s_per_image": 1e-6,
                    "passes": [0, 0],
                    "floor_ratio": None,
                    "quantus_metric": None,
                    "quantus_s_per_image": None,
                }
            ),
            {"name": "someone_elses_benchmark", "stats": {"min": 1.0}, "extra_info": {}},
        ],
    }
    path = tmp_path / "0001_run.json"
    path.write_text(json.dumps(data))  # NaN peak_mb is written as NaN
    table = F.benchmark_table(path)
    lines = table.splitlines()
    assert lines[0].startswith("Machine: Test CPU (cpu); torch 2.14.1, 2 threads; batch 16, background 50")
    assert "| explainer | model | s/image | peak MB | passes/image | floor s/image | floor ratio |" in lines
    assert "| captum.integrated_gradients | resnet18 | 0.6700 | 100 | 50 fb | 0.6500 | 1.03 |" in lines
    assert "| shap.deep | resnet18 | 3.6500 | 812 | 50 fb | 0.6500 | 5.62 |" in lines
    assert "| plugin | resnet50 | 0.5000 | n/a | n/a | n/a | n/a |" in lines
    assert "| deletion_auc | resnet18 | 0.2000 | 50 f | 1.50 | quantus.PixelFlipping | 0.2500 |" in lines
    assert "| additivity_error | resnet18 | 0.0000 | 0 | n/a | - | n/a |" in lines
    # explainers sorted by model then name; metrics after explainers; foreign benchmarks ignored
    order = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line]
    assert order == [
        "explainer",
        "captum.integrated_gradients",
        "shap.deep",
        "plugin",
        "metric",
        "additivity_error",
        "deletion_auc",
    ]
    assert "someone_elses" not in table
    assert "rounds 1" in lines[0]  # an older run without timed_rounds


def test_benchmark_table_reports_the_timed_rounds(tmp_path):
    rows = [
        _bench(
            {
                "kind": "metric",
                "metric": m,
                "model": "tiny",
                "batch": 2,
                "rounds": 1,
                "s_per_image": 0.1,
                "passes": [0, 2],
                "floor_ratio": 1.0,
                "timed_rounds": r,
            }
        )
        for m, r in (("a", 5), ("b", 1))
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": rows}))
    assert "best of 1-5 timed rounds after a warm-up call" in F.benchmark_table(path).splitlines()[0]


def test_benchmark_table_without_our_benchmarks(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    assert "no pneumobench benchmarks" in F.benchmark_table(path)


def test_cli_prints_tables(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "machine_info": {},
                "benchmarks": [
                    _bench(
                        {
                            "kind": "metric",
                            "metric": "drop_rate",
                            "model": "tiny",
                            "batch": 2,
                            "s_per_image": 0.1,
                            "passes": [0, 2],
                            "floor_ratio": 3.0,
                        }
                    )
                ],
            }
        )
    )
    assert F.main([str(path)]) == 0
    assert "| drop_rate | tiny | 0.1000 | 2 f | 3.00 | - | n/a |" in capsys.readouterr().out
    assert F.main([]) == 2
