"""Localisation against a ground-truth mask (data sets with masks, e.g. ``synthetic``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from bench.metrics.base import MetricContext, check_fraction, out_dtype, register_metric, require_context, validate_call
from bench.metrics.perturbation import rank_pixels
from explainers.base import Attribution


def _masks(metric: str, context: MetricContext | None, inputs: Tensor) -> Tensor:
    masks = require_context(context, "masks", metric)
    b, _, h, w = inputs.shape
    if masks.shape != (b, 1, h, w):
        raise BenchError(
            f"metric {metric!r}: masks must be (B, 1, H, W) = ({b}, 1, {h}, {w}), got {tuple(masks.shape)}"
        )
    return masks.to(inputs.device).bool().flatten(1)


@register_metric(
    "localisation_precision",
    higher_is_better=True,
    needs=("masks",),
    kind="localisation",
    passes=(0, 0),
    control_role="baseline",
    constraints={"frac": Range(0, 1, low_open=True)},
    paper="Arras et al. 2022, CLEVR-XAI (relevance rank accuracy)",
)
def localisation_precision(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    frac: float | None = None,
) -> Tensor:
    """Share of the top-k attribution pixels that fall inside the ground-truth mask.

    Arras, Osman & Samek 2022, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
    neural network explanations" (Information Fusion), relevance rank accuracy:
    ``|top_k(phi) ∩ M| / k`` with ``k = |M|`` (or ``round(frac * H * W)`` if ``frac`` is given),
    pixels ranked by :func:`rank_pixels`. NaN for an empty mask (no ground truth, e.g. a
    negative image). Higher is better.
    """
    validate_call("localisation_precision", model, inputs, targets, attribution)
    m = _masks("localisation_precision", context, inputs)
    n_pix = m.shape[1]
    hits = m.gather(1, rank_pixels(attribution.values)).long().cumsum(1)
    if frac is None:
        k = m.sum(1)
    else:
        check_fraction("localisation_precision", "frac", frac)
        k = torch.full((m.shape[0],), max(1, int(math.floor(frac * n_pix + 0.5))), device=m.device)
    inside = hits.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    score = inside.to(torch.float64) / k.clamp(min=1)
    score = torch.where(m.any(1), score, torch.full_like(score, float("nan")))
    return score.to(out_dtype(inputs))


@register_metric(
    "pointing_game",
    higher_is_better=True,
    needs=("masks",),
    kind="localisation",
    passes=(0, 0),
    control_role="baseline",
    paper="Zhang et al. 2016, Top-down Neural Attention by Excitation Backprop (ECCV)",
)
def pointing_game(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """Whether the maximum-attribution pixel lies inside the ground-truth mask.

    Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop" (ECCV):
    ``hit = 1[argmax_i phi_i ∈ M]`` (channel sum; ties to the first pixel in row-major order; no
    tolerance margin, the paper's 15 px would cover half a 28 px image). NaN for an empty mask.
    Higher is better.
    """
    validate_call("pointing_game", model, inputs, targets, attribution)
    m = _masks("pointing_game", context, inputs)
    top = rank_pixels(attribution.values)[:, :1]
    hit = m.gather(1, top).squeeze(1).to(out_dtype(inputs))
    return torch.where(m.any(1), hit, torch.full_like(hit, float("nan")))


def _mask_share(
    metric: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    context: MetricContext | None,
    signed: bool,
) -> Tensor:
    validate_call(metric, model, inputs, targets, attribution)
    m = _masks(metric, context, inputs)
    phi = attribution.values.detach().to(torch.float64).sum(1).flatten(1)  # channel sum, (B, H*W)
    total = phi.abs().sum(1)
    inside = torch.where(m, phi if signed else phi.abs(), torch.zeros_like(phi)).sum(1)
    area = m.sum(1).to(torch.float64) / m.shape[1]
    score = (inside / total) / area
    score = torch.where(m.any(1) & (total > 0), score, torch.full_like(score, float("nan")))
    return score.to(out_dtype(inputs))


@register_metric(
    "mask_share",
    higher_is_better=True,
    needs=("masks",),
    kind="localisation",
    passes=(0, 0),
    control_role="baseline",
    paper="Clark et al. 2026, Feature salience - not task-informativeness - drives ML model explanations "
    "(relative importance in the marked area); Arras et al. 2022 (relevance mass accuracy)",
)
def mask_share(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """Absolute attribution mass inside the mask relative to the mask's share of the image.

    Clark, Oliveira, Wilming & Haufe 2026 (arXiv 2602.09238), relative importance of the marked
    area; Arras, Osman & Samek 2022 (CLEVR-XAI) relevance mass accuracy divided by the area share:
    ``RI = (sum_{i in M} |phi_i| / sum_i |phi_i|) / (|M| / |I|)`` over pixels ``i`` of the image
    ``I`` (channel sums). 1 = as much attribution as area; a map that ignores the mask scores 0,
    one inside it alone ``|I| / |M|``. NaN for an empty mask or an all-zero map. Higher is better
    when the mask holds what the model uses (the planted marker of ``marked`` data).
    """
    return _mask_share("mask_share", model, inputs, targets, attribution, context, signed=False)


@register_metric(
    "mask_share_signed",
    higher_is_better=True,
    needs=("masks",),
    kind="localisation",
    passes=(0, 0),
    control_role="baseline",
    paper="Clark et al. 2026 (relative importance in the marked area), signed",
)
def mask_share_signed(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """The signed variant of :func:`mask_share`: ``(sum_{i in M} phi_i / sum_i |phi_i|) / (|M| / |I|)``.

    Clark, Oliveira, Wilming & Haufe 2026 (arXiv 2602.09238) report the relative importance of the
    marked area for signed and absolute maps alike; this keeps the sign.

    Positive when the map says the masked pixels raise the explained output, negative when it says
    they lower it (in ``[-|I|/|M|, |I|/|M|]``). NaN for an empty mask or an all-zero map.
    """
    return _mask_share("mask_share_signed", model, inputs, targets, attribution, context, signed=True)
