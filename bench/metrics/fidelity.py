"""Infidelity (Yeh et al. 2019): how badly the attribution, read as a linear model of the output,
predicts the output change under random input perturbations. Captum's ``infidelity`` with the
same perturbations gives the same numbers (tests/test_metrics_reference.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.core.params import Range
from bench.metrics.base import MetricContext, out_dtype, register_metric, validate_call
from bench.metrics.perturbation import DEFAULT_CHUNK, chunked_outputs, per_image_draws, target_outputs
from explainers.base import OUTPUT_SPACES, Attribution


def gaussian_perturbations(inputs: Tensor, samples: int, std: float, seed: int) -> Tensor:
    """``(B, S, C, H, W)`` perturbations ``I ~ N(0, std^2)`` per value, seeded per image."""
    shape = (int(samples), *inputs.shape[1:])
    return per_image_draws(
        inputs, seed, "infidelity", lambda g: torch.randn(shape, generator=g, dtype=torch.float64) * std
    )


def infidelity_from_perturbations(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    values: Tensor,
    perturbations: Tensor,
    *,
    normalise: bool = True,
    output: str = "logit",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Infidelity ``(B,)`` of ``values (B, C, H, W)`` under the given ``perturbations (B, S, C, H, W)``.

    ``d_s = I_s . phi``, ``D_s = f(x) - f(x - I_s)``; ``normalise=False``: ``mean_s (d_s - D_s)^2``;
    ``normalise=True``: ``mean_s (beta d_s - D_s)^2`` with ``beta = sum_s d_s D_s / sum_s d_s^2``
    (0 when every ``d_s`` is 0), Captum's ``normalize=True``. Sums in float64.
    """
    b, s = perturbations.shape[:2]
    flat = perturbations.flatten(0, 1)
    with torch.no_grad():
        f0 = target_outputs(model, inputs, targets, output)
    fs = chunked_outputs(
        model,
        inputs,
        targets,
        b * s,
        lambda ids: (inputs[ids // s] - flat[ids], ids // s),
        output=output,
        chunk_size=chunk_size,
    ).view(b, s)
    d = (perturbations.to(torch.float64) * values.to(torch.float64).unsqueeze(1)).flatten(2).sum(2)
    diff = (f0.unsqueeze(1) - fs).to(torch.float64)
    if normalise:
        dd = d.square().sum(1)
        beta = torch.where(dd > 0, (d * diff).sum(1) / dd.clamp(min=torch.finfo(dd.dtype).tiny), torch.zeros_like(dd))
        d = beta.unsqueeze(1) * d
    return (d - diff).square().mean(1).to(out_dtype(inputs))


@register_metric(
    "infidelity",
    higher_is_better=False,
    kind="faithfulness",
    reads="raw",
    passes=lambda p, e, n: (0.0, float(p["samples"] + 1)),
    control_role="baseline",
    constraints={"samples": Range(1), "std": Range(0, low_open=True), "output": OUTPUT_SPACES, "chunk_size": Range(1)},
    paper="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)",
)
def infidelity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    samples: int = 50,
    std: float = 0.1,
    normalise: bool = True,
    output: str = "logit",
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Mean squared error of the attribution as a linear predictor of the output change under noise.

    Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations" (NeurIPS):
    ``INFD = E_I[(I . phi - (f(x) - f(x - I)))^2]`` with ``I ~ N(0, std^2)`` per value (the
    paper's noisy-baseline perturbation, ``std`` = 0.1 in input units), estimated from
    ``samples`` = 50 seeded draws per image. ``f`` is the target's logit (``output="logit"``,
    the default explained space; set ``"probability"`` to match a run that explains
    probabilities). ``normalise=True`` (Captum's ``normalize``) first scales ``phi`` by the
    least-squares ``beta = E[(I . phi) D] / E[(I . phi)^2]``, so the score does not depend on
    the attribution's scale, only on its direction; ``False`` is the paper's raw definition.
    Reads the raw attribution. Lower is better.
    """
    validate_call("infidelity", model, inputs, targets, attribution)
    perturbations = gaussian_perturbations(inputs, samples, std, seed)
    return infidelity_from_perturbations(
        model,
        inputs,
        targets,
        attribution.values,
        perturbations,
        normalise=normalise,
        output=output,
        chunk_size=chunk_size,
    )
