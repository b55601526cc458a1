"""Explainer safety: find what makes DeepExplainer / DeepLift inexact, and fix torchvision ResNets.

SHAP's DeepExplainer and Captum's DeepLift (Shrikumar et al. 2017, "Learning Important Features
Through Propagating Activation Differences") replace the gradient of every hooked *module*
nonlinearity by the rescale multiplier ``(f(x) - f(r)) / (x - r)``, which makes the attributions
sum exactly to ``f(x) - E_r f(r)``. Measured in ../shared/FIELD-NOTES.md, four things break that:

* a module called more than once per forward: the hooks keep one input/output per module;
* in-place operations (``ReLU(inplace=True)``, ``out += identity``): "Output 0 of
  BackwardHookFunction is a view and is being modified inplace";
* functional nonlinearities (``F.relu(x)``, ``x.sigmoid()``): not modules, hence treated as linear;
* overlapping or padded max-pools (torchvision's 3x3/2 stem pool: 0.78 logits off on resnet18).

:func:`check_explainer_safe` reports all four from one forward pass; :func:`make_explainer_safe`
rewrites a torchvision ResNet into an equivalent model free of them, using
:class:`ReLUTreeMaxPool2d` for the overlapping pool; :func:`convert_explainer_safe` rewrites any
model whose problems all have an exact rewrite (and says which modules it rewrote), and refuses
the others with one line naming the module.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from bench.core.errors import BenchError
from models import resnet

__all__ = [
    "Finding",
    "SafetyReport",
    "check_explainer_safe",
    "make_explainer_safe",
    "convert_explainer_safe",
    "hook_failure",
    "ReLUTreeMaxPool2d",
    "SafeBasicBlock",
    "SafeBottleneck",
    "CallSites",
]

# Module nonlinearities with a DeepLift rule in both shap 0.51 (DeepExplainer) and Captum 0.9
# (DeepLift): functional calls inside these are what the rule replaces, so they are fine there.
DEEPLIFT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
)

# Functional names (torch.*, torch.nn.functional.*, Tensor methods; an in-place variant "relu_"
# is matched through "relu") that are nonlinear in their tensor input.
NONLINEAR_FUNCTIONS = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "rrelu",
        "prelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "sigmoid",
        "logsigmoid",
        "hardsigmoid",
        "tanh",
        "hardtanh",
        "hardswish",
        "softplus",
        "softsign",
        "hardshrink",
        "softshrink",
        "tanhshrink",
        "threshold",
        "glu",
        "softmax",
        "log_softmax",
        "softmin",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "adaptive_max_pool1d_with_indices",
        "adaptive_max_pool2d_with_indices",
        "adaptive_max_pool3d_with_indices",
        "fractional_max_pool2d",
        "fractional_max_pool3d",
        "lp_pool1d",
        "lp_pool2d",
        "clamp",
        "clip",
        "clamp_min",
        "clamp_max",
        "max",
        "min",
        "amax",
        "amin",
        "maximum",
        "minimum",
        "fmax",
        "fmin",
        "abs",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "square",
    }
)

# In-place Python operators: ``a += b`` dispatches to ``Tensor.add_`` (caught by the trailing "_"),
# but the dunders can reach ``__torch_function__`` too; ``x[i] = v`` writes in place.
INPLACE_DUNDERS = frozenset(
    {
        "__iadd__",
        "__isub__",
        "__imul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__imatmul__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
        "__setitem__",
    }
)
_NOT_INPLACE = frozenset({"requires_grad_"})  # metadata, not data


class Finding(NamedTuple):
    """One problem: where (qualified module name, "" for the top level), what, how many times."""

    module: str
    what: str
    # shadows tuple.count() on purpose: a NamedTuple field replaces the method, and Finding.count
    # (the number of calls) is public; mypy reports any such field as an incompatible override
    count: int = 1  # type: ignore[assignment]

    def __str__(self) -> str:
        times = f" (x{self.count})" if self.count > 1 else ""
        return f"{self.module or '<top level>'}: {self.what}{times}"


@dataclass(frozen=True)
class SafetyReport:
    """What :func:`check_explainer_safe` found; ``ok`` when all four lists are empty.

    Attributes:
        reused_modules: modules called more than once in one forward (``count`` = calls).
        inplace_ops: ``inplace=True`` modules and in-place tensor ops run in a forward
            (``out += identity`` shows as ``Tensor.add_``), attributed to the executing module.
        functional_nonlinearities: nonlinear functions called outside a module nonlinearity
            that DeepExplainer and DeepLift handle (``F.relu``, ``torch.sigmoid``, ``x.clamp``).
        overlapping_maxpools: max-pools whose windows overlap (kernel extent > stride) or pad.
    """

    reused_modules: list[Finding] = field(default_factory=list)
    inplace_ops: list[Finding] = field(default_factory=list)
    functional_nonlinearities: list[Finding] = field(default_factory=list)
    overlapping_maxpools: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.reused_modules or self.inplace_ops or self.functional_nonlinearities or self.overlapping_maxpools
        )

    def __str__(self) -> str:
        if self.ok:
            return "explainer-safe: no reused modules, in-place ops, functional nonlinearities or overlapping max-pools"
        sections = [
            ("reused modules (hooks keep one input/output per module and call)", self.reused_modules),
            ("in-place ops (crash DeepExplainer's backward hooks)", self.inplace_ops),
            ("functional nonlinearities (treated as linear)", self.functional_nonlinearities),
            ("overlapping or padded max-pools (the max-pool rule is inexact)", self.overlapping_maxpools),
        ]
        lines = ["NOT explainer-safe: DeepExplainer/DeepLift would crash or be inexact"]
        for title, findings in sections:
            if findings:
                lines.append(f"  {len(findings)} {title}:")
                lines += [f"    {f}" for f in findings]
        return "\n".join(lines)


def check_explainer_safe(model: nn.Module, example: Tensor) -> SafetyReport:
    """Report what makes DeepExplainer / DeepLift inexact or crash on ``model``.

    Runs one forward pass of ``example (B, C, H, W)`` in eval mode under ``torch.no_grad``, with
    call-counting hooks on every module and a ``TorchFunctionMode`` that sees every torch function
    call; modules' modes are restored and the hooks removed afterwards. Only modules executed on
    this example are reported. Not detected: products of two input-dependent tensors (``x * y``
    gating) and modules neither library recognises (e.g. ``GroupNorm``, which shap passes through).
    """
    names: dict[int, str] = {id(m): n for n, m in model.named_modules()}
    calls: Counter[int] = Counter()
    stack: list[nn.Module] = []
    handles = []
    for m in model.modules():  # deduplicated: a module registered twice is hooked once
        handles.append(m.register_forward_pre_hook(_push(stack, calls)))
        handles.append(m.register_forward_hook(_pop(stack), always_call=True))
    modes = [(m, m.training) for m in model.modules()]
    recorder = _Recorder(stack, names)
    try:
        model.eval()
        with torch.no_grad(), recorder:
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    executed = [m for m in model.modules() if calls[id(m)]]
    reused = [
        Finding(names[id(m)], type(m).__name__, calls[id(m)])
        for m in executed
        if calls[id(m)] > 1 and not isinstance(m, CallSites)  # CallSites: one copy per call
    ]
    inplace = [
        Finding(names[id(m)], f"{type(m).__name__}(inplace=True)", calls[id(m)])
        for m in executed
        if getattr(m, "inplace", False) is True
    ]
    inplace += [Finding(where, what, n) for (where, what), n in recorder.inplace.items()]
    functional = [Finding(where, what, n) for (where, what), n in recorder.functional.items()]
    pools = [Finding(names[id(m)], why) for m in executed if (why := _maxpool_problem(m))]
    return SafetyReport(reused, inplace, functional, pools)


def _push(stack: list[nn.Module], calls: Counter[int]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any) -> None:
        calls[id(module)] += 1
        stack.append(module)

    return hook


def _pop(stack: list[nn.Module]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if stack and stack[-1] is module:
            stack.pop()

    return hook


class _Recorder(TorchFunctionMode):
    """Counts in-place and nonlinear torch function calls per executing module."""

    def __init__(self, stack: list[nn.Module], names: dict[int, str]) -> None:
        super().__init__()
        self.stack, self.names = stack, names
        self.inplace: Counter[tuple[str, str]] = Counter()
        self.functional: Counter[tuple[str, str]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        trailing = name.endswith("_") and not name.endswith("__") and name not in _NOT_INPLACE
        base = name[:-1] if trailing else name
        module = self.stack[-1] if self.stack else None
        where = "<outside any module>" if module is None else self.names.get(id(module), "<unnamed module>")
        if trailing or name in INPLACE_DUNDERS or _inplace_kwarg(func, args, kwargs):
            if getattr(module, "inplace", False) is not True:  # else already reported as the module
                self.inplace[(where, _pretty(func, kwargs))] += 1
        if base in NONLINEAR_FUNCTIONS and type(module) not in DEEPLIFT_MODULES:
            what = _pretty(func, kwargs)
            builtin_leaf = module is not None and type(module).__module__.startswith("torch.nn.")
            if builtin_leaf and not list(module.children()):
                what += f" inside {type(module).__name__}, a module DeepExplainer/DeepLift do not recognise"
            self.functional[(where, what)] += 1
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _signature(func: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _inplace_kwarg(func: Callable, args: tuple, kwargs: dict) -> bool:
    """``F.relu(x, inplace=True)`` and friends (``inplace`` may be positional)."""
    if kwargs.get("inplace") is True:
        return True
    if getattr(func, "__module__", None) != "torch.nn.functional" or len(args) < 2:
        return False
    sig = _signature(func)
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return sig.bind_partial(*args, **kwargs).arguments.get("inplace") is True
    except TypeError:
        return False


def _pretty(func: Callable, kwargs: dict) -> str:
    name = getattr(func, "__name__", repr(func))
    qual = getattr(func, "__qualname__", "") or ""
    mod = getattr(func, "__module__", None)
    if mod == "torch.nn.functional":
        out = f"F.{name}"
    elif qual.startswith(("TensorBase.", "Tensor.")):
        out = f"Tensor.{name}"
    elif qual.startswith("_VariableFunctionsClass.") or mod == "torch":
        out = f"torch.{name}"
    else:
        out = f"{mod}.{name}" if mod else name
    return out + ("(inplace=True)" if kwargs.get("inplace") is True else "")


def _maxpool_problem(m: nn.Module) -> str:
    """Why a max-pool module breaks the max-pool rule ("" if it does not)."""
    kinds = ((1, nn.MaxPool1d), (2, nn.MaxPool2d), (3, nn.MaxPool3d))
    n = next((dims for dims, kind in kinds if isinstance(m, kind)), 0)
    if not n:
        return ""
    k, s, p, d = (_ntuple(v, n) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
    extent = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    why = []
    if any(e > si for e, si in zip(extent, s)):
        why.append(f"window {'x'.join(map(str, extent))} > stride {'x'.join(map(str, s))} (windows overlap)")
    if any(p):
        why.append(f"padding {'x'.join(map(str, p))}")
    return f"{m!r}: {', '.join(why)}" if why else ""


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class ReLUTreeMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel_size, stride, padding)`` rebuilt from ops DeepLift handles exactly.

    ``y = tree_max(view_ij for i < kh, j < kw)`` where ``view_ij = pad0(x)[..., i::sh, j::sw]``
    (cropped to the output size) are the window's shifted strided views, and the tree reduces
    pairs with ``max(a, b) = a + relu(b - a)``, every relu its own ``nn.ReLU`` (kh*kw - 1 of them,
    each called once). Slicing, padding and sums are linear, so the rescale rule on the relus makes
    DeepExplainer's attributions sum exactly to the output difference.

    ASSUMPTION: with ``padding > 0`` the input must be non-negative (e.g. a ReLU output): the pad
    is zero where max-pool pads with -inf, and every window holds at least one real element
    (padding <= kernel // 2), so the two agree only for inputs >= 0. With ``padding=0`` the
    pool equals ``nn.MaxPool2d`` for any input. Outputs agree up to float rounding of
    ``a + (b - a)`` (about 1 ulp per tree level). Dilation and ceil_mode are not supported.
    Input ``(B, C, H, W)`` or ``(C, H, W)``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = _ntuple(kernel_size, 2)
        self.stride = _ntuple(stride if stride is not None else kernel_size, 2)
        self.padding = _ntuple(padding, 2)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise BenchError(
                f"ReLUTreeMaxPool2d needs kernel_size >= 1, stride >= 1, padding >= 0; got "
                f"{self.kernel_size}, {self.stride}, {self.padding}"
            )
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise BenchError(
                f"ReLUTreeMaxPool2d padding {self.padding} must be at most half the kernel "
                f"size {self.kernel_size}, as in nn.MaxPool2d"
            )
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(self.kernel_size[0] * self.kernel_size[1] - 1))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))  # zeros: equal to max-pool's -inf only for x >= 0
        oh, ow = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise BenchError(
                f"ReLUTreeMaxPool2d: input {tuple(x.shape)} (after padding) is smaller "
                f"than the kernel {self.kernel_size}"
            )
        views = [
            x[..., i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] for i in range(kh) for j in range(kw)
        ]
        relus = iter(self.relus)
        while len(views) > 1:
            pairs = [a + next(relus)(b - a) for a, b in zip(views[0::2], views[1::2])]
            views = pairs + views[len(pairs) * 2 :]
        return views[0]


class _SafeBlock(nn.Module):
    """A torchvision residual block's own modules with a fresh ReLU per call site.

    ``conv1, bn1, relu1, conv2, bn2, ...`` in the block's order, then ``downsample`` and the ReLU
    after the (out-of-place) residual addition; the forward is pneumobench's own block's.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        convs = 3 if hasattr(block, "conv3") else 2
        for i in range(1, convs + 1):
            setattr(self, f"conv{i}", getattr(block, f"conv{i}"))
            setattr(self, f"bn{i}", getattr(block, f"bn{i}"))
            if i < convs:
                setattr(self, f"relu{i}", _fresh_relu(block.get_submodule("relu")))
        self.downsample = block.downsample
        setattr(self, f"relu{convs}", _fresh_relu(block.get_submodule("relu")))
        self.stride = block.stride
        self.training = block.training


