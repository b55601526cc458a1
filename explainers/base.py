"""The explainer adapter protocol: the ``Attribution`` record and the EXPLAINERS registry.

An adapter is a plain function registered by name::

    @register_explainer("captum.integrated_gradients", library="captum", additive=True)
    def integrated_gradients(model, inputs, targets, *, background, n_steps=50) -> Attribution: ...

* ``model`` arrives in ``eval()`` on the inputs' device and returns scores ``(B, K)`` in the
  explained output space (logits by default; :func:`with_output_space` adds a softmax);
  adapters move nothing and leave no hooks and no changed mode behind.
* ``inputs (B, C, H, W)``, ``targets (B,)`` class indices, ``background (N, C, H, W)`` reference
  images on the same device (adapters that need none ignore it).
* Additive methods fill ``outputs`` and ``base_values`` so that one shared check,
  ``values.sum((1, 2, 3)) - (outputs - base_values)``, applies to every method alike.
* Third-party adapters register through the entry-point group ``bench.explainers``, loaded lazily
  on the first lookup.
* Targets are class indices chosen by the caller (the runner explains the predicted class or the
  true label); adapters explain exactly the class they are given.

:func:`run_explainer` is the one entry point the runner uses: it rejects unknown names and
parameters, calls the adapter and validates what comes back (shape, dtype, device, finiteness,
additive fields) and that the model was left as it was. :func:`completeness_gap` is the shared
additivity check.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.precision import PRECISIONS, autocast, check_precision
from bench.core.registry import Registry

ENTRY_POINT_GROUP = "bench.explainers"
EXPLAINERS: Registry[Callable[..., "Attribution"]] = Registry(
    "explainer", entry_point_group=ENTRY_POINT_GROUP, variants=True
)
OUTPUT_SPACES = ("logit", "probability")
# the CAM family's default target layer: the most faithful stage measured on a trained resnet18 (docs/explainers.md)
CAM_LAYER = "layer2"
# the values of the gradient explainers' ``precision`` parameter (:func:`explainer_precision`)
PRECISION_CHOICES = tuple(PRECISIONS)


@dataclass(frozen=True)
class Attribution:
    """What an adapter returns.

    Attributes:
        values: ``(B, C, H, W)``, same shape, dtype and device as the inputs.
        outputs: ``(B,)`` f(x)[target] in the explained output space, for additive methods.
        base_values: ``(B,)`` the reference output (E_background f, or f(baseline)).
        meta: free-form facts about the run: n_samples, convergence delta, library versions, ...
    """

    values: Tensor
    outputs: Tensor | None = None
    base_values: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def register_explainer(name: str, *, library: str = "custom", additive: bool = False, passes: Any = None, **meta: Any):
    """Register an adapter ``fn(model, inputs, targets, *, background, **params) -> Attribution``.

    ``passes``: the model passes per image the method needs, ``(forward+backward, forward)``, as
    a constant pair or ``fn(params, background_size)`` (params with defaults filled in); the cost
    floor (``bench.perf.floor``) reads it. Without it the method has no floor. ``constraints``
    (a keyword of ``meta``) bounds parameters by name, e.g. ``{"n_steps": Range(1)}``
    (:mod:`bench.core.params`); their types come from the annotations. A run config is checked
    against both before any work starts. ``budget`` (a ``meta`` keyword) names the parameter that
    trades passes for accuracy; the cost-accuracy frontier (``bench.perf.frontier``) walks it over
    ``budgets`` against the method at ``reference_budget`` (both optional), once per value of
    ``budget_variants=(param, values)`` when given.
    """
    EXPLAINERS.check_pass_rule(name, passes)
    return EXPLAINERS.register(name, library=library, additive=additive, passes=passes, **meta)


def get_explainer(name: str):
    """The registry entry of an adapter (``.obj`` is the function, ``.meta`` its flags); a variant
    ``base@label`` gets its base's entry (:func:`bench.core.registry.split_variant`)."""
    return EXPLAINERS.get(name)


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


class _Softmax(nn.Module):
    """Softmax over classes as its own module, so DeepLift/DeepExplainer see the nonlinearity."""

    def __init__(self) -> None:
        super().__init__()
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.softmax(x)


def with_output_space(model: nn.Module, space: str = "logit") -> nn.Module:
    """The model whose outputs are explained: logits as they are, or class probabilities."""
    if space == "logit":
        return model
    if space == "probability":
        return nn.Sequential(model, _Softmax()).eval() if not model.training else nn.Sequential(model, _Softmax())
    raise BenchError(f"unknown output space {space!r}; use one of {', '.join(OUTPUT_SPACES)}")


