"""bench.perf.frontier: the cost-accuracy frontier's rows, references, interpolation and tables.

The frontier itself runs in tests/benchmarks/test_frontier.py (minutes); here: a tiny CNN and a
linear model with known answers, and the table/figure code on rows with a planted shape.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.perf.frontier import (
    FrontierSpec,
    default_specs,
    frontier_figure,
    frontier_frame,
    frontier_rows,
    frontier_tables,
    main,
    passes_to_reach,
    saved_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 2)).eval()


def test_default_specs_follow_the_registry():
    specs = default_specs()
    names = {s.name for s in specs}
    assert names == {
        "shap.gradient",
        "captum.gradient_shap",
        "pneumobench.expected_gradients",
        "captum.integrated_gradients",
        "shap.partition",
        "captum.lime",
        "captum.kernel_shap",
        "captum.smoothgrad",
        "captum.vargrad",
    }
    (lime,) = [s for s in specs if s.name == "captum.lime"]
    assert lime.budget == "n_samples" and lime.budgets == (50, 100, 200, 400, 800) and lime.reference_budget == 3200
    assert {s.variant for s in specs if s.name == "captum.integrated_gradients"} == {
        "gausslegendre",
        "riemann_trapezoid",
        "riemann_middle",
        "riemann_left",
        "gausslegendre bfloat16",
    }
    eg = [s for s in specs if s.family == "expected_gradients"]
    assert len(eg) == 6 and all(s.budgets == (10, 25, 50, 100, 200) for s in eg)
    # every gradient explainer once more in bfloat16; the exact and model-agnostic ones not
    reduced = {s.name for s in specs if s.params.get("precision") == "bfloat16"}
    assert reduced == {
        "shap.gradient",
        "captum.gradient_shap",
        "pneumobench.expected_gradients",
        "captum.integrated_gradients",
        "captum.smoothgrad",
        "captum.vargrad",
    }
    assert all(s.variant.endswith("bfloat16") for s in specs if s.params.get("precision"))
    assert not [s for s in default_specs(precisions=()) if s.params.get("precision")]


def test_plugin_with_a_budget_gets_a_grid_around_its_default():
    from explainers import EXPLAINERS, register_explainer
    from explainers.base import Attribution

    name = "test.frontier_plugin"

    @register_explainer(name, passes=lambda p, n: (p["n"], 0), budget="n")
    def plugin(model, inputs, targets, *, background, n: int = 20) -> Attribution:
        return Attribution(inputs * n, None, None, {})

    try:
        (spec,) = default_specs([name])
        assert spec.budgets == (5, 10, 20, 40, 80) and spec.reference_budget == 320
    finally:
        EXPLAINERS.unregister(name)


def test_rows_on_a_linear_model_are_exact():
    """A linear model: IG (any rule, any steps) and expected gradients (any draws) are exact, so every
    relative L2 is ~0 and the completeness gap too."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2)).eval()
    x, bg = torch.rand(2, 1, 28, 28), torch.rand(4, 1, 28, 28)
    t = torch.tensor([0, 1])
    specs = [
        FrontierSpec("pneumobench.expected_gradients", "n_samples", (4, 8), "expected_gradients", 16),
        FrontierSpec(
            "captum.integrated_gradients", "n_steps", (2, 4), None, 8, {"method": "riemann_left"}, "riemann_left"
        ),
    ]
    rows = frontier_rows("linear", model, x, t, bg, specs, seeds=2, reference_seeds=2)
    assert len(rows) == 2 * 2 + 2
    for r in rows:
        assert r["rel_l2"] < 1e-5 and r["gap"] < 1e-4 and r["reference_error"] < 1e-5
    assert {(r["budget"], r["passes_fb"]) for r in rows if r["method"].startswith("pneumo")} == {(4, 4), (8, 8)}


