"""The METRICS registry, the metric protocol and the helpers every metric family shares.

A metric is a plain function registered by name, with everything the rest of pneumobench needs
to know about it declared next to its code::

    @register_metric("deletion_auc", higher_is_better=False, reads="preprocessed",
                     passes=lambda p, explainer, layers: (0, p["steps"] + 1))
    def deletion_auc(model, inputs, targets, attribution, *, context=None, steps=49, ...) -> MetricResult

* ``model`` is in ``eval()`` on the inputs' device and returns logits ``(B, K)``; metrics that use
  probabilities apply a softmax over the classes themselves (each docstring says so).
* ``inputs (B, C, H, W)``, ``targets (B,)`` class indices, ``attribution.values (B, C, H, W)``.
* The result is a float tensor ``(B,)`` on the inputs' device (one score per image), or a
  :class:`MetricResult` holding those scores and the per-image curves the scores were computed
  from (deletion, insertion, ROAD), so that nobody computes a curve twice. NaN marks a missing
  value (additivity of a non-additive method, localisation on an empty mask); tables print it as
  "n/a", never as 0.
* Extra inputs come in a :class:`MetricContext`; a metric declares what it reads with
  ``needs=("masks",)`` or ``needs=("explain",)`` and raises :class:`BenchError` without it.
  ``explain(model, inputs=None)`` re-runs the unit's explainer on another model (randomisation)
  or on perturbed inputs (robustness).
* ``reads``: ``"preprocessed"`` (default) gets the attribution after the run's one explicit
  preprocessing step (:func:`preprocess_attributions`); ``"raw"`` gets it as the explainer
  returned it (additivity is a property of the raw values, not of a ranking).
* ``passes``: the model passes per image the metric costs, ``(forward+backward, forward-only)``,
  either a constant pair or ``fn(params, explainer_passes, n_layers) -> pair | None`` (params
  with defaults filled in; ``explainer_passes`` and ``n_layers`` for metrics that re-run the
  explainer on randomised models). :mod:`bench.perf.floor` reads it; without it the metric has
  no floor.
* Every model pass of a metric goes through :func:`scoring_logits` (via
  :func:`bench.metrics.perturbation.target_outputs`), so :func:`compute_metric`'s ``precision``
  (float32, or bfloat16 / float16 under autocast) reaches all of them and none of the explainer's.
* ``control_role``: what the control explainers (``random``, ``edge``: they ignore the model)
  mean for the metric, read by the reliability card (:data:`CONTROL_ROLES`).

Ranking metrics (drop/increase rate, deletion/insertion, ROAD, localisation) rank pixels by the
attribution values *as given*, descending: a large negative value ranks last. Taking absolute
values or keeping the positive part is one explicit, recorded step applied by the runner before
the metrics, :func:`preprocess_attributions`; no metric takes ``abs`` silently. The one exception
is the documented ``absolute=True`` parameter of ``randomisation_similarity``, which follows
the paper it reproduces and is recorded like every other parameter.

Third-party metrics register through the entry-point group ``bench.metrics``
(docs/adding-a-metric.md).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.precision import DEFAULT_PRECISION, autocast, check_precision
from bench.core.registry import Registry
from explainers.base import Attribution

ENTRY_POINT_GROUP = "bench.metrics"
CONTEXT_FIELDS = ("masks", "explain")
READS = ("preprocessed", "raw")
PROTOCOL = ("context",)  # keyword arguments every metric takes that are not parameters
PREPROCESS_MODES = ("signed", "abs", "positive")
# What a control explainer's score means for a metric (``control_role=`` of register_metric):
CONTROL_ROLES = {
    # the controls are the metric's chance level: a real explainer is expected to beat ``random``,
    # and a metric on which none does fails the card (faithfulness, localisation, randomisation)
    "baseline": "a real explainer is expected to beat the controls; none beating random fails the metric",
    # the controls can score the best or the worst possible value by construction (a random map is
    # maximally non-sparse and maximally sensitive, a map that ignores the input is perfectly
    # robust) or have no score at all (additivity): comparisons with them are reported, not judged
    "none": "the controls are no chance level: by construction they can score best or worst (or n/a)",
}

Passes = tuple[float, float]  # (forward+backward passes, forward-only passes) per image
PassRule = Union[Passes, Callable[[dict[str, Any], "Passes | None", "int | None"], "Passes | None"]]


@dataclass(frozen=True)
class Curve:
    """A per-image curve a metric was computed from: ``y (B, T)`` at the abscissae ``x (T,)``
    (fractions of pixels perturbed, in [0, 1])."""

    x: tuple[float, ...]
    y: Tensor


@dataclass(frozen=True)
class MetricResult:
    """What :func:`compute_metric` returns: ``scores (B,)`` and the curves behind them by name
    (e.g. ``{"deletion": Curve}``; empty for metrics without a curve)."""

    scores: Tensor
    curves: dict[str, Curve] = field(default_factory=dict)


METRICS: Registry[Callable[..., "Tensor | MetricResult"]] = Registry("metric", entry_point_group=ENTRY_POINT_GROUP)


@dataclass(frozen=True)
class MetricContext:
    """Extra inputs some metrics need.

    Attributes:
        masks: ``(B, 1, H, W)`` bool ground-truth masks (localisation metrics).
        explain: ``explain(model, inputs=None) -> values (B, C, H, W)`` re-runs the same explainer
            (same parameters, background, seed and targets) on ``model`` and on ``inputs`` (the
            unit's own images when None): on another model for randomisation metrics, on
            perturbed images for robustness metrics. Callables that only take ``model`` serve
            the metrics that never pass ``inputs`` (randomisation).
        additive: the explainer is registered as additive, so it must fill ``outputs`` and
            ``base_values``.
    """

    masks: Tensor | None = None
    explain: Callable[..., Tensor] | None = None
    additive: bool = False


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    needs: Sequence[str] = (),
    reads: str = "preprocessed",
    passes: PassRule | None = None,
    **meta: Any,
):
    """Register ``fn(model, inputs, targets, attribution, *, context=None, **params)``.

    ``fn`` returns ``(B,)`` scores or a :class:`MetricResult`. ``needs``, ``reads`` and
    ``passes`` are described in the module docstring; ``constraints`` (a keyword of ``meta``)
    bounds parameters by name (:mod:`bench.core.params`); ``control_role`` (a keyword of
    ``meta``) is one of :data:`CONTROL_ROLES`; other keywords (``kind``, ``paper``) are listed by
    ``python -m bench list metrics``.
    """
    needs = tuple(needs)
    unknown = [n for n in needs if n not in CONTEXT_FIELDS]
    if unknown:
        raise BenchError(
            f"metric {name!r} needs unknown context field(s) {unknown}; known: {', '.join(CONTEXT_FIELDS)}"
        )
    if reads not in READS:
        raise BenchError(f"metric {name!r}: reads={reads!r} is not one of {', '.join(READS)}")
    if "control_role" in meta and meta["control_role"] not in CONTROL_ROLES:
        raise BenchError(
            f"metric {name!r}: control_role={meta['control_role']!r} is not one of {', '.join(CONTROL_ROLES)}"
        )
    METRICS.check_pass_rule(name, passes)
    return METRICS.register(
        name, higher_is_better=bool(higher_is_better), needs=needs, reads=reads, passes=passes, **meta
    )


def metric_params(name: str) -> dict[str, Any]:
    """The tunable parameters of a metric with their defaults (``context`` excluded)."""
    return METRICS.get(name).params(exclude=PROTOCOL)


def map_values(values: Any, shape: Sequence[int], what: str = "attribution") -> Tensor:
    """A map computed anywhere as ``(B, C, H, W)`` float32 on the CPU, for images of ``shape`` ``(B, C, H, W)``.

    ``values``: a torch tensor or anything numpy reads as an array (any float or integer dtype),
    ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``; a one-channel map is repeated over the
    images' ``C`` channels, as the CAM adapters do. Its batch and size must be the images', its
    values finite. ``what`` names the map in the one-line errors.
    """
    b, c, h, w = (int(n) for n in shape)
    if isinstance(values, Tensor):
        v = values.detach().cpu()
    else:
        try:
            v = torch.as_tensor(np.array(values))  # a copy: a read-only array makes torch warn
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BenchError(f"{what} must be a tensor or an array, got {type(values).__name__} ({exc})") from None
    if (
        v.dtype == torch.bool
        or v.is_complex()
        or not (v.is_floating_point() or v.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))
    ):
        raise BenchError(f"{what} must hold real numbers, got dtype {v.dtype}")
    if v.ndim == 3:
        v = v.unsqueeze(1)
    if v.ndim != 4 or tuple(v.shape[2:]) != (h, w) or v.shape[0] != b or v.shape[1] not in (1, c):
        shapes = [f"({b}, {h}, {w})", f"({b}, 1, {h}, {w})"] + ([f"({b}, {c}, {h}, {w})"] if c != 1 else [])
        want = ", ".join(shapes[:-1]) + " or " + shapes[-1]
        raise BenchError(
            f"{what} has shape {tuple(values.shape) if hasattr(values, 'shape') else tuple(v.shape)}; "
            f"a map of {b} images of {c}x{h}x{w} is {want}, in the images' order"
        )
    v = v.float().expand(b, c, h, w).contiguous()
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise BenchError(f"{what} holds {bad} NaN or infinite values; give finite maps (e.g. torch.nan_to_num)")
    return v


def as_attribution(
    attribution: Attribution | Tensor | np.ndarray, inputs: Tensor, what: str = "attribution"
) -> Attribution:
    """``attribution`` as an :class:`Attribution`: one is returned as it is; a tensor or an array
    (:func:`map_values`' shapes) becomes the values, on the inputs' device and dtype, with no
    outputs or base values (a map computed elsewhere: additivity is n/a)."""
    if isinstance(attribution, Attribution):
        return attribution
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise BenchError(f"inputs must be a (B, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")
    values = map_values(attribution, inputs.shape, what)
    return Attribution(values.to(device=inputs.device, dtype=out_dtype(inputs)))


def compute_metric(
    name: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution | Tensor | np.ndarray,
    *,
    context: MetricContext | None = None,
    precision: str = DEFAULT_PRECISION,
    **params: Any,
) -> MetricResult:
    """Look up a metric, validate its parameter names and context, and run it.

    ``attribution``: an :class:`Attribution`, or the map itself as a tensor or an array,
    ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` (:func:`as_attribution`).
    ``precision`` (:data:`bench.core.precision.PRECISIONS`) is the one of the metric's own model
    passes (:func:`scoring_logits`); explainers the metric re-runs (``context.explain``) keep theirs.
    Returns a :class:`MetricResult` whatever the metric function returns.
    """
    entry = METRICS.get(name)
    attribution = as_attribution(attribution, inputs)
    entry.check_params("metric", params, exclude=PROTOCOL)
    check_precision(precision, inputs.device)
    for field_name in entry.meta.get("needs", ()):
        require_context(context, field_name, name)
    with scoring_precision(precision):
        out = entry.obj(model, inputs, targets, attribution, context=context, **params)
    result = out if isinstance(out, MetricResult) else MetricResult(out)
    if not isinstance(result.scores, Tensor) or result.scores.shape != (inputs.shape[0],):
        raise BenchError(
            f"metric {name!r} returned {getattr(result.scores, 'shape', type(result.scores).__name__)}; "
            f"a metric returns one score per image, ({inputs.shape[0]},)"
        )
    return result


# the precision of the scoring passes of the metric being computed (compute_metric sets it)
_SCORING_PRECISION: ContextVar[str] = ContextVar("scoring_precision", default=DEFAULT_PRECISION)


@contextlib.contextmanager
def scoring_precision(precision: str) -> Iterator[None]:
    """:func:`scoring_logits` inside runs in ``precision`` (checked against the device there)."""
    check_precision(precision)
    token = _SCORING_PRECISION.set(precision)
    try:
        yield
    finally:
        _SCORING_PRECISION.reset(token)


def scoring_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` as a metric scores it: logits ``(n, K)`` in the inputs' dtype.

    Under :func:`scoring_precision` other than float32 the pass runs under autocast in that
    precision (:func:`bench.core.precision.autocast`, on ``x``'s device type) and the logits are
    cast back before anything (softmax, an AUC) is computed from them; in float32 it is a plain
    ``model(x)``. Every model pass of the metrics goes through here, no explainer's does.
    """
    precision = _SCORING_PRECISION.get()
    if precision == DEFAULT_PRECISION:
        return model(x)
    with autocast(precision, x.device):
        logits = model(x)
    return logits.to(out_dtype(x))


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
# Helpers shared by the metric families
# ---------------------------------------------------------------------------------------------


def require_context(context: MetricContext | None, field_name: str, metric: str) -> Any:
    value = None if context is None else getattr(context, field_name, None)
    if value is None:
        raise BenchError(
            f"metric {metric!r} needs context.{field_name}, which is missing; pass "
            f"context=MetricContext({field_name}=...)"
        )
    return value


def validate_call(metric: str, model: nn.Module, inputs: Tensor, targets: Tensor, attribution: Attribution) -> None:
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


def out_dtype(inputs: Tensor) -> torch.dtype:
    return inputs.dtype if inputs.is_floating_point() else torch.get_default_dtype()


def check_fraction(metric: str, name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise BenchError(f"metric {metric!r}: {name} must be in (0, 1], got {value!r}")


def check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise BenchError(f"chunk_size must be a positive number of images per forward pass, got {chunk_size!r}")
    return int(chunk_size)


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


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of ``(B, ...)`` tensors, in float64; NaN if a row is constant."""
    a = a.flatten(1).to(torch.float64)
    b = b.flatten(1).to(torch.float64)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    num = (a * b).sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``(B, ...)`` tensors, ties averaged; NaN if a row is constant."""
    return pearson(_average_ranks(a.flatten(1).to(torch.float64)), _average_ranks(b.flatten(1).to(torch.float64)))
