"""Reference images: what an attribution method compares the input with (its *baseline*) and
what a perturbation metric replaces removed pixels with (its *substrate*).

One function serves both, so that an explainer's ``baseline="blur"`` and a metric's
``substrate="blur"`` are the same images by construction: an explainer whose baseline matches the
metric's substrate can be told apart from one that does not (integrated gradients with a black
baseline wins exactly the metrics that delete towards black). ``bench.metrics.perturbation``
re-exports these names.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.errors import BenchError

SUBSTRATES = ("zero", "mean", "blur", "noise")
BASELINES = SUBSTRATES + ("background_mean",)  # an explainer's baselines: the substrates, or the background's mean


def gaussian_blur(inputs: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images, radius ceil(3 sigma), reflect padding."""
    if sigma <= 0:
        return inputs.clone()
    _, c, h, w = inputs.shape
    radius = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    x = torch.arange(-radius, radius + 1, device=inputs.device, dtype=inputs.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = F.pad(inputs, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def make_substrate(inputs: Tensor, substrate: str, *, blur_sigma: float = 2.0) -> Tensor:
    """The images removed pixels are replaced with, ``(B, C, H, W)``.

    ``"zero"``: the value 0 of the model's input space (black only if inputs are not
    standardised); ``"mean"``: each image's per-channel mean over pixels, computed once on the
    unperturbed image; ``"blur"``: a Gaussian blur of the image (RISE's insertion start);
    ``"noise"``: uniform noise between the image's minimum and maximum, drawn on the CPU from a
    generator seeded with the image's bytes (deterministic, the same alone or in a batch).
    """
    if substrate == "zero":
        return torch.zeros_like(inputs)
    if substrate == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    if substrate == "blur":
        return gaussian_blur(inputs, blur_sigma)
    if substrate == "noise":
        x = inputs.detach().to("cpu", torch.float32)
        draws = []
        for img in x:
            gen = torch.Generator().manual_seed(zlib.crc32(img.contiguous().numpy().tobytes()))
            draws.append(img.min() + (img.max() - img.min()) * torch.rand(img.shape, generator=gen))
        return torch.stack(draws).to(device=inputs.device, dtype=inputs.dtype)
    raise BenchError(f"unknown substrate {substrate!r}; use one of {', '.join(SUBSTRATES)}")


def baseline_images(
    explainer: str, inputs: Tensor, background: Tensor, baseline: str, *, blur_sigma: float = 2.0
) -> Tensor:
    """An explainer's baseline x' per image, ``(B, C, H, W)``.

    A substrate of :func:`make_substrate` (``"zero"``, ``"mean"``, ``"blur"``, ``"noise"``: the
    same images a perturbation metric with that substrate uses), or ``"background_mean"``: the
    background's mean image ``(N, C, H, W) -> (C, H, W)``, the same for every image.
    """
    if baseline == "background_mean":
        return background.mean(0, keepdim=True).expand_as(inputs).contiguous()
    if baseline not in SUBSTRATES:
        raise BenchError(
            f"explainer {explainer!r}: baseline={baseline!r} is not one of {', '.join(map(repr, BASELINES))}"
        )
    return make_substrate(inputs.detach(), baseline, blur_sigma=blur_sigma)
