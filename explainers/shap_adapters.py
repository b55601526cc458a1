"""Adapters for SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions").

shap is imported inside each adapter so that ``import explainers`` (and ``python -m bench list``)
stays fast. Every adapter runs inside :func:`~explainers.base.model_guard` (shap leaves
parameters and attributes on hooked modules) and :func:`~explainers.base.preserved_rng` (shap
reseeds numpy's global generator).

Why these adapters loop over images: shap's torch explainers loop over images themselves
(``for j in range(X.shape[0])``) and explain *every* output of a multi-output model. The adapters
wrap the model so that it returns only the target column (halving the work for two classes) and
call shap one image (Gradient, Partition) or one target group (Deep) at a time; the inner work
(samples, masks, background rows) stays batched.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from explainers.base import (
    PRECISION_CHOICES,
    Attribution,
    check_choice,
    check_positive,
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
from explainers.expected_gradients import expected_gradients
from explainers.rescale import choose_engine, deepshap_passes, rescale_attributions


class _TargetColumn(nn.Module):
    """``model(x)[:, k:k+1]``: a single-output model for one target class."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = int(k)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[:, self.k : self.k + 1]


def _subset(background: Tensor, size: int | None, seed: int) -> Tensor:
    """All of ``background``, or a seeded subset of ``size`` rows (independent of the images)."""
    if size is None or size >= background.shape[0]:
        return background
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(background.shape[0], generator=g)[:size].sort().values
    return background[idx.to(background.device)]


def _groups(targets: Tensor) -> list[tuple[int, Tensor]]:
    """``[(class, indices of the images with that target)]``."""
    return [(int(k), (targets == k).nonzero().squeeze(1)) for k in torch.unique(targets).tolist()]


