"""The batched perturbation machinery every perturbation metric shares: pixel ranking,
substrates, seeded per-image random draws, and the target-class output (probability or logit)
of perturbed images, a chunk of images per forward pass.

Pixel ranking (every ranking metric): with ``C > 1`` channels the pixels are ranked by the sum of
the attribution over channels; the sort is a stable descending sort, so ties go to the lower
flat index (row-major), deterministic on every device.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.metrics.base import check_chunk, out_dtype, scoring_logits
from explainers.base import OUTPUT_SPACES, image_seeds
from explainers.references import SUBSTRATES, gaussian_blur, make_substrate  # noqa: F401  (explainers' baselines too)

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


def curve_boundaries(n_pixels: int, steps: int) -> list[int]:
    """Pixel counts at the ``steps + 1`` curve points: ``floor(t * n / steps + 1/2)``, t = 0..steps.

    Equal chunks when ``steps`` divides ``n``; otherwise np.linspace-style rounded boundaries.
    """
    if not 1 <= steps <= n_pixels:
        raise BenchError(f"steps must be in [1, {n_pixels}] (the number of pixels), got {steps!r}")
    return [(2 * t * n_pixels + steps) // (2 * steps) for t in range(steps + 1)]


def target_outputs(model: nn.Module, x: Tensor, targets: Tensor, output: str = "probability") -> Tensor:
    """The target class's softmax probability over the logits (``"probability"``) or its logit: ``(n,)``,
    from one pass in the scoring precision (:func:`bench.metrics.base.scoring_logits`)."""
    if output not in OUTPUT_SPACES:
        raise BenchError(f"unknown output {output!r}; use one of {', '.join(OUTPUT_SPACES)}")
    scores = scoring_logits(model, x)
    if output == "probability":
        scores = torch.softmax(scores, dim=1)
    return scores.gather(1, targets.view(-1, 1).long()).squeeze(1)


def target_probabilities(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Softmax over classes of the logits, at the target class: ``(n,)``."""
    return target_outputs(model, x, targets, "probability")


