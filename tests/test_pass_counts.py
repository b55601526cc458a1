"""The registered pass rules count every model pass a metric makes (bench.perf.floor's floors).

A forward pre-hook on the model counts the rows (images) of every pass, split by whether
autograd is on (a forward+backward pass of an explainer the metric re-runs) or off (a forward
pass), and the explainer a metric re-runs on a randomised copy counts its own rows; per image,
the counts equal the metric's ``passes`` rule at its defaults. So a unit's metric passes are the
sum of their floors: no metric makes a pass its rule does not declare.
"""

from __future__ import annotations

import pytest
import torch

from bench.metrics import METRICS, MetricContext, compute_metric, randomisation_layers
from bench.perf.floor import metric_passes_per_image
from explainers import run_explainer
from models import build_model

B = 3


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    g = torch.Generator().manual_seed(1)
    x, bg = torch.rand(B, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)
    t = torch.tensor([0, 1, 0])
    masks = torch.zeros(B, 1, 28, 28, dtype=torch.bool)
    masks[:, :, 5:12, 5:12] = True
    attr = run_explainer("captum.integrated_gradients", model, x, t, background=bg, n_steps=4)
    return model, x, t, bg, masks, attr


class Counter:
    """Rows through a model (and through its copies: deepcopy keeps the hook), by autograd state."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.fb = self.f = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        rows = int(args[0].shape[0])
        if torch.is_grad_enabled():
            self.fb += rows
        else:
            self.f += rows


def _with_rule() -> list[str]:
    return [n for n in METRICS.names() if METRICS.get(n).meta.get("passes") is not None]


@pytest.mark.parametrize("name", _with_rule())
def test_a_metric_makes_exactly_the_passes_its_rule_declares(setup, name):
    model, x, t, bg, masks, attr = setup

    counter = Counter(model)

    def explain(m, inputs=None):  # saliency: one forward+backward pass per image
        if m is not model:  # a randomised copy (the hook is not on it): count its rows here
            counter.fb += int(x.shape[0] if inputs is None else inputs.shape[0])
        return run_explainer("captum.saliency", m, x if inputs is None else inputs, t, background=bg).values

    try:
        compute_metric(name, model, x, t, attr, context=MetricContext(masks=masks, explain=explain, additive=True))
    finally:
        counter.handle.remove()
    declared = metric_passes_per_image(name, explainer_passes=(1.0, 0.0), n_layers=len(randomisation_layers(model)))
    assert declared is not None
    assert (counter.fb / B, counter.f / B) == declared, f"{name}: counted {(counter.fb / B, counter.f / B)}"


def test_the_counter_sees_a_pass_a_rule_would_miss(setup):
    """The check can fail: a metric that makes one more forward pass than deletion's rule says."""
    model, x, t, _, _, attr = setup
    counter = Counter(model)
    try:
        compute_metric("deletion_auc", model, x, t, attr, steps=4)
        with torch.no_grad():
            model(x)  # the extra pass
    finally:
        counter.handle.remove()
    assert counter.f / B == metric_passes_per_image("deletion_auc", {"steps": 4})[1] + 1
