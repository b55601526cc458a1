"""Model randomisation (Adebayo et al. 2018): an explanation that survives randomising the model
explains nothing about it. Re-runs the explainer once per cascade step (``needs=("explain",)``).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from bench.metrics.base import MetricContext, out_dtype, register_metric, require_context, spearman, validate_call
from explainers.base import Attribution


def _randomisation_passes(params, explainer_passes, n_layers):
    """The explainer's passes once per cascade step; unknown without them."""
    if explainer_passes is None or n_layers is None:
        return None
    n = cascade_length(n_layers, params.get("steps", 0))
    return n * float(explainer_passes[0]), n * float(explainer_passes[1])


def cascade_length(n_layers: int, steps: int) -> int:
    """Cascade steps run: the top ``steps`` of ``n_layers`` layers, all of them for ``steps == 0``."""
    steps = int(steps)
    if steps < 0:
        raise BenchError(f"randomisation: steps must be >= 0 (0 = every layer), got {steps}")
    return min(steps, n_layers) if steps > 0 else n_layers


def randomisation_layers(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters, top (output) first: the cascade order."""
    return [name for name, m in model.named_children() if any(True for _ in m.parameters())][::-1]


def randomisation_per_layer(
    model: nn.Module,
    inputs: Tensor,
    attribution: Attribution,
    explain: Callable[[nn.Module], Tensor],
    *,
    seed: int = 0,
    absolute: bool = True,
    steps: int = 0,
) -> tuple[Tensor, list[str]]:
    """Spearman similarity ``(B, L)`` after each cumulative randomisation step, and the layer names.

    Works on a deep copy; step ``l`` re-initialises (``reset_parameters()`` of every submodule,
    seeded with ``seed + l``, the global RNG state restored afterwards) the l-th layer of
    :func:`randomisation_layers` on top of the previous ones, then calls ``explain``.
    ``steps > 0`` stops the cascade after the top ``steps`` layers (``L = min(steps, layers)``);
    ``0`` runs all of them.
    """
    names = randomisation_layers(model)
    names = names[: cascade_length(len(names), steps)]
    if not names:
        raise BenchError("randomisation: the model has no top-level child module with parameters")
    original = attribution.values.detach()
    if absolute:
        original = original.abs()
    rand = copy.deepcopy(model).eval()
    children = dict(rand.named_children())
    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    sims = []
    for step, name in enumerate(names):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed) + step)
            for m in children[name].modules():
                reset = getattr(m, "reset_parameters", None)
                if reset is not None:
                    reset()
        values = explain(rand).detach()
        if values.shape != original.shape:
            raise BenchError(
                f"randomisation: explain(model) returned {tuple(values.shape)}, expected {tuple(original.shape)}"
            )
        sims.append(spearman(original, values.abs() if absolute else values))
    return torch.stack(sims, dim=1).to(device=inputs.device, dtype=out_dtype(inputs)), names


@register_metric(
    "randomisation_similarity",
    higher_is_better=False,
    needs=("explain",),
    kind="randomisation",
    control_role="baseline",
    passes=_randomisation_passes,
    constraints={"steps": Range(0)},
    paper="Adebayo et al. 2018, Sanity Checks for Saliency Maps (NeurIPS)",
)
def randomisation_similarity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    seed: int = 0,
    absolute: bool = True,
    steps: int = 0,
) -> Tensor:
    """Mean rank similarity between the attribution and those of cascadingly randomised models.

    Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS), cascading randomisation
    from the top: the top-level child modules with parameters are re-initialised in reverse
    order (fc, layer4, ..., stem), cumulatively, on a deep copy; after step ``l``
    ``s_l = spearman(|phi|, |phi_l|)`` over all C*H*W values (``absolute=True``, the paper's main
    figure). Score = ``nanmean_l s_l`` (a step whose map is constant has no rank correlation and
    is skipped). Per-layer values: :func:`randomisation_per_layer`. A method that ignores the
    model scores 1; lower is better. ``steps > 0`` truncates the cascade to the top ``steps``
    layers (each step re-runs the explainer, so the metric costs ``steps`` explanations instead of
    one per layer; the paper's first steps, fc and the last block, already separate the methods
    that ignore the model).
    """
    validate_call("randomisation_similarity", model, inputs, targets, attribution)
    explain = require_context(context, "explain", "randomisation_similarity")
    sims, _ = randomisation_per_layer(model, inputs, attribution, explain, seed=seed, absolute=absolute, steps=steps)
    return torch.nanmean(sims, dim=1)
