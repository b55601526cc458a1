"""Complexity: how concentrated an explanation is, from the attribution alone (no model pass).
Sparseness (Chalasani et al. 2020, a Gini index) and complexity (Bhatt et al. 2020, an entropy).

Both formulas are defined on magnitudes: they take ``|phi|`` of the (preprocessed) attribution
as a step of the formula, over all C*H*W values (the same whatever the preprocessing mode:
``abs`` and ``signed`` give the same scores, ``positive`` scores the positive part). An
all-zero map has no distribution: NaN.

What a control means here (``control_role="none"``): the ``random`` control's map (Gaussian
noise) is about as spread out as a map can be, and a map that puts everything on one pixel is
the sparsest possible whatever it explains; the controls are no chance level.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.metrics.base import MetricContext, out_dtype, register_metric, validate_call
from explainers.base import Attribution


def _magnitudes(metric: str, model, inputs, targets, attribution) -> tuple[Tensor, Tensor]:
    """``|phi|`` flattened ``(B, N)`` in float64, and whether each map has any mass ``(B,)``."""
    validate_call(metric, model, inputs, targets, attribution)
    a = attribution.values.detach().flatten(1).abs().to(torch.float64)
    return a, a.sum(1) > 0


PAPER_CHALASANI = "Chalasani et al. 2020, Concise Explanations of Neural Networks using Adversarial Training (ICML)"


@register_metric(
    "sparseness", higher_is_better=True, kind="complexity", passes=(0, 0), control_role="none", paper=PAPER_CHALASANI
)
def sparseness(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """Gini index of the absolute attribution: 1 - 1/N for one nonzero value, 0 for a constant map.

    Chalasani et al. 2020, "Concise Explanations of Neural Networks using Adversarial Training"
    (ICML), as Quantus' ``Sparseness``: with ``a_(1) <= ... <= a_(N)`` the sorted ``|phi|`` over
    all ``N`` = C*H*W values, ``G = sum_i (2 i - N - 1) a_(i) / (N sum_i a_(i))``. Variant:
    Quantus adds 1e-7 to every value first (so a zero map scores 0 there); ours returns NaN for
    a zero map. Higher is better (a sparser, more concise explanation).
    """
    a, mass = _magnitudes("sparseness", model, inputs, targets, attribution)
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    gini = ((2 * i - n - 1) * torch.sort(a, dim=1).values).sum(1) / (n * a.sum(1))
    return torch.where(mass, gini, torch.full_like(gini, float("nan"))).to(out_dtype(inputs))


@register_metric(
    "complexity",
    higher_is_better=False,
    kind="complexity",
    passes=(0, 0),
    control_role="none",
    paper="Bhatt et al. 2020, Evaluating and Aggregating Feature-based Model Explanations (IJCAI)",
)
def complexity(
    model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution, *, context: MetricContext | None = None
) -> Tensor:
    """Entropy of the fractional contributions ``|phi_i| / sum |phi|``: 0 for one pixel, ln N for a constant map.

    Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model Explanations" (IJCAI), as
    Quantus' ``Complexity``: ``P_i = |phi_i| / sum_j |phi_j|`` over all ``N`` = C*H*W values,
    ``complexity = -sum_i P_i ln P_i`` (natural log, ``0 ln 0 = 0``; Quantus adds 1e-12 inside
    the log). NaN for a zero map. Lower is better (fewer features carry the explanation).
    """
    a, mass = _magnitudes("complexity", model, inputs, targets, attribution)
    entropy = torch.special.entr(a / a.sum(1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)).sum(1)
    return torch.where(mass, entropy, torch.full_like(entropy, float("nan"))).to(out_dtype(inputs))