# --------------------------------------------------------------------------------------------
# Running and validating an adapter
# --------------------------------------------------------------------------------------------


def explainer_params(name: str) -> dict[str, Any]:
    """The tunable parameters of an adapter with their defaults (``background`` excluded)."""
    return {k: v for k, v in get_explainer(name).params().items() if k != "background"}


def run_explainer(
    name: str, model: nn.Module, inputs: Tensor, targets: Tensor, *, background: Tensor, **params: Any
) -> Attribution:
    """Run a registered adapter and check its result.

    Unknown adapter or parameter names, an invalid result (wrong shape/dtype/device, NaN or inf,
    missing or misshaped ``outputs``/``base_values`` for an additive adapter) and a model left
    changed (training mode, hooks, parameters or buffers) raise :class:`BenchError` naming the
    adapter. The returned ``meta`` also records ``explainer`` and the effective ``params``.

    Args:
        inputs: ``(B, C, H, W)``; targets: ``(B,)`` long class indices; background ``(N, C, H, W)``.
    """
    entry = get_explainer(name)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(entry.obj).parameters.values())
    known = explainer_params(name)
    # types and declared constraints (bench.core.params); an adapter taking **kwargs accepts any name
    entry.check_params("explainer", {k: v for k, v in params.items() if k in known or not accepts_any})
    _check_call(name, inputs, targets, background)
    snapshot = _ModelSnapshot(model)
    attr = entry.obj(model, inputs, targets, background=background, **params)
    problem = snapshot.changes(model)
    if problem:
        raise BenchError(
            f"explainer {name!r} changed the model: {problem}; an adapter must leave no "
            f"hooks, no changed mode and no changed parameters behind (see explainers.base.model_guard)"
        )
    validate_attribution(name, attr, inputs, additive=bool(entry.meta.get("additive", False)))
    meta = dict(attr.meta)
    meta.setdefault("explainer", name)
    meta.setdefault("library", entry.meta.get("library"))
    meta["params"] = {**known, **params}
    return replace(attr, meta=meta)


def _check_call(name: str, inputs: Tensor, targets: Tensor, background: Tensor) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise BenchError(
            f"explainer {name!r}: inputs must be a (B, C, H, W) tensor, got "
            f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}"
        )
    if not isinstance(targets, Tensor) or targets.shape != inputs.shape[:1] or targets.dtype != torch.long:
        raise BenchError(
            f"explainer {name!r}: targets must be a ({inputs.shape[0]},) long tensor of class "
            f"indices, got {getattr(targets, 'shape', type(targets).__name__)} "
            f"{getattr(targets, 'dtype', '')}"
        )
    if not isinstance(background, Tensor) or background.dim() != 4 or background.shape[1:] != inputs.shape[1:]:
        raise BenchError(
            f"explainer {name!r}: background must be (N, {', '.join(map(str, inputs.shape[1:]))}), "
            f"got {getattr(background, 'shape', type(background).__name__)}"
        )
    if background.device != inputs.device or targets.device != inputs.device:
        raise BenchError(
            f"explainer {name!r}: inputs, targets and background must be on one device, got "
            f"{inputs.device}, {targets.device}, {background.device}"
        )


def validate_attribution(name: str, attr: Any, inputs: Tensor, *, additive: bool) -> None:
    """Raise :class:`BenchError` unless ``attr`` is a valid :class:`Attribution` for ``inputs``."""
    if not isinstance(attr, Attribution):
        raise BenchError(f"explainer {name!r} returned {type(attr).__name__}, not an Attribution")
    v = attr.values
    if not isinstance(v, Tensor):
        raise BenchError(f"explainer {name!r} returned values of type {type(v).__name__}, not a Tensor")
    if v.shape != inputs.shape or v.dtype != inputs.dtype or v.device != inputs.device:
        raise BenchError(
            f"explainer {name!r} returned values {tuple(v.shape)} {v.dtype} on {v.device}; "
            f"expected the inputs' {tuple(inputs.shape)} {inputs.dtype} on {inputs.device}"
        )
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise BenchError(f"explainer {name!r} returned {bad} non-finite (NaN/inf) values out of {v.numel()}")
    b = inputs.shape[0]
    for field_name in ("outputs", "base_values"):
        t = getattr(attr, field_name)
        if t is None:
            if additive:
                raise BenchError(f"explainer {name!r} is registered additive=True but returned no {field_name}")
            continue
        if not isinstance(t, Tensor) or t.shape != (b,):
            raise BenchError(
                f"explainer {name!r} returned {field_name} of shape {tuple(getattr(t, 'shape', ()))}; expected ({b},)"
            )
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise BenchError(f"explainer {name!r} returned {bad} non-finite {field_name}")


