"""LRP through zennit: the canonizer for models/resnet.py, and relevance conservation where the rules promise it.

Conservation (sum_i R_i = f(x)[target]) holds layer by layer for the z+, gamma, flat, z-box and
epsilon rules when no layer has a bias and the stabilisers vanish; merging a batch norm into a
convolution creates a bias (beta - mean * gamma / sqrt(var + eps)), so the tests make the batch
norms bias-free (mean 0, beta 0) and the head's bias 0: a bias-free ReLU network.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainers import completeness_gap, relative_completeness_gap, run_explainer
from explainers.zennit_adapters import conv_bn_pairs, resnet_canonizer, run_lrp
from tests.conftest import calibrated

pytestmark = pytest.mark.usefixtures("one_thread")

CONSERVING = {"zennit.epsilon_plus_flat": "EpsilonPlusFlat", "zennit.epsilon_gamma_box": "EpsilonGammaBox"}


def bias_free(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
        model.fc.bias.zero_()
    return model


def _inputs(n: int = 3, size: int = 28):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(21))


@pytest.mark.parametrize("name", sorted(CONSERVING))
@pytest.mark.parametrize("model_name", ["tiny", "resnet18"])
def test_relevance_is_conserved_on_a_bias_free_relu_network(name, model_name):
    """Float32, the composites' default stabilisers (1e-6): the relevance sums to the logit to ~1e-5."""
    model = bias_free(calibrated(model_name, batches=2, batch=8))
    x = _inputs()
    t = model(x).argmax(1)
    attr = run_explainer(name, model, x, t, background=x)
    assert (relative_completeness_gap(attr) < 1e-4).all(), relative_completeness_gap(attr)


@pytest.mark.parametrize("composite", sorted(CONSERVING.values()))
def test_conservation_gap_is_the_stabilisers(composite):
    """In float64 the gap shrinks with the stabiliser (1e-6 -> 1e-12): nothing else leaks relevance
    (an unsplit residual sum, a batch norm left dividing by sqrt(1 + eps), ...)."""
    model = bias_free(calibrated("tiny", batches=2, batch=8)).double()
    x = _inputs().double()
    t = model(x).argmax(1)
    gaps = []
    for stab in (1e-6, 1e-12):
        extra = {"low": 0.0, "high": 1.0} if composite == "EpsilonGammaBox" else {}
        attr = run_lrp("test", composite, model, x, t, batch_size=8, epsilon=stab, stabilizer=stab, **extra)
        gaps.append(relative_completeness_gap(attr).max().item())
    assert gaps[1] < 1e-9 < gaps[0] < 1e-4, gaps


def test_biases_absorb_relevance():
    """With the batch norms' own (calibrated) statistics the merged convolutions have biases, and the
    relevance no longer sums to the logit: the gap is reported, not hidden."""
    model = calibrated("tiny", batches=2, batch=8)
    x = _inputs()
    attr = run_explainer("zennit.epsilon_plus_flat", model, x, model(x).argmax(1), background=x)
    assert (relative_completeness_gap(attr) > 1e-3).any()
    torch.testing.assert_close(attr.base_values, torch.zeros(3))


@pytest.mark.parametrize("model_name,size", [("tiny", 28), ("resnet18", 28), ("resnet18", 64), ("resnet50", 28)])
def test_canonizer_keeps_the_outputs_and_is_undone(model_name, size):
    """Inside the canonizer every batch norm is merged (the identity remains) and every residual block
    adds through a zennit Sum module; the outputs stay those of the model; afterwards the model is
    bitwise what it was, with its own forwards and no extra modules or hooks."""
    from zennit.layer import Sum

    model = calibrated(model_name, batches=2, batch=4, size=size, momentum=0.1)
    x = _inputs(2, size)
    with torch.no_grad():
        before_out = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    canonizer = resnet_canonizer(model)
    handles = canonizer.apply(model)
    try:
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert len(conv_bn_pairs(model)) == n_bn  # every batch norm follows a convolution here
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        n_blocks = sum(hasattr(m, "downsample") or type(m).__name__ == "_TinyBlock" for m in model.modules())
        assert sum(isinstance(m, Sum) for m in model.modules()) == n_blocks > 0
        with torch.no_grad():
            canon_out = model(x)
    finally:
        for h in handles:
            h.remove()
    scale = before_out.abs().max()
    assert (canon_out - before_out).abs().max() <= 1e-5 * scale
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert not any(isinstance(m, Sum) for m in model.modules())
    assert all("forward" not in m.__dict__ and not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


def test_lrp_rejects_a_model_the_canonizer_would_change():
    """A batch norm the canonizer cannot place (not right after a convolution in a known block)
    would make the explained network another one: the outputs are checked after canonizing."""
    from bench.core.errors import BenchError

    class Odd(nn.Module):  # the batch norm follows the ReLU, inside an unknown module
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.norm = nn.BatchNorm2d(4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(self.norm(self.relu(self.conv(x)))).flatten(1))

    model = calibrated(Odd(), batches=2, batch=4)
    x = _inputs(2)
    attr = run_explainer("zennit.epsilon_plus_flat", model, x, torch.tensor([0, 1]), background=x)
    assert attr.meta["canonizer_output_change"] == 0.0  # nothing merged: nothing changed
    # a model that lists a conv -> BN pair in a Sequential but applies the BN elsewhere is refused
    seq = calibrated(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        ),
        batches=2,
        batch=4,
    )
    seq.forward = lambda inp: seq[5](seq[4](seq[3](seq[2](seq[1](seq[1](seq[0](inp)))))))  # BN applied twice
    with pytest.raises(BenchError, match="canonizer changed the model's outputs"):
        run_explainer("zennit.epsilon_plus_flat", seq, x, torch.tensor([0, 1]), background=x)
    assert completeness_gap(attr).shape == (2,)
