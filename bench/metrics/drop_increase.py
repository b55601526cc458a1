"""Drop rate and increase rate (Grad-CAM++): keep the top pixels, compare the target probability.

Each costs two forward passes per image: the input and its top-``frac`` pixels on the substrate.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.core.params import Range
from bench.metrics.base import MetricContext, check_fraction, out_dtype, register_metric, validate_call
from bench.metrics.perturbation import DEFAULT_CHUNK, SUBSTRATES, make_substrate, perturbed_probabilities, rank_pixels
from explainers.base import Attribution

KEEP_TOP = {"frac": Range(0, 1, low_open=True), "substrate": SUBSTRATES, "blur_sigma": Range(0), "chunk_size": Range(1)}


def kept_probabilities(model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, metric):
    """(Y, O): target probabilities of the input and of its top-``frac`` pixels on the substrate."""
    validate_call(metric, model, inputs, targets, attribution)
    check_fraction(metric, "frac", frac)
    n_pix = inputs.shape[2] * inputs.shape[3]
    k = max(1, int(math.floor(frac * n_pix + 0.5)))
    order = rank_pixels(attribution.values)
    sub = make_substrate(inputs, substrate, blur_sigma=blur_sigma)
    p = perturbed_probabilities(model, inputs, targets, order, sub, [n_pix, k], mode="insert", chunk_size=chunk_size)
    return p[:, 0], p[:, 1]


@register_metric(
    "drop_rate",
    higher_is_better=False,
    kind="faithfulness",
    passes=(0, 2),
    constraints=KEEP_TOP,
    control_role="baseline",
    paper="Chattopadhay et al. 2018, Grad-CAM++ (WACV)",
)
def drop_rate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    frac: float = 0.15,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Relative drop of the target probability when only the top-``frac`` pixels are kept.

    Chattopadhay et al. 2018, "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks" (WACV), "Average Drop %" per image, as a fraction:
    ``drop = max(0, Y - O) / Y`` with ``Y = softmax(f(x))[t]`` and ``O = softmax(f(x'))[t]``,
    where ``x'`` keeps exactly ``round(frac * H * W)`` top-ranked pixels (:func:`rank_pixels`)
    and sets the others to the substrate. Variant: the paper multiplies the image by the
    (continuous) map; a binary top-k mask makes the score independent of the attribution scale.
    Lower is better.
    """
    y, o = kept_probabilities(model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, "drop_rate")
    return ((y - o).clamp(min=0) / y).to(out_dtype(inputs))


@register_metric(
    "increase_rate",
    higher_is_better=True,
    kind="faithfulness",
    passes=(0, 2),
    constraints=KEEP_TOP,
    control_role="baseline",
    paper="Chattopadhay et al. 2018, Grad-CAM++ (WACV)",
)
def increase_rate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    frac: float = 0.15,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Whether keeping only the top-``frac`` pixels increases the target probability.

    Chattopadhay et al. 2018, "Grad-CAM++" (WACV), "Increase in Confidence" per image:
    ``increase = 1[O > Y]`` with ``Y``, ``O`` the target-class softmax probabilities of the input
    and of the top-``frac`` pixels on the substrate, as in :func:`drop_rate`. Its mean over
    images is the paper's rate. Higher is better.
    """
    y, o = kept_probabilities(
        model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, "increase_rate"
    )
    return (o > y).to(out_dtype(inputs))