def completeness_gap(attr: Attribution) -> Tensor:
    """Completeness (Sundararajan et al. 2017; Lundberg & Lee 2017 "local accuracy"), ``(B,)`` float64.

    ``gap = sum_i values_i - (outputs - base_values)``, signed, summed in float64 on the values'
    device: zero for an exactly additive method. The one definition of the gap: the additivity
    metrics (``bench.metrics.additivity``) and the cost-accuracy frontier (``bench.perf.frontier``)
    read it from here. Raises :class:`BenchError` for an attribution without ``outputs`` and
    ``base_values``.
    """
    change = _output_change(attr)
    v = attr.values.to(torch.float64)
    return v.sum(dim=tuple(range(1, v.dim()))) - change


def relative_completeness_gap(attr: Attribution, eps: float = 1e-12) -> Tensor:
    """``|gap| / max(|outputs - base_values|, eps)`` per image ``(B,)`` float64 (:func:`completeness_gap`)."""
    return completeness_gap(attr).abs() / _output_change(attr).abs().clamp_min(eps)


def _output_change(attr: Attribution) -> Tensor:
    """``outputs - base_values`` in float64, the output change an additive attribution explains."""
    if attr.outputs is None or attr.base_values is None:
        raise BenchError(
            "completeness gap needs outputs and base_values; this attribution is not additive "
            "(its adapter did not report f(x) and the reference output)"
        )
    return attr.outputs.to(torch.float64) - attr.base_values.to(torch.float64)


# --------------------------------------------------------------------------------------------
# Helpers for adapters
# --------------------------------------------------------------------------------------------

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_full_backward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class _ModelSnapshot:
    """Cheap fingerprint of a model: modes, hooks, and parameters/buffers by identity and version.

    ``tensor._version`` is bumped by every in-place write, so a changed weight is detected without
    copying the state dict.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(n, m.training) for n, m in model.named_modules()]
        self.hooks = {n: sum(len(getattr(m, d, None) or ()) for d in _HOOK_DICTS[:5]) for n, m in model.named_modules()}
        self.tensors = {k: (id(t), t._version) for k, t in _named_tensors(model)}

    def changes(self, model: nn.Module) -> str:
        modes = [(n, m.training) for n, m in model.named_modules()]
        if modes != self.modes:
            flipped = [n or "<root>" for (n, a), (_, b) in zip(self.modes, modes) if a != b]
            return f"training mode changed on {', '.join(flipped[:5]) or 'its modules'}"
        hooks = {n: sum(len(getattr(m, d, None) or ()) for d in _HOOK_DICTS[:5]) for n, m in model.named_modules()}
        left = [n or "<root>" for n in hooks if hooks[n] != self.hooks.get(n, 0)]
        if left:
            return f"hooks added or removed on {len(left)} module(s) (e.g. {', '.join(left[:3])})"
        tensors = {k: (id(t), t._version) for k, t in _named_tensors(model)}
        if tensors.keys() != self.tensors.keys():
            diff = sorted(set(tensors) ^ set(self.tensors))
            return f"parameters/buffers added or removed: {', '.join(diff[:5])}"
        changed = [k for k in tensors if tensors[k] != self.tensors[k]]
        if changed:
            return f"parameters/buffers modified: {', '.join(changed[:5])}"
        return ""


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Undo what an attribution library leaves on a model, even when it raises.

    Restores every module's training flag and removes hooks, parameters, buffers and plain
    attributes that appeared during the block. Needed because, measured with shap 0.51.0,
    ``DeepExplainer`` stores ``x``/``y`` as ``nn.Parameter`` on every hooked leaf and deletes them
    only where it can reach the leaf through ``nn.Sequential`` containers from the root (the ReLUs
    of a residual block keep them, which changes ``state_dict()``), and its layer modes leave
    ``target_input`` or a hook behind on error.
    """
    before = []
    for m in model.modules():
        before.append(
            (
                m,
                m.training,
                m.__dict__.get("_is_full_backward_hook"),
                set(m.__dict__),
                set(m._parameters),
                set(m._buffers),
                set(m._modules),
                {d: set(getattr(m, d, None) or ()) for d in _HOOK_DICTS},
            )
        )
    try:
        yield model
    finally:
        for m, training, full_backward, attrs, params, buffers, mods, hooks in before:
            m.training = training
            if "_is_full_backward_hook" in m.__dict__:
                m.__dict__["_is_full_backward_hook"] = full_backward
            for d, keys in hooks.items():
                hook_dict = getattr(m, d, None)
                if hook_dict:
                    for k in [k for k in hook_dict if k not in keys]:
                        del hook_dict[k]
            for store, keep in ((m._parameters, params), (m._buffers, buffers), (m._modules, mods)):
                for k in [k for k in store if k not in keep]:
                    del store[k]
            for k in [k for k in m.__dict__ if k not in attrs]:
                del m.__dict__[k]


