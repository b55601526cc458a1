"""Additivity (completeness): does the attribution sum to the output change it explains?

Both metrics read the raw attribution (``reads="raw"``): additivity is a property of the values
the explainer returned, not of a ranking after preprocessing. They cost no model pass: the
adapter reports ``outputs`` and ``base_values``. The gap is
:func:`explainers.base.completeness_gap`, the one definition every part of the bench reads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from bench.metrics.base import MetricContext, out_dtype, register_metric
from explainers.base import Attribution, completeness_gap, relative_completeness_gap


def _additive(metric: str, inputs: Tensor, attribution: Attribution, context: MetricContext | None) -> bool:
    """Whether the attribution reports ``outputs`` and ``base_values`` (a one-line error when its shape is wrong,
    or when an explainer registered as additive left them out)."""
    if attribution.values.shape != inputs.shape:
        raise BenchError(
            f"metric {metric!r}: attribution values {tuple(attribution.values.shape)} "
            f"do not match inputs {tuple(inputs.shape)}"
        )
    if attribution.outputs is None or attribution.base_values is None:
        if context is not None and context.additive:
            raise BenchError(
                f"metric {metric!r}: the explainer is registered as additive but returned no "
                f"outputs/base_values; additive adapters must fill both"
            )
        return False
    return True


@register_metric(
    "additivity_error",
    higher_is_better=False,
    kind="axiomatic",
    reads="raw",
    passes=(0, 0),
    control_role="none",
    paper="Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy)",
)
def additivity_error(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """Absolute completeness gap of an additive attribution, in the explained output's units.

    Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks" (completeness); Lundberg &
    Lee 2017, "A Unified Approach to Interpreting Model Predictions" (local accuracy):
    ``|sum_i phi_i - (outputs - base_values)|``, summed in float64. NaN when the method is not
    additive (``attribution.outputs`` or ``base_values`` is None). Lower is better.
    """
    if not _additive("additivity_error", inputs, attribution, context):
        return torch.full((inputs.shape[0],), float("nan"), device=inputs.device, dtype=out_dtype(inputs))
    return completeness_gap(attribution).abs().to(device=inputs.device, dtype=out_dtype(inputs))


@register_metric(
    "additivity_error_relative",
    higher_is_better=False,
    kind="axiomatic",
    reads="raw",
    passes=(0, 0),
    control_role="none",
    constraints={"eps": Range(0, low_open=True)},
    paper="Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy)",
)
def additivity_error_relative(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Completeness gap relative to the output change it should explain.

    Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy):
    ``|sum_i phi_i - (outputs - base_values)| / max(|outputs - base_values|, eps)``; ``eps``
    (default 1e-8) only guards a zero output change, where the ratio is meaningless and huge.
    NaN when the method is not additive. Lower is better.
    """
    if not _additive("additivity_error_relative", inputs, attribution, context):
        return torch.full((inputs.shape[0],), float("nan"), device=inputs.device, dtype=out_dtype(inputs))
    return relative_completeness_gap(attribution, eps).to(device=inputs.device, dtype=out_dtype(inputs))
