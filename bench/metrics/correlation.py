"""Faithfulness as a correlation between attribution mass and the effect of removing it:
faithfulness correlation (Bhatt et al. 2020; random pixel subsets, Pearson) and monotonicity
correlation (Nguyen & Martinez 2020; groups of pixels in attribution order, Spearman). Both
replace pixels with a substrate (:func:`bench.metrics.perturbation.make_substrate`), so the
reliability card's substrate sensitivity covers them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.core.params import Range
from bench.metrics.base import (
    MetricContext,
    check_fraction,
    out_dtype,
    pearson,
    register_metric,
    spearman,
    validate_call,
)
from bench.metrics.perturbation import (
    DEFAULT_CHUNK,
    SUBSTRATES,
    curve_boundaries,
    make_substrate,
    masked_outputs,
    per_image_draws,
    pixel_positions,
    rank_pixels,
    target_outputs,
)
from explainers.base import OUTPUT_SPACES, Attribution


def random_subsets(inputs: Tensor, runs: int, size: int, seed: int) -> Tensor:
    """``(B, runs, size)`` flat pixel indices: ``runs`` subsets of ``size`` distinct pixels per
    image, drawn without replacement, seeded per image (:func:`per_image_draws`)."""
    n_pix = inputs.shape[2] * inputs.shape[3]

    def draw(g: torch.Generator) -> Tensor:
        return torch.rand((int(runs), n_pix), generator=g, dtype=torch.float64).argsort(1)[:, :size]

    return per_image_draws(inputs, seed, "faithfulness_correlation", draw)


def subset_correlation(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    values: Tensor,
    subsets: Tensor,
    substrate_images: Tensor,
    *,
    output: str = "logit",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Pearson correlation ``(B,)`` over the subsets ``(B, R, k)`` between the attribution summed
    over each subset (channels summed per pixel) and ``f(x) - f(x with the subset's pixels set
    to the substrate)``."""
    b, r, _ = subsets.shape
    h, w = inputs.shape[2:]
    masks = torch.zeros(b, r, h * w, dtype=torch.bool, device=inputs.device).scatter_(2, subsets, True)
    with torch.no_grad():
        f0 = target_outputs(model, inputs, targets, output)
    fr = masked_outputs(
        model, inputs, targets, masks.view(b, r, h, w), substrate_images, output=output, chunk_size=chunk_size
    )
    per_pixel = values.sum(1).flatten(1).to(torch.float64)  # (B, H*W)
    sums = per_pixel.unsqueeze(1).expand(b, r, h * w).gather(2, subsets).sum(2)
    return pearson(sums, f0.unsqueeze(1) - fr).to(out_dtype(inputs))


