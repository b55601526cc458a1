"""A batched engine for DeepSHAP's rescale rule (the values of shap.DeepExplainer, faster).

Shrikumar et al. 2017 (DeepLIFT, rescale rule); Lundberg & Lee 2017 (DeepSHAP). For a network
whose only nonlinearities are ``nn.ReLU`` modules (each called once) between linear maps
(convolutions, linear layers, BatchNorm in eval, average pools, flatten, out-of-place residual
additions), DeepLIFT's multipliers for an input ``x`` and a reference ``r`` are the gradient of
the *linearised* network in which every ReLU ``k`` is replaced by multiplication with

    m_k = (relu(a_k(x)) - relu(a_k(r))) / (a_k(x) - a_k(r)),   or relu'(a_k(x)) where |a_k(x) - a_k(r)| < eps,

``a_k`` being the ReLU's input, exactly as shap's ``nonlinear_1d`` handler computes them. Then
``phi(x) = mean_r (x - r) * d f_lin,target / dx``. ``a_k(r)`` is computed once for the whole
background and ``a_k(x)`` once per image.

The gradient of the linearised network needs no forward pass per pair. The backward of every
operation other than the ReLUs (a vector-Jacobian product of a linear map) does not depend on
the values that went through it in the forward; only the multipliers do. So the engine records
the network's autograd graph ONCE per call, on ``pair_chunk`` rows of zeros with each ReLU
replaced by an identity whose backward multiplies by the multiplier of the pairs being explained
(computed when the backward reaches that ReLU), and then runs only backward passes through that
graph, one per chunk of (image, reference) pairs. A pair costs about the backward half of the
forward + backward pass that shap's and Captum's hooks (and the pass-count floor of
``bench.perf.floor``) run per pair, and shap's hooks run a doubled batch besides.

That value-independence is what :func:`unsupported_reason` checks before the engine is used:
the leaf modules must be linear or ``nn.ReLU``, the model explainer-safe, and every torch
function called in the recorded forward on an input-dependent tensor must be a known linear
one (a product of two input-dependent tensors, a comparison, a ``detach`` or any function not
known to be linear sends the adapters back to their library's engine, with the reason).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from bench.core.errors import BenchError, one_line
from explainers.base import check_choice
from models.safety import check_explainer_safe

LINEAR_LEAVES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
EPS = 1e-6  # shap's threshold for |delta_in| below which the plain gradient is used

# Torch functions (``__name__``) known to be linear, so that their backward does not depend on
# the forward values. Anything else called on an input-dependent tensor in the recorded forward
# makes :func:`unsupported_reason` object. These are linear in their first argument alone, which
# must be the only input-dependent tensor (``F.linear(x, w)`` with an input-dependent ``w`` is a
# product) ...
LINEAR_FUNCTIONS = frozenset(
    {
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
        "batch_norm",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "dropout",
        "pad",
        "neg",
        "__neg__",
        "__pos__",
        "sum",
        "mean",
        "flatten",
        "unflatten",
        "view",
        "reshape",
        "squeeze",
        "unsqueeze",
        "permute",
        "transpose",
        "t",
        "movedim",
        "contiguous",
        "clone",
        "expand",
        "repeat",
        "narrow",
        "select",
        "__getitem__",
        "split",
        "chunk",
        "unbind",
        "to",
        "float",
        "double",
    }
)
# ... these may take several (sums and concatenations; the ``*_as`` functions read only a shape or
# a dtype from their second argument) ...
MULTI_INPUT_LINEAR = frozenset(
    {
        "add",
        "__add__",
        "__radd__",
        "sub",
        "__sub__",
        "__rsub__",
        "rsub",
        "cat",
        "concat",
        "concatenate",
        "stack",
        "view_as",
        "reshape_as",
        "expand_as",
        "type_as",
    }
)
SCALING_FUNCTIONS = frozenset({"mul", "__mul__", "__rmul__", "multiply"})  # linear with one input-dependent factor
DIVIDING_FUNCTIONS = frozenset({"div", "__truediv__", "true_divide", "divide"})  # ... as the numerator only
# Linear only in eval: (position of the ``training`` argument, its default)
TRAINING_ARGUMENT = {"batch_norm": (5, False), "dropout": (2, True)}


class _Rescaled(torch.autograd.Function):
    """A ReLU's stand-in in the recorded graph: identity forward (the values are never used);
    the backward multiplies by ``multiply(k, grad)``, the current pairs' multipliers of ReLU ``k``."""

    @staticmethod
    def forward(ctx, a: Tensor, k: int, multiply: Callable[[int, Tensor], Tensor]) -> Tensor:
        ctx.k, ctx.multiply = k, multiply
        return a.view_as(a)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.multiply(ctx.k, grad), None, None