class SafeBasicBlock(_SafeBlock):
    """torchvision's ``BasicBlock`` with its modules, one ReLU per call site, out-of-place add."""

    expansion = 1
    forward = resnet.BasicBlock.forward


class SafeBottleneck(_SafeBlock):
    """torchvision's ``Bottleneck`` with its modules, one ReLU per call site, out-of-place add."""

    expansion = 4
    forward = resnet.Bottleneck.forward


def _fresh_relu(like: nn.Module) -> nn.ReLU:
    relu = nn.ReLU()
    relu.training = like.training
    return relu


_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


def make_explainer_safe(model: nn.Module) -> nn.Module:
    """An equivalent, DeepExplainer-exact copy of a torchvision ResNet (the input is untouched).

    Every ``BasicBlock`` / ``Bottleneck`` becomes a :class:`SafeBasicBlock` / :class:`SafeBottleneck`
    holding the same (copied) modules: one ``nn.ReLU`` per call site and ``out + identity`` instead
    of ``out += identity``. The stem ReLU is made out-of-place, and an overlapping or padded stem
    max-pool becomes a :class:`ReLUTreeMaxPool2d` -- exact because in ``ResNet._forward_impl`` the
    pool's input is ``relu(...) >= 0``. Any remaining ``inplace=True`` flag is switched off. The
    state_dict keys and values, the top-level ``ResNet`` class and each module's train/eval flag
    are preserved. Raises :class:`BenchError` for anything it cannot convert with a guarantee of
    equal outputs.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    def refuse(what: str, why: str) -> BenchError:
        return BenchError(f"make_explainer_safe cannot convert {what}: {why}")

    if not isinstance(model, ResNet):
        raise refuse(
            type(model).__name__,
            "only torchvision.models.resnet.ResNet models are supported "
            "(build explainer-safe models with models.build_model instead)",
        )
    if type(model).forward is not ResNet.forward or type(model)._forward_impl is not ResNet._forward_impl:
        raise refuse(
            type(model).__name__, "it overrides ResNet.forward, so the converter cannot know the order of its modules"
        )
    children = tuple(n for n, _ in model.named_children())
    if children != _RESNET_CHILDREN:
        raise refuse(
            "this ResNet", f"unknown top-level structure: children {list(children)}, expected {list(_RESNET_CHILDREN)}"
        )
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, lname)
        if type(layer) is not nn.Sequential:
            raise refuse(lname, f"it is a {type(layer).__name__}, expected an nn.Sequential of blocks")
        for i, block in enumerate(layer):
            kind = type(block)
            if not any(issubclass(kind, b) and kind.forward is b.forward for b in (BasicBlock, Bottleneck)):
                raise refuse(
                    f"block {lname}.{i}",
                    f"unknown block type {kind.__module__}.{kind.__qualname__} "
                    f"(only torchvision BasicBlock and Bottleneck with their own forward)",
                )
            if type(block.relu) is not nn.ReLU:
                raise refuse(f"block {lname}.{i}", f"its activation is {type(block.relu).__name__}, not nn.ReLU")
    pool = model.maxpool
    rewrite_pool = False
    if isinstance(pool, nn.MaxPool2d):
        if _ntuple(pool.dilation, 2) != (1, 1):
            raise refuse("the stem max-pool", f"dilation {pool.dilation} != 1 is not supported by ReLUTreeMaxPool2d")
        if pool.ceil_mode:
            raise refuse(
                "the stem max-pool",
                "ceil_mode=True windows run past the padded input, where zero padding is not the max-pool's -inf",
            )
        if pool.return_indices:
            raise refuse("the stem max-pool", "return_indices=True returns a tuple the ResNet forward cannot take")
        rewrite_pool = bool(_maxpool_problem(pool))
        if rewrite_pool and any(_ntuple(pool.padding, 2)) and type(model.relu) is not nn.ReLU:
            raise refuse(
                "the stem max-pool",
                f"it is not preceded by a ReLU (model.relu is "
                f"{type(model.relu).__name__}), so its input may be negative and the zero padding "
                f"of ReLUTreeMaxPool2d would differ from the max-pool's -inf padding",
            )
    elif type(pool) is not nn.Identity:
        raise refuse(
            "the stem pool",
            f"model.maxpool is {type(pool).__name__}; only nn.MaxPool2d or nn.Identity "
            f"are known to follow the stem ReLU safely",
        )

    safe = copy.deepcopy(model)
    if type(safe.relu) is nn.ReLU:
        safe.relu = _fresh_relu(safe.relu)
    if rewrite_pool:
        new_pool = ReLUTreeMaxPool2d(pool.kernel_size, pool.stride, pool.padding)  # input = relu(...) >= 0
        new_pool.train(pool.training)
        safe.maxpool = new_pool
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(safe, lname)
        for i, block in enumerate(layer):
            layer[i] = SafeBasicBlock(block) if isinstance(block, BasicBlock) else SafeBottleneck(block)
    for m in safe.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # out-of-place gives the same values
    _refuse_leftovers(safe, refuse)
    return safe


def _refuse_leftovers(safe: nn.Module, refuse: Callable[[str, str], BenchError]) -> None:
    """Statically re-check the copied-unchanged parts (conv1, bn1, avgpool, fc, downsample)."""
    seen: dict[int, str] = {}
    for name, m in safe.named_modules(remove_duplicate=False):
        if id(m) in seen and seen[id(m)] != name:
            raise refuse(
                f"module {name!r}", f"it is the same object as {seen[id(m)]!r}, so it would be called twice per forward"
            )
        seen.setdefault(id(m), name)
        if not isinstance(m, ReLUTreeMaxPool2d) and (why := _maxpool_problem(m)):
            raise refuse(f"max-pool {name!r}", f"{why}, and only the stem pool is known to follow a ReLU")


# ----------------------------------------------------------------------------- any model


class CallSites(nn.Module):
    """A parameter-free module called ``calls`` times per forward, as ``calls`` copies: the i-th call
    of a forward runs copy i, so every hooked module is called once (DeepExplainer's and DeepLift's
    hooks keep one input and output per module). Stateless copies compute what the original did.
    The count restarts with every forward of the model it belongs to (:meth:`restart`, a forward
    pre-hook of that model; a deep copy of the model copies the hook with its ``CallSites``)."""

    def __init__(self, module: nn.Module, calls: int) -> None:
        super().__init__()
        self.sites = nn.ModuleList(copy.deepcopy(module) for _ in range(calls))
        self.called = 0

    def restart(self, *args: Any) -> None:
        self.called = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.called >= len(self.sites):
            raise BenchError(
                f"a converted model called a shared {type(self.sites[0]).__name__} more than the "
                f"{len(self.sites)} times per forward it was converted for (its forward takes another "
                f"path on these inputs); use one module per call site in the model's own code"
            )
        site = self.sites[self.called]
        self.called += 1
        return site(*args, **kwargs)


def convert_explainer_safe(model: nn.Module, example: Tensor) -> tuple[nn.Module, list[str]]:
    """(an equivalent, DeepExplainer-exact copy of ``model``, what was rewritten: one line per module).

    Rewrites, each exact (the same outputs up to float rounding; the input model is untouched,
    the copy keeps its state-dict keys and values and its modules' train/eval flags):

    * torchvision ``BasicBlock`` / ``Bottleneck`` (with their own forward, wherever they sit) ->
      :class:`SafeBasicBlock` / :class:`SafeBottleneck`: one ReLU per call site, ``out + identity``;
    * every ``inplace=True`` flag -> ``False`` (out of place gives the same values);
    * an overlapping or padded ``nn.MaxPool2d`` -> :class:`ReLUTreeMaxPool2d`, when it has no
      padding or its input is the output of a ReLU module (so >= 0, where zero padding equals -inf);
    * a parameter-free module called k times per forward (a reused ``nn.ReLU``) -> :class:`CallSites`.

    Anything else :func:`check_explainer_safe` finds on ``example (B, C, H, W)`` -- an in-place
    tensor op or a functional nonlinearity in a module's own forward, a module with parameters
    called twice (shared weights), another pool -- raises a one-line :class:`BenchError` naming the
    module, before any other work.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck  # optional: only to recognise its blocks

    def refuse(where: str, why: str) -> BenchError:
        at = (
            f"{type(model).__name__}.forward"
            if not where
            else f"module {where!r} ({type(safe.get_submodule(where)).__name__})"
        )
        return BenchError(f"convert cannot make {type(model).__name__} explainer-safe: {at} {why}")

    safe = copy.deepcopy(model)
    rewrites: list[str] = []
    for name, m in list(safe.named_modules()):
        for b, cls in ((BasicBlock, SafeBasicBlock), (Bottleneck, SafeBottleneck)):
            if isinstance(m, b) and type(m).forward is b.forward and type(m.relu) is nn.ReLU:
                _replace(safe, m, cls(m))
                rewrites.append(
                    f"{name}: {type(m).__name__} -> {cls.__name__} (one ReLU per call site, out-of-place residual add)"
                )
    for name, m in safe.named_modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            rewrites.append(f"{name}: {type(m).__name__}(inplace=True) -> inplace=False")
    fed = _relu_fed(safe, example)
    for f in check_explainer_safe(safe, example).overlapping_maxpools:  # the pools the forward runs
        name, m = f.module, safe.get_submodule(f.module)
        why = f"{type(m).__name__}: {_maxpool_problem(m).partition(': ')[2]}"
        if type(m) is not nn.MaxPool2d or _ntuple(m.dilation, 2) != (1, 1) or m.ceil_mode or m.return_indices:
            raise refuse(
                name,
                f"is an overlapping max-pool ({why}) with dilation, ceil_mode or return_indices (or not "
                f"2-D), which ReLUTreeMaxPool2d cannot rebuild exactly; use windows that do not overlap",
            )
        if any(_ntuple(m.padding, 2)) and id(m) not in fed:
            raise refuse(
                name,
                f"is a padded overlapping max-pool ({why}) whose input is not a ReLU module's "
                f"output, so zero padding may differ from -inf; put an nn.ReLU before it",
            )
        pool = ReLUTreeMaxPool2d(m.kernel_size, m.stride, m.padding).train(m.training)
        _replace(safe, m, pool)
        rewrites.append(f"{name}: {why} -> ReLUTreeMaxPool2d (max as a + relu(b - a), exact)")
    report = check_explainer_safe(safe, example)
    for f in report.reused_modules:
        m = safe.get_submodule(f.module)
        if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
            raise refuse(
                f.module,
                f"is called {f.count} times per forward and holds weights (shared "
                f"weights): splitting it would change the model; call one module per site",
            )
        sites = CallSites(m, f.count).train(m.training)
        _replace(safe, m, sites)
        safe.register_forward_pre_hook(sites.restart)  # a bound method: deep copies of ``safe`` keep it theirs
        rewrites.append(f"{f.module}: {f.what} called {f.count} times per forward -> one copy per call site")
    report = check_explainer_safe(safe, example)
    for kind, why in (
        (
            "inplace_ops",
            "runs an in-place op ({}), which DeepExplainer's hooks cannot take; write it "
            "out of place (out = out + identity)",
        ),
        (
            "functional_nonlinearities",
            "calls {}, which DeepExplainer/DeepLift treat as linear; call a module (e.g. nn.ReLU) instead",
        ),
        ("reused_modules", "is still called more than once per forward"),
        ("overlapping_maxpools", "is still an overlapping max-pool ({})"),
    ):
        found = getattr(report, kind)
        if found:
            raise refuse(
                found[0].module,
                why.format(found[0].what) + (f" (and {len(found) - 1} more such)" if len(found) > 1 else ""),
            )
    return safe, rewrites


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered in ``root`` (a module may be registered under several names)."""
    for _name, parent in list(root.named_modules(remove_duplicate=False)):
        for key, child in list(parent._modules.items()):
            if child is old:
                parent._modules[key] = new


def _relu_fed(model: nn.Module, example: Tensor) -> set[int]:
    """The ids of the max-pools whose input, in a forward of ``example``, is a ReLU module's output
    (the very tensor: so it is >= 0 for every input)."""
    outputs: list[Tensor] = []
    fed: set[int] = set()

    def keep(module: nn.Module, args: Any, out: Any) -> None:
        outputs.append(out)

    def check(module: nn.Module, args: Any) -> None:
        if args and any(args[0] is o for o in outputs):
            fed.add(id(module))

    handles = [m.register_forward_hook(keep) for m in model.modules() if type(m) is nn.ReLU]
    handles += [m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return fed


# torch's message when a module's output that a backward hook wraps is changed in place (400 characters)
HOOK_VIEW_ERROR = "is a view and is being modified inplace"


def hook_failure(exc: BaseException) -> str | None:
    """One short line for torch's error when DeepExplainer's / DeepLift's hooks meet an in-place op
    (``ReLU(inplace=True)``, ``out += identity``), naming the fix; None for any other error."""
    if HOOK_VIEW_ERROR not in str(exc):
        return None
    return (
        f"{type(exc).__name__}: the model changes a hooked module's output in place (ReLU(inplace=True) or "
        f"out += identity), which this explainer's hooks cannot take; convert the model (convert=True)"
    )
