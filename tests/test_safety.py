"""models.safety: the explainer-safety check, the torchvision ResNet converter, the ReLU-tree pool.

The DeepExplainer tests measure completeness, |sum(phi) - (f(x) - E f(bg))| / |f(x) - E f(bg)|,
for the top class; run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import models
from bench.core.errors import BenchError
from models.safety import (
    CallSites,
    convert_explainer_safe,
    ReLUTreeMaxPool2d,
    SafeBasicBlock,
    SafeBottleneck,
    check_explainer_safe,
    make_explainer_safe,
)
from tests.conftest import calibrated

SIZE = 64  # torchvision stems downsample 4x: 64 px leaves 2x2 maps at layer4


def _tv(arch: str, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=2)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    # BatchNorm running stats from two standard-normal batches of 4 (the usual momentum), then eval
    return calibrated(model, channels=in_channels, size=SIZE, batches=2, batch=4, normal=True, momentum=0.1)


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    return _tv("resnet18")


@pytest.fixture(scope="module")
def tv_resnet50() -> nn.Module:
    return _tv("resnet50")


def _hook_free(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- check_explainer_safe


@pytest.mark.parametrize("size", [28, 64])  # 28: 3x3 stem, no pool; 64: 7x7/2 stem + 2x2 pool
@pytest.mark.parametrize("name", models.MODELS.names())
def test_registered_models_are_safe(name, size):
    torch.manual_seed(0)
    model = models.build_model(name, image_size=size)  # train mode, as built
    state = copy.deepcopy(model.state_dict())
    report = check_explainer_safe(model, torch.randn(1, 1, size, size))
    assert report.ok, f"{name} @ {size}px:\n{report}"
    assert "no reused modules" in str(report)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert _hook_free(model)
    assert _same_state(state, model.state_dict())  # ran in eval: BatchNorm stats untouched


class _Unsafe(nn.Module):
    """Each problem once: a shared ReLU, ``+=``, F.relu, an in-place ReLU, an overlapping pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        y = self.conv2(x)
        y += x
        y = self.act(self.relu(y))
        y = self.pool(F.relu(y))
        return self.fc(y.mean((2, 3)))


def test_unsafe_model_reports_every_problem():
    model = _Unsafe().eval()
    report = check_explainer_safe(model, torch.randn(2, 1, 12, 12))
    assert not report.ok
    assert [(f.module, f.what, f.count) for f in report.reused_modules] == [("relu", "ReLU", 2)]
    inplace = {(f.module, f.what) for f in report.inplace_ops}
    assert ("act", "ReLU(inplace=True)") in inplace
    assert ("", "Tensor.add_") in inplace  # y += x, attributed to the top level
    assert [(f.module, f.what) for f in report.functional_nonlinearities] == [("", "F.relu")]
    assert [f.module for f in report.overlapping_maxpools] == ["pool"]
    text = str(report)
    print(text)
    assert text.startswith("NOT explainer-safe")
    needles = (
        "relu: ReLU (x2)",
        "act: ReLU(inplace=True)",
        "<top level>: Tensor.add_",
        "<top level>: F.relu",
        "pool: MaxPool2d",
    )
    for needle in needles:
        assert needle in text
    assert not model.training and _hook_free(model)


class _Functional(nn.Module):
    """Nonlinearities the rules miss: tensor methods, torch.*, a custom activation module."""

    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.swish = self.Swish()
        self.silu = nn.SiLU()  # a torch.nn activation neither shap nor Captum has a rule for
        self.sigmoid = nn.Sigmoid()  # has a rule: fine

    def forward(self, x):
        x = self.conv(x).relu_()  # in-place and functional
        x = torch.tanh(x).clamp(min=0)
        x = F.relu(x, True)  # inplace passed positionally
        return self.sigmoid(self.silu(self.swish(x))).flatten(1)


def test_functional_and_inplace_calls_are_attributed_to_modules():
    report = check_explainer_safe(_Functional(), torch.randn(2, 1, 6, 6))
    functional = {(f.module, f.what.split(" ")[0]) for f in report.functional_nonlinearities}
    assert functional == {
        ("", "Tensor.relu_"),
        ("", "torch.tanh"),
        ("", "Tensor.clamp"),
        ("", "F.relu(inplace=True)"),
        ("swish", "torch.sigmoid"),
        ("silu", "F.silu"),
    }
    assert any("do not recognise" in f.what for f in report.functional_nonlinearities if f.module == "silu")
    assert {(f.module, f.what) for f in report.inplace_ops} == {("", "Tensor.relu_"), ("", "F.relu(inplace=True)")}
    assert not report.reused_modules and not report.overlapping_maxpools


