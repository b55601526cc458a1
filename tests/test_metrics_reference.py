"""The bench.metrics package against reference implementations on identical inputs.

* Deletion curve vs ``quantus.PixelFlipping`` (0.6.0), every implicit default set explicitly:
  ``normalise=False`` (its default divides by the max), ``abs=False``, ``softmax=True``
  (probabilities, as ours), ``features_in_step=16`` (divides 784; ours: ``steps=49``),
  ``perturb_baseline`` matching our substrate. Its curve omits the unperturbed point, so
  ``ours[:, 1:]`` is compared. Attributions are continuous random values: no argsort ties, so
  Quantus' unstable ``np.argsort(-a)`` and our stable sort give the same order.
* ROAD vs ``quantus.ROAD`` with ``noise=0`` (both deterministic): the imputed images, the
  accuracy curve Quantus returns (batch mean of ``argmax == target``) and a probability curve
  rebuilt from Quantus' own imputation.
* Additivity vs Captum's IntegratedGradients convergence delta, and vs Quantus' ``Completeness``
  where that one is meaningful: it compares floats for exact equality (False for every image of a
  real explainer), so attributions are built whose sum is exact.

Quantus 0.6.0 calls ``np.trapz``, removed in numpy 2.4: aliased to ``np.trapezoid`` per test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.metrics import (
    MetricContext,
    additivity_error,
    additivity_error_relative,
    curve_boundaries,
    deletion_auc,
    perturbation_curve,
    rank_pixels,
    road_curve,
    road_morf,
    road_perturbed_inputs,
)
from explainers.base import Attribution
from tests.conftest import calibrated

pytestmark = [pytest.mark.reference, pytest.mark.usefixtures("one_thread")]  # one_thread: tests/conftest.py

quantus = pytest.importorskip("quantus")
B = 8
PERCENT = list(range(10, 100, 10))


@pytest.fixture(autouse=True)
def _np_trapz(monkeypatch):
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """models' tiny CNN, BatchNorm statistics calibrated on random data, sharper head, eval."""
    return calibrated("tiny", batches=4, batch=64, head_scale=5)


@pytest.fixture(scope="module")
def data(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 1, 28, 28, generator=g)
    a = torch.randn(B, 1, 28, 28, generator=g)  # continuous: no ties
    with torch.no_grad():
        t = model(x).argmax(1)
    t[::3] = 1 - t[::3]  # some targets that are not the prediction
    return x, t, a


def _pixel_flipping(model, x, t, a, baseline, **kw):
    metric = quantus.PixelFlipping(
        features_in_step=16, abs=False, normalise=False, perturb_baseline=baseline,
        return_aggregate=False, disable_warnings=True, display_progressbar=False, **kw,
    )
    out = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), channel_first=True,
                 softmax=True, device="cpu", batch_size=B)
    return np.asarray(out, dtype=np.float64)


def test_deletion_curve_matches_quantus_pixel_flipping_zero(model, data):
    x, t, a = data
    theirs = _pixel_flipping(model, x, t, a, 0.0)
    ours = perturbation_curve(model, x, t, rank_pixels(a), torch.zeros_like(x), 49, mode="delete")
    assert theirs.shape == (B, 49)
    diff = np.abs(ours[:, 1:].double().numpy() - theirs).max()
    print(f"PixelFlipping zero: max abs diff {diff:.3g}")
    assert diff < 1e-5
    assert np.ptp(theirs) > 0.1  # the curves actually move: the comparison is not vacuous


def test_deletion_curve_matches_quantus_black_with_min_substrate(model, data):
    """Quantus' "black" is each image's minimum; our curve helper takes any substrate image."""
    x, t, a = data
    x = x - 0.3  # a negative minimum, so "black" != zero
    theirs = _pixel_flipping(model, x, t, a, "black")
    sub = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    ours = perturbation_curve(model, x, t, rank_pixels(a), sub, 49)
    diff = np.abs(ours[:, 1:].double().numpy() - theirs).max()
    print(f"PixelFlipping black/min: max abs diff {diff:.3g}")
    assert diff < 1e-5


