"""Control "explainers" that ignore the model: a method that cannot beat them explains nothing.

Adebayo et al. 2018 ("Sanity Checks for Saliency Maps") showed that edge detectors score well on
many visual criteria; the random map is the chance level of every metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainers.base import Attribution, image_seeds, register_explainer


@register_explainer("random", library="control", additive=False, stochastic=True, control=True, passes=(0, 0))
def random(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor, seed: int = 0) -> Attribution:
    """Gaussian noise N(0, 1) per pixel, seeded per image from ``seed`` and the image.

    Drawn on the CPU and then moved, so the values do not depend on the device.
    """
    seeds = image_seeds(seed, inputs)
    maps = [
        torch.randn(inputs.shape[1:], generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds
    ]
    values = torch.stack(maps).to(device=inputs.device, dtype=inputs.dtype)
    return Attribution(values, meta={"seeds": seeds})


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@register_explainer("edge", library="control", additive=False, control=True, passes=(0, 0))
def edge(model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor) -> Attribution:
    """Sobel gradient magnitude sqrt(gx^2 + gy^2) of each input channel (replicate padding)."""
    c = inputs.shape[1]
    k = torch.stack([_SOBEL, _SOBEL.T]).to(device=inputs.device, dtype=inputs.dtype)  # (2, 3, 3)
    weight = k.repeat(c, 1, 1).unsqueeze(1)  # (2C, 1, 3, 3): gx, gy per channel
    g = F.conv2d(F.pad(inputs.detach(), (1, 1, 1, 1), mode="replicate"), weight, groups=c)
    values = g.view(inputs.shape[0], c, 2, *inputs.shape[2:]).pow(2).sum(2).sqrt()
    return Attribution(values, meta={"kernel": "sobel3x3", "padding": "replicate"})