@contextlib.contextmanager
def _relus_rescaled(relus: Sequence[nn.Module], multiply: Callable[[int, Tensor], Tensor]) -> Iterator[None]:
    """Every ReLU module's ``forward`` replaced by :class:`_Rescaled` (restored on exit)."""
    saved = [r.__dict__.get("forward") for r in relus]
    for k, r in enumerate(relus):
        r.forward = lambda a, k=k: _Rescaled.apply(a, k, multiply)
    try:
        yield
    finally:
        for r, f in zip(relus, saved):
            if f is None:
                r.__dict__.pop("forward", None)
            else:
                r.forward = f


def _record(model: nn.Module, z: Tensor, watch: TorchFunctionMode | None = None) -> Tensor:
    """``model(z)`` with autograd recording the path from ``z`` only: parameters go in detached
    (no weight gradients, and autograd keeps fewer tensors for the backward). ``watch``, a
    function mode, sees the forward's torch calls."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    with torch.enable_grad(), watch if watch is not None else contextlib.nullcontext():
        return torch.func.functional_call(model, params, (z,))


class _LinearityRecorder(TorchFunctionMode):
    """Counts the torch calls on input-dependent tensors that are not known to be linear."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        dependent = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor) and t.requires_grad]
        if dependent and any(isinstance(o, Tensor) for o in tree_leaves(out)):
            name = getattr(func, "__name__", repr(func))
            first_only = len(dependent) == 1 and bool(args) and args[0] is dependent[0]
            linear = (
                name in MULTI_INPUT_LINEAR
                or (name in LINEAR_FUNCTIONS and first_only)
                or (name in SCALING_FUNCTIONS and len(dependent) == 1)
                or (name in DIVIDING_FUNCTIONS and first_only)
            )
            if name in TRAINING_ARGUMENT:
                at, default = TRAINING_ARGUMENT[name]
                if kwargs.get("training", args[at] if len(args) > at else default):
                    linear, name = False, f"{name}(training=True)"
            if not linear:
                self.found[name] += 1
        return out


