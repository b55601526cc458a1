"""Captum's perturbation, surrogate, noise and guided methods, and the baselines shared with the metrics.

Oracles on a linear model f(x) = w . x + b (one weight map per class), where every method has a
closed form, plus the tiny CNN for what needs a nonlinearity. The contract tests
(tests/test_explainers.py) cover shapes, seeds, batching and the model being left alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.metrics import SUBSTRATES, make_substrate
from bench.perf.floor import passes_per_image
from explainers import relative_completeness_gap, run_explainer
from explainers.base import target_scores
from explainers.captum_adapters import grid_feature_mask, occlusion_windows
from explainers.references import BASELINES, baseline_images
from tests.conftest import calibrated

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return calibrated("tiny", batches=2, batch=8)


# --- baselines: the metrics' substrates, by the same function -------------------------------------


@pytest.mark.parametrize("baseline", BASELINES)
def test_baselines_are_the_substrates(baseline, linear):
    """An explainer's baseline "blur" is the image a metric's substrate "blur" puts in, bit for bit;
    and integrated gradients / DeepLIFT report f(that baseline) as their base value."""
    net, x, t, bg, w = linear
    ref = baseline_images("test", x, bg, baseline)
    if baseline in SUBSTRATES:
        assert torch.equal(ref, make_substrate(x, baseline))
    else:
        assert torch.equal(ref, bg.mean(0, keepdim=True).expand_as(x))
    for name in ("captum.integrated_gradients", "captum.deeplift"):
        attr = run_explainer(name, net, x, t, background=bg, baseline=baseline)
        torch.testing.assert_close(attr.base_values, target_scores(net, ref, t))
        torch.testing.assert_close(attr.values, w * (x - ref), rtol=1e-4, atol=1e-6)  # both exact on a linear model


@pytest.mark.parametrize("baseline", ["zero", "blur", "noise"])
def test_deeplift_is_additive_on_resnet18(baseline):
    net = calibrated("resnet18", batches=2, batch=8)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 28, 28, generator=g)
    attr = run_explainer("captum.deeplift", net, x, net(x).argmax(1), background=x, baseline=baseline)
    assert (relative_completeness_gap(attr) <= 1e-4).all()
    assert attr.meta["convergence_delta"].abs().max() <= 1e-4 * (attr.outputs - attr.base_values).abs().max()


def test_bad_baseline_is_a_one_line_error(linear):
    from bench.core.errors import BenchError

    net, x, t, bg, _ = linear
    with pytest.raises(BenchError, match="baseline = 'black' is not one of 'zero', 'mean', 'blur', 'noise'"):
        run_explainer("captum.deeplift", net, x, t, background=bg, baseline="black")


# --- occlusion --------------------------------------------------------------------------------------


def test_occlusion_of_single_pixels_is_w_times_x_minus_baseline(linear):
    net, x, t, bg, w = linear
    attr = run_explainer("captum.occlusion", net, x, t, background=bg, window=1, stride=1, baseline="blur")
    torch.testing.assert_close(attr.values, w * (x - make_substrate(x, "blur")), rtol=1e-4, atol=1e-6)


def test_occlusion_averages_the_windows_covering_a_pixel(linear):
    """Window 4, stride 2: each pixel gets the mean of f(x) - f(x with the window zeroed) over the
    windows covering it; the last window of a row is clamped to the border."""
    net, x, t, bg, w = linear
    attr = run_explainer("captum.occlusion", net, x, t, background=bg, window=4, stride=2)
    starts = sorted({min(i * 2, 24) for i in range(math.ceil(24 / 2) + 1)})
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    for r in starts:
        for c in starts:
            drop = (w * x)[:, :, r : r + 4, c : c + 4].sum((1, 2, 3)).view(-1, 1, 1, 1)
            total[:, :, r : r + 4, c : c + 4] += drop
            count[:, :, r : r + 4, c : c + 4] += 1
    torch.testing.assert_close(attr.values, total / count, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size,window,stride", [(28, 4, 2), (28, 5, 3), (64, 8, 4)])
def test_occlusion_passes_are_the_forwards_it_makes(size, window, stride):
    """The registered pass rule counts what the model actually sees: rows / images."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2)).eval()
    rows = []
    net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    x = torch.rand(3, 1, size, size)
    attr = run_explainer(
        "captum.occlusion", net, x, torch.tensor([0, 1, 0]), background=x, window=window, stride=stride
    )
    n_f = passes_per_image("captum.occlusion", {"window": window, "stride": stride}, shape=(1, size, size))[1]
    assert n_f == occlusion_windows((1, size, size), window, stride) + 1 == attr.meta["windows"] + 1
    # the adapter's own target_scores calls are not in the rule (bookkeeping); the adapter makes none here
    assert sum(rows) / 3 == n_f
    assert passes_per_image("captum.occlusion", {}) is None  # the count needs the image size


