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

* Sparseness and complexity vs ``quantus.Sparseness`` / ``quantus.Complexity`` (``abs=True``,
  ``normalise=False``; Quantus adds 1e-7 to every value / 1e-12 inside the log).
* Faithfulness correlation vs ``quantus.FaithfulnessCorrelation`` on the subsets Quantus drew
  (``np.random.choice`` recorded), monotonicity correlation vs ``quantus.MonotonicityCorrelation``
  (deterministic zero baseline, one sample, 16 pixels per step), logits / softmax as ours.
* Infidelity vs ``captum.metrics.infidelity`` and max-sensitivity vs
  ``captum.metrics.sensitivity_max``, fed our seeded perturbations; max- and avg-sensitivity and
  the local Lipschitz estimate vs Quantus with a ``perturb_func`` replaying the same draws.

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
    avg_sensitivity,
    complexity,
    curve_boundaries,
    deletion_auc,
    faithfulness_correlation,
    gaussian_perturbations,
    infidelity,
    local_lipschitz_estimate,
    max_sensitivity,
    monotonicity_correlation,
    per_image_draws,
    random_subsets,
    sparseness,
    subset_correlation,
    uniform_perturbations,
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
        features_in_step=16,
        abs=False,
        normalise=False,
        perturb_baseline=baseline,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
        **kw,
    )
    out = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=a.numpy(),
        channel_first=True,
        softmax=True,
        device="cpu",
        batch_size=B,
    )
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
    metric = quantus.ROAD(
        percentages=PERCENT,
        noise=0.0,
        abs=False,
        normalise=False,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=a.numpy(),
        channel_first=True,
        softmax=True,
        device="cpu",
        batch_size=B,
    )
    assert list(theirs) == PERCENT
    xp = road_perturbed_inputs(x, rank_pixels(a), [p / 100 for p in PERCENT], noise=0.0)
    with torch.no_grad():
        acc = (model(xp.flatten(0, 1)).argmax(1).view(B, -1) == t.view(-1, 1)).double().mean(0).numpy()
    np.testing.assert_array_equal(acc, np.array([theirs[p] for p in PERCENT]))
    assert len(set(acc.tolist())) > 1  # the accuracy curve moves

    order = rank_pixels(a).numpy()
    q_imputed = torch.from_numpy(
        np.stack(
            [
                np.stack(
                    [
                        noisy_linear_imputation(arr=x[i].numpy(), indices=order[i, : int(784 * p / 100)], noise=0.0)
                        for p in PERCENT
                    ]
                )
                for i in range(B)
            ]
        )
    ).float()
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
    attr, delta = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=t, n_steps=50, return_convergence_delta=True
    )
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
    np.testing.assert_allclose(
        rel.double().numpy(), (delta.detach().abs() / (out - base).abs()).double().numpy(), rtol=1e-4
    )


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
    metric = quantus.Completeness(
        abs=False,
        normalise=False,
        perturb_baseline=0.0,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    verdict = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=a.numpy(),
        channel_first=True,
        softmax=False,
        device="cpu",
        batch_size=B,
    )
    assert list(map(bool, verdict)) == [bool(o == 0) for o in offset]


# ----------------------------------------------------------------------------- complexity


def test_sparseness_and_complexity_match_quantus(model, data):
    x, t, a = data
    a = a.clone()
    a[0] = 0.0
    a[0, 0, 3, 4] = 2.0  # one value: Gini 1 - 1/N, entropy 0 (the extremes, not just random maps)
    common = dict(abs=True, normalise=False, return_aggregate=False, disable_warnings=True, display_progressbar=False)
    call = dict(model=model, x_batch=x.numpy(), y_batch=t.numpy(), channel_first=True, device="cpu", batch_size=B)
    q_gini = np.asarray(quantus.Sparseness(**common)(a_batch=a.numpy().copy(), **call))  # it adds 1e-7 in place
    q_entropy = np.asarray(quantus.Complexity(**common)(a_batch=a.numpy().copy(), **call))
    gini = sparseness(model, x, t, Attribution(a)).double().numpy()
    entropy = complexity(model, x, t, Attribution(a)).double().numpy()
    print(
        f"Sparseness: max abs diff {np.abs(gini - q_gini)[1:].max():.3g}; "
        f"Complexity: {np.abs(entropy - q_entropy).max():.3g}"
    )
    np.testing.assert_allclose(gini[1:], q_gini[1:], atol=1e-5)
    np.testing.assert_allclose(entropy, q_entropy, atol=1e-5)
    assert gini[0] == pytest.approx(1 - 1 / 784) and entropy[0] == pytest.approx(0.0, abs=1e-9)
    # Quantus' 1e-7 on every value is visible on the one-hot map (784e-7 of mass against 2):
    # it is our Gini of |a| + 1e-7
    assert abs(gini[0] - q_gini[0]) > 1e-5
    shifted = sparseness(model, x, t, Attribution(a.abs() + 1e-7)).double().numpy()
    np.testing.assert_allclose(shifted, q_gini, atol=1e-5)
    assert np.ptp(gini[1:]) > 0 and np.ptp(entropy[1:]) > 0  # the random maps differ: not vacuous