def test_rows_on_a_relu_cnn_fall_with_passes():
    model = small_cnn()
    g = torch.Generator().manual_seed(2)
    x, bg = torch.rand(2, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    t = model(x).argmax(1)
    specs = [
        FrontierSpec("pneumobench.expected_gradients", "n_samples", (4, 64), "expected_gradients", 512),
        FrontierSpec("captum.integrated_gradients", "n_steps", (2, 64), None, 512),
    ]
    frame = frontier_frame(frontier_rows("cnn", model, x, t, bg, specs, seeds=3, reference_seeds=2))
    for method, grp in frame.groupby("method"):
        err = grp.sort_values("budget")["rel_l2"].to_numpy()
        assert err[1] < 0.5 * err[0], method
        assert (grp["reference_error"] < err[1]).all(), method  # the reference is better than what it measures
    eg = frame[frame["method"] == "pneumobench.expected_gradients"]
    assert (eg["seeds"] == 3).all() and (eg["rel_l2_sd"] > 0).all()


def test_bfloat16_rows_share_the_float32_reference_and_floor_above_it():
    """The same passes, the float32 reference: at the reference's own budget float32 IG is the
    reference (error 0) and bfloat16 IG is off by its rounding (with a bfloat16 reference it would be
    the other way round)."""
    model = small_cnn()
    g = torch.Generator().manual_seed(2)
    x, bg = torch.rand(2, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    t = model(x).argmax(1)
    fp32 = FrontierSpec("captum.integrated_gradients", "n_steps", (8, 256), None, 256)
    bf16 = FrontierSpec(
        "captum.integrated_gradients", "n_steps", (8, 256), None, 256, {"precision": "bfloat16"}, "bfloat16"
    )
    rows = frontier_rows("cnn", model, x, t, bg, [bf16, fp32], seeds=1, reference_seeds=2)  # reduced first
    by = {(r["precision"], r["budget"]): r for r in rows}
    assert {r["float32_method"] for r in rows} == {"captum.integrated_gradients"}
    assert by[("bfloat16", 256)]["method"] == "captum.integrated_gradients [bfloat16]"
    assert by[("bfloat16", 256)]["passes_fb"] == by[("float32", 256)]["passes_fb"] == 256
    assert by[("bfloat16", 256)]["reference_error"] == by[("float32", 256)]["reference_error"]  # one reference
    assert by[("float32", 256)]["rel_l2"] == 0 and by[("bfloat16", 256)]["rel_l2"] > 1e-3
    md = frontier_tables(rows)
    assert "| cnn | captum.integrated_gradients | bfloat16 | 256 | 0.0000 |" in md


def _planted(errs: dict[int, float], method="m", model="net", seeds=(0, 1)) -> list[dict]:
    return [
        {
            "model": model,
            "method": method,
            "budget": b,
            "passes_fb": b,
            "passes_f": 0,
            "seed": s,
            "rel_l2": e * (1 + 0.1 * s),
            "gap": 0.1,
            "s_per_image": 0.01 * b,
            "reference": "r",
            "reference_error": 0.001,
            "reference_s": 1.0,
        }
        for b, e in errs.items()
        for s in seeds
    ]


def test_passes_to_reach_interpolates_log_log():
    # error = 1/sqrt(n) * 0.5 (mean over two seeds: x 1.05): reaches 0.05 at n = (0.525/0.05)^2 = 110.25
    rows = _planted({n: 0.5 / math.sqrt(n) for n in (25, 50, 100, 200, 400)})
    reach = passes_to_reach(frontier_frame(rows), 0.05)
    assert reach["passes_to_target"].iloc[0] == pytest.approx(110.25, rel=1e-6)
    assert reach["slope"].iloc[0] == pytest.approx(-0.5, abs=1e-9)
    never = passes_to_reach(frontier_frame(_planted({10: 0.5, 20: 0.3})), 0.05)
    assert math.isnan(never["passes_to_target"].iloc[0])
    assert "> 20 fb" in frontier_tables(_planted({10: 0.5, 20: 0.3}))


def test_tables_figure_and_the_saved_run(tmp_path, capsys):
    rows = _planted({10: 0.2, 20: 0.1, 40: 0.04}) + _planted({10: 0.3, 20: 0.2}, method="other", seeds=(0,))
    md = frontier_tables(rows)
    assert "| net | m | 35 fb |" in md  # log-log between (20, 0.105) and (40, 0.042)
    reach = passes_to_reach(frontier_frame(rows)).set_index("method")
    assert reach.loc["m", "seconds_to_target"] == pytest.approx(0.01 * reach.loc["m", "passes_to_target"])
    assert "| net | other | > 20 fb | never |" in md
    assert "| m | 40 | 40 fb | 0.0420 | 0.0028 |" in md
    assert "Reduced precision" not in md  # no reduced-precision rows, no such table
    png = frontier_figure(rows, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert frontier_figure(rows, tmp_path / "s.png", x="seconds").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BenchError, match="seconds"):
        frontier_figure(rows, tmp_path / "bad.png", x="steps")
    # a bfloat16 variant of m at half the seconds: the comparison table, budget by budget
    fast = [
        dict(
            r,
            method="m [bfloat16]",
            precision="bfloat16",
            float32_method="m",
            s_per_image=r["s_per_image"] / 2,
            rel_l2=r["rel_l2"] + 0.01,
        )
        for r in _planted({10: 0.2, 20: 0.1, 40: 0.04})
    ]
    md2 = frontier_tables(rows + fast)
    assert "| net | m | bfloat16 | 40 | 0.0420 | 0.0520 | 2.00x |" in md2
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"benchmarks": [{"extra_info": {"kind": "frontier", "rows": rows}}]}))
    assert saved_rows(run) == rows
    assert main([str(run), "--figure", str(tmp_path / "g.png")]) == 0
    assert capsys.readouterr().out == md and (tmp_path / "g.png").is_file()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(BenchError, match="no frontier rows"):
        saved_rows(empty)
    assert main([str(empty)]) == 2


def test_figure_puts_four_models_on_a_two_by_two_grid(tmp_path):
    from PIL import Image

    one = _planted({10: 0.2, 20: 0.1})
    rows = [dict(r, model=f"net{k}") for k in range(4) for r in one]
    with Image.open(frontier_figure(rows, tmp_path / "four.png")) as im:
        four = im.size
    with Image.open(frontier_figure(rows[: 3 * len(one)], tmp_path / "three.png")) as im:
        three = im.size
    assert four == (round(2 * 5.2 * 110), round(2 * 4.2 * 110))  # 2 x 2 panels at dpi 110
    assert three == (round(3 * 5.2 * 110), round(4.2 * 110))  # one row of three
