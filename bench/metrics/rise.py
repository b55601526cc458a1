"""Deletion and insertion AUC (RISE): the target probability while the top pixels are deleted or
inserted, integrated over the fraction of pixels. Both return their curves with the scores
(``"deletion"`` / ``"insertion"``), so a run stores the curve the score came from.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.core.params import Range
from bench.metrics.base import Curve, MetricContext, MetricResult, register_metric, validate_call
from bench.metrics.perturbation import (
    DEFAULT_CHUNK,
    SUBSTRATES,
    curve_boundaries,
    make_substrate,
    normalised_trapezoid,
    perturbation_curve,
    rank_pixels,
)
from explainers.base import Attribution


CURVE = {"steps": Range(1), "substrate": SUBSTRATES, "blur_sigma": Range(0), "chunk_size": Range(1)}


def _rise_passes(params, explainer_passes, n_layers):
    return 0.0, float(params["steps"] + 1)  # steps + 1 curve points, point 0 included


def _rise_auc(model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, mode, metric):
    mode_name = "deletion" if mode == "delete" else "insertion"
    validate_call(metric, model, inputs, targets, attribution)
    n_pix = inputs.shape[2] * inputs.shape[3]
    sub = make_substrate(inputs, substrate, blur_sigma=blur_sigma)
    curve = perturbation_curve(
        model, inputs, targets, rank_pixels(attribution.values), sub, steps, mode=mode, chunk_size=chunk_size
    )
    fractions = tuple(c / n_pix for c in curve_boundaries(n_pix, steps))
    return MetricResult(normalised_trapezoid(curve, fractions), {mode_name: Curve(fractions, curve)})


@register_metric(
    "deletion_auc",
    higher_is_better=False,
    kind="faithfulness",
    passes=_rise_passes,
    control_role="baseline",
    constraints=CURVE,
    paper="Petsiuk et al. 2018, RISE (BMVC)",
)
def deletion_auc(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    steps: int = 49,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> MetricResult:
    """Area under the target probability curve while the most relevant pixels are deleted.

    Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"
    (BMVC). ``p_t = softmax(f(x_t))[target]`` where ``x_t`` has the top ``n_t`` pixels
    (:func:`curve_boundaries`; 49 steps of 16 pixels at 28 x 28) set to the substrate
    (default zero, as RISE); ``AUC = sum_t (p_t + p_{t+1}) / 2 * (n_{t+1} - n_t) / (H W)`` over
    fractions [0, 1], including the unperturbed point ``p_0``. Lower is better.
    """
    return _rise_auc(
        model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, "delete", "deletion_auc"
    )


@register_metric(
    "insertion_auc",
    higher_is_better=True,
    kind="faithfulness",
    passes=_rise_passes,
    control_role="baseline",
    constraints=CURVE,
    paper="Petsiuk et al. 2018, RISE (BMVC)",
)
def insertion_auc(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    steps: int = 49,
    substrate: str = "blur",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> MetricResult:
    """Area under the target probability curve while the most relevant pixels are inserted.

    Petsiuk et al. 2018, "RISE" (BMVC). Starts from the substrate (default a Gaussian blur of the
    image with ``blur_sigma`` = 2 px, RISE's insertion start scaled to 28 px; RISE used an
    11-tap sigma-5 kernel at 224 px) and copies the top ``n_t`` input pixels in; ``p_t``,
    ``AUC`` as in :func:`deletion_auc` (softmax over logits, fractions [0, 1], steps + 1 points
    including the full substrate). Higher is better.
    """
    return _rise_auc(
        model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, "insert", "insertion_auc"
    )
