"""Pure batched metric functions and the METRICS registry.

A metric is a plain function registered by name::

    @register_metric("deletion_auc", higher_is_better=False)
    def deletion_auc(model, inputs, targets, attribution, *, context=None, steps=49, ...) -> Tensor

* ``model`` is in ``eval()`` on the inputs' device and returns logits ``(B, K)``; metrics that use
  probabilities apply a softmax over the classes themselves (each docstring says so).
* ``inputs (B, C, H, W)``, ``targets (B,)`` class indices, ``attribution.values (B, C, H, W)``.
* The result is a float tensor ``(B,)`` on the inputs' device: one score per image. NaN marks a
  missing value (additivity of a non-additive method, localisation on an empty mask); tables
  print it as "n/a", never as 0.
* Extra inputs come in a :class:`MetricContext`; a metric declares what it reads with
  ``needs=("masks",)`` or ``needs=("explain",)`` and raises :class:`BenchError` without it.

Ranking metrics (drop/increase rate, deletion/insertion, ROAD, localisation) rank pixels by the
attribution values *as given*, descending: a large negative value ranks last. Taking absolute
values or keeping the positive part is one explicit, recorded step applied by the runner before
the metrics, :func:`preprocess_attributions`; no metric takes ``abs`` silently. The one exception
is the documented ``absolute=True`` parameter of :func:`randomisation_similarity`, which follows
the paper it reproduces and is recorded like every other parameter.

Pixel ranking (every ranking metric): with ``C > 1`` channels the pixels are ranked by the sum of
the attribution over channels; the sort is a stable descending sort, so ties go to the lower
flat index (row-major), deterministic on every device.
"""
from __future__ import annotations

import copy
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError
from bench.registry import Registry

if TYPE_CHECKING:  # the explainers package is edited concurrently; only the record type is used
    from explainers.base import Attribution

__all__ = [
    "METRICS",
    "MetricContext",
    "PREPROCESS_MODES",
    "SUBSTRATES",
    "register_metric",
    "compute_metric",
    "metric_params",
    "preprocess_attributions",
    "rank_pixels",
    "make_substrate",
    "gaussian_blur",
    "curve_boundaries",
    "perturbed_probabilities",
    "perturbation_curve",
    "normalised_trapezoid",
    "road_impute",
    "road_impute_many",
    "road_perturbed_inputs",
    "road_curve",
    "spearman",
    "randomisation_layers",
    "randomisation_per_layer",
]

METRICS: Registry[Callable[..., Tensor]] = Registry("metric")
CONTEXT_FIELDS = ("masks", "explain")
PREPROCESS_MODES = ("signed", "abs", "positive")
SUBSTRATES = ("zero", "mean", "blur")
DEFAULT_CHUNK = 32  # perturbed images per forward pass: measured fastest on CPU (raise it on a GPU)


@dataclass(frozen=True)
class MetricContext:
    """Extra inputs some metrics need.

    Attributes:
        masks: ``(B, 1, H, W)`` bool ground-truth masks (localisation metrics).
        explain: ``explain(model) -> values (B, C, H, W)`` re-runs the same explainer with the same
            inputs and targets on another model (randomisation metrics).
        additive: the explainer is registered as additive, so it must fill ``outputs`` and
            ``base_values``.
    """

    masks: Tensor | None = None
    explain: Callable[[nn.Module], Tensor] | None = None
    additive: bool = False


def register_metric(name: str, *, higher_is_better: bool, needs: tuple[str, ...] = (), **meta: Any):
    """Register ``fn(model, inputs, targets, attribution, *, context=None, **params) -> (B,)``."""
    needs = tuple(needs)
    unknown = [n for n in needs if n not in CONTEXT_FIELDS]
    if unknown:
        raise BenchError(f"metric {name!r} needs unknown context field(s) {unknown}; known: {', '.join(CONTEXT_FIELDS)}")
    return METRICS.register(name, higher_is_better=bool(higher_is_better), needs=needs, **meta)


def metric_params(name: str) -> dict[str, Any]:
    """The tunable parameters of a metric with their defaults (``context`` excluded)."""
    params = METRICS.get(name).params()
    params.pop("context", None)
    return params