# ----------------------------------------------------------------------------- faithfulness


def test_faithfulness_correlation_matches_quantus_on_its_subsets(model, data, monkeypatch):
    """Quantus draws each image's subset with ``np.random.choice`` (run by run, image by image):
    recorded, our correlation on the same subsets equals its scores."""
    x, t, a = data
    runs, k = 20, 39
    drawn = []
    real_choice = np.random.choice

    def recording_choice(*args, **kwargs):
        out = real_choice(*args, **kwargs)
        drawn.append(np.asarray(out))
        return out

    monkeypatch.setattr(np.random, "choice", recording_choice)
    np.random.seed(0)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=k,
        perturb_baseline=0.0,
        similarity_func=quantus.similarity_func.correlation_pearson,
        abs=False,
        normalise=False,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=t.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            softmax=False,
            device="cpu",
            batch_size=B,
        )
    )
    monkeypatch.undo()
    subsets = torch.from_numpy(np.stack(drawn).reshape(runs, B, k)).transpose(0, 1).long()
    ours = subset_correlation(model, x, t, a, subsets, torch.zeros_like(x), output="logit").double().numpy()
    print(f"FaithfulnessCorrelation: max abs diff {np.abs(ours - theirs).max():.3g}")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.ptp(theirs) > 0.1
    # the registered metric: the same computation on its own seeded subsets of round(frac * 784) pixels
    registered = faithfulness_correlation(model, x, t, Attribution(a), runs=runs, frac=k / 784, seed=2)
    own = subset_correlation(model, x, t, a, random_subsets(x, runs, k, 2), torch.zeros_like(x), output="logit")
    assert torch.equal(registered, own)


def test_monotonicity_correlation_matches_quantus(model, data):
    """Deterministic settings: a zero baseline, one sample per step (the expectation over
    replacement values is then one exact term), 16 pixels per step = our 49 steps; softmax."""
    x, t, a = data
    metric = quantus.MonotonicityCorrelation(
        nr_samples=1,
        features_in_step=16,
        perturb_baseline=0.0,
        eps=1e-5,
        similarity_func=quantus.similarity_func.correlation_spearman,
        abs=True,
        normalise=False,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=t.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            softmax=True,
            device="cpu",
            batch_size=B,
        )
    )
    ours = monotonicity_correlation(model, x, t, Attribution(a), steps=49).double().numpy()
    print(f"MonotonicityCorrelation: max abs diff {np.abs(ours - theirs).max():.3g}")
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert np.ptp(theirs) > 0.1


@pytest.mark.parametrize("normalise", [True, False])
def test_infidelity_matches_captum(model, data, normalise):
    """Captum expands every input ``n_perturb_samples`` times (``repeat_interleave``) and asks
    ``perturb_func`` for (perturbations, perturbed inputs): it gets ours, ``x - I``."""
    from captum.metrics import infidelity as captum_infidelity

    x, t, a = data
    samples, std = 16, 0.1
    perturbations = gaussian_perturbations(x, samples, std, 0)

    def perturb(inputs):
        flat = perturbations.flatten(0, 1)
        return flat, inputs - flat

    for output, forward in (("logit", model), ("probability", nn.Sequential(model, nn.Softmax(dim=1)).eval())):
        theirs = captum_infidelity(forward, perturb, x, a, target=t, n_perturb_samples=samples, normalize=normalise)
        ours = infidelity(model, x, t, Attribution(a), samples=samples, std=std, normalise=normalise, output=output)
        diff = ((ours.double() - theirs.double()).abs() / theirs.double().abs()).max().item()
        print(f"infidelity ({output}, normalise={normalise}): max relative diff {diff:.3g}")
        np.testing.assert_allclose(ours.double().numpy(), theirs.double().numpy(), rtol=1e-5)
        assert theirs.min() > 0


# ----------------------------------------------------------------------------- robustness


def _input_x_gradient(t):
    """``explain(model, inputs)``: Captum's InputXGradient at the targets ``t``."""
    from captum.attr import InputXGradient

    return lambda m, inputs: InputXGradient(m).attribute(inputs.detach().requires_grad_(), target=t).detach()


