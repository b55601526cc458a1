"""Completeness has one definition (explainers.base.completeness_gap); the additivity metrics and the
cost-accuracy frontier read it, on planted attributions whose gap is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench import metrics as M
from bench.perf.frontier import FrontierSpec, frontier_rows
from explainers import EXPLAINERS, Attribution, completeness_gap, register_explainer, relative_completeness_gap


def planted(total: float = 3.0, outputs: float = 5.0, base: float = 1.0, b: int = 2) -> Attribution:
    """Values summing to ``total`` per image: the signed gap is ``total - (outputs - base)``."""
    values = torch.full((b, 1, 4, 4), total / 16)
    return Attribution(values, torch.full((b,), outputs), torch.full((b,), base), {})


def test_the_gap_is_signed_and_the_metrics_are_its_absolute_value():
    a = planted()
    gap = completeness_gap(a)
    assert gap.dtype == torch.float64 and gap.tolist() == [-1.0, -1.0]  # 3 - (5 - 1)
    assert relative_completeness_gap(a).tolist() == [0.25, 0.25]
    x = torch.zeros(2, 1, 4, 4)
    assert M.additivity_error(None, x, None, a).tolist() == [1.0, 1.0]
    assert M.additivity_error_relative(None, x, None, a).tolist() == [0.25, 0.25]
    assert torch.isnan(M.additivity_error(None, x, None, Attribution(a.values))).all()  # not additive: NaN


def test_the_gap_is_summed_in_float64():
    """A million float32 values of 0.1: the float64 sum is exact to 1e-12 (math.fsum), a float32 one
    is not."""
    values = torch.full((1, 1, 1000, 1000), 0.1)
    exact = math.fsum([float(torch.tensor(0.1))] * 10**6)
    a = Attribution(values, torch.zeros(1), torch.zeros(1), {})
    assert completeness_gap(a).item() == pytest.approx(exact, rel=1e-12)
    assert values.sum().item() != pytest.approx(exact, rel=1e-12)


def test_the_frontier_reports_the_absolute_gap():
    name = "test.planted_gap"

    @register_explainer(name, passes=lambda p, n: (p["n"], 0), budget="n", additive=True)
    def plugin(model, inputs, targets, *, background, n: int = 4) -> Attribution:
        b = inputs.shape[0]  # values sum to n, outputs - base = 1: gap n - 1
        return Attribution(torch.full_like(inputs, n / inputs[0].numel()), torch.ones(b), torch.zeros(b), {})

    try:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
        x, bg = torch.rand(3, 1, 4, 4), torch.rand(2, 1, 4, 4)
        rows = frontier_rows(
            "linear",
            model,
            x,
            torch.tensor([0, 1, 0]),
            bg,
            [FrontierSpec(name, "n", (1, 3, 0), None, 8)],
            seeds=1,
            reference_seeds=1,
        )
        assert [r["gap"] for r in rows] == pytest.approx([0.0, 2.0, 1.0], abs=1e-6)  # |n - 1|
    finally:
        EXPLAINERS.unregister(name)
