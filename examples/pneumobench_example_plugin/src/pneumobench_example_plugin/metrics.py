"""An example third-party metric: the top-k deletion drop of docs/adding-a-metric.md.

Registered as ``example.topk_deletion_drop`` through the entry-point group ``bench.metrics``
(see pyproject.toml); after ``pip install examples/pneumobench_example_plugin``,
``python -m bench list metrics`` shows it and a run config can name it in ``metrics.names``
(its parameters go in ``[metrics.params."example.topk_deletion_drop"]``).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.metrics import (
    DEFAULT_CHUNK,
    MetricContext,
    make_substrate,
    perturbed_probabilities,
    rank_pixels,
    register_metric,
)
from bench.metrics.base import check_fraction, validate_call
from explainers import Attribution

NAME = "example.topk_deletion_drop"


@register_metric(
    NAME,
    higher_is_better=True,
    kind="faithfulness",
    passes=(0, 2),
    paper="Samek et al. 2017, Evaluating the Visualization of What a DNN Has Learned (IEEE TNNLS)",
)
def topk_deletion_drop(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    frac: float = 0.1,
    substrate: str = "zero",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Drop of the target probability when the top-``frac`` pixels are deleted (one MoRF step).

    Samek et al. 2017, "Evaluating the Visualization of What a Deep Neural Network Has Learned"
    (IEEE TNNLS), one step of the most-relevant-first (MoRF) curve: ``drop = p(x) - p(x_k)`` with
    ``p = softmax(f(.))[target]`` and ``x_k`` = ``x`` with its ``k = round(frac * H * W)``
    top-ranked pixels (``bench.metrics.rank_pixels``) set to the substrate. Variant: the paper
    replaces 9 x 9 regions by uniform noise and averages the drops over many steps (AOPC). Two
    forward passes per image (``x`` and ``x_k``). Higher is better.
    """
    validate_call(NAME, model, inputs, targets, attribution)
    check_fraction(NAME, "frac", frac)
    k = max(1, math.floor(frac * inputs.shape[2] * inputs.shape[3] + 0.5))
    p = perturbed_probabilities(
        model,
        inputs,
        targets,
        rank_pixels(attribution.values),
        make_substrate(inputs, substrate),
        [0, k],
        mode="delete",
        chunk_size=chunk_size,
    )
    return p[:, 0] - p[:, 1]  # (B,): unperturbed minus deleted
