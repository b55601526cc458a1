"""The CAM family (pytorch-grad-cam): agreement with Captum, the papers' weights, upsampling, passes.

The contract tests (tests/test_explainers.py) cover shape, determinism, batching and the model
being left alone. Here: Grad-CAM equals Captum's LayerGradCam on the same layer up to the
library's scaling and upsampling; every method's map equals its paper formula computed with
autograd; Score-CAM's pass count follows the layer's channels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.perf.floor import passes_per_image
from explainers import CAM_LAYER, run_explainer
from explainers.cam_adapters import layer_channels
from tests.conftest import calibrated

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return calibrated("tiny", batches=2, batch=8)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return calibrated("resnet18", batches=2, batch=8)


def _inputs(n: int = 3):
    g = torch.Generator().manual_seed(11)
    return torch.rand(n, 1, 28, 28, generator=g), torch.tensor([0, 1, 1, 0][:n])


def library_scaling(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What pytorch-grad-cam does to a layer map ``(B, h, w)``: relu, min-max per image, bilinear
    resize (cv2.resize, half-pixel centres = torch's align_corners=False) to the input, and min-max
    once more (its average over target layers is scaled again: bilinear upsampling between pixel
    centres rarely reaches the old extremes)."""

    def min_max(m: torch.Tensor) -> torch.Tensor:
        flat = m.flatten(1)
        lo = flat.min(1).values.view(-1, *([1] * (m.dim() - 1)))
        return (m - lo) / (1e-7 + flat.max(1).values.view_as(lo) - lo)

    up = F.interpolate(min_max(cam.clamp_min(0)).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return min_max(up)


def activations_and_gradients(model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor):
    """The layer's output A ``(B, K, h, w)`` and d f_target / dA, by autograd."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: store.setdefault("A", out))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out.gather(1, targets.view(-1, 1)).sum(), store["A"])
    return store["A"].detach(), grad.detach()


@pytest.mark.reference
@pytest.mark.parametrize("model_name,layer", [("tiny", "layer1"), ("tiny", "layer2"), ("resnet18", CAM_LAYER)])
def test_grad_cam_equals_captum_layer_gradcam(model_name, layer, tiny, resnet18):
    """Captum's LayerGradCam (relu(sum_k mean(dA^k) A^k) at layer resolution), scaled and upsampled
    as pytorch-grad-cam does, is pytorch-grad-cam's Grad-CAM; at layer1 (28 px) no upsampling."""
    from captum.attr import LayerGradCam

    model = tiny if model_name == "tiny" else resnet18
    x, t = _inputs()
    ours = run_explainer("gradcam.grad_cam", model, x, t, background=x, layer=layer)
    captum_map = (
        LayerGradCam(model, dict(model.named_modules())[layer])
        .attribute(x, target=t, relu_attributions=True)
        .detach()[:, 0]
    )
    expected = library_scaling(captum_map, x.shape[-2:])
    assert ours.meta["layer"] == layer
    torch.testing.assert_close(ours.values, expected, rtol=0, atol=1e-5)
    assert (ours.values.amax((1, 2, 3)) > 0.99).all()  # scaled to [0, 1] per image


# The papers' channel weights / position maps from A and G = df/dA, (B, K, h, w) -> (B, h, w).
FORMULAS = {
    "gradcam.grad_cam": lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1),
    "gradcam.hires_cam": lambda a, g: (g * a).sum(1),
    "gradcam.layer_cam": lambda a, g: (g.clamp_min(0) * a).sum(1),
    "gradcam.grad_cam_plusplus": lambda a, g: (_plusplus_weights(a, g) * a).sum(1),
}


def _plusplus_weights(a, g):
    """Chattopadhyay et al. 2018, eq. 19 with first-order gradients: alpha = g^2 / (2 g^2 + sum A g^3)."""
    alpha = g**2 / (2 * g**2 + a.sum((2, 3), keepdim=True) * g**3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (alpha * g.clamp_min(0)).sum((2, 3), keepdim=True)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_gradient_cams_follow_their_formula(name, tiny):
    x, t = _inputs()
    a, g = activations_and_gradients(tiny, "layer2", x, t)
    expected = library_scaling(FORMULAS[name](a, g), x.shape[-2:])
    ours = run_explainer(name, tiny, x, t, background=x, layer="layer2")
    torch.testing.assert_close(ours.values, expected, rtol=0, atol=1e-5)


def test_score_cam_follows_its_formula(tiny):
    """w = softmax_k f_t(x * M^k), M^k = A^k bilinearly upsampled (align_corners=True, as the library's
    UpsamplingBilinear2d) and min-max scaled; one forward per channel."""
    x, t = _inputs()
    a, _ = activations_and_gradients(tiny, "layer2", x, t)
    up = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=True)
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masks = (up - lo) / (hi - lo + 1e-8)  # (B, K, H, W)
    with torch.no_grad():
        scores = torch.stack([tiny(x[i : i + 1] * masks[i].unsqueeze(1))[:, t[i]] for i in range(x.shape[0])])
    weights = torch.softmax(scores, dim=1)  # (B, K)
    expected = library_scaling((weights[:, :, None, None] * a).sum(1), x.shape[-2:])
    ours = run_explainer("gradcam.score_cam", tiny, x, t, background=x, layer="layer2", mask_batch_size=5)
    torch.testing.assert_close(ours.values, expected, rtol=0, atol=1e-4)


def test_score_cam_passes_follow_the_layer(tiny, resnet18):
    """One forward per channel of the layer plus the one recording the activations; unknown without a model."""
    assert layer_channels(tiny, "layer2", (1, 28, 28)) == 16
    assert passes_per_image("gradcam.score_cam", {"layer": "layer2"}, 0, shape=(1, 28, 28), model=tiny) == (0, 17)
    expected = layer_channels(resnet18, CAM_LAYER, (1, 28, 28)) + 1
    assert passes_per_image("gradcam.score_cam", {}, 0, shape=(1, 28, 28), model=resnet18) == (0, expected)
    assert passes_per_image("gradcam.score_cam", {}, 50) is None
    assert passes_per_image("gradcam.grad_cam", {}, 50) == (1, 0)


def test_cams_leave_the_weights_gradients_alone(tiny):
    """pytorch-grad-cam calls model.zero_grad() and backpropagates into the weights; the adapters
    freeze them for the call, so existing .grad stay and no new ones appear."""
    x, t = _inputs()
    model = calibrated("tiny", batches=2, batch=8)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    for name in ("gradcam.grad_cam", "gradcam.score_cam", "captum.guided_gradcam"):
        run_explainer(name, model, x, t, background=x, layer="layer2")
        assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
        assert all(p.requires_grad for p in model.parameters())


def test_cam_layer_errors(tiny):
    from bench.core.errors import BenchError

    x, t = _inputs()
    with pytest.raises(BenchError, match=r"gradcam.grad_cam.*no layer 'layer4'.*layer1"):
        run_explainer("gradcam.grad_cam", tiny, x, t, background=x, layer="layer4")  # tiny stops at layer2