def compute_metric(
    name: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    **params: Any,
) -> Tensor:
    """Look up a metric, validate its parameter names and context, and run it; returns ``(B,)``."""
    entry = METRICS.get(name)
    valid = metric_params(name)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise BenchError(
            f"unknown parameter(s) {', '.join(bad)} for metric {name!r}; valid parameters: "
            f"{', '.join(f'{k}={v!r}' for k, v in valid.items()) or '(none)'}"
        )
    for field_name in entry.meta.get("needs", ()):
        _require(context, field_name, name)
    return entry.obj(model, inputs, targets, attribution, context=context, **params)


def preprocess_attributions(values: Tensor, mode: str) -> Tensor:
    """The one explicit attribution preprocessing step, applied by the runner before ranking.

    ``"signed"`` returns the values unchanged, ``"abs"`` their absolute values (ranks by magnitude,
    as most perturbation papers do for signed methods), ``"positive"`` keeps the positive part
    ``max(v, 0)`` (evidence for the target class only). The mode is written into the run config.
    """
    if mode == "signed":
        return values
    if mode == "abs":
        return values.abs()
    if mode == "positive":
        return values.clamp(min=0)
    raise BenchError(f"unknown attribution preprocessing mode {mode!r}; use one of {', '.join(PREPROCESS_MODES)}")


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _require(context: MetricContext | None, field_name: str, metric: str) -> Any:
    value = None if context is None else getattr(context, field_name, None)
    if value is None:
        raise BenchError(
            f"metric {metric!r} needs context.{field_name}, which is missing; pass "
            f"context=MetricContext({field_name}=...)"
        )
    return value


def _validate(metric: str, model: nn.Module, inputs: Tensor, targets: Tensor, attribution: "Attribution") -> None:
    if inputs.dim() != 4:
        raise BenchError(f"metric {metric!r}: inputs must be (B, C, H, W), got shape {tuple(inputs.shape)}")
    if attribution.values.shape != inputs.shape:
        raise BenchError(
            f"metric {metric!r}: attribution values {tuple(attribution.values.shape)} do not match "
            f"inputs {tuple(inputs.shape)}; adapters must return values of the inputs' shape"
        )
    if targets.shape != (inputs.shape[0],):
        raise BenchError(f"metric {metric!r}: targets must be (B,) = ({inputs.shape[0]},), got {tuple(targets.shape)}")
    if model.training:
        raise BenchError(f"metric {metric!r}: the model must be in eval() mode (BatchNorm/Dropout change outputs)")


def _out_dtype(inputs: Tensor) -> torch.dtype:
    return inputs.dtype if inputs.is_floating_point() else torch.get_default_dtype()