def test_mean_substrate_intended_difference_pinned(model, data):
    """Intended difference: Quantus' "mean" is recomputed on the *already perturbed* image at
    every step (it drifts), ours is the mean of the unperturbed image. They agree on the first
    step and then differ; an emulation of the drifting mean reproduces Quantus exactly."""
    x, t, a = data
    theirs = _pixel_flipping(model, x, t, a, "mean")
    ours = perturbation_curve(model, x, t, rank_pixels(a), x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), 49)
    assert np.abs(ours[:, 1].double().numpy() - theirs[:, 0]).max() < 1e-5
    assert np.abs(ours[:, 2:].double().numpy() - theirs[:, 1:]).max() > 1e-4
    order = rank_pixels(a)
    cur = x.clone().flatten(1)
    drift = []
    with torch.no_grad():
        for s in range(49):
            idx = order[:, s * 16 : (s + 1) * 16]
            cur.scatter_(1, idx, cur.mean(1, keepdim=True).expand(-1, 16))
            drift.append(torch.softmax(model(cur.view_as(x)), 1).gather(1, t.view(-1, 1)).squeeze(1))
    assert np.abs(torch.stack(drift, 1).double().numpy() - theirs).max() < 1e-5


def test_deletion_auc_relates_to_quantus_step_auc(model, data):
    """Quantus' per-sample AUC is np.trapz over step numbers (dx=1) without the unperturbed
    point; ours adds the first trapezoid and normalises to fractions [0, 1]."""
    x, t, a = data
    theirs = _pixel_flipping(model, x, t, a, 0.0, return_auc_per_sample=True)
    curve = perturbation_curve(model, x, t, rank_pixels(a), torch.zeros_like(x), 49).double().numpy()
    ours = deletion_auc(model, x, t, Attribution(a)).scores.double().numpy()
    np.testing.assert_allclose((theirs + (curve[:, 0] + curve[:, 1]) / 2) / 49, ours, atol=1e-6)
    fr = np.array(curve_boundaries(784, 49)) / 784
    np.testing.assert_allclose(np.trapezoid(curve, x=fr, axis=1), ours, atol=1e-6)


def test_road_imputation_matches_quantus(data):
    from quantus.functions.perturb_func import noisy_linear_imputation

    x, _, a = data
    order = rank_pixels(a)
    ours = road_perturbed_inputs(x, order, [p / 100 for p in PERCENT], noise=0.0)
    o = order.numpy()
    diff = 0.0
    for i in range(B):
        for j, p in enumerate(PERCENT):
            theirs = noisy_linear_imputation(arr=x[i].numpy(), indices=o[i, : int(784 * p / 100)], noise=0.0)
            diff = max(diff, float(np.abs(theirs - ours[i, j].numpy()).max()))
    print(f"ROAD imputation: max abs diff {diff:.3g}")
    assert diff < 1e-6


