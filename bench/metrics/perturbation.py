"""The batched perturbation machinery every perturbation metric shares: pixel ranking,
substrates, and the target-class probability while pixels are deleted or inserted.

Pixel ranking (every ranking metric): with ``C > 1`` channels the pixels are ranked by the sum of
the attribution over channels; the sort is a stable descending sort, so ties go to the lower
flat index (row-major), deterministic on every device.
"""
from __future__ import annotations

import math
import zlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.metrics.base import check_chunk, out_dtype

SUBSTRATES = ("zero", "mean", "blur", "noise")
DEFAULT_CHUNK = 32  # perturbed images per forward pass: measured fastest on CPU (raise it on a GPU)


def rank_pixels(values: Tensor) -> Tensor:
    """Pixel indices ``(B, H*W)`` by attribution, descending; ``values (B, C, H, W)``.

    Channels are summed per pixel; the sort is stable, so ties keep the row-major order.
    """
    scores = values.sum(1).flatten(1)
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def pixel_positions(order: Tensor) -> Tensor:
    """Inverse permutation: ``pos[b, pixel]`` = rank of the pixel (0 = most relevant)."""
    pos = torch.empty_like(order)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return pos.scatter_(1, order, ranks)


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


def curve_boundaries(n_pixels: int, steps: int) -> list[int]:
    """Pixel counts at the ``steps + 1`` curve points: ``floor(t * n / steps + 1/2)``, t = 0..steps.

    Equal chunks when ``steps`` divides ``n``; otherwise np.linspace-style rounded boundaries.
    """
    if not 1 <= steps <= n_pixels:
        raise BenchError(f"steps must be in [1, {n_pixels}] (the number of pixels), got {steps!r}")
    return [(2 * t * n_pixels + steps) // (2 * steps) for t in range(steps + 1)]


def target_probabilities(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Softmax over classes of the logits, at the target class: ``(n,)``."""
    logits = model(x)
    return torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1).long()).squeeze(1)


@torch.no_grad()
def perturbed_probabilities(model: nn.Module, inputs: Tensor, targets: Tensor, order: Tensor,
                            substrate_images: Tensor, counts: Sequence[int], *, mode: str = "delete",
                            chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Target-class probability (softmax over logits) after perturbing the top ``counts[t]`` pixels.

    ``mode="delete"``: the first ``counts[t]`` pixels of ``order`` take the substrate's values;
    ``mode="insert"``: start from the substrate and the first ``counts[t]`` pixels take the
    input's values. Returns ``(B, T)``. One forward pass per ``chunk_size`` (image, count) pairs;
    the perturbed images are built per chunk, never all at once.
    """
    if mode not in ("delete", "insert"):
        raise BenchError(f"unknown perturbation mode {mode!r}; use 'delete' or 'insert'")
    chunk_size = check_chunk(chunk_size)
    b, c, h, w = inputs.shape
    n_pix = h * w
    if order.shape != (b, n_pix):
        raise BenchError(f"order must be (B, H*W) = ({b}, {n_pix}), got {tuple(order.shape)}")
    pos = pixel_positions(order.to(inputs.device))  # (B, N)
    counts_t = torch.as_tensor(list(counts), device=inputs.device, dtype=pos.dtype)
    n_t = counts_t.numel()
    total = b * n_t
    out = torch.empty(total, device=inputs.device, dtype=out_dtype(inputs))
    first, second = (substrate_images, inputs) if mode == "delete" else (inputs, substrate_images)
    for start in range(0, total, chunk_size):
        ids = torch.arange(start, min(start + chunk_size, total), device=inputs.device)
        bi, ti = ids // n_t, ids % n_t
        chosen = (pos[bi] < counts_t[ti].unsqueeze(1)).view(-1, 1, h, w)  # pixels perturbed so far
        x = torch.where(chosen, first[bi], second[bi])
        out[start : start + len(ids)] = target_probabilities(model, x, targets[bi])
    return out.view(b, n_t)


def perturbation_curve(model: nn.Module, inputs: Tensor, targets: Tensor, order: Tensor, substrate_images: Tensor,
                       steps: int, *, mode: str = "delete", chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Target-class probability curve ``(B, steps + 1)`` while deleting / inserting pixels in order.

    Point 0 is the unperturbed input (delete) or the full substrate (insert); point ``t`` has the
    first :func:`curve_boundaries` ``[t]`` pixels of ``order (B, H*W)`` substituted. Costs about
    ``B * (steps + 1) / chunk_size`` batched forward passes.
    """
    counts = curve_boundaries(inputs.shape[2] * inputs.shape[3], steps)
    return perturbed_probabilities(model, inputs, targets, order, substrate_images, counts,
                                   mode=mode, chunk_size=chunk_size)


def normalised_trapezoid(curve: Tensor, x: Sequence[float] | Tensor) -> Tensor:
    """Trapezoid area under ``curve (B, T)`` at abscissae ``x (T,)``, divided by ``x[-1] - x[0]``."""
    xs = torch.as_tensor(x, dtype=torch.float64, device=curve.device)
    y = curve.to(torch.float64)
    if y.shape[1] == 1:
        return y[:, 0].to(curve.dtype)
    area = ((y[:, 1:] + y[:, :-1]) * 0.5 * (xs[1:] - xs[:-1])).sum(1)
    return (area / (xs[-1] - xs[0])).to(curve.dtype)
