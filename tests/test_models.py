"""The MODELS registry and the explainer-safe ResNets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from bench.core.errors import BenchError
from bench.core.registry import DuplicateNameError


@pytest.mark.parametrize("name", models.MODELS.names())
@pytest.mark.parametrize("size", [28, 64])
def test_every_model_maps_images_to_two_logits(name, size):
    if name == "resnet101" and size == 64:
        pytest.skip("covered at 28 px; same blocks")
    torch.manual_seed(0)
    m = models.build_model(name, image_size=size).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 1, size, size))
    assert y.shape == (2, 2) and torch.isfinite(y).all()


def test_stem_depends_on_input_size():
    small, large = models.build_model("resnet18", image_size=28), models.build_model("resnet18", image_size=64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    # non-overlapping pool: kernel == stride, no padding (DeepExplainer-exact)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert large.maxpool.kernel_size == large.maxpool.stride == 2 and large.maxpool.padding == 0


@pytest.mark.parametrize(
    "name,blocks,params_m",
    [("resnet18", [2, 2, 2, 2], 11.17), ("resnet50", [3, 4, 6, 3], 23.50), ("resnet101", [3, 4, 23, 3], 42.50)],
)
def test_resnet_depth_and_size_match_torchvision(name, blocks, params_m):
    """Same block counts and (up to the 1-channel stem and 2-class head) the same size as torchvision."""
    m = models.build_model(name)
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == blocks
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - params_m) < 0.05, n


def test_no_module_is_an_inplace_activation():
    for name in models.MODELS.names():
        m = models.build_model(name)
        assert not any(getattr(mod, "inplace", False) for mod in m.modules()), name


def test_unknown_model_lists_known_names():
    with pytest.raises(BenchError, match="unknown model 'vgg'.*resnet18"):
        models.build_model("vgg")


def test_duplicate_registration_raises():
    with pytest.raises(DuplicateNameError, match="resnet18"):
        models.register_model("resnet18")(lambda **kw: None)