@pytest.mark.parametrize(
    "pool, bad",
    [
        (nn.MaxPool2d(2), False),
        (nn.MaxPool2d(3, stride=3), False),
        (nn.MaxPool2d((2, 3), stride=(2, 3)), False),
        (nn.MaxPool2d(3, stride=2), True),
        (nn.MaxPool2d(2, padding=1), True),
        (nn.MaxPool2d((2, 3), stride=2), True),
        (nn.MaxPool2d(2, stride=2, dilation=2), True),  # window extent 3 > stride 2
        (nn.MaxPool1d(3, stride=2), True),
    ],
)
def test_overlapping_maxpools(pool, bad):
    x = torch.randn(1, 2, 12) if isinstance(pool, nn.MaxPool1d) else torch.randn(1, 2, 12, 12)
    report = check_explainer_safe(nn.Sequential(pool), x)
    assert bool(report.overlapping_maxpools) == bad, str(report)


def test_reused_module_and_mode_restore():
    shared = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    model = nn.Sequential(shared, nn.ReLU(), shared)  # a container called twice: its leaves too
    model.train()
    model[1].eval()  # mixed modes come back as they were
    report = check_explainer_safe(model, torch.randn(2, 1, 4, 4))
    assert {(f.module, f.count) for f in report.reused_modules} == {("0", 2), ("0.0", 2), ("0.1", 2)}
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    assert _hook_free(model)


def test_torchvision_resnet18_has_all_three_problems(tv_resnet18):
    report = check_explainer_safe(tv_resnet18, torch.randn(2, 3, SIZE, SIZE))
    print(report)
    assert {f.module for f in report.reused_modules} == {f"layer{i}.{j}.relu" for i in range(1, 5) for j in (0, 1)}
    assert all(f.count == 2 for f in report.reused_modules)
    inplace = {(f.module, f.what) for f in report.inplace_ops}
    assert ("relu", "ReLU(inplace=True)") in inplace and ("layer1.0", "Tensor.add_") in inplace
    assert [f.module for f in report.overlapping_maxpools] == ["maxpool"]
    assert not report.functional_nonlinearities
    assert _hook_free(tv_resnet18) and not tv_resnet18.training


# ---------------------------------------------------------------- make_explainer_safe


@pytest.mark.parametrize("arch, in_channels", [("resnet18", 3), ("resnet50", 3), ("resnet18", 1)])
def test_converted_resnet_is_equivalent_safe_and_original_untouched(arch, in_channels, tv_resnet18, tv_resnet50):
    model = {("resnet18", 3): tv_resnet18, ("resnet50", 3): tv_resnet50}.get((arch, in_channels)) or _tv(
        arch, in_channels
    )
    state = copy.deepcopy(model.state_dict())
    safe = make_explainer_safe(model)

    x = torch.randn(2, in_channels, SIZE, SIZE)
    with torch.no_grad():
        diff = (safe(x) - model(x)).abs().max().item()
    print(f"{arch} ({in_channels} ch): max |converted - stock| = {diff:.2e}")
    assert diff <= 1e-5
    report = check_explainer_safe(safe, x)
    assert report.ok, str(report)

    assert _same_state(state, model.state_dict())  # original untouched ...
    assert _same_state(state, safe.state_dict())  # ... and the copy holds the same weights, same keys
    assert model.relu.inplace and model.layer1[0].relu.inplace
    assert type(model.layer1[0]).__name__ in ("BasicBlock", "Bottleneck")
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert not any(p1 is p2 for p1, p2 in zip(model.parameters(), safe.parameters()))
    assert isinstance(safe, torchvision.models.resnet.ResNet) and not safe.training
    assert isinstance(safe.maxpool, ReLUTreeMaxPool2d)
    assert all(isinstance(b, (SafeBasicBlock, SafeBottleneck)) for b in safe.layer1)


def test_converter_keeps_modes():
    model = torchvision.models.resnet18(weights=None, num_classes=2).train()
    model.layer2.eval()  # a frozen part stays frozen
    safe = make_explainer_safe(model)
    modes = {name: m.training for name, m in model.named_modules()}
    for name, m in safe.named_modules():
        owner = name
        while owner not in modes:  # a new module (relu1, maxpool.relus.0) takes its owner's mode
            owner = owner.rpartition(".")[0]
        assert m.training == modes[owner], name
    assert safe.training and not safe.layer2[0].relu1.training and safe.layer3[0].relu2.training


