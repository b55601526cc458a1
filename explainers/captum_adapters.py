"""Adapters for Captum (Kokhlikyan et al. 2020, "Captum: A unified and generic model
interpretability library for PyTorch").

Captum is imported inside each adapter so that ``import explainers`` stays fast. Captum batches
over images and takes per-image targets natively; memory is bounded by the chunk parameters.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from explainers.base import (
    CAM_LAYER,
    PRECISION_CHOICES,
    Attribution,
    check_choice,
    check_positive,
    chunks,
    explainer_precision,
    image_seeds,
    library_version,
    mean_target_score,
    model_guard,
    preserved_rng,
    register_explainer,
    resolve_layer,
    target_scores,
)
from explainers.references import BASELINES, baseline_images
from explainers.rescale import choose_engine, deepshap_passes, rescale_attributions
from models.safety import ReLUTreeMaxPool2d

CAPTUM_EPS = 1e-10  # captum.attr._core.deep_lift.nonlinear: |delta_in| below it -> the plain gradient


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Captum's per-call notices (hooks on activations, inputs set to require grad)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r".*(hooks and attributes|did not already require gradients|"
            r"backward hooks on ReLU).*",
        )
        yield


IG_RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right")
IG_FRONTIER_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left")  # the frontier's order


@register_explainer(
    "captum.integrated_gradients",
    library="captum",
    additive=True,
    budget="n_steps",
    # the frontier's grid and reference
    budgets=(4, 8, 16, 32, 64, 128),
    reference_budget=1024,
    budget_variants=("method", IG_FRONTIER_RULES),
    passes=lambda p, n_bg: (p["n_steps"], 0),  # one gradient per quadrature point
    constraints={
        "n_steps": Range(1),
        "baseline": BASELINES,
        "blur_sigma": Range(0),
        "internal_batch_size": Range(1),
        "method": IG_RULES,
        "precision": PRECISION_CHOICES,
    },
    paper="Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks",
)
def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_steps: int = 50,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    internal_batch_size: int | None = 32,
    method: str = "gausslegendre",
    precision: str = "float32",
) -> Attribution:
    """Integrated gradients: (x - x') * int_0^1 df/dx(x' + a(x - x')) da (Gauss-Legendre, ``n_steps``).

    ``baseline`` x': ``"zero"`` (black image), ``"mean"`` (each image's mean), ``"blur"`` (a
    Gaussian blur of the image, ``blur_sigma`` px), ``"noise"`` (uniform noise in the image's
    range, seeded by the image) -- the perturbation metrics' substrates of the same names, made
    by the same function (:func:`explainers.references.baseline_images`) -- or
    ``"background_mean"`` (the background's mean image).
    Additive up to the quadrature error: ``base_values`` = f(baseline) and Captum's convergence
    delta (sum - (f(x) - f(x'))) per image is ``meta["convergence_delta"]``.
    ``internal_batch_size`` bounds the rows (images x steps) per forward/backward pass.
    ``method``: Captum's quadrature rule (default Captum's ``"gausslegendre"``). On ResNets trained
    on PneumoniaMNIST and at random weights, ``"riemann_middle"`` has 11-25 % lower error per
    step (docs/benchmarks.md, "Accuracy per pass"): the integrand is piecewise constant along
    the path (ReLU kinks), where Gauss-Legendre's polynomial exactness buys nothing.
    ``precision``: the gradient passes' (:func:`~explainers.base.explainer_precision`); f(x) and
    f(baseline) are float32 passes.
    """
    from captum.attr import IntegratedGradients

    name = "captum.integrated_gradients"
    check_positive(name, n_steps=n_steps, internal_batch_size=internal_batch_size)
    check_choice(name, "method", method, IG_RULES)
    ref = baseline_images(name, inputs, background, baseline, blur_sigma=blur_sigma)
    with model_guard(model), _quiet(), explainer_precision(name, precision, inputs.device):
        values, delta = IntegratedGradients(model).attribute(
            inputs,
            baselines=ref,
            target=targets,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    meta = {
        "library_version": library_version("captum"),
        "n_steps": n_steps,
        "method": method,
        "baseline": baseline,
        "convergence_delta": delta.detach().to(inputs.dtype),
        "precision": precision,
    }
    return Attribution(values.detach(), target_scores(model, inputs, targets), target_scores(model, ref, targets), meta)


@register_explainer(
    "captum.gradient_shap",
    library="captum",
    additive=False,
    stochastic=True,
    budget="n_samples",
    family="expected_gradients",  # at stdevs=0 (the default): the frontier's shared reference
    passes=lambda p, n_bg: (p["n_samples"], 0),  # one gradient per (baseline, alpha) sample
    constraints={"n_samples": Range(1), "stdevs": Range(0), "precision": PRECISION_CHOICES},
    paper="Lundberg & Lee 2017 (GradientSHAP = expected gradients with optional noise)",
)
def gradient_shap(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 50,
    stdevs: float = 0.0,
    seed: int = 0,
    precision: str = "float32",
) -> Attribution:
    """GradientSHAP: E_{x'~bg, a~U(0,1), e~N(0,stdevs^2)} [(x + e - x') * df/dx(x' + a(x + e - x'))].

    The same estimator as ``shap.gradient``, additive only in expectation (``additive=False``;
    ``outputs``/``base_values`` = f(x), E_bg f are reported to measure the sampling gap).
    Captum draws baselines, ``a`` and the noise from numpy's and torch's global generators for
    the whole batch at once, so the adapter calls it once per image under a per-image seed
    (:func:`~explainers.base.image_seeds`); each call is one batch of ``n_samples`` rows.
    ``precision``: the gradient passes' (:func:`~explainers.base.explainer_precision`).
    """
    from captum.attr import GradientShap

    name = "captum.gradient_shap"
    check_positive(name, n_samples=n_samples)
    explainer = GradientShap(model)
    with model_guard(model), _quiet(), explainer_precision(name, precision, inputs.device):
        values, seeds = _seeded_per_image(
            inputs,
            seed,
            lambda i: explainer.attribute(
                inputs[i], baselines=background, n_samples=n_samples, stdevs=float(stdevs), target=targets[i]
            ),
        )
    meta = {
        "library_version": library_version("captum"),
        "n_samples": n_samples,
        "stdevs": float(stdevs),
        "background_size": background.shape[0],
        "seeds": seeds,
        "additive_in_expectation": True,
        "precision": precision,
    }
    return Attribution(
        values, target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta
    )


def _seeded_per_image(inputs: Tensor, seed: int, explain: Callable[[slice], Tensor]) -> tuple[Tensor, list[int]]:
    """``explain(slice of one image)`` for every image, each under its own seed, concatenated.

    Captum draws a whole batch's random numbers from numpy's and torch's global generators at
    once, so an image's values would depend on its batch-mates: each image is explained alone,
    with both generators seeded from :func:`~explainers.base.image_seeds`, and restored afterwards.
    """
    seeds = image_seeds(seed, inputs)
    out = []
    with preserved_rng(inputs.device):
        for i, s in enumerate(seeds):
            np.random.seed(s)
            torch.manual_seed(s)
            out.append(explain(slice(i, i + 1)).detach())
    return torch.cat(out), seeds


@register_explainer(
    "captum.deeplift_shap",
    library="captum",
    additive=True,
    passes=deepshap_passes,
    constraints={
        "chunk_size": Range(1),
        "baseline_chunk": Range(1),
        "pair_chunk": Range(1),
        "engine": ("auto", "captum", "batched"),
    },
    paper="Lundberg & Lee 2017 (DeepSHAP); Shrikumar et al. 2017 (DeepLIFT rescale)",
)
def deeplift_shap(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    chunk_size: int = 1,
    baseline_chunk: int = 10,
    engine: str = "auto",
    pair_chunk: int = 16,
) -> Attribution:
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
    meta = {
        "library_version": library_version("captum"),
        "background_size": background.shape[0],
        "rule": "rescale",
        "maxpools_rewritten": rewritten,
        "engine": use,
        **why,
    }
    if use == "batched":
        with model_guard(model), model_guard(explained):
            values = rescale_attributions(explained, inputs, targets, background, pair_chunk=pair_chunk, eps=CAPTUM_EPS)
        return Attribution(
            values, target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta
        )
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
    return Attribution(
        torch.cat(out), target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta
    )


def _without_maxpools(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` itself, or an eval-mode copy whose unpadded ``nn.MaxPool2d`` are ReLU trees."""

    def convertible(m: nn.Module) -> bool:
        return (
            isinstance(m, nn.MaxPool2d)
            and m.padding in (0, (0, 0))
            and m.dilation in (1, (1, 1))
            and not m.ceil_mode
            and not m.return_indices
        )

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


@register_explainer(
    "captum.saliency",
    library="captum",
    additive=False,
    passes=(1, 0),
    constraints={"batch_size": Range(1), "precision": PRECISION_CHOICES},
    paper="Simonyan et al. 2014, Deep Inside Convolutional Networks",
)
def saliency(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    batch_size: int = 64,
    precision: str = "float32",
) -> Attribution:
    """Saliency: |df/dx| (Captum's default ``abs=True``); ``batch_size`` images per pass; ``precision``:
    the passes' (:func:`~explainers.base.explainer_precision`)."""
    from captum.attr import Saliency

    check_positive("captum.saliency", batch_size=batch_size)
    explainer = Saliency(model)
    with model_guard(model), _quiet(), explainer_precision("captum.saliency", precision, inputs.device):
        values = torch.cat(
            [
                explainer.attribute(inputs[s], target=targets[s], abs=True).detach()
                for s in chunks(inputs.shape[0], batch_size)
            ]
        )
    return Attribution(values, meta={"library_version": library_version("captum"), "abs": True, "precision": precision})


@register_explainer(
    "captum.deeplift",
    library="captum",
    additive=True,
    passes=(1, 0),
    constraints={"baseline": BASELINES, "blur_sigma": Range(0), "batch_size": Range(1)},
    paper="Shrikumar et al. 2017, Learning Important Features Through Propagating Activation "
    "Differences (rescale rule)",
)
def deeplift(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    batch_size: int = 32,
) -> Attribution:
    """DeepLIFT (rescale rule) against one baseline per image: phi_i = m_i(x, x') (x_i - x'_i).

    The multipliers m replace each ReLU's gradient by (relu(a(x)) - relu(a(x'))) / (a(x) - a(x')),
    so the values sum exactly to f(x) - f(x') (``base_values`` = f(x'), Captum's convergence
    delta is ``meta["convergence_delta"]``). ``baseline`` as for ``captum.integrated_gradients``
    (the metrics' substrates, or ``"background_mean"``); unpadded max-pools are explained as exact
    ReLU trees, as in ``captum.deeplift_shap``. ``batch_size`` images per pass (Captum runs the
    images and their baselines through the model together).
    """
    from captum.attr import DeepLift

    name = "captum.deeplift"
    check_positive(name, batch_size=batch_size)
    ref = baseline_images(name, inputs, background, baseline, blur_sigma=blur_sigma)
    explained, rewritten = _without_maxpools(model)
    explainer = DeepLift(explained)
    values, deltas = [], []
    with model_guard(model), model_guard(explained), _quiet():
        for s in chunks(inputs.shape[0], batch_size):
            v, d = explainer.attribute(inputs[s], baselines=ref[s], target=targets[s], return_convergence_delta=True)
            values.append(v.detach())
            deltas.append(d.detach())
    meta = {
        "library_version": library_version("captum"),
        "baseline": baseline,
        "rule": "rescale",
        "maxpools_rewritten": rewritten,
        "convergence_delta": torch.cat(deltas).to(inputs.dtype),
    }
    return Attribution(
        torch.cat(values), target_scores(model, inputs, targets), target_scores(model, ref, targets), meta
    )


def _gradient_method(
    name: str, method: str, model: nn.Module, inputs: Tensor, targets: Tensor, batch_size: int, precision: str
) -> Tensor:
    """Captum's ``method`` (a gradient attribution class name) over ``batch_size`` images per pass,
    the passes in ``precision``."""
    import captum.attr

    check_positive(name, batch_size=batch_size)
    explainer = getattr(captum.attr, method)(model)
    with model_guard(model), _quiet(), explainer_precision(name, precision, inputs.device):
        return torch.cat(
            [explainer.attribute(inputs[s], target=targets[s]).detach() for s in chunks(inputs.shape[0], batch_size)]
        )


@register_explainer(
    "captum.input_x_gradient",
    library="captum",
    additive=False,
    passes=(1, 0),
    constraints={"batch_size": Range(1), "precision": PRECISION_CHOICES},
    paper="Shrikumar et al. 2016, Not Just a Black Box: Learning Important Features Through "
    "Propagating Activation Differences",
)
def input_x_gradient(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    batch_size: int = 64,
    precision: str = "float32",
) -> Attribution:
    """Input x gradient: phi_i = x_i * df/dx_i (Captum ``InputXGradient``); ``batch_size`` images per pass;
    ``precision``: the passes' (:func:`~explainers.base.explainer_precision`)."""
    values = _gradient_method(
        "captum.input_x_gradient", "InputXGradient", model, inputs, targets, batch_size, precision
    )
    return Attribution(values, meta={"library_version": library_version("captum"), "precision": precision})


@register_explainer(
    "captum.guided_backprop",
    library="captum",
    additive=False,
    passes=(1, 0),
    constraints={"batch_size": Range(1), "precision": PRECISION_CHOICES},
    paper="Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net",
)
def guided_backprop(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    batch_size: int = 64,
    precision: str = "float32",
) -> Attribution:
    """Guided backpropagation: the gradient with every ReLU's backward replaced by relu(grad) * 1[a > 0].

    Captum ``GuidedBackprop`` overrides the backward of each ``nn.ReLU`` module (every activation of
    models/resnet.py is its own module); ``batch_size`` images per pass; ``precision``: the passes'
    (:func:`~explainers.base.explainer_precision`).
    """
    values = _gradient_method("captum.guided_backprop", "GuidedBackprop", model, inputs, targets, batch_size, precision)
    return Attribution(values, meta={"library_version": library_version("captum"), "precision": precision})


@register_explainer(
    "captum.guided_gradcam",
    library="captum",
    additive=False,
    passes=(2, 0),  # Grad-CAM + guided
    constraints={"batch_size": Range(1), "interpolate_mode": ("nearest", "bilinear", "area")},
    paper="Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
)
def guided_gradcam(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    interpolate_mode: str = "nearest",
    batch_size: int = 64,
) -> Attribution:
    """Guided Grad-CAM: guided backpropagation x Grad-CAM of ``layer`` upsampled to the input.

    Grad-CAM = relu(sum_k alpha_k A^k), alpha_k = mean over positions of df/dA^k (Captum
    ``LayerGradCam``), upsampled with ``interpolate_mode`` (Captum's default ``"nearest"``) and
    multiplied elementwise with ``captum.guided_backprop``'s map (Captum ``GuidedGradCam``).
    ``layer``: a module name (default: the measured default of the CAM family, docs/explainers.md).
    """
    from captum.attr import GuidedGradCam

    name = "captum.guided_gradcam"
    check_positive(name, batch_size=batch_size)
    check_choice(name, "interpolate_mode", interpolate_mode, ("nearest", "bilinear", "area"))
    layer_name, module = resolve_layer(model, layer, name)
    explainer = GuidedGradCam(model, module)
    with model_guard(model), _quiet():
        values = torch.cat(
            [
                explainer.attribute(inputs[s], target=targets[s], interpolate_mode=interpolate_mode).detach()
                for s in chunks(inputs.shape[0], batch_size)
            ]
        )
    return Attribution(values, meta={"library_version": library_version("captum"), "layer": layer_name})


NT_PARAMS = {"n_samples": Range(1), "stdevs": Range(0), "batch_size": Range(1), "precision": PRECISION_CHOICES}


def _noise_tunnel(
    name: str,
    nt_type: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    n_samples: int,
    stdevs: float,
    batch_size: int,
    seed: int,
    precision: str,
) -> Attribution:
    """Captum ``NoiseTunnel(Saliency)`` of type ``nt_type``, one image at a time under its own seed,
    the passes in ``precision`` (:func:`~explainers.base.explainer_precision`)."""
    from captum.attr import NoiseTunnel, Saliency

    check_positive(name, n_samples=n_samples, batch_size=batch_size)
    tunnel = NoiseTunnel(Saliency(model))
    with model_guard(model), _quiet(), explainer_precision(name, precision, inputs.device):
        values, seeds = _seeded_per_image(
            inputs,
            seed,
            lambda i: tunnel.attribute(
                inputs[i],
                nt_type=nt_type,
                nt_samples=n_samples,
                nt_samples_batch_size=batch_size,
                stdevs=float(stdevs),
                target=targets[i],
                abs=True,
            ),
        )
    return Attribution(
        values,
        meta={
            "library_version": library_version("captum"),
            "n_samples": n_samples,
            "stdevs": float(stdevs),
            "seeds": seeds,
            "abs": True,
            "precision": precision,
        },
    )


@register_explainer(
    "captum.smoothgrad",
    library="captum",
    additive=False,
    stochastic=True,
    budget="n_samples",
    passes=lambda p, n_bg: (p["n_samples"], 0),
    constraints=NT_PARAMS,
    paper="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
)
def smoothgrad(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 50,
    stdevs: float = 0.15,
    batch_size: int = 50,
    seed: int = 0,
    precision: str = "float32",
) -> Attribution:
    """SmoothGrad over saliency: (1/n) sum_k |df/dx (x + e_k)|, e_k ~ N(0, stdevs^2) per pixel.

    Captum ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``, Saliency's ``abs=True`` as in
    ``captum.saliency``. ``stdevs`` is absolute: 0.15 is 15 % of the [0, 1] pixel range, within the
    paper's recommended 10-20 %. ``batch_size`` noisy copies per pass; seeded per image.
    """
    return _noise_tunnel(
        "captum.smoothgrad",
        "smoothgrad",
        model,
        inputs,
        targets,
        n_samples=n_samples,
        stdevs=stdevs,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
    )


@register_explainer(
    "captum.vargrad",
    library="captum",
    additive=False,
    stochastic=True,
    budget="n_samples",
    passes=lambda p, n_bg: (p["n_samples"], 0),
    constraints=NT_PARAMS,
    paper="Adebayo et al. 2018, Local Explanation Methods for Deep Neural Networks Lack "
    "Sensitivity to Parameter Values (VarGrad)",
)
def vargrad(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 50,
    stdevs: float = 0.15,
    batch_size: int = 50,
    seed: int = 0,
    precision: str = "float32",
) -> Attribution:
    """VarGrad: the variance over k of |df/dx (x + e_k)|, e_k ~ N(0, stdevs^2) per pixel.

    Captum ``NoiseTunnel(Saliency)``, ``nt_type="vargrad"`` (E[g^2] - E[g]^2 over the samples);
    the same draws as ``captum.smoothgrad`` for the same seed.
    """
    return _noise_tunnel(
        "captum.vargrad",
        "vargrad",
        model,
        inputs,
        targets,
        n_samples=n_samples,
        stdevs=stdevs,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
    )


def occlusion_windows(shape: tuple[int, ...], window: int, stride: int) -> int:
    """Window positions Captum's ``Occlusion`` visits on a ``(C, H, W)`` image (all channels at once):
    prod over H, W of ceil((size - window) / stride) + 1."""
    return math.prod(math.ceil((n - window) / stride) + 1 for n in shape[-2:])


@register_explainer(
    "captum.occlusion",
    library="captum",
    per_pixel=True,
    additive=False,
    passes=lambda p, n_bg, *, shape: (0, occlusion_windows(shape, p["window"], p["stride"]) + 1),
    constraints={
        "window": Range(1),
        "stride": Range(1),
        "baseline": BASELINES,
        "blur_sigma": Range(0),
        "perturbations_per_eval": Range(1),
    },
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
)
def occlusion(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    window: int = 4,
    stride: int = 2,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    perturbations_per_eval: int = 16,
) -> Attribution:
    """Occlusion: phi_i = mean over the windows W covering pixel i of f(x) - f(x with W replaced by x').

    A ``window`` x ``window`` square (all channels) slides by ``stride`` px (Captum ``Occlusion``;
    the last position is clamped to the border, so every pixel is covered); the occluded pixels
    take the baseline's values (``baseline`` as for ``captum.integrated_gradients``). At 28 px the
    defaults visit 13 x 13 = 169 windows: 170 forward passes per image.
    ``perturbations_per_eval`` occluded copies of each image per forward pass.
    """
    from captum.attr import Occlusion

    name = "captum.occlusion"
    check_positive(name, window=window, stride=stride, perturbations_per_eval=perturbations_per_eval)
    if window > min(inputs.shape[-2:]):
        raise BenchError(
            f"explainer {name!r}: window={window} is larger than the {inputs.shape[-2]}x"
            f"{inputs.shape[-1]} image; use a window of at most {min(inputs.shape[-2:])} px"
        )
    ref = baseline_images(name, inputs, background, baseline, blur_sigma=blur_sigma)
    c = inputs.shape[1]
    with model_guard(model), _quiet():
        values = (
            Occlusion(model)
            .attribute(
                inputs,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=ref,
                target=targets,
                perturbations_per_eval=perturbations_per_eval,
            )
            .detach()
        )
    meta = {
        "library_version": library_version("captum"),
        "baseline": baseline,
        "windows": occlusion_windows(tuple(inputs.shape[1:]), window, stride),
    }
    return Attribution(values, meta=meta)


def grid_feature_mask(inputs: Tensor, cell: int) -> Tensor:
    """Square superpixels ``(1, C, H, W)`` long: the feature of each element of a ``(B, C, H, W)`` input.

    Cells of ``cell`` x ``cell`` px numbered row by row (the last row and column of cells are
    narrower when ``cell`` does not divide the image); all channels of a pixel share its feature.
    """
    _, c, h, w = inputs.shape
    rows = torch.arange(h, device=inputs.device) // cell
    cols = torch.arange(w, device=inputs.device) // cell
    ids = rows.view(-1, 1) * math.ceil(w / cell) + cols.view(1, -1)
    return ids.expand(1, c, h, w)


def _surrogate(
    name: str,
    explainer,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    background: Tensor,
    *,
    n_samples: int,
    cell: int,
    baseline: str,
    blur_sigma: float,
    batch_size: int,
    seed: int,
) -> tuple[Tensor, Tensor, dict]:
    """Captum's ``Lime``/``KernelShap`` ``explainer`` on the grid superpixels of :func:`grid_feature_mask`.

    Returns pixel values (each feature's coefficient spread evenly over its elements, so that a
    feature's pixels sum to its coefficient), the baseline images and the meta record (the
    coefficients themselves, ``(B, n_features)``, are ``meta["feature_values"]``).
    """
    check_positive(name, n_samples=n_samples, cell=cell, batch_size=batch_size)
    ref = baseline_images(name, inputs, background, baseline, blur_sigma=blur_sigma)
    mask = grid_feature_mask(inputs, cell)
    counts = torch.bincount(mask.flatten()).to(inputs.dtype)
    with model_guard(model), _quiet():
        coefs, seeds = _seeded_per_image(
            inputs,
            seed,
            lambda i: (
                explainer.attribute(
                    inputs[i],
                    target=targets[i],
                    baselines=ref[i],
                    feature_mask=mask,
                    n_samples=n_samples,
                    perturbations_per_eval=batch_size,
                    return_input_shape=False,
                )
                .to(inputs.dtype)
                .view(1, -1)
            ),
        )
    values = (coefs[:, mask[0]] / counts[mask[0]]).contiguous()  # (B, C, H, W)
    meta = {
        "library_version": library_version("captum"),
        "n_samples": n_samples,
        "cell": cell,
        "n_features": int(counts.numel()),
        "baseline": baseline,
        "seeds": seeds,
        "feature_values": coefs,
    }
    return values, ref, meta


SURROGATE_PARAMS = {
    "n_samples": Range(1),
    "cell": Range(1),
    "baseline": BASELINES,
    "blur_sigma": Range(0),
    "batch_size": Range(1),
}


SURROGATES = ("ridge", "lasso")


@register_explainer(
    "captum.lime",
    library="captum",
    per_pixel=True,
    additive=False,
    stochastic=True,
    budget="n_samples",
    passes=lambda p, n_bg: (0, p["n_samples"]),
    constraints={**SURROGATE_PARAMS, "surrogate": SURROGATES},
    paper='Ribeiro et al. 2016, "Why Should I Trust You?": Explaining the Predictions of Any Classifier',
)
def lime(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 200,
    cell: int = 4,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    surrogate: str = "ridge",
    batch_size: int = 64,
    seed: int = 0,
) -> Attribution:
    """LIME on grid superpixels: the coefficients w of a weighted linear surrogate g(z) = w . z + b.

    z in {0, 1}^M over the ``cell`` x ``cell`` px superpixels (:func:`grid_feature_mask`; 7 x 7 = 49
    at 28 px), a superpixel switched off takes the baseline's values; ``n_samples`` uniform random
    z, weighted by exp(-d^2) with d the cosine distance between x and the perturbed image (Captum
    ``Lime``'s kernel, width 1). ``surrogate``: ``"ridge"`` (alpha 1, the LIME authors' package) or
    ``"lasso"`` (alpha 0.01, Captum's default, which sets every coefficient to zero when the
    target moves little: measured on the tiny test model). Each coefficient is spread evenly over
    its superpixel's pixels (``meta["feature_values"]`` keeps the coefficients). Seeded per image.
    """
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
    from captum.attr import Lime

    check_choice("captum.lime", "surrogate", surrogate, SURROGATES)
    fit = SkLearnRidge(alpha=1.0) if surrogate == "ridge" else SkLearnLasso(alpha=0.01)
    values, _, meta = _surrogate(
        "captum.lime",
        Lime(model, interpretable_model=fit),
        model,
        inputs,
        targets,
        background,
        n_samples=n_samples,
        cell=cell,
        baseline=baseline,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        seed=seed,
    )
    return Attribution(values, meta={**meta, "surrogate": surrogate, "kernel": "exp(-cosine_distance^2)"})


@register_explainer(
    "captum.kernel_shap",
    library="captum",
    per_pixel=True,
    additive=True,
    stochastic=True,
    budget="n_samples",
    passes=lambda p, n_bg: (0, p["n_samples"]),
    constraints=SURROGATE_PARAMS,
    paper="Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions (Kernel SHAP)",
)
def kernel_shap(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 200,
    cell: int = 4,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    batch_size: int = 64,
    seed: int = 0,
) -> Attribution:
    """Kernel SHAP on grid superpixels: Shapley values of the superpixels by weighted linear regression.

    The same superpixels and baseline as ``captum.lime``; coalitions drawn from the Shapley
    kernel (size k with p(k) ~ (M - 1) / (k (M - k))) and fit by least squares, the full and the
    empty coalition weighted 1e6 (Captum ``KernelShap``), which makes the coefficients sum to
    f(x) - f(x') (``outputs``, ``base_values`` = f(baseline)) at any sample size, up to float32
    noise. Each coefficient is spread evenly over its superpixel's pixels, so the pixel values
    sum to the same. Seeded per image.
    """
    from captum.attr import KernelShap

    values, ref, meta = _surrogate(
        "captum.kernel_shap",
        KernelShap(model),
        model,
        inputs,
        targets,
        background,
        n_samples=n_samples,
        cell=cell,
        baseline=baseline,
        blur_sigma=blur_sigma,
        batch_size=batch_size,
        seed=seed,
    )
    return Attribution(values, target_scores(model, inputs, targets), target_scores(model, ref, targets), meta)
