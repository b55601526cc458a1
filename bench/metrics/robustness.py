"""Robustness: how much an explanation changes when the input changes a little and the model's
answer should not. Max- and avg-sensitivity (Yeh et al. 2019) and the local Lipschitz estimate
(Alvarez-Melis & Jaakkola 2018).

Each re-runs the explainer (``needs=("explain",)``: ``context.explain(model, inputs)``, same
targets, parameters and seed) on ``samples`` seeded perturbations of every image, one batched
call per perturbation: it costs ``samples`` explanations per image (its pass rule says so, so the
cost floor and the run's cost report count them). The attributions compared are the explainer's
raw values (``reads="raw"``): the re-explanations are raw too.

What a control means here (``control_role="none"``): a map that ignores the input is perfectly
robust (score 0) and the ``random`` control, drawn afresh for every perturbed image, is about
as unstable as a map can be; neither is a chance level a real explainer has to beat.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from bench.metrics.base import MetricContext, out_dtype, register_metric, require_context, validate_call
from bench.metrics.perturbation import per_image_draws
from explainers.base import Attribution

SENSITIVITY = {"samples": Range(1), "radius": Range(0, low_open=True)}
PAPER_YEH = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"


def _reexplanation_passes(params, explainer_passes, n_layers):
    """``samples`` explanations per image; unknown without the explainer's passes."""
    if explainer_passes is None:
        return None
    return params["samples"] * float(explainer_passes[0]), params["samples"] * float(explainer_passes[1])


def reexplain(metric: str, model: nn.Module, inputs: Tensor, deltas: Tensor, explain: Callable[..., Tensor]) -> Tensor:
    """The explanations ``(B, S, C, H, W)`` of ``inputs + deltas[:, s]`` for each of the ``S``
    perturbations ``deltas (B, S, C, H, W)``: one ``explain(model, perturbed)`` call (a batch of
    ``B`` images) per perturbation."""
    out = []
    for s in range(deltas.shape[1]):
        values = explain(model, inputs + deltas[:, s])
        if values.shape != inputs.shape:
            raise BenchError(
                f"metric {metric!r}: explain(model, inputs) returned {tuple(values.shape)}, "
                f"expected {tuple(inputs.shape)}"
            )
        out.append(values.detach().to(inputs.dtype))
    return torch.stack(out, dim=1)


def relative_sensitivities(values: Tensor, perturbed: Tensor) -> Tensor:
    """``||phi(x + delta_s) - phi(x)||_2 / ||phi(x)||_2`` over all C*H*W values: ``(B, S)``.

    ``values (B, C, H, W)``, ``perturbed (B, S, C, H, W)``; NaN for an image whose map is zero
    (a relative change of nothing is undefined; Captum divides by 1 there, Quantus by 0).
    """
    num = torch.linalg.vector_norm((perturbed - values.unsqueeze(1)).flatten(2), dim=2)
    den = torch.linalg.vector_norm(values.flatten(1), dim=1, keepdim=True)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.full_like(num, float("nan")))


def uniform_perturbations(inputs: Tensor, samples: int, radius: float, seed: int, salt: str) -> Tensor:
    """``(B, S, C, H, W)`` draws uniform in the L-infinity ball of ``radius`` (Captum's
    ``sensitivity_max`` default perturbation), seeded per image (:func:`per_image_draws`)."""
    shape = (int(samples), *inputs.shape[1:])
    return per_image_draws(
        inputs, seed, salt, lambda g: (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1) * radius
    )


def _sensitivities(metric, model, inputs, targets, attribution, context, samples, radius, seed) -> Tensor:
    validate_call(metric, model, inputs, targets, attribution)
    explain = require_context(context, "explain", metric)
    # max and avg share their perturbations (one salt): for a seed they see the same perturbed images
    deltas = uniform_perturbations(inputs, samples, radius, seed, "sensitivity")
    return relative_sensitivities(
        attribution.values.to(out_dtype(inputs)), reexplain(metric, model, inputs, deltas, explain)
    )


