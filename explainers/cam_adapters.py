"""Adapters for pytorch-grad-cam (Gildenblat et al., ``pip install grad-cam``): the CAM family.

A class activation map weighs the activations ``A^k (B, K, h, w)`` of one ``layer`` per channel
(or per position) and sums over channels::

    cam = relu(sum_k w_k A^k)                  (B, h, w)

then, as the library does, scales each image's map to [0, 1] (``cam - min``, ``/ max``), resizes
it to the input with ``cv2.resize`` (bilinear, half-pixel centres) and scales the result to [0, 1]
again. The map is copied to every input channel.
The methods differ in the weights ``w``; ``layer`` is a module name (default: the layer measured
to give the most faithful maps on the 28 px ResNets, docs/explainers.md).

pytorch-grad-cam calls ``model.eval()``, keeps hooks until released and backpropagates into the
weights (``loss.backward()``); the adapters run it under :func:`~explainers.base.model_guard`,
with the parameters frozen (only the activations' gradients are computed, as in the floor pass)
and each parameter's ``.grad`` as it was.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from bench.core.params import Range
from explainers.base import (
    CAM_LAYER,
    Attribution,
    check_positive,
    chunks,
    library_version,
    model_guard,
    register_explainer,
    resolve_layer,
)

CAM_PARAMS = {"batch_size": Range(1)}
# one backward; per_pixel: one value per pixel, the same in every input channel
GRADIENT_CAM: dict[str, Any] = {
    "library": "gradcam",
    "additive": False,
    "passes": (1, 0),
    "constraints": CAM_PARAMS,
    "per_pixel": True,
}


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No gradient flows into the weights inside the block; ``requires_grad`` and ``.grad`` restored after."""
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, (requires, grad) in zip(params, saved):
            p.requires_grad_(requires)
            p.grad = grad


def layer_channels(model: nn.Module, layer: str, shape: tuple[int, ...]) -> int:
    """Channels of ``layer``'s output for one ``(C, H, W)`` image (one forward pass of zeros)."""
    _, module = resolve_layer(model, layer, "layer_channels")
    seen: list[int] = []
    device = next(model.parameters()).device
    with model_guard(model), torch.no_grad():
        module.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
        model(torch.zeros((1, *shape), device=device))
    return seen[0]


def run_cam(
    name: str,
    method: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str,
    batch_size: int,
    attributes: dict | None = None,
) -> Attribution:
    """pytorch-grad-cam's ``method`` (a class name) on ``layer``, ``batch_size`` images per call.

    ``attributes`` are set on the CAM object (ScoreCAM's ``batch_size``). Returns the library's
    maps ``(B, H, W)`` in [0, 1], copied to every input channel.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_positive(name, batch_size=batch_size)
    layer_name, module = resolve_layer(model, layer, name)
    maps = []
    # ScoreCAM prints a tqdm bar per image to stderr
    with model_guard(model), frozen_parameters(model), contextlib.redirect_stderr(io.StringIO()):
        # not `with cam:`, whose __exit__ swallows an IndexError
        cam = getattr(pytorch_grad_cam, method)(model=model, target_layers=[module])
        try:
            for key, value in (attributes or {}).items():
                setattr(cam, key, value)
            for s in chunks(inputs.shape[0], batch_size):
                # the input carries the gradient, since the weights do not
                x = inputs[s].detach().clone().requires_grad_(cam.uses_gradients)
                wanted = [ClassifierOutputTarget(int(k)) for k in targets[s].tolist()]
                maps.append(torch.from_numpy(cam(input_tensor=x, targets=wanted)))
        finally:
            cam.activations_and_grads.release()
    values = torch.cat(maps).to(device=inputs.device, dtype=inputs.dtype).unsqueeze(1).expand_as(inputs).contiguous()
    return Attribution(
        values,
        meta={"library_version": library_version("grad-cam"), "layer": layer_name, "scaled": "per image to [0, 1]"},
    )


@register_explainer(
    "gradcam.grad_cam",
    **GRADIENT_CAM,
    paper="Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
)
def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    batch_size: int = 64,
) -> Attribution:
    """Grad-CAM: w_k = (1/hw) sum_ij df/dA^k_ij, the channel's mean gradient (pytorch-grad-cam ``GradCAM``)."""
    return run_cam("gradcam.grad_cam", "GradCAM", model, inputs, targets, layer=layer, batch_size=batch_size)


@register_explainer(
    "gradcam.grad_cam_plusplus",
    **GRADIENT_CAM,
    paper="Chattopadhyay et al. 2018, Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
)
def grad_cam_plusplus(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    batch_size: int = 64,
) -> Attribution:
    """Grad-CAM++: w_k = sum_ij a^k_ij relu(g^k_ij), a^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3), g = df/dA.

    The closed form of the paper for an exponential output, with first-order gradients standing
    in for the higher powers (pytorch-grad-cam ``GradCAMPlusPlus``).
    """
    return run_cam(
        "gradcam.grad_cam_plusplus", "GradCAMPlusPlus", model, inputs, targets, layer=layer, batch_size=batch_size
    )


@register_explainer(
    "gradcam.hires_cam",
    **GRADIENT_CAM,
    paper="Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of "
    "convolutional neural networks",
)
def hires_cam(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    batch_size: int = 64,
) -> Attribution:
    """HiResCAM: cam = relu(sum_k df/dA^k * A^k), the gradient times the activation per position.

    Without Grad-CAM's spatial averaging of the gradient; for a network whose head is a global
    average pool and a linear layer it equals the logit's exact decomposition over the positions
    of the last stage (pytorch-grad-cam ``HiResCAM``).
    """
    return run_cam("gradcam.hires_cam", "HiResCAM", model, inputs, targets, layer=layer, batch_size=batch_size)


@register_explainer(
    "gradcam.layer_cam",
    **GRADIENT_CAM,
    paper="Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
)
def layer_cam(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    batch_size: int = 64,
) -> Attribution:
    """LayerCAM: cam = relu(sum_k relu(df/dA^k) * A^k), the positive gradients per position.

    pytorch-grad-cam ``LayerCAM``.
    """
    return run_cam("gradcam.layer_cam", "LayerCAM", model, inputs, targets, layer=layer, batch_size=batch_size)


@register_explainer(
    "gradcam.score_cam",
    library="gradcam",
    additive=False,
    per_pixel=True,
    passes=lambda p, n_bg, *, model, shape: (0, layer_channels(model, p["layer"], shape) + 1),
    constraints={**CAM_PARAMS, "mask_batch_size": Range(1)},
    paper="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
)
def score_cam(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    layer: str = CAM_LAYER,
    batch_size: int = 64,
    mask_batch_size: int = 64,
) -> Attribution:
    """Score-CAM: w = softmax_k f(x * M^k), M^k = A^k upsampled to the input and scaled to [0, 1].

    No gradient: one forward pass per channel of ``layer`` (128 at ``layer2`` of resnet18, 512 on
    resnet50; 512 / 2048 at ``layer4``) after the pass that records the activations,
    ``mask_batch_size`` masked images per pass (pytorch-grad-cam ``ScoreCAM``, its ``batch_size``
    attribute).
    """
    check_positive("gradcam.score_cam", mask_batch_size=mask_batch_size)
    return run_cam(
        "gradcam.score_cam",
        "ScoreCAM",
        model,
        inputs,
        targets,
        layer=layer,
        batch_size=batch_size,
        attributes={"batch_size": mask_batch_size},
    )