@contextlib.contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Keep numpy's and torch's global random states as they were (shap and Captum reseed them)."""
    state = np.random.get_state()
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(state)


def image_seeds(seed: int, inputs: Tensor) -> list[int]:
    """One 32-bit seed per image from ``seed`` and the image's bytes.

    Per-image randomness then does not depend on the batch an image is in, nor on its position,
    so a batch of images gets the same values as the images one at a time, while different
    images still get independent draws.
    """
    x = inputs.detach().to("cpu").contiguous().numpy()
    out = []
    for img in x:
        h = hashlib.blake2b(int(seed).to_bytes(8, "little", signed=True), digest_size=4)
        h.update(img.tobytes())
        out.append(int.from_bytes(h.digest(), "little"))
    return out


def target_scores(model: nn.Module, x: Tensor, targets: Tensor, batch_size: int = 256) -> Tensor:
    """``model(x)[i, targets[i]]`` without gradients, ``(B,)``; ``targets`` may be a scalar."""
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            s = model(x[start : start + batch_size])
            t = targets if targets.dim() == 0 else targets[start : start + batch_size]
            out.append(
                s.gather(1, t.expand(s.shape[0]).view(-1, 1)).squeeze(1)
                if t.dim() == 0
                else s.gather(1, t.view(-1, 1)).squeeze(1)
            )
    return torch.cat(out)


def mean_target_score(model: nn.Module, background: Tensor, targets: Tensor, batch_size: int = 256) -> Tensor:
    """``E_background model(.)[target]`` per target, ``(B,)``."""
    with torch.no_grad():
        mean = torch.cat(
            [model(background[s : s + batch_size]) for s in range(0, background.shape[0], batch_size)]
        ).mean(0)
    return mean[targets]


def resolve_layer(model: nn.Module, layer: str, explainer: str) -> tuple[str, nn.Module]:
    """The submodule named ``layer`` (dotted, e.g. ``"layer4"`` or ``"layer4.1.conv2"``).

    A name is also found one wrapper deep (``"0.layer4"`` inside the probability-space
    ``Sequential``), so configs can name layers of the classifier itself.
    """
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer, modules[layer]
    wrapped = [n for n in modules if n.endswith("." + layer) and n.count(".") == layer.count(".") + 1]
    if layer and len(wrapped) == 1:
        return wrapped[0], modules[wrapped[0]]
    names = sorted((n for n in modules if n), key=lambda n: (n.count("."), n))
    raise BenchError(
        f"explainer {explainer!r}: model has no layer {layer!r}; valid layer names include "
        f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
    )


def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def check_choice(explainer: str, param: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise BenchError(f"explainer {explainer!r}: {param}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_positive(explainer: str, **values: Any) -> None:
    for k, v in values.items():
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise BenchError(f"explainer {explainer!r}: {k} must be a positive integer, got {v!r}")


@contextlib.contextmanager
def explainer_precision(name: str, precision: str, device: torch.device | str) -> Iterator[None]:
    """The model passes of an adapter inside, forward and backward, in ``precision``.

    ``"float32"`` is no autocast: bit for bit the adapter without it. ``"bfloat16"`` (and
    ``"float16"``, CUDA only) run the convolutions and matrix products under :func:`torch.autocast`
    (:mod:`bench.core.precision`); the gradient with respect to the float32 input comes back in
    float32, so the values keep the inputs' dtype. What it costs in accuracy is measured, not
    assumed: the frontier's reduced-precision variants (``bench.perf.frontier``, docs/benchmarks.md).
    Exact methods (DeepLIFT's rescale rule, DeepSHAP, Partition SHAP) have no such parameter: their
    additivity is the point of them.
    """
    check_precision(precision, device, where=f"explainer {name!r}: precision")
    with autocast(precision, device):
        yield


def chunks(n: int, size: int | None) -> Iterator[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size`` (all at once if None)."""
    size = n if not size else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