def test_max_sensitivity_matches_captum(model, data):
    from captum.metrics import sensitivity_max

    x, t, _ = data
    samples, radius = 8, 0.02
    deltas = uniform_perturbations(x, samples, radius, 0, "sensitivity")
    explain = _input_x_gradient(t)

    def captum_explain(inputs, target):  # Captum passes a tuple of inputs and the expanded targets
        (inp,) = inputs if isinstance(inputs, tuple) else (inputs,)
        return (_input_x_gradient(target)(model, inp),)  # and expects a tuple back

    # its perturbed batch repeats each image `samples` times in a row (repeat_interleave): our draws in that order
    theirs = sensitivity_max(
        captum_explain,
        x,
        perturb_func=lambda inputs: inputs + deltas.flatten(0, 1),
        n_perturb_samples=samples,
        norm_ord="fro",
        target=t,
    )
    ours = max_sensitivity(
        model,
        x,
        t,
        Attribution(explain(model, x)),
        context=MetricContext(explain=explain),
        samples=samples,
        radius=radius,
    )
    diff = (ours.double() - theirs.double()).abs().max().item()
    print(f"sensitivity_max: max abs diff {diff:.3g}, values {ours.min().item():.3g}..{ours.max().item():.3g}")
    np.testing.assert_allclose(ours.double().numpy(), theirs.double().numpy(), rtol=1e-5)
    assert theirs.min() > 0.01


def _replaying(deltas: torch.Tensor, batch_size: int):
    """A Quantus ``perturb_func`` that adds our draws: Quantus calls it batch by batch and, within
    a batch, once per sample, on the batch flattened to (rows, features)."""
    samples = deltas.shape[1]
    calls = []

    def perturb(arr, indices=None, indexed_axes=None, **kwargs):
        k = len(calls)
        calls.append(k)
        rows = slice((k // samples) * batch_size, (k // samples + 1) * batch_size)
        return arr + deltas[rows, k % samples].flatten(1).double().numpy().astype(arr.dtype)

    return perturb


@pytest.mark.parametrize(
    "name, normalise",
    [
        ("max_sensitivity", False),
        ("avg_sensitivity", False),
        ("local_lipschitz_estimate", False),
        ("local_lipschitz_estimate", True),
    ],
)
def test_robustness_matches_quantus_on_the_same_draws(model, data, name, normalise):
    """Quantus' ``normalise_by_max`` without axes divides everything it is given by one maximum
    (the whole ``a_batch`` of a call, then each perturbed batch): equal to our per-image
    normalisation when Quantus gets one image per call. The sensitivities are relative and run
    without normalisation, as Quantus' defaults do."""
    x, t, _ = data
    samples = 6
    explain = _input_x_gradient(t)
    a = explain(model, x)
    context = MetricContext(explain=explain)
    if name == "local_lipschitz_estimate":
        ours = local_lipschitz_estimate(
            model, x, t, Attribution(a), context=context, samples=samples, normalise=normalise
        )
        shape = (samples, *x.shape[1:])  # the metric's own draws, replayed
        deltas = per_image_draws(x, 0, name, lambda g: torch.randn(shape, generator=g, dtype=torch.float64) * 0.1)
        cls = quantus.LocalLipschitzEstimate
    else:
        ours = {"max_sensitivity": max_sensitivity, "avg_sensitivity": avg_sensitivity}[name](
            model, x, t, Attribution(a), context=context, samples=samples, radius=0.02
        )
        deltas = uniform_perturbations(x, samples, 0.02, 0, "sensitivity")
        cls = {"max_sensitivity": quantus.MaxSensitivity, "avg_sensitivity": quantus.AvgSensitivity}[name]

    def q_explain(model, inputs, targets, **kwargs):
        xt = torch.as_tensor(inputs, dtype=torch.float32)
        return _input_x_gradient(torch.as_tensor(targets).long())(model, xt).numpy()

    def quantus_scores(rows: slice) -> np.ndarray:
        n = len(range(*rows.indices(B)))
        metric = cls(
            nr_samples=samples,
            perturb_func=_replaying(deltas[rows], n),
            abs=False,
            normalise=normalise,
            return_nan_when_prediction_changes=False,
            return_aggregate=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        return np.asarray(
            metric(
                model=model,
                x_batch=x[rows].numpy(),
                y_batch=t[rows].numpy(),
                a_batch=a[rows].numpy(),
                explain_func=q_explain,
                explain_func_kwargs={},
                channel_first=True,
                softmax=False,
                device="cpu",
                batch_size=n,
            )
        )

    theirs = (
        np.concatenate([quantus_scores(slice(i, i + 1)) for i in range(B)])
        if normalise
        else quantus_scores(slice(0, B))
    )
    diff = np.abs(ours.double().numpy() - theirs).max()
    print(f"{cls.__name__} (normalise={normalise}): max abs diff {diff:.3g}")
    np.testing.assert_allclose(ours.double().numpy(), theirs, rtol=1e-5)
    assert theirs.min() > 0.01