@register_metric(
    "max_sensitivity",
    higher_is_better=False,
    needs=("explain",),
    reads="raw",
    kind="robustness",
    passes=_reexplanation_passes,
    constraints=SENSITIVITY,
    control_role="none",
    paper=PAPER_YEH,
)
def max_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    samples: int = 10,
    radius: float = 0.02,
    seed: int = 0,
) -> Tensor:
    """Largest relative change of the explanation over small random input perturbations.

    Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations" (NeurIPS):
    ``SENS_max = max_{||delta||_inf <= r} ||phi(x + delta) - phi(x)|| / ||phi(x)||``, estimated as
    in Captum's ``sensitivity_max`` (its defaults: ``r`` = ``radius`` = 0.02, ``samples`` = 10
    draws ``delta ~ U[-r, r]`` per value, Frobenius norm over all C*H*W values, relative to
    ``||phi(x)||``) and Quantus' ``MaxSensitivity`` (defaults 200 draws of radius 0.2). The
    draws are seeded per image (``seed``); the explainer is re-run on each perturbed batch.
    NaN where ``phi(x) = 0``. Lower is better.
    """
    return _sensitivities("max_sensitivity", model, inputs, targets, attribution, context, samples, radius, seed).amax(
        dim=1
    )


@register_metric(
    "avg_sensitivity",
    higher_is_better=False,
    needs=("explain",),
    reads="raw",
    kind="robustness",
    passes=_reexplanation_passes,
    constraints=SENSITIVITY,
    control_role="none",
    paper=PAPER_YEH,
)
def avg_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    samples: int = 10,
    radius: float = 0.02,
    seed: int = 0,
) -> Tensor:
    """Mean relative change of the explanation over small random input perturbations.

    Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations" (NeurIPS), the
    average instead of the maximum (Quantus' ``AvgSensitivity``):
    ``SENS_avg = E_{delta ~ U[-r, r]} ||phi(x + delta) - phi(x)|| / ||phi(x)||``, the mean over
    the same ``samples`` seeded draws as :func:`max_sensitivity` (same ``seed``, same perturbed
    images). NaN where ``phi(x) = 0``. Lower is better.
    """
    return _sensitivities("avg_sensitivity", model, inputs, targets, attribution, context, samples, radius, seed).mean(
        dim=1
    )


def _max_normalised(values: Tensor) -> Tensor:
    """Each map divided by its own largest absolute value (Quantus' ``normalise_by_max``); NaN for a zero map."""
    peak = values.abs().flatten(-3).amax(-1)[..., None, None, None]
    return values / peak


@register_metric(
    "local_lipschitz_estimate",
    higher_is_better=False,
    needs=("explain",),
    reads="raw",
    kind="robustness",
    passes=_reexplanation_passes,
    constraints={"samples": Range(1), "std": Range(0, low_open=True)},
    control_role="none",
    paper="Alvarez-Melis & Jaakkola 2018, On the Robustness of Interpretability Methods (ICML WHI)",
)
def local_lipschitz_estimate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    samples: int = 10,
    std: float = 0.1,
    normalise: bool = True,
    seed: int = 0,
) -> Tensor:
    """Largest ratio of explanation change to input change over random Gaussian neighbours.

    Alvarez-Melis & Jaakkola 2018, "On the Robustness of Interpretability Methods" (ICML
    Workshop on Human Interpretability): ``L(x) = max_{x'} ||phi(x) - phi(x')||_2 / ||x - x'||_2``
    over neighbours ``x' = x + delta``, ``delta ~ N(0, std^2)`` per value, as Quantus'
    ``LocalLipschitzEstimate`` (its defaults: ``std`` = 0.1, 200 draws; ours ``samples`` = 10,
    seeded per image). The ratio is not scale-free in ``phi``: with ``normalise=True`` (Quantus'
    default) each map, original and re-explained, is first divided by its own largest absolute
    value, so explainers of different scales compare; ``False`` uses the raw values. NaN where
    a normalised map is zero. Lower is better.
    """
    metric = "local_lipschitz_estimate"
    validate_call(metric, model, inputs, targets, attribution)
    explain = require_context(context, "explain", metric)
    shape = (int(samples), *inputs.shape[1:])
    deltas = per_image_draws(inputs, seed, metric, lambda g: torch.randn(shape, generator=g, dtype=torch.float64) * std)
    values = attribution.values.to(out_dtype(inputs))
    perturbed = reexplain(metric, model, inputs, deltas, explain)
    if normalise:
        values, perturbed = _max_normalised(values), _max_normalised(perturbed)
    num = torch.linalg.vector_norm((perturbed - values.unsqueeze(1)).flatten(2), dim=2)
    return (num / torch.linalg.vector_norm(deltas.flatten(2), dim=2)).amax(dim=1)