@torch.no_grad()
def chunked_outputs(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    total: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    output: str = "probability",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """:func:`target_outputs` of ``total`` perturbed images, built and scored ``chunk_size`` at a time.

    ``build(ids)`` returns the perturbed images with flat indices ``ids`` and the index of the
    image each comes from (whose target it is scored at). Returns ``(total,)`` on the inputs'
    device and dtype; the perturbed images are never all in memory at once.
    """
    chunk_size = check_chunk(chunk_size)
    out = torch.empty(total, device=inputs.device, dtype=out_dtype(inputs))
    for start in range(0, total, chunk_size):
        ids = torch.arange(start, min(start + chunk_size, total), device=inputs.device)
        x, image = build(ids)
        out[start : start + len(ids)] = target_outputs(model, x, targets[image], output)
    return out


def masked_outputs(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    masks: Tensor,
    fills: Tensor,
    *,
    output: str = "probability",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Target output ``(B, T)`` after replacing the pixels ``masks[b, t]`` of image ``b`` by ``fills``.

    ``masks (B, T, H, W)`` bool (every channel of a masked pixel is replaced), ``fills (B, C, H, W)``
    (one substrate image per image) or ``(B, T, C, H, W)`` (one per perturbation).
    """
    b, t = masks.shape[:2]

    def build(ids: Tensor) -> tuple[Tensor, Tensor]:
        bi, ti = ids // t, ids % t
        fill = fills[bi] if fills.dim() == 4 else fills[bi, ti]
        return torch.where(masks[bi, ti].unsqueeze(1), fill, inputs[bi]), bi

    return chunked_outputs(model, inputs, targets, b * t, build, output=output, chunk_size=chunk_size).view(b, t)


def per_image_draws(inputs: Tensor, seed: int, salt: str, draw: Callable[[torch.Generator], Tensor]) -> Tensor:
    """``draw(generator)`` for every image, stacked ``(B, ...)``: seeded random perturbations.

    Image ``b``'s CPU generator is seeded from ``seed``, ``salt`` (the metric's name: two metrics,
    or a metric and the ``random`` control, never share draws) and the image's bytes
    (:func:`explainers.base.image_seeds`), so an image gets the same draws alone or in a batch,
    on every device. Draw in float64 on the CPU: floating results are moved to the inputs' device
    and dtype, others (indices) to the device.
    """
    salted = zlib.crc32(f"{salt}:{int(seed)}".encode())
    out = torch.stack([draw(torch.Generator().manual_seed(s)) for s in image_seeds(salted, inputs)])
    return out.to(device=inputs.device, dtype=out_dtype(inputs)) if out.is_floating_point() else out.to(inputs.device)


@torch.no_grad()
def perturbed_probabilities(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    order: Tensor,
    substrate_images: Tensor,
    counts: Sequence[int],
    *,
    mode: str = "delete",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Target-class probability (softmax over logits) after perturbing the top ``counts[t]`` pixels.

    ``mode="delete"``: the first ``counts[t]`` pixels of ``order`` take the substrate's values;
    ``mode="insert"``: start from the substrate and the first ``counts[t]`` pixels take the
    input's values. Returns ``(B, T)``. One forward pass per ``chunk_size`` (image, count) pairs;
    the perturbed images are built per chunk, never all at once.
    """
    if mode not in ("delete", "insert"):
        raise BenchError(f"unknown perturbation mode {mode!r}; use 'delete' or 'insert'")
    b, c, h, w = inputs.shape
    n_pix = h * w
    if order.shape != (b, n_pix):
        raise BenchError(f"order must be (B, H*W) = ({b}, {n_pix}), got {tuple(order.shape)}")
    pos = pixel_positions(order.to(inputs.device))  # (B, N)
    counts_t = torch.as_tensor(list(counts), device=inputs.device, dtype=pos.dtype)
    n_t = counts_t.numel()
    first, second = (substrate_images, inputs) if mode == "delete" else (inputs, substrate_images)

    def build(ids: Tensor) -> tuple[Tensor, Tensor]:
        bi, ti = ids // n_t, ids % n_t
        chosen = (pos[bi] < counts_t[ti].unsqueeze(1)).view(-1, 1, h, w)  # pixels perturbed so far
        return torch.where(chosen, first[bi], second[bi]), bi

    return chunked_outputs(model, inputs, targets, b * n_t, build, chunk_size=chunk_size).view(b, n_t)


def perturbation_curve(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    order: Tensor,
    substrate_images: Tensor,
    steps: int,
    *,
    mode: str = "delete",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Target-class probability curve ``(B, steps + 1)`` while deleting / inserting pixels in order.

    Point 0 is the unperturbed input (delete) or the full substrate (insert); point ``t`` has the
    first :func:`curve_boundaries` ``[t]`` pixels of ``order (B, H*W)`` substituted. Costs about
    ``B * (steps + 1) / chunk_size`` batched forward passes.
    """
    counts = curve_boundaries(inputs.shape[2] * inputs.shape[3], steps)
    return perturbed_probabilities(
        model, inputs, targets, order, substrate_images, counts, mode=mode, chunk_size=chunk_size
    )


def normalised_trapezoid(curve: Tensor, x: Sequence[float] | Tensor) -> Tensor:
    """Trapezoid area under ``curve (B, T)`` at abscissae ``x (T,)``, divided by ``x[-1] - x[0]``."""
    xs = torch.as_tensor(x, dtype=torch.float64, device=curve.device)
    y = curve.to(torch.float64)
    if y.shape[1] == 1:
        return y[:, 0].to(curve.dtype)
    area = ((y[:, 1:] + y[:, :-1]) * 0.5 * (xs[1:] - xs[:-1])).sum(1)
    return (area / (xs[-1] - xs[0])).to(curve.dtype)
