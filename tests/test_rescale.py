"""The rescale engine (explainers/rescale.py): one recorded forward serves every (image, reference)
pair, and the linearity check that makes that exact sends every other network to the library.

The engine's values against shap's DeepExplainer and Captum's DeepLiftShap on the registered
ResNets are tested in tests/test_explainers.py; here: small hand-made networks that probe the
assumption itself (value-independent backward of everything but the ReLUs).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainers import run_explainer
from explainers.rescale import nonlinear_calls, rescale_attributions, unsupported_reason
from tests.conftest import calibrated


def _data(n_images: int = 3, n_background: int = 5, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n_images, 1, 28, 28, generator=g),
        0.5 * torch.rand(n_background, 1, 28, 28, generator=g),
        torch.arange(n_images) % 2,
    )


class _Small(nn.Module):
    """conv -> ReLU -> ``body(h)`` -> flatten -> linear (2 outputs); an unused ReLU on the side."""

    def __init__(self, body) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.unused = nn.ReLU()  # never called: it must get no multiplier and break nothing
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(4 * 7 * 7, 2)
        self.body = body

    def forward(self, x):
        h = self.relu(self.conv(x - 0.5))
        return self.fc(self.flatten(self.relu2(self.conv2(self.body(h)))))


LINEAR_BODIES = {
    "identity": lambda h: h,
    "scaled, sliced and concatenated": lambda h: torch.cat([2.0 * h[:, :2], h[:, 2:] / 3.0 - 0.1], 1),
    "padded and cropped": lambda h: nn.functional.pad(h, (1, 1, 1, 1))[..., 1:-1, 1:-1] + h.mean(1, keepdim=True),
    "functional eval batch norm and dropout": lambda h: nn.functional.dropout(
        nn.functional.batch_norm(h, torch.zeros(4), torch.ones(4), training=False), 0.5, training=False
    ),
}
NONLINEAR_BODIES = {  # each passes check_explainer_safe (no functional nonlinearity it knows of)
    "mul": lambda h: h * h,  # a product of two input-dependent tensors (gating)
    "div": lambda h: h / (1.0 + h.sum((1, 2, 3), keepdim=True)),
    "detach": lambda h: h + h.detach(),
    "gt": lambda h: h * (h > 0.1),
    "batch_norm(training=True)": lambda h: nn.functional.batch_norm(h, None, None, training=True),
    "dropout(training=True)": lambda h: nn.functional.dropout(h, 0.5),
    "linear": lambda h: nn.functional.linear(h, h[0, 0, :14, :14]),  # an input-dependent weight
}


def test_one_recorded_forward_serves_every_pair():
    """Three model calls whatever the number of images and chunks: the ReLU inputs of the
    background, those of the images, and the one recorded graph (the backward passes do the rest)."""
    net = calibrated("tiny", batches=2, batch=8)
    inputs, background, targets = _data(n_images=4, n_background=7)
    calls = []
    handle = net.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        values = rescale_attributions(net, inputs, targets, background, pair_chunk=3)  # 3 chunks x 4 images
    finally:
        handle.remove()
    assert calls == [7, 4, 3]  # background, images, the recorded graph of width 3
    ref = run_explainer("shap.deep", net, inputs, targets, background=background, engine="shap")
    assert (values - ref.values).abs().max() <= 1e-5 * ref.values.abs().max()


@pytest.mark.parametrize("body", list(LINEAR_BODIES), ids=list(LINEAR_BODIES))
def test_linear_functional_code_is_accepted_and_exact(body):
    """Scaling, slicing, padding, concatenation, means: the engine applies and gives shap's values."""
    net = _Small(LINEAR_BODIES[body]).eval()
    inputs, background, targets = _data()
    assert nonlinear_calls(net, inputs[:1]) == {}
    assert unsupported_reason(net, inputs[:1]) is None
    fast = run_explainer("shap.deep", net, inputs, targets, background=background, pair_chunk=2)
    ref = run_explainer("shap.deep", net, inputs, targets, background=background, engine="shap")
    assert fast.meta["engine"] == "batched"
    assert (fast.values - ref.values).abs().max() <= 1e-5 * ref.values.abs().max()


@pytest.mark.parametrize("body", list(NONLINEAR_BODIES), ids=list(NONLINEAR_BODIES))
def test_value_dependent_code_sends_the_adapters_to_the_library(body):
    """A call whose backward depends on the forward values is named, the adapters fall back to
    their library's engine, and forcing the engine is refused."""
    from bench.core.errors import BenchError
    from models import check_explainer_safe

    net = _Small(NONLINEAR_BODIES[body]).eval()
    inputs, background, targets = _data()
    assert check_explainer_safe(net, inputs[:1]).ok  # the older check does not see it
    found = nonlinear_calls(net, inputs[:1])
    assert any(body in name for name in found), found
    reason = unsupported_reason(net, inputs[:1])
    assert reason is not None and body in reason
    for name, library in (("shap.deep", "shap"), ("captum.deeplift_shap", "captum")):
        auto = run_explainer(name, net, inputs, targets, background=background)
        assert auto.meta["engine"] == library and body in auto.meta["batched_unavailable"]
        with pytest.raises(BenchError, match="engine='batched' cannot explain"):
            run_explainer(name, net, inputs, targets, background=background, engine="batched")


def test_the_check_is_needed_a_gated_network_would_be_explained_wrongly():
    """Without the check the recorded graph's product rule would use the zeros it was recorded
    on: on a gated network the engine's values are far from shap's (so the fallback matters)."""
    net = _Small(NONLINEAR_BODIES["mul"]).eval()
    inputs, background, targets = _data()
    wrong = rescale_attributions(net, inputs, targets, background)
    ref = run_explainer("shap.deep", net, inputs, targets, background=background, engine="shap")
    assert (wrong - ref.values).abs().max() > 0.1 * ref.values.abs().max()