@pytest.mark.parametrize("variant", ["identity_pool", "small_pool", "fc_with_inplace_relu", "relu6_stem_no_pool"])
def test_converter_accepts_harmless_variants(variant):
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    if variant == "identity_pool":
        model.maxpool = nn.Identity()
    elif variant == "small_pool":
        model.maxpool = nn.MaxPool2d(2, 2)  # already exact: kept
    elif variant == "fc_with_inplace_relu":
        model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(inplace=True), nn.Linear(16, 2))
    else:  # without a padded pool the stem activation may be anything
        model.relu, model.maxpool = nn.ReLU6(inplace=True), nn.Identity()
    model.eval()
    safe = make_explainer_safe(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (safe(x) - model(x)).abs().max().item() <= 1e-5
    report = check_explainer_safe(safe, x)
    if variant == "relu6_stem_no_pool":  # converted faithfully; the check still flags ReLU6
        assert report.functional_nonlinearities and not report.inplace_ops and not report.reused_modules
    else:
        assert report.ok, str(report)
    if variant.endswith("pool"):
        assert type(safe.maxpool) is type(model.maxpool)  # Identity and non-overlapping pools are kept


class _CustomForward(torchvision.models.ResNet):
    def forward(self, x):
        return super().forward(x) * 2


def _refusal_cases():
    def tv():
        return torchvision.models.resnet18(weights=None, num_classes=2)

    def edit(fn):
        def build():
            m = tv()
            fn(m)
            return m

        return build

    def set_(name, module):
        return edit(lambda m: setattr(m, name, module))

    def shared_conv(m):
        m.layer1[1].conv1 = m.layer1[0].conv1

    resnet = torchvision.models.resnet
    return [
        ("not_a_resnet", lambda: models.build_model("tiny"), "only torchvision.models.resnet.ResNet"),
        ("custom_forward", lambda: _CustomForward(resnet.BasicBlock, [1, 1, 1, 1]), "overrides ResNet.forward"),
        ("extra_child", edit(lambda m: m.add_module("head2", nn.Linear(2, 2))), "unknown top-level structure"),
        (
            "layer_not_sequential",
            edit(lambda m: setattr(m, "layer2", nn.ModuleList(m.layer2))),
            "expected an nn.Sequential",
        ),
        ("unknown_block", edit(lambda m: m.layer1.__setitem__(0, nn.Identity())), "unknown block type"),
        ("block_activation", edit(lambda m: setattr(m.layer3[1], "relu", nn.SiLU())), "not nn.ReLU"),
        ("pool_after_identity", set_("relu", nn.Identity()), "not preceded by a ReLU"),
        ("pool_dilation", set_("maxpool", nn.MaxPool2d(3, 2, 1, dilation=2)), "dilation"),
        ("pool_ceil_mode", set_("maxpool", nn.MaxPool2d(3, 2, 1, ceil_mode=True)), "ceil_mode"),
        ("pool_other", set_("maxpool", nn.AdaptiveMaxPool2d(16)), "only nn.MaxPool2d or nn.Identity"),
        (
            "pool_elsewhere",
            set_("avgpool", nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.AdaptiveAvgPool2d(1))),
            "only the stem pool",
        ),
        ("shared_module", edit(shared_conv), "same object"),
    ]


@pytest.mark.parametrize("case", _refusal_cases(), ids=lambda c: c[0])
def test_converter_refuses_what_it_cannot_guarantee(case):
    _, build, needle = case
    model = build()
    with pytest.raises(BenchError) as info:
        make_explainer_safe(model)
    message = str(info.value)
    print(message)
    assert message.startswith("make_explainer_safe cannot convert") and "\n" not in message
    assert needle in message


# ---------------------------------------------------------------- ReLUTreeMaxPool2d


POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0), (5, 2, 2), (2, 1, 1), (4, 3, 2), ((3, 2), (2, 1), (1, 0))]


