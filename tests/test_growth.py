"""bench.perf.growth: FLOPs per pass, the set's passes, the study estimate and its tables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.perf.floor import metric_passes_per_image, passes_per_image
from bench.perf.growth import growth_rows, growth_tables, pass_flops, set_passes, study_estimate
from models import build_model


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_flops_of_a_linear_model_are_the_matrix_products():
    # forward: 2 * in * out multiply-adds; the input gradient: the same product transposed; no weight gradient
    fb, f = pass_flops(_linear(), (1, 4, 4))
    assert f == 2 * 16 * 3
    assert fb == 2 * (2 * 16 * 3)
    model = _linear()
    pass_flops(model, (1, 4, 4))
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_flops_follow_the_feature_maps_of_the_resnet_stems():
    small = pass_flops(build_model("resnet18", image_size=28).eval(), (1, 28, 28))[1]
    at64 = pass_flops(build_model("resnet18", image_size=64).eval(), (1, 64, 64))[1]
    at128 = pass_flops(build_model("resnet18", image_size=128).eval(), (1, 128, 128))[1]
    assert 0.85e9 < small < 0.95e9  # resnet18 at 28 px: 0.91 GFLOP per forward (28 x 28 feature maps)
    assert at64 < small  # the 7x7/2 stem and the 2x2 pool: 16 x 16 maps at 64 px
    assert at128 / at64 == pytest.approx(4.0, rel=0.02)


def test_set_passes_sum_the_registered_rules():
    model = build_model("resnet18").eval()
    ex = {"captum.integrated_gradients": {"n_steps": 10}, "random": {}}
    me = {"deletion_auc": {"steps": 4}, "drop_rate": {}, "randomisation_similarity": {"steps": 2}}
    out = set_passes(ex, me, background_size=8, shape=(1, 28, 28), model=model)
    ig = passes_per_image("captum.integrated_gradients", {"n_steps": 10}, 8)
    assert out["captum.integrated_gradients"]["explain"] == ig == (10.0, 0.0)
    assert out["random"]["explain"] == (0.0, 0.0)
    from bench.metrics import randomisation_layers

    layers = len(randomisation_layers(model))
    want = [0.0, 0.0]
    for m, p in me.items():
        q = metric_passes_per_image(m, p, explainer_passes=ig, n_layers=layers)
        want = [want[0] + q[0], want[1] + q[1]]
    assert out["captum.integrated_gradients"]["metrics"] == tuple(want)
    assert want[0] == 2 * 10  # the randomisation cascade re-runs IG twice; the other metrics only forward
    assert out["random"]["metrics"][0] == 0  # the control re-explains for free


def test_rows_floor_is_passes_times_seconds():
    model_rows = growth_rows(
        ["resnet18"],
        [28],
        {"captum.saliency": {}, "random": {}},
        {"deletion_auc": {"steps": 3}},
        background_size=4,
        batch=2,
        repeats=1,
        measure=[28],
    )
    r = model_rows[0]
    t_fb, t_f = r["forward_backward_seconds"], r["forward_seconds"]
    sal = r["by_explainer"]["captum.saliency"]
    assert sal["explain_passes"] == (1.0, 0.0) and sal["metric_passes"] == (0.0, 4.0)
    assert sal["explain_seconds"] == pytest.approx(t_fb) and sal["metric_seconds"] == pytest.approx(4 * t_f)
    assert r["floor_seconds_per_image"] == pytest.approx(t_fb + 8 * t_f)
    assert r["flops_per_image"] == pytest.approx(r["forward_backward_flops"] + 8 * r["forward_flops"])
    assert r["metric_set_floor_seconds"] == pytest.approx(4 * t_f) and r["metric_set_measured_seconds"] > 0


def test_estimate_scales_and_unknown_stays_unknown():
    rows = [
        {"model": "m", "size": 28, "floor_seconds_per_image": 36.0, "flops_per_image": 7.2e12},
        {"model": "m", "size": 64, "floor_seconds_per_image": None, "flops_per_image": None},
    ]
    est = study_estimate(rows, n_images=100, model_stages=2, device_flops_per_second=1e12)
    assert est[0]["images"] == 200 and est[0]["hours_here"] == pytest.approx(2.0)
    assert est[0]["hours_on_device"] == pytest.approx(7.2e12 * 200 / 1e12 / 3600)
    assert est[1]["hours_here"] is None and est[1]["hours_on_device"] is None
    with pytest.raises(BenchError, match="device_flops_per_second"):
        study_estimate(rows, n_images=1, model_stages=1, device_flops_per_second=0)


def test_tables_print_unknown_as_na():
    by = {"x": {"explain_seconds": None, "metric_seconds": 1.0}}
    rows = [
        {
            "model": "m",
            "size": 28,
            "batch": 2,
            "forward_flops": 1e9,
            "forward_backward_flops": 2e9,
            "forward_seconds": 0.001,
            "forward_backward_seconds": 0.002,
            "by_explainer": by,
            "floor_seconds_per_image": None,
            "flops_per_image": None,
        }
    ]
    text = growth_tables({"rows": rows, "explainers": ["x"], "metrics": ["deletion_auc"], "background_size": 4})
    assert "| m | 28 | 1 | 2 | 1 | 2 | n/a | n/a | - |" in text
    assert text.strip().endswith("| m | 28 | n/a |")
    assert not math.isnan(rows[0]["forward_flops"])