@register_metric(
    "faithfulness_correlation",
    higher_is_better=True,
    kind="faithfulness",
    passes=lambda p, e, n: (0.0, float(p["runs"] + 1)),
    control_role="baseline",
    constraints={
        "runs": Range(2),
        "frac": Range(0, 1, low_open=True),
        "substrate": SUBSTRATES,
        "blur_sigma": Range(0),
        "output": OUTPUT_SPACES,
        "chunk_size": Range(1),
    },
    paper="Bhatt et al. 2020, Evaluating and Aggregating Feature-based Model Explanations (IJCAI)",
)
def faithfulness_correlation(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    runs: int = 100,
    frac: float = 0.05,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    output: str = "logit",
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Pearson correlation between the attribution of random pixel subsets and the output drop when they go.

    Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations" (IJCAI):
    ``mu_F = corr_{S in random subsets of size k}( sum_{i in S} phi_i, f(x) - f(x_{S <- substrate}) )``,
    Pearson over ``runs`` = 100 subsets of ``k = round(frac * H * W)`` pixels (``frac`` = 5 %:
    39 pixels at 28 px), drawn without replacement and seeded per image; every channel of a
    chosen pixel is replaced (default substrate zero). ``f`` is the target's logit
    (``output="logit"``, the default explained space, and Quantus' ``FaithfulnessCorrelation``
    default; ``"probability"`` uses the softmax). Variant: Quantus' default is 224 of 224 x 224
    pixels (0.45 %), 1 pixel at 28 px, and it replaces single channel values. NaN where the
    subset sums are constant (a zero or constant map). Higher is better.
    """
    validate_call("faithfulness_correlation", model, inputs, targets, attribution)
    check_fraction("faithfulness_correlation", "frac", frac)
    k = max(1, math.floor(frac * inputs.shape[2] * inputs.shape[3] + 0.5))
    subsets = random_subsets(inputs, runs, k, seed)
    return subset_correlation(
        model,
        inputs,
        targets,
        attribution.values,
        subsets,
        make_substrate(inputs, substrate, blur_sigma=blur_sigma),
        output=output,
        chunk_size=chunk_size,
    )


def attribution_groups(values: Tensor, steps: int) -> Tensor:
    """Group index ``(B, H*W)`` of every pixel: pixels ranked by ``values`` (:func:`rank_pixels`)
    and cut at :func:`curve_boundaries` into ``steps`` groups of consecutive ranks."""
    pos = pixel_positions(rank_pixels(values))
    bounds = torch.as_tensor(curve_boundaries(pos.shape[1], steps)[1:-1], device=pos.device)
    return torch.bucketize(pos, bounds, right=True)


@register_metric(
    "monotonicity_correlation",
    higher_is_better=True,
    kind="faithfulness",
    passes=lambda p, e, n: (0.0, float(p["steps"] + 1)),
    control_role="baseline",
    constraints={"steps": Range(2), "substrate": SUBSTRATES, "blur_sigma": Range(0), "chunk_size": Range(1)},
    paper="Nguyen & Martinez 2020, On Quantitative Aspects of Model Interpretability (arXiv)",
)
def monotonicity_correlation(
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
) -> Tensor:
    """Spearman correlation between each pixel group's attribution magnitude and its removal effect.

    Nguyen & Martinez 2020, "On Quantitative Aspects of Model Interpretability" (arXiv
    2007.07584), as Quantus' ``MonotonicityCorrelation``: the pixels, ranked by ``|phi|`` (summed
    over channels), are cut into ``steps`` = 49 groups of consecutive ranks (16 pixels each at
    28 px); for group ``g``, ``A_g = sum_{i in g} |phi_i|`` and
    ``v_g = (p(x) - p(x_{g <- substrate}))^2`` with ``p = softmax(f(x))[target]``; score =
    ``spearman_g(A_g, v_g)`` (ties averaged). ``|phi|`` is part of the formula (the effect ``v``
    is a magnitude). Variants: the paper averages ``v_g`` over random replacement values and
    divides it by ``p(x)^2`` (a constant per image, which no rank correlation sees); with a
    deterministic substrate (default zero) one replacement is exact, ``substrate="noise"`` is one
    seeded random draw. Higher is better.
    """
    validate_call("monotonicity_correlation", model, inputs, targets, attribution)
    b, _, h, w = inputs.shape
    magnitudes = attribution.values.abs()
    groups = attribution_groups(magnitudes, steps)  # (B, H*W)
    masks = groups.unsqueeze(1) == torch.arange(steps, device=groups.device).view(1, -1, 1)  # (B, steps, H*W)
    with torch.no_grad():
        p0 = target_outputs(model, inputs, targets, "probability")
    pg = masked_outputs(
        model,
        inputs,
        targets,
        masks.view(b, steps, h, w),
        make_substrate(inputs, substrate, blur_sigma=blur_sigma),
        chunk_size=chunk_size,
    )
    mass = torch.zeros(b, steps, dtype=torch.float64, device=inputs.device).scatter_add_(
        1, groups, magnitudes.sum(1).flatten(1).to(torch.float64)
    )
    return spearman(mass, (p0.unsqueeze(1) - pg).square()).to(out_dtype(inputs))