@pytest.mark.parametrize("k, s, p", POOLS)
@pytest.mark.parametrize("hw", [(7, 7), (8, 8), (9, 10), (16, 15)])
def test_relu_tree_maxpool_equals_maxpool_on_nonnegative_inputs(k, s, p, hw):
    torch.manual_seed(0)
    reference, tree = nn.MaxPool2d(k, s, p), ReLUTreeMaxPool2d(k, s, p)
    x = torch.relu(torch.randn(2, 3, *hw))  # a ReLU output: many exact zeros
    torch.testing.assert_close(tree(x), reference(x), rtol=0, atol=1e-6)

    # gradients almost everywhere: strictly positive inputs, no ties
    x = (torch.rand(2, 3, *hw) + 0.1).requires_grad_()
    w = torch.randn_like(reference(x))
    (g_ref,) = torch.autograd.grad((reference(x) * w).sum(), x)
    (g_tree,) = torch.autograd.grad((tree(x) * w).sum(), x)
    torch.testing.assert_close(g_tree, g_ref, rtol=0, atol=1e-6)


def test_relu_tree_maxpool_structure_and_assumption():
    tree = ReLUTreeMaxPool2d(3, 2, 1)
    assert len(tree.relus) == 8 and len({id(r) for r in tree.relus}) == 8
    x = torch.randn(2, 3, 9, 9)
    assert check_explainer_safe(nn.Sequential(nn.ReLU(), tree), x).ok
    # without padding any input works; with padding, negative inputs differ (the documented assumption)
    torch.testing.assert_close(ReLUTreeMaxPool2d(3, 2)(x), F.max_pool2d(x, 3, 2), rtol=0, atol=1e-6)
    assert (tree(-x.abs() - 1) - F.max_pool2d(-x.abs() - 1, 3, 2, 1)).abs().max() > 0.5
    assert tree(x[0]).shape == F.max_pool2d(x[0], 3, 2, 1).shape  # (C, H, W) input too
    with pytest.raises(BenchError, match="at most half"):
        ReLUTreeMaxPool2d(3, 2, 2)


# ---------------------------------------------------------------- DeepExplainer completeness


def _deep_explainer_error(model: nn.Module, n: int = 2, seed: int = 1) -> float:
    """max over n images of |sum(phi) - (f(x) - E f(bg))| / |f(x) - E f(bg)| for the top class."""
    shap = pytest.importorskip("shap")
    in_channels = next(model.parameters()).shape[1]
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(8, in_channels, SIZE, SIZE, generator=g)
    x = 2 * torch.randn(n, in_channels, SIZE, SIZE, generator=g) + 1  # away from the background: |delta| ~ 0.1-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.DeepExplainer(model, background)
        phi, ranks = explainer.shap_values(x, ranked_outputs=1, check_additivity=False)
    phi = torch.as_tensor(phi)[..., 0]  # (B, C, H, W, n_outputs=1)
    assert phi.shape == x.shape
    target = torch.as_tensor(ranks)[:, 0]
    with torch.no_grad():
        fx, fbg = model(x).double(), model(background).double().mean(0)
    delta = fx[torch.arange(len(x)), target] - fbg[target]
    err = (phi.sum((1, 2, 3)) - delta).abs() / delta.abs()
    print(f"|f(x) - E f(bg)| = {delta.abs().tolist()}, relative additivity error = {err.tolist()}")
    return err.max().item()


def _deep_explainer_exact(model: nn.Module, label: str) -> None:
    err = _deep_explainer_error(make_explainer_safe(model))
    print(f"{label} converted: DeepExplainer relative additivity error {err:.2e}")
    assert err <= 1e-4


def test_deep_explainer_exact_on_converted_resnet18(tv_resnet18):
    _deep_explainer_exact(tv_resnet18, "resnet18")


@pytest.mark.slow  # ~10-25 s on 2 shared cores
def test_deep_explainer_exact_on_converted_resnet50(tv_resnet50):
    _deep_explainer_exact(tv_resnet50, "resnet50")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_deep_explainer_not_exact_on_stock_resnet(arch, tv_resnet18, tv_resnet50):
    stock = copy.deepcopy({"resnet18": tv_resnet18, "resnet50": tv_resnet50}[arch])  # shap may leave hooks behind
    try:
        err = _deep_explainer_error(stock)
    except RuntimeError as exc:  # in-place ops inside the hooked modules
        print(f"{arch} stock: DeepExplainer raised {type(exc).__name__}: {str(exc)[:100]}")
    else:
        print(f"{arch} stock: DeepExplainer relative additivity error {err:.2e}")
        assert err > 1e-2


