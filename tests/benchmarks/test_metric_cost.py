"""Cost of every registered metric: time per image, floor ratio and, where Quantus has the same
metric, Quantus' time on identical inputs.

Each metric scores one fixed, seeded random attribution (a metric's cost does not depend on the
values) with its default parameters. The floor is the model passes the metric needs
(bench.floor.metric_passes_per_image) x the time of one batched pass of the model. The metrics
that re-run the explainer (``needs=("explain",)``) re-explain with ``captum.saliency`` (one
forward+backward per image): randomisation after each cascade step (with another explainer it
costs about ``n_layers`` x that explainer), the robustness metrics on each of their ``samples``
perturbed batches (``samples`` x that explainer). ROAD's sparse imputation is no model pass: its
time is reported separately (``imputation_s_per_image``).

Quantus (0.6.0) counterparts, every implicit default set explicitly as in
tests/test_metrics_reference.py: ``deletion_auc`` vs ``quantus.PixelFlipping`` (per-sample AUC,
``features_in_step = H*W / steps``, zero baseline, no normalisation, no abs, softmax) and
``road_morf`` vs ``quantus.ROAD`` (same percentages and noise), ``additivity_error`` vs
``quantus.Completeness`` (zero baseline, logits; Quantus runs the two forward passes that our
metric reads from the attribution's ``outputs`` / ``base_values``, and returns exact float
equality per image rather than a gap, so it is timed for cost only), ``sparseness`` /
``complexity`` vs ``quantus.Sparseness`` / ``quantus.Complexity`` (abs, no normalisation),
``faithfulness_correlation`` vs ``quantus.FaithfulnessCorrelation`` (same runs and subset size,
zero baseline, logits) and ``monotonicity_correlation`` vs ``quantus.MonotonicityCorrelation``
(one sample, ``H*W / steps`` pixels per step, zero baseline, softmax). Quantus calls ``np.trapz``,
removed in numpy 2.4; it is aliased to ``np.trapezoid`` for these tests only.
"""

from __future__ import annotations

import copy
from time import perf_counter
from typing import Any, Callable

import numpy as np
import pytest
import torch

from bench.perf.floor import (
    floor_ratio,
    metric_passes_per_image,
    passes_per_image,
)
from bench.metrics import (
    METRICS,
    MetricContext,
    compute_metric,
    metric_params,
    randomisation_layers,
    rank_pixels,
    road_perturbed_inputs,
)
from explainers import Attribution, run_explainer
from explainers.base import target_scores

from .conftest import Case, Settings, cost_info, load_average, release_memory, run_measured

pytestmark = pytest.mark.benchmark

RERUN_EXPLAINER = "captum.saliency"  # what the metrics that re-run the explainer re-run