def _check_fraction(metric: str, name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise BenchError(f"metric {metric!r}: {name} must be in (0, 1], got {value!r}")


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise BenchError(f"chunk_size must be a positive number of images per forward pass, got {chunk_size!r}")
    return int(chunk_size)


def rank_pixels(values: Tensor) -> Tensor:
    """Pixel indices ``(B, H*W)`` by attribution, descending; ``values (B, C, H, W)``.

    Channels are summed per pixel; the sort is stable, so ties keep the row-major order.
    """
    scores = values.sum(1).flatten(1)
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def _positions(order: Tensor) -> Tensor:
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
    unperturbed image; ``"blur"``: a Gaussian blur of the image (RISE's insertion start).
    """
    if substrate == "zero":
        return torch.zeros_like(inputs)
    if substrate == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
    if substrate == "blur":
        return gaussian_blur(inputs, blur_sigma)
    raise BenchError(f"unknown substrate {substrate!r}; use one of {', '.join(SUBSTRATES)}")


def curve_boundaries(n_pixels: int, steps: int) -> list[int]:
    """Pixel counts at the ``steps + 1`` curve points: ``floor(t * n / steps + 1/2)``, t = 0..steps.

    Equal chunks when ``steps`` divides ``n``; otherwise np.linspace-style rounded boundaries.
    """
    if not 1 <= steps <= n_pixels:
        raise BenchError(f"steps must be in [1, {n_pixels}] (the number of pixels), got {steps!r}")
    return [(2 * t * n_pixels + steps) // (2 * steps) for t in range(steps + 1)]


def _target_probabilities(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """Softmax over classes of the logits, at the target class: ``(n,)``."""
    logits = model(x)
    return torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1).long()).squeeze(1)


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
    chunk_size = _check_chunk(chunk_size)
    b, c, h, w = inputs.shape
    n_pix = h * w
    if order.shape != (b, n_pix):
        raise BenchError(f"order must be (B, H*W) = ({b}, {n_pix}), got {tuple(order.shape)}")
    pos = _positions(order.to(inputs.device))  # (B, N)
    counts_t = torch.as_tensor(list(counts), device=inputs.device, dtype=pos.dtype)
    n_t = counts_t.numel()
    total = b * n_t
    out = torch.empty(total, device=inputs.device, dtype=_out_dtype(inputs))
    first, second = (substrate_images, inputs) if mode == "delete" else (inputs, substrate_images)
    for start in range(0, total, chunk_size):
        ids = torch.arange(start, min(start + chunk_size, total), device=inputs.device)
        bi, ti = ids // n_t, ids % n_t
        chosen = (pos[bi] < counts_t[ti].unsqueeze(1)).view(-1, 1, h, w)  # pixels perturbed so far
        x = torch.where(chosen, first[bi], second[bi])
        out[start : start + len(ids)] = _target_probabilities(model, x, targets[bi])
    return out.view(b, n_t)


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


# ---------------------------------------------------------------------------------------------
# Drop / increase rate
# ---------------------------------------------------------------------------------------------


def _kept_probabilities(model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, metric):
    """(Y, O): target probabilities of the input and of its top-``frac`` pixels on the substrate."""
    _validate(metric, model, inputs, targets, attribution)
    _check_fraction(metric, "frac", frac)
    n_pix = inputs.shape[2] * inputs.shape[3]
    k = max(1, int(math.floor(frac * n_pix + 0.5)))
    order = rank_pixels(attribution.values)
    sub = make_substrate(inputs, substrate, blur_sigma=blur_sigma)
    p = perturbed_probabilities(model, inputs, targets, order, sub, [n_pix, k], mode="insert", chunk_size=chunk_size)
    return p[:, 0], p[:, 1]


@register_metric("drop_rate", higher_is_better=False, kind="faithfulness",
                 paper="Chattopadhay et al. 2018, Grad-CAM++ (WACV)")
def drop_rate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    frac: float = 0.15,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Relative drop of the target probability when only the top-``frac`` pixels are kept.

    Chattopadhay et al. 2018, "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks" (WACV), "Average Drop %" per image, as a fraction:
    ``drop = max(0, Y - O) / Y`` with ``Y = softmax(f(x))[t]`` and ``O = softmax(f(x'))[t]``,
    where ``x'`` keeps exactly ``round(frac * H * W)`` top-ranked pixels (:func:`rank_pixels`)
    and sets the others to the substrate. Variant: the paper multiplies the image by the
    (continuous) map; a binary top-k mask makes the score independent of the attribution scale.
    Lower is better.
    """
    y, o = _kept_probabilities(model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, "drop_rate")
    return ((y - o).clamp(min=0) / y).to(_out_dtype(inputs))


@register_metric("increase_rate", higher_is_better=True, kind="faithfulness",
                 paper="Chattopadhay et al. 2018, Grad-CAM++ (WACV)")
def increase_rate(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    frac: float = 0.15,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Whether keeping only the top-``frac`` pixels increases the target probability.

    Chattopadhay et al. 2018, "Grad-CAM++" (WACV), "Increase in Confidence" per image:
    ``increase = 1[O > Y]`` with ``Y``, ``O`` the target-class softmax probabilities of the input
    and of the top-``frac`` pixels on the substrate, as in :func:`drop_rate`. Its mean over
    images is the paper's rate. Higher is better.
    """
    y, o = _kept_probabilities(model, inputs, targets, attribution, frac, substrate, blur_sigma, chunk_size, "increase_rate")
    return (o > y).to(_out_dtype(inputs))


# ---------------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# ---------------------------------------------------------------------------------------------


def _rise_auc(model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, mode, metric):
    _validate(metric, model, inputs, targets, attribution)
    n_pix = inputs.shape[2] * inputs.shape[3]
    sub = make_substrate(inputs, substrate, blur_sigma=blur_sigma)
    curve = perturbation_curve(model, inputs, targets, rank_pixels(attribution.values), sub, steps,
                               mode=mode, chunk_size=chunk_size)
    fractions = [c / n_pix for c in curve_boundaries(n_pix, steps)]
    return normalised_trapezoid(curve, fractions)


@register_metric("deletion_auc", higher_is_better=False, kind="faithfulness",
                 paper="Petsiuk et al. 2018, RISE (BMVC)")
def deletion_auc(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    steps: int = 49,
    substrate: str = "zero",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Area under the target probability curve while the most relevant pixels are deleted.

    Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"
    (BMVC). ``p_t = softmax(f(x_t))[target]`` where ``x_t`` has the top ``n_t`` pixels
    (:func:`curve_boundaries`; 49 steps of 16 pixels at 28 x 28) set to the substrate
    (default zero, as RISE); ``AUC = sum_t (p_t + p_{t+1}) / 2 * (n_{t+1} - n_t) / (H W)`` over
    fractions [0, 1], including the unperturbed point ``p_0``. Lower is better.
    """
    return _rise_auc(model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, "delete", "deletion_auc")


@register_metric("insertion_auc", higher_is_better=True, kind="faithfulness",
                 paper="Petsiuk et al. 2018, RISE (BMVC)")
def insertion_auc(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    steps: int = 49,
    substrate: str = "blur",
    blur_sigma: float = 2.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Area under the target probability curve while the most relevant pixels are inserted.

    Petsiuk et al. 2018, "RISE" (BMVC). Starts from the substrate (default a Gaussian blur of the
    image with ``blur_sigma`` = 2 px, RISE's insertion start scaled to 28 px; RISE used an
    11-tap sigma-5 kernel at 224 px) and copies the top ``n_t`` input pixels in; ``p_t``,
    ``AUC`` as in :func:`deletion_auc` (softmax over logits, fractions [0, 1], steps + 1 points
    including the full substrate). Higher is better.
    """
    return _rise_auc(model, inputs, targets, attribution, steps, substrate, blur_sigma, chunk_size, "insert", "insertion_auc")


# ---------------------------------------------------------------------------------------------
# Additivity (completeness)
# ---------------------------------------------------------------------------------------------


def _additivity(metric: str, inputs: Tensor, attribution: "Attribution",
                context: MetricContext | None) -> tuple[Tensor, Tensor] | None:
    if attribution.values.shape != inputs.shape:
        raise BenchError(f"metric {metric!r}: attribution values {tuple(attribution.values.shape)} do not match inputs {tuple(inputs.shape)}")
    if attribution.outputs is None or attribution.base_values is None:
        if context is not None and context.additive:
            raise BenchError(
                f"metric {metric!r}: the explainer is registered as additive but returned no "
                f"outputs/base_values; additive adapters must fill both"
            )
        return None
    total = attribution.values.to(torch.float64).sum(dim=(1, 2, 3))
    delta = attribution.outputs.to(torch.float64) - attribution.base_values.to(torch.float64)
    return total, delta


@register_metric("additivity_error", higher_is_better=False, kind="axiomatic",
                 paper="Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy)")
def additivity_error(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
) -> Tensor:
    """Absolute completeness gap of an additive attribution, in the explained output's units.

    Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks" (completeness); Lundberg &
    Lee 2017, "A Unified Approach to Interpreting Model Predictions" (local accuracy):
    ``|sum_i phi_i - (outputs - base_values)|``, summed in float64. NaN when the method is not
    additive (``attribution.outputs`` or ``base_values`` is None). Lower is better.
    """
    r = _additivity("additivity_error", inputs, attribution, context)
    if r is None:
        return torch.full((inputs.shape[0],), float("nan"), device=inputs.device, dtype=_out_dtype(inputs))
    total, delta = r
    return (total - delta).abs().to(device=inputs.device, dtype=_out_dtype(inputs))


@register_metric("additivity_error_relative", higher_is_better=False, kind="axiomatic",
                 paper="Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy)")
def additivity_error_relative(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Completeness gap relative to the output change it should explain.

    Sundararajan et al. 2017 (completeness); Lundberg & Lee 2017 (local accuracy):
    ``|sum_i phi_i - (outputs - base_values)| / max(|outputs - base_values|, eps)``; ``eps``
    (default 1e-8) only guards a zero output change, where the ratio is meaningless and huge.
    NaN when the method is not additive. Lower is better.
    """
    r = _additivity("additivity_error_relative", inputs, attribution, context)
    if r is None:
        return torch.full((inputs.shape[0],), float("nan"), device=inputs.device, dtype=_out_dtype(inputs))
    total, delta = r
    return ((total - delta).abs() / delta.abs().clamp(min=eps)).to(device=inputs.device, dtype=_out_dtype(inputs))


# ---------------------------------------------------------------------------------------------
# ROAD (noisy linear imputation)
# ---------------------------------------------------------------------------------------------

# ROAD's neighbourhood weights (Rong et al. 2022, tleemann/road_evaluation; Quantus 0.6.0).
_ROAD_OFFSETS = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def road_impute(image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """ROAD's noisy linear imputation of one image ``(C, H, W)`` at flat pixel indices ``removed``.

    Each removed pixel equals the weighted mean of its in-image 8-neighbours (weights 1/6 for
    the 4-neighbours, 1/12 for the diagonals, renormalised at the border), removed neighbours
    being unknowns too: one sparse linear system ``A v = b`` per image with one column per
    channel, solved with scipy.sparse; then ``noise * N(0, 1)`` is added to the imputed pixels.
    """
    c = image.shape[0]
    removed = np.asarray(removed, dtype=np.int64)
    out = image.reshape(c, -1).astype(np.float64)  # a copy
    if removed.size == 0:
        return out.reshape(image.shape)
    sol = road_impute_many(image[None], [removed])[0]
    if noise:
        gen = rng if rng is not None else np.random.default_rng()
        sol = sol + noise * gen.standard_normal(sol.shape)
    out[:, removed] = sol.T
    return out.reshape(image.shape)


def _removed_count(fraction: float, n_pix: int) -> int:
    # floor(p * n); the guard keeps e.g. 0.29 * 100 = 28.999999999999996 at 29
    return int(math.floor(fraction * n_pix + 1e-9))


def road_impute_many(images: np.ndarray, removed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """:func:`road_impute` without noise for many systems at once: ``images (S, C, H, W)``,
    ``removed[s]`` the flat pixel indices removed from image ``s``; returns the imputed values
    ``(k_s, C)`` per system.

    The systems are assembled with array operations into one block-diagonal sparse matrix and
    solved by one ``spsolve`` call (one LU factorisation of independent blocks), instead of
    one Python-level assembly and solve per system; :func:`road_impute` is the one-system case.
    tests/test_metrics.py checks the equations by hand and that systems solved together equal
    each solved alone; tests/test_metrics_reference.py checks ROAD against Quantus.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    n_sys, c, h, w = images.shape
    flat = images.reshape(n_sys, c, h * w).astype(np.float64)
    sizes = np.array([len(r) for r in removed], dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return [np.zeros((0, c)) for _ in removed]
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sys_of = np.repeat(np.arange(n_sys), sizes)  # system of each unknown
    pix = np.concatenate([np.asarray(r, dtype=np.int64) for r in removed])
    var_id = np.full((n_sys, h * w), -1, dtype=np.int64)
    var_id[sys_of, pix] = np.arange(total)
    rows, cols = pix // w, pix % w
    diag = np.ones(total)
    b = np.zeros((total, c))
    a_rows, a_cols, a_vals = [np.arange(total)], [np.arange(total)], []
    for (dr, dc), weight in _ROAD_OFFSETS:
        nr, nc = rows + dr, cols + dc
        valid = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        diag[~valid] -= weight
        ids = np.nonzero(valid)[0]
        nidx = nr[ids] * w + nc[ids]
        neighbour_var = var_id[sys_of[ids], nidx]
        unknown = neighbour_var >= 0
        known = ids[~unknown]
        b[known] -= weight * flat[sys_of[known], :, nidx[~unknown]]
        a_rows.append(ids[unknown])
        a_cols.append(neighbour_var[unknown])
        a_vals.append(np.full(int(unknown.sum()), weight))
    a_vals.insert(0, -diag)
    a = coo_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
                   shape=(total, total)).tocsc()
    sol = np.asarray(spsolve(a, b)).reshape(total, c)
    return [sol[o:o + k] for o, k in zip(start, sizes)]


def road_perturbed_inputs(inputs: Tensor, order: Tensor, percentages: Sequence[float], *,
                          noise: float = 0.01, seed: int = 0) -> Tensor:
    """Images ``(B, P, C, H, W)`` with the first ``floor(p * H * W)`` pixels of ``order`` imputed.

    The ``P`` imputations of an image are solved together (:func:`road_impute_many`) on the
    CPU, images in parallel threads; Quantus solves them on the CPU one by one. The noise of image ``b`` comes from
    ``np.random.default_rng([seed, crc32(image bytes)])``, drawn per percentage in order:
    deterministic under a seed, different between images, and the same whether an image is
    scored alone or in a batch.
    """
    b, c, h, w = inputs.shape
    x_np = inputs.detach().to("cpu", torch.float64).numpy()
    order_np = order.detach().cpu().numpy()
    counts = [_removed_count(p, h * w) for p in percentages]
    removed = [order_np[i, :k] for i in range(b) for k in counts]
    images = np.repeat(x_np, len(counts), axis=0)

    def one_image(i: int) -> list[np.ndarray]:  # the P systems of image i: one solve
        part = slice(i * len(counts), (i + 1) * len(counts))
        return road_impute_many(images[part], removed[part])

    # SuperLU releases the GIL: images are solved on torch's intra-op thread count (the CPU
    # budget the model passes use; they are idle meanwhile). One solve per image whatever the
    # thread count, so the values do not depend on it.
    workers = max(1, min(b, torch.get_num_threads()))
    if workers == 1:
        per_image = [one_image(i) for i in range(b)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            per_image = list(pool.map(one_image, range(b)))
    solutions = [sol for group in per_image for sol in group]
    out = images.reshape(b, len(counts), c, h * w).copy()
    for i in range(b):
        crc = zlib.crc32(np.ascontiguousarray(inputs[i].detach().to("cpu", torch.float32).numpy()).tobytes())
        rng = np.random.default_rng([int(seed), crc])
        for j, k in enumerate(counts):
            if k == 0:
                continue
            sol = solutions[i * len(counts) + j]
            if noise:
                sol = sol + noise * rng.standard_normal(sol.shape)
            out[i, j][:, removed[i * len(counts) + j]] = sol.T
    return torch.from_numpy(out.reshape(b, len(counts), c, h, w)).to(device=inputs.device, dtype=inputs.dtype)


@torch.no_grad()
def road_curve(model: nn.Module, inputs: Tensor, targets: Tensor, order: Tensor,
               percentages: Sequence[float] = ROAD_PERCENTAGES, *, noise: float = 0.01, seed: int = 0,
               chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Target-class probability (softmax over logits) after ROAD removal: ``(B, P)``, batched forwards."""
    chunk_size = _check_chunk(chunk_size)
    x = road_perturbed_inputs(inputs, order, percentages, noise=noise, seed=seed)
    b, p = x.shape[:2]
    flat = x.flatten(0, 1)
    tgt = targets.repeat_interleave(p)
    probs = torch.cat([_target_probabilities(model, flat[s : s + chunk_size], tgt[s : s + chunk_size])
                       for s in range(0, flat.shape[0], chunk_size)])
    return probs.view(b, p)


def _road(metric, model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf):
    _validate(metric, model, inputs, targets, attribution)
    percentages = tuple(float(p) for p in percentages)
    if not percentages or any(not 0.0 < p < 1.0 for p in percentages) or list(percentages) != sorted(percentages):
        raise BenchError(f"metric {metric!r}: percentages must be increasing fractions in (0, 1), got {percentages!r}")
    order = rank_pixels(attribution.values)
    if lerf:
        order = order.flip(1)
    curve = road_curve(model, inputs, targets, order, percentages, noise=noise, seed=seed, chunk_size=chunk_size)
    return (1.0 - normalised_trapezoid(curve, percentages)).to(_out_dtype(inputs))


@register_metric("road_morf", higher_is_better=True, kind="faithfulness",
                 paper="Rong et al. 2022, ROAD (ICML)")
def road_morf(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Area over the probability curve when the most relevant pixels are removed first (MoRF).

    Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ICML; ROAD: RemOve And Debias). At each fraction ``p`` the top ``floor(p H W)`` pixels are
    replaced by noisy linear imputation (:func:`road_impute`, noise std ``noise`` = 0.01 in input
    units, seeded); ``q_p = softmax(f(x_p))[target]``. Score = area *over* the curve,
    ``1 - AUC_norm(q)``, with the trapezoid AUC over the percentages divided by their span.
    In ROAD a steeply falling MoRF curve is good, so higher is better. The paper (and Quantus)
    plot accuracy over a data set; per image we use the probability, which is finer.
    """
    return _road("road_morf", model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf=False)


@register_metric("road_lerf", higher_is_better=False, kind="faithfulness",
                 paper="Rong et al. 2022, ROAD (ICML)")
def road_lerf(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Area over the probability curve when the least relevant pixels are removed first (LeRF).

    Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ICML). As :func:`road_morf` with the ranking reversed (stable order flipped): score =
    ``1 - AUC_norm(q)`` of the target-class softmax probability. Removing unimportant pixels
    should keep the prediction, so a flat LeRF curve (small area over it) is good: lower is
    better.
    """
    return _road("road_lerf", model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf=True)


# ---------------------------------------------------------------------------------------------
# Model randomisation (sanity check)
# ---------------------------------------------------------------------------------------------


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N along dim 1 with ties averaged (scipy.stats.rankdata 'average'), float64."""
    b, n = x.shape
    sorted_vals, idx = torch.sort(x, dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    gid = (torch.cumsum(new_group.long(), dim=1) - 1) + torch.arange(b, device=x.device).unsqueeze(1) * n
    gid = gid.flatten()
    pos = torch.arange(1, n + 1, device=x.device, dtype=torch.float64).repeat(b)
    sums = torch.zeros(b * n, device=x.device, dtype=torch.float64).scatter_add_(0, gid, pos)
    cnt = torch.zeros(b * n, device=x.device, dtype=torch.float64).scatter_add_(0, gid, torch.ones_like(pos))
    avg = (sums[gid] / cnt[gid]).view(b, n)
    return torch.empty_like(avg).scatter_(1, idx, avg)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``(B, ...)`` tensors, ties averaged; NaN if a row is constant."""
    ra = _average_ranks(a.flatten(1).to(torch.float64))
    rb = _average_ranks(b.flatten(1).to(torch.float64))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    num = (ra * rb).sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))


def randomisation_layers(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters, top (output) first: the cascade order."""
    return [name for name, m in model.named_children() if any(True for _ in m.parameters())][::-1]


def randomisation_per_layer(
    model: nn.Module,
    inputs: Tensor,
    attribution: "Attribution",
    explain: Callable[[nn.Module], Tensor],
    *,
    seed: int = 0,
    absolute: bool = True,
) -> tuple[Tensor, list[str]]:
    """Spearman similarity ``(B, L)`` after each cumulative randomisation step, and the layer names.

    Works on a deep copy; step ``l`` re-initialises (``reset_parameters()`` of every submodule,
    seeded with ``seed + l``, the global RNG state restored afterwards) the l-th layer of
    :func:`randomisation_layers` on top of the previous ones, then calls ``explain``.
    """
    names = randomisation_layers(model)
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
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        values = explain(rand).detach()
        if values.shape != original.shape:
            raise BenchError(f"randomisation: explain(model) returned {tuple(values.shape)}, expected {tuple(original.shape)}")
        sims.append(spearman(original, values.abs() if absolute else values))
    return torch.stack(sims, dim=1).to(device=inputs.device, dtype=_out_dtype(inputs)), names


@register_metric("randomisation_similarity", higher_is_better=False, needs=("explain",), kind="randomisation",
                 paper="Adebayo et al. 2018, Sanity Checks for Saliency Maps (NeurIPS)")
def randomisation_similarity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    seed: int = 0,
    absolute: bool = True,
) -> Tensor:
    """Mean rank similarity between the attribution and those of cascadingly randomised models.

    Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS), cascading randomisation
    from the top: the top-level child modules with parameters are re-initialised in reverse
    order (fc, layer4, ..., stem), cumulatively, on a deep copy; after step ``l``
    ``s_l = spearman(|phi|, |phi_l|)`` over all C*H*W values (``absolute=True``, the paper's main
    figure). Score = ``nanmean_l s_l`` (a step whose map is constant has no rank correlation and
    is skipped). Per-layer values: :func:`randomisation_per_layer`. A method that ignores the
    model scores 1; lower is better.
    """
    _validate("randomisation_similarity", model, inputs, targets, attribution)
    explain = _require(context, "explain", "randomisation_similarity")
    sims, _ = randomisation_per_layer(model, inputs, attribution, explain, seed=seed, absolute=absolute)
    return torch.nanmean(sims, dim=1)


# ---------------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------------


def _masks(metric: str, context: MetricContext | None, inputs: Tensor) -> Tensor:
    masks = _require(context, "masks", metric)
    b, _, h, w = inputs.shape
    if masks.shape != (b, 1, h, w):
        raise BenchError(f"metric {metric!r}: masks must be (B, 1, H, W) = ({b}, 1, {h}, {w}), got {tuple(masks.shape)}")
    return masks.to(inputs.device).bool().flatten(1)


@register_metric("localisation_precision", higher_is_better=True, needs=("masks",), kind="localisation",
                 paper="Arras et al. 2022, CLEVR-XAI (relevance rank accuracy)")
def localisation_precision(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
    frac: float | None = None,
) -> Tensor:
    """Share of the top-k attribution pixels that fall inside the ground-truth mask.

    Arras, Osman & Samek 2022, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
    neural network explanations" (Information Fusion), relevance rank accuracy:
    ``|top_k(phi) ∩ M| / k`` with ``k = |M|`` (or ``round(frac * H * W)`` if ``frac`` is given),
    pixels ranked by :func:`rank_pixels`. NaN for an empty mask (no ground truth, e.g. a
    negative image). Higher is better.
    """
    _validate("localisation_precision", model, inputs, targets, attribution)
    m = _masks("localisation_precision", context, inputs)
    n_pix = m.shape[1]
    hits = m.gather(1, rank_pixels(attribution.values)).long().cumsum(1)
    if frac is None:
        k = m.sum(1)
    else:
        _check_fraction("localisation_precision", "frac", frac)
        k = torch.full((m.shape[0],), max(1, int(math.floor(frac * n_pix + 0.5))), device=m.device)
    inside = hits.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    score = inside.to(torch.float64) / k.clamp(min=1)
    score = torch.where(m.any(1), score, torch.full_like(score, float("nan")))
    return score.to(_out_dtype(inputs))


@register_metric("pointing_game", higher_is_better=True, needs=("masks",), kind="localisation",
                 paper="Zhang et al. 2016, Top-down Neural Attention by Excitation Backprop (ECCV)")
def pointing_game(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: "Attribution",
    *,
    context: MetricContext | None = None,
) -> Tensor:
    """Whether the maximum-attribution pixel lies inside the ground-truth mask.

    Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop" (ECCV):
    ``hit = 1[argmax_i phi_i ∈ M]`` (channel sum; ties to the first pixel in row-major order; no
    tolerance margin, the paper's 15 px would cover half a 28 px image). NaN for an empty mask.
    Higher is better.
    """
    _validate("pointing_game", model, inputs, targets, attribution)
    m = _masks("pointing_game", context, inputs)
    top = rank_pixels(attribution.values)[:, :1]
    hit = m.gather(1, top).squeeze(1).to(_out_dtype(inputs))
    return torch.where(m.any(1), hit, torch.full_like(hit, float("nan")))