def nonlinear_calls(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Torch functions (name -> calls) that the ReLU-free forward of ``model`` applies to
    input-dependent tensors and that are not known to be linear; empty where the engine is exact."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]

    def never(k: int, grad: Tensor) -> Tensor:  # pragma: no cover - nothing is differentiated here
        raise AssertionError("no backward in the linearity check")

    recorder = _LinearityRecorder()
    z = example.detach().clone().requires_grad_(True)
    with _relus_rescaled(relus, never):
        _record(model, z, watch=recorder)
    return dict(recorder.found)


def unsupported_reason(model: nn.Module, example: Tensor) -> str | None:
    """Why the batched engine cannot reproduce DeepExplainer on ``model``, or None if it can."""
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        if not isinstance(m, LINEAR_LEAVES + (nn.ReLU,)):
            return f"module {name or type(m).__name__} ({type(m).__name__}) has no linear/ReLU rule here"
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            return f"module {name} is in training mode"
    report = check_explainer_safe(model, example)
    if not report.ok:
        return "not explainer-safe: " + one_line(report, 200)
    found = nonlinear_calls(model, example)
    if found:
        calls = ", ".join(f"{name} x{n}" for name, n in sorted(found.items()))
        return f"torch calls not known to be linear on input-dependent tensors: {calls}"
    return None


def choose_engine(
    explainer: str, engine: str, library_engine: str, model: nn.Module, example: Tensor
) -> tuple[str, dict[str, str]]:
    """Which engine a DeepSHAP adapter runs: ``(engine name, extra meta)``.

    ``engine`` is ``"auto"``, ``"batched"`` or ``library_engine`` (``"shap"``, ``"captum"``):
    ``"auto"`` takes "batched" unless :func:`unsupported_reason` objects, recording the reason
    as ``meta["batched_unavailable"]``; ``"batched"`` on a model it cannot explain is a
    one-line error naming the adapter and the way out.
    """
    check_choice(explainer, "engine", engine, ("auto", library_engine, "batched"))
    if engine == library_engine:
        return library_engine, {}
    reason = unsupported_reason(model, example)
    if reason is None:
        return "batched", {}
    if engine == "batched":
        raise BenchError(
            f"{explainer} engine='batched' cannot explain this model ({reason}); use engine={library_engine!r}"
        )
    return library_engine, {"batched_unavailable": reason}


def rescale_attributions(
    model: nn.Module, inputs: Tensor, targets: Tensor, background: Tensor, *, pair_chunk: int = 16, eps: float = EPS
) -> Tensor:
    """DeepSHAP values ``(B, C, H, W)`` of ``model(x)[target]`` against ``background (N, C, H, W)``.

    One recorded forward of ``width`` rows (see the module docstring), then one backward per
    chunk of pairs: each image's ``N`` references are split into ``ceil(N / pair_chunk)`` chunks
    of equal size (50 references at 16 -> 13, 13, 12, 12 rather than 16, 16, 16, 2), ``width``
    being the largest; a smaller chunk's spare rows get multiplier 0. A chunk's multipliers exist
    one ReLU at a time, in buffers allocated once. Where ``|a(x) - a(r)| < eps`` the multiplier
    is the gradient ``relu'(a(x))``: shap's threshold by default, Captum's is 1e-10. The model
    must pass :func:`unsupported_reason`; its modules are restored afterwards.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    ref_acts = _relu_inputs(model, relus, background)
    img_acts = _relu_inputs(model, relus, inputs)
    n = background.shape[0]
    n_chunks = -(-n // max(1, int(pair_chunk)))
    bounds = [(n * c // n_chunks, n * (c + 1) // n_chunks) for c in range(n_chunks)]
    width = max(j1 - j0 for j0, j1 in bounds)
    # Multiplier arithmetic goes into buffers allocated once: fresh multi-megabyte tensors per
    # chunk cost more in page faults than the arithmetic itself.
    size = width * max((a[0].numel() for a in ref_acts if a is not None), default=0)
    mult, delta = inputs.new_empty(size), inputs.new_empty(size)
    small = torch.empty(size, dtype=torch.bool, device=inputs.device)
    where = {"b": 0, "j0": 0, "j1": 0}

    def multiply(k: int, grad: Tensor) -> Tensor:  # grad (width, *a_k.shape[1:])
        b, j0, j1 = where["b"], where["j0"], where["j1"]
        img_k, ref_k = img_acts[k], ref_acts[k]
        # the backward reaches only ReLUs the recorded forward did, which the forwards of the images and
        # the references reached too (no data-dependent control flow: unsupported_reason)
        assert img_k is not None and ref_k is not None
        ax, ar = img_k[b : b + 1], ref_k[j0:j1]
        m = mult[: grad.numel()].view(grad.shape)
        d, s, mr = delta[: ar.numel()].view(ar.shape), small[: ar.numel()].view(ar.shape), m[: j1 - j0]
        m[j1 - j0 :].zero_()  # spare rows of a smaller chunk
        torch.sub(ax, ar, out=d)
        torch.clamp(ar, min=0, out=mr)
        torch.sub(ax.clamp(min=0), mr, out=mr).div_(d)  # (relu(x) - relu(r)) / (x - r)
        torch.lt(d.abs_(), eps, out=s)
        torch.where(s, (ax > 0).to(ax.dtype), mr, out=mr)  # shap's nonlinear_1d: the gradient where x ~ r
        return grad * m

    out = torch.empty_like(inputs)
    with _relus_rescaled(relus, multiply):
        z = inputs.new_zeros((width, *inputs.shape[1:])).requires_grad_(True)
        logits = _record(model, z)
    seed = torch.zeros_like(logits)
    for b in range(inputs.shape[0]):
        where["b"] = b
        seed.zero_()
        seed[:, int(targets[b])] = 1
        total = torch.zeros_like(inputs[b])
        for j0, j1 in bounds:
            where["j0"], where["j1"] = j0, j1
            (grad,) = torch.autograd.grad(logits, z, seed, retain_graph=True)
            total += ((inputs[b : b + 1] - background[j0:j1]) * grad[: j1 - j0]).sum(0)
        out[b] = total / n
    return out.detach()


def _relu_inputs(model: nn.Module, relus: Sequence[nn.Module], x: Tensor, chunk: int = 64) -> list[Tensor | None]:
    """The input of every ReLU for each row of ``x`` (no grad), in ``relus`` order."""
    per_relu: list[list[Tensor]] = [[] for _ in relus]
    hooks = [
        r.register_forward_hook(lambda mod, args, output, k=k: per_relu[k].append(args[0].detach()))
        for k, r in enumerate(relus)
    ]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                model(x[i : i + chunk])
    finally:
        for h in hooks:
            h.remove()
    # None for a ReLU this forward never reaches (it gets no multiplier: the backward never reaches it either)
    return [None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts) for parts in per_relu]


def deepshap_passes(params: dict, background_size: int) -> tuple[float, float]:
    """Model passes per image of DeepSHAP (``shap.deep``, ``captum.deeplift_shap``).

    The method needs one gradient of the rescale-linearised network per (image, background)
    pair: one forward + backward per pair, as the libraries' hooks run it (they evaluate the
    input and the reference in the same pass, 2 rows per pair, ~2 being their practical
    minimum). The batched engine records the forward once and runs only the backward half per
    pair, so its floor ratio can fall below 1.
    """
    return float(background_size), 0.0