def test_road_curve_matches_quantus_road(model, data):
    """Quantus ROAD returns the batch accuracy per percentage; with noise 0 both are
    deterministic. Intended difference: our per-image curve is the target probability, so we
    compare (a) our accuracy rebuilt from our imputed images with Quantus' dict exactly and
    (b) our probability curve with probabilities on Quantus-imputed images."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    x, t, a = data
    metric = quantus.ROAD(percentages=PERCENT, noise=0.0, abs=False, normalise=False,
                          return_aggregate=False, disable_warnings=True, display_progressbar=False)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), channel_first=True,
                    softmax=True, device="cpu", batch_size=B)
    assert list(theirs) == PERCENT
    xp = road_perturbed_inputs(x, rank_pixels(a), [p / 100 for p in PERCENT], noise=0.0)
    with torch.no_grad():
        acc = (model(xp.flatten(0, 1)).argmax(1).view(B, -1) == t.view(-1, 1)).double().mean(0).numpy()
    np.testing.assert_array_equal(acc, np.array([theirs[p] for p in PERCENT]))
    assert len(set(acc.tolist())) > 1  # the accuracy curve moves

    order = rank_pixels(a).numpy()
    q_imputed = torch.from_numpy(np.stack([
        np.stack([noisy_linear_imputation(arr=x[i].numpy(), indices=order[i, : int(784 * p / 100)], noise=0.0)
                  for p in PERCENT]) for i in range(B)
    ])).float()
    with torch.no_grad():
        q_prob = torch.softmax(model(q_imputed.flatten(0, 1)), 1).view(B, len(PERCENT), -1)
    q_prob = q_prob.gather(2, t.view(-1, 1, 1).expand(-1, len(PERCENT), 1)).squeeze(2)
    ours = road_curve(model, x, t, rank_pixels(a), [p / 100 for p in PERCENT], noise=0.0)
    diff = (ours - q_prob).abs().max().item()
    print(f"ROAD probability curve: max abs diff {diff:.3g}")
    assert diff < 1e-5
    score = road_morf(model, x, t, Attribution(a), noise=0.0).scores
    expected = 1 - np.trapezoid(q_prob.double().numpy(), x=np.array(PERCENT) / 100, axis=1) / 0.8
    np.testing.assert_allclose(score.double().numpy(), expected, atol=1e-5)


def test_additivity_matches_captum_ig_convergence_delta(model, data):
    from captum.attr import IntegratedGradients

    x, t, _ = data
    baseline = torch.zeros_like(x)
    attr, delta = IntegratedGradients(model).attribute(x, baselines=baseline, target=t, n_steps=50,
                                                        return_convergence_delta=True)
    with torch.no_grad():
        out = model(x).gather(1, t.view(-1, 1)).squeeze(1)
        base = model(baseline).gather(1, t.view(-1, 1)).squeeze(1)
    a = Attribution(attr.detach(), out, base)
    err = additivity_error(model, x, t, a, context=MetricContext(additive=True))
    diff = (err.double() - delta.detach().abs().double()).abs().max().item()
    print(f"additivity vs captum |delta|: max abs diff {diff:.3g}, max |delta| {delta.abs().max().item():.3g}")
    assert diff < 1e-5
    assert delta.abs().max() > 1e-4  # a real gap at 50 steps: the comparison is not vacuous
    rel = additivity_error_relative(model, x, t, a)
    np.testing.assert_allclose(rel.double().numpy(), (delta.detach().abs() / (out - base).abs()).double().numpy(), rtol=1e-4)


def test_additivity_agrees_with_quantus_completeness_where_equality_is_exact(model, data):
    """Quantus' ``Completeness`` asks ``sum(a) == f(x) - f(baseline)`` with exact float equality.
    Attributions that put the whole output change on one pixel make that sum exact: Quantus says
    True exactly where our gap is 0, and False where a known offset was added (the gap we report)."""
    x, t, _ = data
    zero = torch.zeros_like(x)
    with torch.no_grad():
        out = model(x).gather(1, t.view(-1, 1)).squeeze(1)
        base = model(zero).gather(1, t.view(-1, 1)).squeeze(1)
    a = torch.zeros_like(x)
    a[:, 0, 0, 0] = out - base
    offset = torch.zeros(B)
    offset[1::2] = 0.25  # every other image misses completeness by a quarter logit
    a[:, 0, 5, 5] = offset
    ours = additivity_error(model, x, t, Attribution(a, out, base), context=MetricContext(additive=True))
    np.testing.assert_allclose(ours.double().numpy(), offset.double().numpy(), atol=1e-6)
    metric = quantus.Completeness(abs=False, normalise=False, perturb_baseline=0.0, return_aggregate=False,
                                  disable_warnings=True, display_progressbar=False)
    verdict = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), channel_first=True,
                     softmax=False, device="cpu", batch_size=B)
    assert list(map(bool, verdict)) == [bool(o == 0) for o in offset]