def test_deep_explainer_needs_the_pool_rewrite(tv_resnet18):
    """Safe blocks with torchvision's overlapping 3x3/2 pool put back: inexact again."""
    safe = make_explainer_safe(tv_resnet18)
    safe.maxpool = nn.MaxPool2d(3, 2, 1)
    err = _deep_explainer_error(safe, n=1)
    print(f"resnet18 safe blocks + stock max-pool: DeepExplainer relative additivity error {err:.2e}")
    assert err > 1e-2


# ---------------------------------------------------------------- convert_explainer_safe: any model


class _ReusedInplace(nn.Module):
    """One in-place ReLU module called twice, a padded overlapping pool after it, a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu, self.pool, self.fc = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), nn.Linear(8, 2)

    def forward(self, x):
        x = self.pool(self.relu(self.c1(x)))
        return self.fc((x + self.relu(self.c2(x))).mean((2, 3)))


class _TorchvisionBlocks(nn.Module):
    """torchvision's residual blocks (``out += identity``, one ReLU called twice) in a model of one's own."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        block = torchvision.models.resnet.BasicBlock
        self.blocks = nn.Sequential(block(8, 8), block(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class _InplaceAdd(_ReusedInplace):
    def forward(self, x):
        y = self.c2(self.relu(self.c1(x)))
        y += 1.0
        return self.fc(y.mean((2, 3)))


class _FunctionalRelu(_ReusedInplace):
    def forward(self, x):
        return self.fc(F.relu(self.c1(x)).mean((2, 3)))


class _SharedConv(_ReusedInplace):
    def forward(self, x):
        return self.fc(self.relu(self.c2(self.c2(self.relu(self.c1(x))))).mean((2, 3)))


class _PoolNotAfterRelu(_ReusedInplace):
    def forward(self, x):
        return self.fc(self.relu(self.pool(self.c1(x))).mean((2, 3)))


@pytest.mark.parametrize(
    "build, rewritten",
    [
        (
            _ReusedInplace,
            [
                "relu: ReLU(inplace=True) -> inplace=False",
                "pool: MaxPool2d: window 3x3 > stride 2x2",
                "relu: ReLU called 2 times",
            ],
        ),
        (_TorchvisionBlocks, ["blocks.0: BasicBlock -> SafeBasicBlock", "blocks.1: BasicBlock -> SafeBasicBlock"]),
    ],
)
def test_convert_rewrites_any_model_exactly(build, rewritten):
    torch.manual_seed(0)
    model = build().eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    assert not check_explainer_safe(model, x).ok
    safe, rewrites = convert_explainer_safe(model, x)
    assert len(rewrites) == len(rewritten) and all(r.startswith(w) for r, w in zip(rewrites, rewritten)), rewrites
    assert check_explainer_safe(safe, x).ok, str(check_explainer_safe(safe, x))
    assert _same_state(state, model.state_dict()) and _same_state(state, safe.state_dict())  # same keys and values
    with torch.no_grad():
        assert (safe(x) - model(x)).abs().max().item() <= 1e-6
        twin = copy.deepcopy(safe)  # a copy (meta-evaluation, randomisation) counts its own call sites
        assert torch.equal(twin(x), safe(x)) and torch.equal(twin(x), safe(x))
    assert _deep_explainer_error(safe) <= 1e-4  # DeepExplainer is exact on the copy
    with pytest.raises(RuntimeError, match="modified inplace"):
        _deep_explainer_error(copy.deepcopy(model))  # and crashes on the model as it was
    if build is _ReusedInplace:
        assert isinstance(safe.relu, CallSites) and isinstance(safe.pool, ReLUTreeMaxPool2d)
        assert model.relu.inplace and isinstance(model.pool, nn.MaxPool2d)  # the input model is untouched


@pytest.mark.parametrize(
    "build, words",
    [
        (_InplaceAdd, "_InplaceAdd.forward runs an in-place op (Tensor.add_)"),
        (_FunctionalRelu, "_FunctionalRelu.forward calls F.relu"),
        (_SharedConv, "module 'c2' (Conv2d) is called 2 times per forward and holds weights"),
        (_PoolNotAfterRelu, "module 'pool' (MaxPool2d) is a padded overlapping max-pool"),
    ],
)
def test_convert_refuses_in_one_line_naming_the_module(build, words):
    with pytest.raises(BenchError) as err:
        convert_explainer_safe(build().eval(), torch.randn(2, 3, SIZE, SIZE))
    message = str(err.value)
    assert message.startswith(f"convert cannot make {build.__name__} explainer-safe: ") and "\n" not in message
    assert words in message and len(message) < 300, message