@pytest.fixture(autouse=True)
def _np_trapz(monkeypatch):
    """Quantus 0.6 calls np.trapz, removed in numpy 2.4."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _attribution(case: Case) -> Attribution:
    g = torch.Generator().manual_seed(3)
    values = torch.randn(case.inputs.shape, generator=g).to(case.inputs.device)  # continuous: no ties
    zero = torch.zeros_like(case.inputs)
    return Attribution(
        values, target_scores(case.model, case.inputs, case.targets), target_scores(case.model, zero, case.targets)
    )


def _masks(case: Case) -> torch.Tensor:
    """One seeded rectangle per image, (B, 1, H, W) bool."""
    g = torch.Generator().manual_seed(4)
    b, _, h, w = case.inputs.shape
    m = torch.zeros(b, 1, h, w, dtype=torch.bool)
    for i in range(b):
        r, c = torch.randint(0, h // 2, (2,), generator=g).tolist()
        m[i, 0, r : r + h // 3, c : c + w // 3] = True
    return m.to(case.inputs.device)


def _best(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = perf_counter()
        fn()
        best = min(best, perf_counter() - t0)
    return best


def _quantus_call(
    metric_name: str, params: dict[str, Any], case: Case, attr: Attribution
) -> tuple[str, Callable] | None:
    """(Quantus class name, a call on identical inputs), or None where Quantus has no equivalent."""
    import quantus

    b, _, h, w = case.inputs.shape
    common = dict(abs=False, normalise=False, return_aggregate=False, disable_warnings=True, display_progressbar=False)
    if metric_name == "deletion_auc":
        if (h * w) % params["steps"] or params["substrate"] != "zero":
            return None  # Quantus needs equal steps; its "mean" baseline drifts (not ours)
        metric = quantus.PixelFlipping(
            features_in_step=(h * w) // params["steps"], perturb_baseline=0.0, return_auc_per_sample=True, **common
        )
        name = "PixelFlipping"
    elif metric_name == "road_morf":
        metric = quantus.ROAD(
            percentages=[int(round(100 * p)) for p in params["percentages"]], noise=params["noise"], **common
        )
        name = "ROAD"
    elif metric_name == "additivity_error":
        # sum(a) vs f(x) - f(zero image) in logit space, as _attribution's outputs / base_values.
        # Quantus answers with exact float equality (a bool per image), not a gap: timed for cost only.
        metric = quantus.Completeness(perturb_baseline=0.0, **common)
        name = "Completeness"
    elif metric_name in ("sparseness", "complexity"):
        name = metric_name.capitalize()
        metric = getattr(quantus, name)(**{**common, "abs": True})
    elif metric_name == "faithfulness_correlation":
        if params["substrate"] != "zero":
            return None
        k = max(1, int(params["frac"] * h * w + 0.5))
        metric = quantus.FaithfulnessCorrelation(nr_runs=params["runs"], subset_size=k, perturb_baseline=0.0, **common)
        name = "FaithfulnessCorrelation"
    elif metric_name == "monotonicity_correlation":
        if (h * w) % params["steps"] or params["substrate"] != "zero":
            return None
        metric = quantus.MonotonicityCorrelation(
            nr_samples=1, features_in_step=(h * w) // params["steps"], perturb_baseline=0.0, **{**common, "abs": True}
        )
        name = "MonotonicityCorrelation"
    else:
        return None
    # additivity and faithfulness correlation live in the explained (logit) space; the others in probabilities
    softmax = metric_name not in ("additivity_error", "faithfulness_correlation")
    model = copy.deepcopy(case.model)  # Quantus wraps and may touch the model
    x, y, a = (t.detach().cpu().numpy() for t in (case.inputs, case.targets, attr.values))
    return name, lambda: metric(
        model=model,
        x_batch=x,
        y_batch=y,
        a_batch=a,
        channel_first=True,
        softmax=softmax,
        device=str(case.inputs.device),
        batch_size=b,
    )


@pytest.mark.parametrize("metric", METRICS.names())
def test_metric_cost(benchmark, case: Case, bench_settings: Settings, metric: str):
    s = bench_settings
    b = case.inputs.shape[0]
    params = metric_params(metric)
    attr = _attribution(case)
    context = MetricContext(
        masks=_masks(case),
        explain=lambda m, inputs=None: (
            run_explainer(
                RERUN_EXPLAINER, m, case.inputs if inputs is None else inputs, case.targets, background=case.background
            ).values
        ),
        additive=True,
    )
    needs_explain = "explain" in METRICS.get(metric).meta.get("needs", ())
    n_layers = len(randomisation_layers(case.model)) if needs_explain else None
    passes = metric_passes_per_image(
        metric, params, n_layers=n_layers, explainer_passes=passes_per_image(RERUN_EXPLAINER) if needs_explain else None
    )
    load = load_average()

    scores, per_image, peak_mb, one_pass = run_measured(
        benchmark,
        case,
        s,
        lambda: compute_metric(metric, case.model, case.inputs, case.targets, attr, context=context).scores,
        "metrics",
    )
    assert scores.shape == (b,)

    info: dict[str, Any] = {
        "kind": "metric",
        "metric": metric,
        **cost_info(case, s, params, per_image, peak_mb, passes, one_pass, load),
        "quantus_metric": None,
        "quantus_s_per_image": None,
        "quantus_vs_ours": None,
    }
    floor = info["floor_s_per_image"]
    if needs_explain:
        info.update(rerun_explainer=RERUN_EXPLAINER, n_layers=n_layers)
    if "percentages" in params:  # ROAD: the CPU imputation is part of the cost but no model pass
        order = rank_pixels(attr.values)
        if metric == "road_lerf":
            order = order.flip(1)
        imputation = (
            _best(
                lambda: road_perturbed_inputs(
                    case.inputs, order, params["percentages"], noise=params["noise"], seed=params["seed"]
                ),
                s.rounds,
            )
            / b
        )
        info.update(
            imputation_s_per_image=imputation,
            floor_ratio_with_imputation=floor_ratio(per_image, (floor or 0.0) + imputation),
        )
    reference = _quantus_call(metric, params, case, attr)
    if reference is not None:
        name, call = reference
        release_memory()
        quantus_per_image = _best(call, s.rounds) / b
        info.update(
            quantus_metric=f"quantus.{name}",
            quantus_s_per_image=quantus_per_image,
            quantus_vs_ours=quantus_per_image / per_image,
        )
    benchmark.extra_info.update(info)