# --- LIME and Kernel SHAP on grid superpixels ------------------------------------------------------


def test_grid_feature_mask():
    x = torch.zeros(2, 3, 28, 28)
    mask = grid_feature_mask(x, 4)
    assert mask.shape == (1, 3, 28, 28) and mask.max() == 48
    assert torch.equal(mask[0, 0, :4, :4], torch.zeros(4, 4, dtype=torch.long))
    assert mask[0, 0, 27, 27] == 48 and mask[0, 2, 4, 0] == 7 and torch.equal(mask[0, 0], mask[0, 2])
    uneven = grid_feature_mask(torch.zeros(1, 1, 28, 28), 5)  # 6 x 6 cells, the last row/column 3 px wide
    assert uneven.max() == 35 and torch.bincount(uneven.flatten()).tolist()[-1] == 9


def _cell_sums(v: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n_features): the sum of v over each grid superpixel."""
    mask = grid_feature_mask(v, cell)[0]
    return torch.stack([torch.bincount(mask.flatten(), weights=vi.flatten()) for vi in v.double()])


def test_kernel_shap_on_a_linear_model_is_the_cell_sums(linear):
    """The Shapley value of a superpixel of a linear game is its own contribution: sum over the cell
    of w * (x - x'); the adapter spreads it evenly, so each cell's pixels sum to it."""
    net, x, t, bg, w = linear
    attr = run_explainer("captum.kernel_shap", net, x, t, background=bg, cell=7, n_samples=100, baseline="mean")
    truth = _cell_sums(w * (x - make_substrate(x, "mean")), 7)
    torch.testing.assert_close(attr.meta["feature_values"].double(), truth, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(_cell_sums(attr.values, 7), truth, rtol=1e-3, atol=1e-5)
    assert (relative_completeness_gap(attr) <= 1e-4).all()


def test_lime_on_a_linear_model_tracks_the_cell_contributions(linear):
    """LIME's weighted ridge fit is not exact (shrinkage, kernel weights), but on a linear model its
    coefficients line up with the true superpixel contributions; Captum's Lasso runs too."""
    net, x, t, bg, w = linear
    truth = _cell_sums(w * x, 7)
    attr = run_explainer("captum.lime", net, x, t, background=bg, cell=7, n_samples=300)
    for est, tru in zip(attr.meta["feature_values"].double(), truth):
        assert torch.corrcoef(torch.stack([est, tru]))[0, 1] > 0.9
    lasso = run_explainer("captum.lime", net, x, t, background=bg, cell=7, n_samples=300, surrogate="lasso")
    assert lasso.meta["surrogate"] == "lasso" and not torch.equal(lasso.values, attr.values)


# --- noise tunnel, guided and plain gradients -------------------------------------------------------


def test_noise_tunnel_on_a_linear_model(linear):
    """The gradient of a linear model is w everywhere: SmoothGrad (of |grad|) is |w|, VarGrad 0."""
    net, x, t, bg, w = linear
    smooth = run_explainer("captum.smoothgrad", net, x, t, background=bg, n_samples=8)
    torch.testing.assert_close(smooth.values, w.abs())
    var = run_explainer("captum.vargrad", net, x, t, background=bg, n_samples=8)
    assert var.values.abs().max() <= 1e-6 * w.abs().max() ** 2


def test_smoothgrad_without_noise_is_saliency(tiny):
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0, 1])
    smooth = run_explainer("captum.smoothgrad", tiny, x, t, background=x, n_samples=3, stdevs=0.0)
    torch.testing.assert_close(smooth.values, run_explainer("captum.saliency", tiny, x, t, background=x).values)
    noisy = run_explainer("captum.smoothgrad", tiny, x, t, background=x, n_samples=3)
    assert not torch.allclose(noisy.values, smooth.values)


def test_gradient_methods_on_a_linear_model(linear):
    net, x, t, bg, w = linear
    torch.testing.assert_close(run_explainer("captum.input_x_gradient", net, x, t, background=bg).values, w * x)
    torch.testing.assert_close(run_explainer("captum.guided_backprop", net, x, t, background=bg).values, w)


def test_guided_gradcam_is_guided_backprop_times_gradcam(tiny):
    """Selvaraju et al. 2017: the guided backprop map times the layer's Grad-CAM (relu(sum_k alpha_k
    A^k), Captum's LayerGradCam) upsampled to the input (Captum's default: nearest)."""
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([1, 0])
    guided = run_explainer("captum.guided_backprop", tiny, x, t, background=x).values
    cam = LayerGradCam(tiny, tiny.layer2).attribute(x, target=t, relu_attributions=True).detach()
    expected = guided * F.interpolate(cam, size=(28, 28), mode="nearest")
    ours = run_explainer("captum.guided_gradcam", tiny, x, t, background=x, layer="layer2")
    torch.testing.assert_close(ours.values, expected, rtol=1e-5, atol=1e-8)