@register_explainer(
    "shap.gradient",
    library="shap",
    additive=False,
    stochastic=True,
    budget="nsamples",
    family="expected_gradients",
    passes=lambda p, n_bg: (p["nsamples"], 0),  # one gradient per sample (also in layer mode)
    constraints={
        "nsamples": Range(1),
        "background_size": Range(1),
        "batch_size": Range(1),
        "engine": ("auto", "shap", "batched"),
        "precision": PRECISION_CHOICES,
    },
    paper="Erion et al. 2021, expected gradients",
)
def gradient(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    nsamples: int = 50,
    background_size: int | None = None,
    seed: int = 0,
    batch_size: int = 50,
    layer: str | None = None,
    engine: str = "auto",
    precision: str = "float32",
) -> Attribution:
    """Expected gradients (shap.GradientExplainer): E_{x'~bg, a~U(0,1)} [(x - x') * df/dx(x' + a(x - x'))].

    Additive only in expectation (sum -> f(x) - E_bg f), so registered ``additive=False``;
    ``outputs`` and ``base_values`` are still reported (input mode) to measure the sampling gap.
    ``nsamples`` draws per image, seeded per image from ``seed`` and the image (see
    :func:`~explainers.base.image_seeds`); ``background_size`` draws a seeded subset of the
    background; ``batch_size`` samples per gradient pass. ``layer`` (a module name such as
    ``"layer4"``) explains the *input of that module* instead, shap's layer mode:
    E[h(z) * df/dh(z)] at the sampled points z; that map is kept in ``meta["layer_values"]`` and
    reduced (sum over channels, bilinear upsampling, copied to every input channel) to ``values``.

    ``engine``: ``"shap"`` calls shap.GradientExplainer once per image (shap loops over images,
    so a pass holds one image's samples); ``"batched"`` computes the same values with
    :mod:`explainers.expected_gradients` (shap's draws for each image's seed, rows of all images
    in each pass of ``batch_size``; input mode only); ``"auto"`` takes "batched" unless ``layer``
    is set. ``meta["engine"]`` records which ran. ``precision``: the gradient passes' of either
    engine (:func:`~explainers.base.explainer_precision`); f(x) and E_bg f are float32 passes.
    """
    name = "shap.gradient"
    check_positive(name, nsamples=nsamples, background_size=background_size, batch_size=batch_size)
    check_choice(name, "engine", engine, ("auto", "shap", "batched"))
    if engine == "batched" and layer is not None:
        raise BenchError(
            f"explainer {name!r}: engine='batched' explains the input only; use engine='shap' with layer={layer!r}"
        )
    layer_name, layer_module = resolve_layer(model, layer, name) if layer is not None else (None, None)
    bg = _subset(background, background_size, seed)
    seeds = image_seeds(seed, inputs)
    use = "shap" if engine == "shap" or layer is not None else "batched"
    if use == "batched":
        with model_guard(model), explainer_precision(name, precision, inputs.device):
            phi = expected_gradients(model, inputs, targets, bg, nsamples=nsamples, seeds=seeds, batch_size=batch_size)
    else:
        import shap

        phis: dict[int, Tensor] = {}  # image -> its values; every image is in its target's group
        with model_guard(model), preserved_rng(inputs.device), explainer_precision(name, precision, inputs.device):
            for k, idx in _groups(targets):
                single = _TargetColumn(model, k)
                spec = single if layer_module is None else (single, layer_module)
                explainer = shap.GradientExplainer(spec, bg, batch_size=batch_size)
                for i in idx.tolist():
                    sv = explainer.shap_values(inputs[i : i + 1], nsamples=nsamples, rseed=seeds[i])
                    phis[i] = torch.from_numpy(np.asarray(sv)[..., 0])
        phi = torch.cat([phis[i] for i in range(inputs.shape[0])]).to(device=inputs.device, dtype=inputs.dtype)
    meta = {
        "library_version": library_version("shap"),
        "nsamples": nsamples,
        "background_size": bg.shape[0],
        "seeds": seeds,
        "additive_in_expectation": layer is None,
        "engine": use,
        "precision": precision,
    }
    if layer_module is None:
        return Attribution(phi, target_scores(model, inputs, targets), mean_target_score(model, bg, targets), meta)
    reduced = F.interpolate(phi.sum(1, keepdim=True), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    meta.update(
        layer_values=phi, reduced_from_layer=layer_name, layer_values_are=f"attribution to the input of {layer_name}"
    )
    return Attribution(reduced.expand_as(inputs).contiguous(), None, None, meta)


@register_explainer(
    "shap.deep",
    library="shap",
    additive=True,
    passes=deepshap_passes,
    constraints={"engine": ("auto", "shap", "batched"), "pair_chunk": Range(1)},
    paper="Lundberg & Lee 2017 (DeepSHAP); Shrikumar et al. 2017 (DeepLIFT rescale)",
)
def deep(
    model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor, engine: str = "auto", pair_chunk: int = 16
) -> Attribution:
    """DeepSHAP (shap.DeepExplainer): DeepLIFT rescale multipliers averaged over the background.

    phi_i = mean_{x' in bg} m_i(x, x') (x_i - x'_i); sums to f(x) - E_bg f exactly on models whose
    every nonlinearity is its own ``nn.Module`` called once per forward (models/resnet.py).
    shap's own additivity check (tolerance 0.01) is off; the shared completeness gap is the test.
    ``engine``: ``"shap"`` runs shap.DeepExplainer (one image x the whole background per pass);
    ``"batched"`` computes the same values with :mod:`explainers.rescale` (ReLU networks only:
    one linearised forward + backward per (image, reference) pair, ``pair_chunk`` pairs at a
    time, the pass-count floor); ``"auto"`` takes "batched" where it applies, else "shap".
    ``meta["engine"]`` records which ran.
    """

    check_positive("shap.deep", pair_chunk=pair_chunk)
    use, why = choose_engine("shap.deep", engine, "shap", model, inputs[:1])
    meta = {
        "library_version": library_version("shap"),
        "background_size": background.shape[0],
        "rule": "rescale",
        "engine": use,
        **why,
    }
    if use == "batched":
        with model_guard(model):
            values = rescale_attributions(model, inputs, targets, background, pair_chunk=pair_chunk)
        return Attribution(
            values, target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta
        )
    import shap

    phis: dict[int, Tensor] = {}  # image -> its values; every image is in its target's group
    with model_guard(model):
        for k, idx in _groups(targets):
            explainer = shap.DeepExplainer(_TargetColumn(model, k), background)
            sv = explainer.shap_values(inputs[idx], check_additivity=False)
            for j, i in enumerate(idx.tolist()):
                phis[i] = torch.from_numpy(np.asarray(sv)[j : j + 1, ..., 0])
    values = torch.cat([phis[i] for i in range(inputs.shape[0])]).to(device=inputs.device, dtype=inputs.dtype)
    return Attribution(
        values, target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta
    )


_MASKS = re.compile(r"^(blur\(\s*\d+\s*,\s*\d+\s*\)|inpaint_telea|inpaint_ns)$")


@register_explainer(
    "shap.partition",
    library="shap",
    additive=True,
    model_agnostic=True,
    budget="max_evals",
    # the frontier's grid and reference
    budgets=(100, 300, 1000),
    reference_budget=3000,
    passes=lambda p, n_bg: (0, p["max_evals"]),  # forwards of masked images only (at most max_evals)
    constraints={"max_evals": Range(1), "batch_size": Range(1)},
    paper="Lundberg et al., Owen values over a hierarchical pixel partition",
)
def partition(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    max_evals: int = 300,
    blur: str = "blur(4,4)",
    batch_size: int = 64,
    seed: int = 0,
) -> Attribution:
    """Partition SHAP (shap.PartitionExplainer + shap.maskers.Image): Owen values of pixels.

    Masked pixels take the value of the blurred image (``blur="blur(kx,ky)"``, or
    ``"inpaint_telea"``/``"inpaint_ns"``). Exactly additive: values sum to f(x) - f(fully masked
    x), and ``base_values`` is f(fully masked x) per image (shap's base value; not a background
    expectation, the background is unused). ``max_evals`` model calls per image in batches of
    ``batch_size`` masks (the batch size changes the traversal, hence the values); ``seed`` seeds
    shap's random tie-breaking, per image.
    """
    import shap

    name = "shap.partition"
    check_positive(name, max_evals=max_evals, batch_size=batch_size)
    if not isinstance(blur, str) or not _MASKS.match(blur):
        raise BenchError(f"explainer {name!r}: blur={blur!r} must be 'blur(kx,ky)', 'inpaint_telea' or 'inpaint_ns'")
    b, c, h, w = inputs.shape
    current = {"target": 0}

    def f(x: np.ndarray) -> np.ndarray:  # (N, H, W, C) numpy -> (N,) target scores
        t = torch.as_tensor(np.ascontiguousarray(x), dtype=inputs.dtype).permute(0, 3, 1, 2).to(inputs.device)
        with torch.no_grad():
            return model(t)[:, current["target"]].double().cpu().numpy()

    masker = shap.maskers.Image(blur, (h, w, c))
    explainer = shap.PartitionExplainer(f, masker)
    seeds = image_seeds(seed, inputs)
    images = inputs.detach().permute(0, 2, 3, 1).cpu().numpy()
    values, outputs, base = [], [], []
    with model_guard(model), preserved_rng(inputs.device):
        for i in range(b):
            current["target"] = int(targets[i])
            masker.last_xid = None  # shap caches the blurred image by id(); ids are reused across images
            np.random.seed(seeds[i])
            ev = explainer(images[i : i + 1], max_evals=max_evals, batch_size=batch_size, silent=True)
            values.append(torch.from_numpy(np.asarray(ev.values).reshape(1, h, w, c)))
            base.append(float(np.asarray(ev.base_values).reshape(-1)[0]))
            outputs.append(float(f(images[i : i + 1])[0]))  # f(x) evaluated as shap evaluates it (one row)
    vals = torch.cat(values).permute(0, 3, 1, 2).to(device=inputs.device, dtype=inputs.dtype).contiguous()
    meta = {
        "library_version": library_version("shap"),
        "max_evals": max_evals,
        "mask": blur,
        "seeds": seeds,
        "base_value_is": "f(fully masked image)",
    }
    as_tensor = lambda v: torch.tensor(v, dtype=inputs.dtype, device=inputs.device)  # noqa: E731
    return Attribution(vals, as_tensor(outputs), as_tensor(base), meta)
