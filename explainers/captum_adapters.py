"""Adapters for Captum (Kokhlikyan et al. 2020, "Captum: A unified and generic model
interpretability library for PyTorch").

Captum is imported inside each adapter so that ``import explainers`` stays fast. Captum batches
over images and takes per-image targets natively; memory is bounded by the chunk parameters.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.params import Range
from explainers.base import (Attribution, check_choice, check_positive, chunks, image_seeds, library_version,
                             mean_target_score, model_guard, preserved_rng, register_explainer, target_scores)
from explainers.rescale import choose_engine, deepshap_passes, rescale_attributions
from models.safety import ReLUTreeMaxPool2d

BASELINES = ("zero", "mean")
CAPTUM_EPS = 1e-10  # captum.attr._core.deep_lift.nonlinear: |delta_in| below it -> the plain gradient


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Captum's per-call notices (hooks on activations, inputs set to require grad)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(hooks and attributes|did not already require gradients).*")
        yield


IG_RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right")

@register_explainer("captum.integrated_gradients", library="captum", additive=True, budget="n_steps",
                    passes=lambda p, n_bg: (p["n_steps"], 0),  # one gradient per quadrature point
                    constraints={"n_steps": Range(1), "baseline": ("zero", "mean"), "internal_batch_size": Range(1),
                                 "method": IG_RULES},
                    paper="Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks")
def integrated_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor,
                         n_steps: int = 50, baseline: str = "zero", internal_batch_size: int | None = 32,
                         method: str = "gausslegendre") -> Attribution:
    """Integrated gradients: (x - x') * int_0^1 df/dx(x' + a(x - x')) da (Gauss-Legendre, ``n_steps``).

    ``baseline``: ``"zero"`` (black image) or ``"mean"`` (the background's mean image).
    Additive up to the quadrature error: ``base_values`` = f(baseline) and Captum's convergence
    delta (sum - (f(x) - f(x'))) per image is ``meta["convergence_delta"]``.
    ``internal_batch_size`` bounds the rows (images x steps) per forward/backward pass.
    ``method``: Captum's quadrature rule (default Captum's ``"gausslegendre"``). On ResNets trained
    on PneumoniaMNIST and at random weights, ``"riemann_middle"`` has 11-25 % lower error per
    step (docs/benchmarks.md, "Accuracy per pass"): the integrand is piecewise constant along
    the path (ReLU kinks), where Gauss-Legendre's polynomial exactness buys nothing.
    """
    from captum.attr import IntegratedGradients

    name = "captum.integrated_gradients"
    check_positive(name, n_steps=n_steps, internal_batch_size=internal_batch_size)
    check_choice(name, "baseline", baseline, BASELINES)
    check_choice(name, "method", method, IG_RULES)
    ref = (torch.zeros_like(inputs) if baseline == "zero"
           else background.mean(0, keepdim=True).expand_as(inputs).contiguous())
    with model_guard(model), _quiet():
        values, delta = IntegratedGradients(model).attribute(
            inputs, baselines=ref, target=targets, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
    meta = {"library_version": library_version("captum"), "n_steps": n_steps, "method": method,
            "baseline": baseline, "convergence_delta": delta.detach().to(inputs.dtype)}
    return Attribution(values.detach(), target_scores(model, inputs, targets), target_scores(model, ref, targets), meta)


@register_explainer("captum.gradient_shap", library="captum", additive=False, stochastic=True, budget="n_samples",
                    family="expected_gradients",  # at stdevs=0 (the default): the frontier's shared reference
                    passes=lambda p, n_bg: (p["n_samples"], 0),  # one gradient per (baseline, alpha) sample
                    constraints={"n_samples": Range(1), "stdevs": Range(0)},
                    paper="Lundberg & Lee 2017 (GradientSHAP = expected gradients with optional noise)")
def gradient_shap(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor, n_samples: int = 50,
                  stdevs: float = 0.0, seed: int = 0) -> Attribution:
    """GradientSHAP: E_{x'~bg, a~U(0,1), e~N(0,stdevs^2)} [(x + e - x') * df/dx(x' + a(x + e - x'))].

    The same estimator as ``shap.gradient``, additive only in expectation (``additive=False``;
    ``outputs``/``base_values`` = f(x), E_bg f are reported to measure the sampling gap).
    Captum draws baselines, ``a`` and the noise from numpy's and torch's global generators for
    the whole batch at once, so the adapter calls it once per image under a per-image seed
    (:func:`~explainers.base.image_seeds`); each call is one batch of ``n_samples`` rows.
    """
    from captum.attr import GradientShap

    name = "captum.gradient_shap"
    check_positive(name, n_samples=n_samples)
    seeds = image_seeds(seed, inputs)
    explainer = GradientShap(model)
    out = []
    with model_guard(model), preserved_rng(inputs.device), _quiet():
        for i in range(inputs.shape[0]):
            np.random.seed(seeds[i])
            torch.manual_seed(seeds[i])
            out.append(explainer.attribute(inputs[i:i + 1], baselines=background, n_samples=n_samples,
                                           stdevs=float(stdevs), target=targets[i:i + 1]).detach())
    meta = {"library_version": library_version("captum"), "n_samples": n_samples, "stdevs": float(stdevs),
            "background_size": background.shape[0], "seeds": seeds, "additive_in_expectation": True}
    return Attribution(torch.cat(out), target_scores(model, inputs, targets),
                       mean_target_score(model, background, targets), meta)


@register_explainer("captum.deeplift_shap", library="captum", additive=True, passes=deepshap_passes,
                    constraints={"chunk_size": Range(1), "baseline_chunk": Range(1), "pair_chunk": Range(1),
                                 "engine": ("auto", "captum", "batched")},
                    paper="Lundberg & Lee 2017 (DeepSHAP); Shrikumar et al. 2017 (DeepLIFT rescale)")
def deeplift_shap(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor,
                  chunk_size: int = 1, baseline_chunk: int = 10, engine: str = "auto",
                  pair_chunk: int = 16) -> Attribution:
    """DeepLiftShap: DeepLIFT rescale attributions averaged over the background (same rule as shap.deep).

    Captum expands every image x every baseline it is given into one pass (measured 8.7 GB for 2
    resnet50 images x 50 baselines at 28 px), so images go ``chunk_size`` at a time and baselines
    ``baseline_chunk`` at a time; DeepLiftShap is the mean over baselines, so the chunk means
    weighted by chunk size give the same values.

    Captum 0.9.0's max-pool rule is not additive (measured: relative gap 0.44 on resnet18 with the
    64 px stem's non-overlapping 2x2 pool, against 2e-6 without a pool), so unpadded max-pools are
    explained through an exactly equivalent copy of the model in which each becomes
    :class:`models.safety.ReLUTreeMaxPool2d` (max(a, b) = a + relu(b - a), exact for any input
    when there is no padding); Captum's rescale rule on those ReLUs is additive.

    ``engine``: ``"captum"`` runs Captum's DeepLiftShap as above. Its hooks evaluate every
    (image, baseline) pair as two rows (input and baseline) and keep both, about 3x the
    pass-count floor (tests/benchmarks); ``"batched"`` computes the same rescale values with
    :mod:`explainers.rescale` on the same (pool-rewritten) network, ``pair_chunk`` pairs per
    linearised forward + backward (ReLU networks only; Captum's threshold: where a ReLU's
    ``|a(x) - a(r)| < 1e-10`` its gradient stands in for the multiplier); ``"auto"`` takes "batched" where it
    applies, else "captum". ``meta["engine"]`` records which ran; tests/test_explainers.py checks
    that both engines give the same values.
    """

    name = "captum.deeplift_shap"
    check_positive(name, chunk_size=chunk_size, baseline_chunk=baseline_chunk, pair_chunk=pair_chunk)
    explained, rewritten = _without_maxpools(model)
    use, why = choose_engine(name, engine, "captum", explained, inputs[:1])
    meta = {"library_version": library_version("captum"), "background_size": background.shape[0], "rule": "rescale",
            "maxpools_rewritten": rewritten, "engine": use, **why}
    if use == "batched":
        with model_guard(model), model_guard(explained):
            values = rescale_attributions(explained, inputs, targets, background, pair_chunk=pair_chunk,
                                          eps=CAPTUM_EPS)
        return Attribution(values, target_scores(model, inputs, targets), mean_target_score(model, background, targets),
                           meta)
    from captum.attr import DeepLiftShap

    explainer = DeepLiftShap(explained)
    out = []
    with model_guard(model), model_guard(explained), _quiet():
        n = background.shape[0]
        for s in chunks(inputs.shape[0], chunk_size):
            total = torch.zeros_like(inputs[s])
            for b in chunks(n, baseline_chunk):
                part = background[b]
                if part.shape[0] == 1:  # Captum's DeepLiftShap needs at least two baselines
                    part = part.expand(2, *part.shape[1:])
                total += explainer.attribute(inputs[s], baselines=part, target=targets[s]).detach() * (b.stop - b.start)
            out.append(total / n)
    return Attribution(torch.cat(out), target_scores(model, inputs, targets),
                       mean_target_score(model, background, targets), meta)


def _without_maxpools(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` itself, or an eval-mode copy whose unpadded ``nn.MaxPool2d`` are ReLU trees."""

    def convertible(m: nn.Module) -> bool:
        return (isinstance(m, nn.MaxPool2d) and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1))
                and not m.ceil_mode and not m.return_indices)

    if not any(convertible(m) for m in model.modules()):
        return model, 0
    copy = __import__("copy").deepcopy(model)
    count = 0
    for parent in list(copy.modules()):
        for name, child in list(parent.named_children()):
            if convertible(child):
                setattr(parent, name, ReLUTreeMaxPool2d(child.kernel_size, child.stride, 0))
                count += 1
    return copy.eval(), count


@register_explainer("captum.saliency", library="captum", additive=False, passes=(1, 0),
                    constraints={"batch_size": Range(1)},
                    paper="Simonyan et al. 2014, Deep Inside Convolutional Networks")
def saliency(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor,
             batch_size: int = 64) -> Attribution:
    """Saliency: |df/dx| (Captum's default ``abs=True``); ``batch_size`` images per pass."""
    from captum.attr import Saliency

    check_positive("captum.saliency", batch_size=batch_size)
    explainer = Saliency(model)
    with model_guard(model), _quiet():
        values = torch.cat([explainer.attribute(inputs[s], target=targets[s], abs=True).detach()
                            for s in chunks(inputs.shape[0], batch_size)])
    return Attribution(values, meta={"library_version": library_version("captum"), "abs": True})
