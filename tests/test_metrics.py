"""Fast correctness tests of the bench.metrics package: analytic oracles, hand-computed cases, contracts.

Every oracle here can fail: the analytic model makes the true pixel order known, so a sign or
sort-direction bug in the ranking, the curve or the AUC changes the asserted inequalities.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.metrics import (
    CONTROL_ROLES,
    METRICS,
    PREPROCESS_MODES,
    MetricContext,
    compute_metric,
    curve_boundaries,
    deletion_auc,
    drop_rate,
    increase_rate,
    insertion_auc,
    localisation_precision,
    make_substrate,
    metric_params,
    normalised_trapezoid,
    perturbation_curve,
    pointing_game,
    preprocess_attributions,
    randomisation_per_layer,
    randomisation_similarity,
    rank_pixels,
    register_metric,
    road_impute,
    road_impute_many,
    road_lerf,
    road_morf,
    road_perturbed_inputs,
    spearman,
    additivity_error,
    additivity_error_relative,
    attribution_groups,
    avg_sensitivity,
    complexity,
    faithfulness_correlation,
    gaussian_perturbations,
    infidelity,
    local_lipschitz_estimate,
    max_sensitivity,
    monotonicity_correlation,
    pearson,
    per_image_draws,
    random_subsets,
    sparseness,
    uniform_perturbations,
)
from bench.metrics.drop_increase import kept_probabilities
from explainers import run_explainer
from explainers.base import Attribution
from tests.conftest import calibrated

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: see tests/conftest.py


# ----------------------------------------------------------------------------- fixtures / models


class LinearLogit(nn.Module):
    """Logits ``[0, scale * (w . x) + bias]``: the class-1 probability is sigmoid(scale w.x + bias)."""

    def __init__(self, w: torch.Tensor, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.scale, self.bias = scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale * (x * self.w).sum(dim=(1, 2, 3)) + self.bias
        return torch.stack([torch.zeros_like(z), z], dim=1)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def grad_x_input(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = inputs.clone().requires_grad_(True)
    out = model(x).gather(1, targets.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(out, x)
    return (g * inputs).detach()


def edge_map(inputs: torch.Tensor) -> torch.Tensor:
    """Sobel magnitude of the input: an 'explainer' that ignores the model."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = torch.nn.functional.conv2d(inputs, kx, padding=1)
    gy = torch.nn.functional.conv2d(inputs, kx.transpose(2, 3), padding=1)
    return (gx.square() + gy.square()).sqrt()


@pytest.fixture(scope="module")
def tiny():
    """models' tiny CNN, BatchNorm statistics calibrated on random data, a sharper head, eval."""
    return calibrated("tiny", batches=4, batch=64, head_scale=5)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 28, 28, generator=g)
    a = torch.randn(5, 1, 28, 28, generator=g)
    return x, a


def _analytic(h: int = 28, w: int = 28, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(1, 1, h, w, generator=g)
    x = 0.5 + 0.5 * torch.rand(3, 1, h, w, generator=g)
    model = LinearLogit(weights, scale=0.05).eval()
    targets = torch.ones(3, dtype=torch.long)
    return model, x, targets, weights, g


# ----------------------------------------------------------------------------- analytic oracles


@pytest.mark.parametrize("substrate", ["zero", "mean", "blur"])
def test_deletion_true_order_is_best_and_bounds_random(substrate):
    """For p = sigmoid(w.x), deleting in the order of w_i (x_i - s_i) minimises the curve at
    every step; the reversed order maximises it; a random order lies in between."""
    model, x, t, w, g = _analytic()
    sub = make_substrate(x, substrate)
    contrib = w * (x - sub)
    orders = {
        "perfect": rank_pixels(contrib),
        "reversed": rank_pixels(-contrib),
        "random": torch.stack([torch.randperm(784, generator=g) for _ in range(3)]),
    }
    curves = {k: perturbation_curve(model, x, t, o, sub, 49, mode="delete") for k, o in orders.items()}
    assert torch.all(curves["perfect"] <= curves["random"] + 1e-6)
    assert torch.all(curves["random"] <= curves["reversed"] + 1e-6)
    aucs = {
        k: deletion_auc(model, x, t, Attribution(v), substrate=substrate).scores
        for k, v in {"perfect": contrib, "reversed": -contrib, "random": torch.randn_like(contrib)}.items()
    }
    assert torch.all(aucs["perfect"] < aucs["random"] - 1e-3)
    assert torch.all(aucs["random"] < aucs["reversed"] - 1e-3)
    # shared end points: the unperturbed input and the full substrate
    for c in curves.values():
        torch.testing.assert_close(c[:, 0], torch.sigmoid(0.05 * (w * x).sum((1, 2, 3))))
        torch.testing.assert_close(c[:, -1], torch.sigmoid(0.05 * (w * sub).sum((1, 2, 3))))


@pytest.mark.parametrize("substrate", ["zero", "mean", "blur"])
def test_insertion_true_order_is_best_and_bounds_random(substrate):
    model, x, t, w, g = _analytic(seed=3)
    sub = make_substrate(x, substrate)
    contrib = w * (x - sub)
    curves = {
        "perfect": perturbation_curve(model, x, t, rank_pixels(contrib), sub, 49, mode="insert"),
        "reversed": perturbation_curve(model, x, t, rank_pixels(-contrib), sub, 49, mode="insert"),
        "random": perturbation_curve(
            model, x, t, torch.stack([torch.randperm(784, generator=g) for _ in range(3)]), sub, 49, mode="insert"
        ),
    }
    assert torch.all(curves["perfect"] >= curves["random"] - 1e-6)
    assert torch.all(curves["random"] >= curves["reversed"] - 1e-6)
    aucs = {
        k: insertion_auc(model, x, t, Attribution(v), substrate=substrate).scores
        for k, v in {"perfect": contrib, "reversed": -contrib, "random": torch.randn_like(contrib)}.items()
    }
    assert torch.all(aucs["perfect"] > aucs["random"] + 1e-3)
    assert torch.all(aucs["random"] > aucs["reversed"] + 1e-3)
    torch.testing.assert_close(curves["perfect"][:, 0], torch.sigmoid(0.05 * (w * sub).sum((1, 2, 3))))
    torch.testing.assert_close(curves["perfect"][:, -1], torch.sigmoid(0.05 * (w * x).sum((1, 2, 3))))


def test_curve_hand_computed_small_image():
    """2x2 image, 2 steps of 2 pixels: every curve point by hand."""
    w = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).view(1, 1, 2, 2)
    model = LinearLogit(w).eval()
    x = torch.ones(1, 1, 2, 2)
    a = Attribution(torch.tensor([[0.1, 0.9], [0.8, 0.2]]).view(1, 1, 2, 2))  # order: 1, 2, 3, 0
    t = torch.tensor([1])
    curve = perturbation_curve(model, x, t, rank_pixels(a.values), torch.zeros_like(x), 2)
    expected = [sigmoid(2.5), sigmoid(2.5 - 2.0 + 1.0), sigmoid(0.0)]
    torch.testing.assert_close(curve[0], torch.tensor(expected))
    res = deletion_auc(model, x, t, a, steps=2)
    auc = res.scores
    # the metric returns the curve its score integrates, with the fractions of pixels deleted
    assert set(res.curves) == {"deletion"} and res.curves["deletion"].x == (0.0, 0.5, 1.0)
    torch.testing.assert_close(res.curves["deletion"].y, curve)
    assert auc.item() == pytest.approx(
        0.5 * ((expected[0] + expected[1]) / 2 + (expected[1] + expected[2]) / 2), abs=1e-6
    )
    ins = perturbation_curve(model, x, t, rank_pixels(a.values), torch.zeros_like(x), 2, mode="insert")
    torch.testing.assert_close(ins[0], torch.tensor([sigmoid(0.0), sigmoid(2.0 - 1.0), sigmoid(2.5)]))


def test_curve_boundaries():
    assert curve_boundaries(784, 49) == list(range(0, 785, 16))
    b = curve_boundaries(784, 10)
    assert b[0] == 0 and b[-1] == 784 and len(b) == 11 and all(x < y for x, y in zip(b, b[1:]))
    np.testing.assert_array_equal(b, np.floor(np.linspace(0, 784, 11) + 0.5).astype(int))
    with pytest.raises(BenchError):
        curve_boundaries(784, 0)


def test_deletion_auc_equals_numpy_trapezoid(tiny, batch):
    x, a = batch
    t = torch.tensor([0, 1, 0, 1, 1])
    for steps in (49, 10):
        curve = perturbation_curve(tiny, x, t, rank_pixels(a), torch.zeros_like(x), steps)
        fr = np.array(curve_boundaries(784, steps)) / 784
        expected = np.trapezoid(curve.double().numpy(), x=fr, axis=1)
        got = deletion_auc(tiny, x, t, Attribution(a), steps=steps)
        np.testing.assert_allclose(got.scores.numpy(), expected, atol=1e-6)
        assert torch.equal(got.curves["deletion"].y, curve)  # the stored curve is the scored one, bit for bit
        # chunking over (image, step) pairs does not change the numbers
        small = perturbation_curve(tiny, x, t, rank_pixels(a), torch.zeros_like(x), steps, chunk_size=7)
        torch.testing.assert_close(small, curve, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- drop / increase


def test_drop_and_increase_hand_computed():
    """w = [[1, 2], [-1, 0.5]], x = 1, keep 2 of 4 pixels (frac 0.5), zero substrate.

    Y = sigmoid(2.5). Image 0 keeps w=2 and w=-1: O = sigmoid(1), drop = (Y - O) / Y, no increase.
    Image 1 keeps w=2 and w=1: O = sigmoid(3) > Y, drop 0, increase 1.
    """
    w = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).view(1, 1, 2, 2)
    model = LinearLogit(w).eval()
    x = torch.ones(2, 1, 2, 2)
    vals = torch.tensor([[[0.1, 0.9], [0.8, 0.2]], [[0.8, 0.9], [0.1, 0.2]]]).view(2, 1, 2, 2)
    t = torch.tensor([1, 1])
    y = sigmoid(2.5)
    d = drop_rate(model, x, t, Attribution(vals), frac=0.5)
    i = increase_rate(model, x, t, Attribution(vals), frac=0.5)
    assert d.tolist() == pytest.approx([(y - sigmoid(1.0)) / y, 0.0], abs=1e-6)
    assert i.tolist() == [0.0, 1.0]
    # target class 0: probability 1 - sigmoid(z); keeping w=2, w=-1 raises it
    t0 = torch.tensor([0, 0])
    y0 = 1 - y
    assert drop_rate(model, x, t0, Attribution(vals), frac=0.5).tolist() == pytest.approx(
        [0.0, (y0 - (1 - sigmoid(3.0))) / y0], abs=1e-6
    )
    assert increase_rate(model, x, t0, Attribution(vals), frac=0.5).tolist() == [1.0, 0.0]


def test_drop_keeps_exactly_round_frac_pixels_ties_deterministic():
    """sigmoid(0.01 * kept count) reveals k: round(0.15 * 784) = 118, even with all-tied values."""
    model = LinearLogit(torch.ones(1, 1, 28, 28), scale=0.01).eval()
    x = torch.ones(1, 1, 28, 28)
    for vals in (torch.zeros_like(x), torch.randn_like(x)):
        _, o = kept_probabilities(model, x, torch.tensor([1]), Attribution(vals), 0.15, "zero", 2.0, 256, "drop_rate")
        k = math.log(o.item() / (1 - o.item())) / 0.01
        assert k == pytest.approx(118, abs=1e-3)
    assert torch.equal(rank_pixels(torch.zeros(2, 1, 3, 3)), torch.arange(9).expand(2, 9))


def test_rank_pixels_sums_channels():
    v = torch.zeros(1, 2, 1, 3)
    v[0, 0] = torch.tensor([3.0, 0.0, 1.0])
    v[0, 1] = torch.tensor([-3.0, 2.0, 0.5])  # sums: 0, 2, 1.5
    assert rank_pixels(v).tolist() == [[1, 2, 0]]


# ----------------------------------------------------------------------------- additivity


def test_additivity_hand_built():
    vals = torch.zeros(3, 1, 2, 2)
    vals[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 0.5])
    vals[:, 0, 1, 1] = torch.tensor([2.0, 1.0, 0.5])  # sums 3, 3, 1
    outputs = torch.tensor([5.0, 4.5, 2.0])
    base = torch.tensor([1.5, 1.5, 2.0])  # deltas 3.5, 3, 0
    attr = Attribution(vals, outputs, base)
    x = torch.zeros_like(vals)
    err = additivity_error(None, x, None, attr)
    assert err.tolist() == pytest.approx([0.5, 0.0, 1.0])
    rel = additivity_error_relative(None, x, None, attr)
    assert rel.tolist() == pytest.approx([0.5 / 3.5, 0.0, 1.0 / 1e-8])
    assert rel.dtype == x.dtype and err.shape == (3,)


def test_additivity_nan_for_non_additive_and_error_for_broken_additive():
    x = torch.zeros(2, 1, 2, 2)
    attr = Attribution(torch.ones_like(x))
    assert torch.isnan(additivity_error(None, x, None, attr)).all()
    assert torch.isnan(additivity_error_relative(None, x, None, attr)).all()
    with pytest.raises(BenchError, match="additive"):
        additivity_error(None, x, None, attr, context=MetricContext(additive=True))


# ----------------------------------------------------------------------------- localisation


def test_localisation_precision_and_pointing_hand_built():
    masks = torch.zeros(3, 1, 3, 3, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # top row, k = 3
    masks[1, 0, 2, 2] = True  # one pixel, k = 1
    vals = torch.zeros(3, 1, 3, 3)
    vals[0, 0] = torch.tensor([[9.0, 1.0, 8.0], [7.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # top-3: (0,0) (0,2) (1,0)
    vals[1, 0] = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])  # max at (0,0): miss
    vals[2, 0] = torch.rand(3, 3)  # empty mask: NaN
    ctx = MetricContext(masks=masks)
    x = torch.zeros_like(vals)
    model = LinearLogit(torch.ones(1, 1, 3, 3)).eval()
    t = torch.ones(3, dtype=torch.long)
    p = localisation_precision(model, x, t, Attribution(vals), context=ctx)
    assert p[:2].tolist() == pytest.approx([2 / 3, 0.0]) and torch.isnan(p[2])
    # k = 2: image 1 top-2 = (0,0) miss, (2,2) hit
    pf = localisation_precision(model, x, t, Attribution(vals), context=ctx, frac=2 / 9)
    assert pf[:2].tolist() == pytest.approx([1.0, 0.5]) and torch.isnan(pf[2])
    pg = pointing_game(model, x, t, Attribution(vals), context=ctx)
    assert pg[:2].tolist() == [1.0, 0.0] and torch.isnan(pg[2])
    vals2 = vals.clone()
    vals2[1, 0, 2, 2] = 6.0
    assert pointing_game(model, x, t, Attribution(vals2), context=ctx)[1].item() == 1.0
    assert localisation_precision(model, x, t, Attribution(vals2), context=ctx)[1].item() == 1.0


# ----------------------------------------------------------------------------- randomisation


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 50), generator=g).float()
    b = torch.randn(4, 50, generator=g)
    b[:, :10] = 0.0
    ours = spearman(a, b)
    for i in range(4):
        assert ours[i].item() == pytest.approx(scipy.stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert torch.isnan(spearman(torch.ones(1, 5), torch.randn(1, 5))).all()


def test_randomisation_model_independent_explainer_scores_one_and_gradient_lower(tiny, batch):
    x, _ = batch
    t = tiny(x).argmax(1)
    state = copy.deepcopy(tiny.state_dict())
    rng_state = torch.get_rng_state()

    edge = MetricContext(explain=lambda m: edge_map(x))
    s_edge = randomisation_similarity(tiny, x, t, Attribution(edge_map(x)), context=edge)
    torch.testing.assert_close(s_edge, torch.ones(5))

    gxi = MetricContext(explain=lambda m: grad_x_input(m, x, t))
    s_gxi = randomisation_similarity(tiny, x, t, Attribution(grad_x_input(tiny, x, t)), context=gxi)
    assert torch.all(s_gxi < 0.8), s_gxi
    assert s_gxi.mean() < 0.6, s_gxi

    per_layer, names = randomisation_per_layer(tiny, x, Attribution(grad_x_input(tiny, x, t)), gxi.explain)
    assert names == ["fc", "layer2", "layer1", "bn1", "conv1"]
    assert per_layer.shape == (5, 5)
    torch.testing.assert_close(per_layer.nanmean(1), s_gxi)
    # the caller's model and the global RNG are untouched; seeded results are reproducible
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert not tiny.training
    torch.testing.assert_close(
        randomisation_similarity(tiny, x, t, Attribution(grad_x_input(tiny, x, t)), context=gxi), s_gxi
    )
    # a truncated cascade is the first `steps` columns of the full one, and calls explain that often
    calls = []
    counting = MetricContext(explain=lambda m: calls.append(1) or grad_x_input(m, x, t))
    top2 = randomisation_similarity(tiny, x, t, Attribution(grad_x_input(tiny, x, t)), context=counting, steps=2)
    assert len(calls) == 2
    torch.testing.assert_close(top2, per_layer[:, :2].nanmean(1))
    assert not torch.allclose(top2, s_gxi)
    sub, sub_names = randomisation_per_layer(tiny, x, Attribution(grad_x_input(tiny, x, t)), gxi.explain, steps=99)
    assert sub_names == names  # more steps than layers: every layer once
    torch.testing.assert_close(sub, per_layer)
    with pytest.raises(BenchError, match="steps must be >= 0"):
        randomisation_similarity(tiny, x, t, Attribution(grad_x_input(tiny, x, t)), context=gxi, steps=-1)


# ----------------------------------------------------------------------------- ROAD


def test_road_impute_is_neighbour_average_and_noise_only_on_removed():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 6, 6, generator=g).double().numpy()
    removed = np.array([7, 8, 14, 20, 35])  # includes a corner (35) and adjacent unknowns
    out = road_impute(img, removed, noise=0.0)
    keep = np.setdiff1d(np.arange(36), removed)
    np.testing.assert_array_equal(out.reshape(-1)[keep], img.reshape(-1)[keep])
    o2 = out[0]
    for idx in removed:
        r, c = divmod(int(idx), 6)
        num = den = 0.0
        for dr, dc, wgt in [
            (1, 1, 1 / 12),
            (0, 1, 1 / 6),
            (-1, 1, 1 / 12),
            (1, -1, 1 / 12),
            (0, -1, 1 / 6),
            (-1, -1, 1 / 12),
            (1, 0, 1 / 6),
            (-1, 0, 1 / 6),
        ]:
            if 0 <= r + dr < 6 and 0 <= c + dc < 6:
                num += wgt * o2[r + dr, c + dc]
                den += wgt
        assert o2[r, c] == pytest.approx(num / den, abs=1e-12)
    noisy = road_impute(img, removed, noise=0.01, rng=np.random.default_rng(0))
    diff = (noisy - out).reshape(-1)
    assert np.all(diff[keep] == 0) and np.all(diff[removed] != 0) and np.abs(diff).max() < 0.05


def test_road_impute_many_equals_one_system_at_a_time():
    """Systems solved together (one block-diagonal matrix) give each system's own solution (3
    channels, nested and disjoint removals, an empty one, removed borders and corners)."""
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 3, 9, 7, generator=g).double().numpy()
    perm = torch.randperm(63, generator=g).numpy()
    removed = [perm[:10], perm[:40], np.array([], dtype=np.int64), np.array([0, 6, 56, 62, 1, 7])]
    many = road_impute_many(images, removed)
    for img, rem, sol in zip(images, removed, many):
        assert sol.shape == (len(rem), 3)
        alone = road_impute_many(img[None], [rem])[0]
        np.testing.assert_allclose(sol, alone, rtol=1e-12, atol=1e-12)
        ref = road_impute(img, rem, noise=0.0).reshape(3, -1)
        np.testing.assert_allclose(ref[:, rem].T, alone, rtol=1e-12, atol=1e-12)
        keep = np.setdiff1d(np.arange(63), rem)
        np.testing.assert_array_equal(ref[:, keep], img.reshape(3, -1)[:, keep])


def test_road_perturbed_inputs_do_not_depend_on_threads(batch):
    x, a = batch
    order = rank_pixels(a)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = road_perturbed_inputs(x, order, (0.2, 0.5, 0.8), noise=0.01, seed=1)
        torch.set_num_threads(2)
        two = road_perturbed_inputs(x, order, (0.2, 0.5, 0.8), noise=0.01, seed=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_road_direction_on_patch_model():
    """Only a bright 6x6 patch drives the logit: MoRF along the true order must drop the
    probability (large area over the curve), the reversed order must not; LeRF mirrors it."""
    w = torch.zeros(1, 1, 28, 28)
    w[..., 10:16, 10:16] = 1.0
    model = LinearLogit(w, scale=0.2, bias=-3.0).eval()
    x = torch.zeros(2, 1, 28, 28)
    x[..., 10:16, 10:16] = 1.0
    x = x + 0.01 * torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.ones(2, dtype=torch.long)
    good, bad = Attribution(w * x), Attribution(-(w * x))
    m_good, m_bad = road_morf(model, x, t, good).scores, road_morf(model, x, t, bad).scores
    l_good, l_bad = road_lerf(model, x, t, good).scores, road_lerf(model, x, t, bad).scores
    assert torch.all(m_good > 0.8) and torch.all(m_bad < 0.1), (m_good, m_bad)
    assert torch.all(l_good < 0.1) and torch.all(l_bad > 0.8), (l_good, l_bad)
    assert METRICS.get("road_morf").meta["higher_is_better"] is True
    assert METRICS.get("road_lerf").meta["higher_is_better"] is False


def test_road_seeded_noise_deterministic_and_batch_invariant(batch):
    x, a = batch
    order = rank_pixels(a)
    p1 = road_perturbed_inputs(x, order, (0.3, 0.6), noise=0.01, seed=3)
    assert torch.equal(p1, road_perturbed_inputs(x, order, (0.3, 0.6), noise=0.01, seed=3))
    assert not torch.equal(p1, road_perturbed_inputs(x, order, (0.3, 0.6), noise=0.01, seed=4))
    single = road_perturbed_inputs(x[2:3], order[2:3], (0.3, 0.6), noise=0.01, seed=3)
    assert torch.equal(single[0], p1[2])
    clean = road_perturbed_inputs(x, order, (0.3, 0.6), noise=0.0)
    noise = (p1 - clean)[clean != x.unsqueeze(1).expand_as(clean)]
    assert noise.std().item() == pytest.approx(0.01, rel=0.15)


# ----------------------------------------------------------------------------- complexity


def test_sparseness_and_complexity_hand_computed():
    """|v| = 1, 2, 3, 4: Gini sum (2i - 5) a_(i) / (4 * 10) = 10 / 40, entropy of (.1, .2, .3, .4);
    a constant map: 0 and ln 4; one value: 3/4 and 0; a zero map has no distribution: NaN."""
    v = torch.zeros(4, 1, 2, 2)
    v[0, 0] = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    v[1] = 0.7
    v[2, 0, 1, 0] = -5.0
    model, x, t = LinearLogit(torch.ones(1, 1, 2, 2)).eval(), torch.zeros_like(v), torch.ones(4, dtype=torch.long)
    gini = sparseness(model, x, t, Attribution(v))
    entropy = complexity(model, x, t, Attribution(v))
    assert gini[:3].tolist() == pytest.approx([0.25, 0.0, 0.75], abs=1e-7) and torch.isnan(gini[3])
    expected = [scipy.stats.entropy([0.1, 0.2, 0.3, 0.4]), math.log(4), 0.0]
    assert entropy[:3].tolist() == pytest.approx(expected, abs=1e-6) and torch.isnan(entropy[3])
    # magnitudes are part of both formulas: the sign of a value does not matter
    for fn in (sparseness, complexity):
        torch.testing.assert_close(
            fn(model, x, t, Attribution(-v)), fn(model, x, t, Attribution(v.abs())), equal_nan=True
        )
    # a map concentrated on a few pixels is sparser than Gaussian noise (the random control)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 1, 28, 28, generator=g)
    blob = torch.zeros(3, 1, 28, 28)
    blob[..., 10:14, 10:14] = 1.0 + torch.rand(3, 1, 4, 4, generator=g)
    big = LinearLogit(torch.ones(1, 1, 28, 28)).eval()
    args = (big, torch.zeros_like(noise), torch.ones(3, dtype=torch.long))
    assert torch.all(sparseness(*args, Attribution(blob)) > sparseness(*args, Attribution(noise)) + 0.4)
    assert torch.all(complexity(*args, Attribution(blob)) < complexity(*args, Attribution(noise)) - 3)


# ----------------------------------------------------------------------------- infidelity / correlations


def test_per_image_draws_are_seeded_per_image_and_salted(tiny):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 28, 28, generator=g)

    def draw(gen):
        return torch.randn((2, 1, 28, 28), generator=gen, dtype=torch.float64)

    d = per_image_draws(x, 0, "a", draw)
    assert d.shape == (4, 2, 1, 28, 28) and d.dtype == x.dtype
    assert torch.equal(per_image_draws(x[2:3], 0, "a", draw)[0], d[2])  # the same alone as in a batch
    assert torch.equal(per_image_draws(x, 0, "a", draw), d)
    assert not torch.allclose(per_image_draws(x, 0, "b", draw), d)
    assert not torch.allclose(per_image_draws(x, 1, "a", draw), d)
    # a metric's noise is not the random control's map for the same seed (both are seeded per image)
    t = torch.zeros(4, dtype=torch.long)
    control = run_explainer("random", tiny, x, t, background=x, seed=0).values
    for noise in (gaussian_perturbations(x, 1, 1.0, 0)[:, 0], uniform_perturbations(x, 1, 1.0, 0, "sensitivity")[:, 0]):
        assert pearson(noise, control).abs().max() < 0.2


def test_infidelity_zero_for_the_exact_linear_explanation():
    """For a linear logit, I . grad = f(x) - f(x - I) for every perturbation: infidelity 0. Twice
    the gradient misses by I . grad (unnormalised: mean (I . grad)^2), but the least-squares beta
    rescales it back (normalised: 0); a random map stays far off."""
    model, x, t, w, g = _analytic()
    grad = (0.05 * w).expand_as(x)
    zero = torch.zeros(3)
    for normalise in (True, False):
        torch.testing.assert_close(
            infidelity(model, x, t, Attribution(grad), normalise=normalise), zero, atol=1e-10, rtol=0
        )
    torch.testing.assert_close(infidelity(model, x, t, Attribution(2 * grad)), zero, atol=1e-10, rtol=0)
    perturbations = gaussian_perturbations(x, 50, 0.1, 0)
    d = (perturbations.double() * grad.double().unsqueeze(1)).sum((2, 3, 4))
    np.testing.assert_allclose(
        infidelity(model, x, t, Attribution(2 * grad), normalise=False).numpy(), d.square().mean(1).numpy(), rtol=1e-5
    )
    noise = Attribution(torch.randn(x.shape, generator=g))
    raw, scaled = infidelity(model, x, t, noise, normalise=False), infidelity(model, x, t, noise)
    assert torch.all(scaled > 1e-4) and torch.all(scaled <= raw)  # beta minimises the error
    # seeded: the same seed, the same perturbations
    assert torch.equal(infidelity(model, x, t, noise, seed=3), infidelity(model, x, t, noise, seed=3))
    assert not torch.equal(infidelity(model, x, t, noise, seed=3), scaled)


@pytest.mark.parametrize("substrate", ["zero", "mean", "blur"])
def test_faithfulness_correlation_one_for_exact_contributions(substrate):
    """Logit = 0.05 w.x: removing a subset S to the substrate changes it by sum_S 0.05 w (x - s), so
    the contributions w (x - s) correlate exactly (1), their negation anti-correlates (-1)."""
    model, x, t, w, g = _analytic()
    phi = 0.05 * w * (x - make_substrate(x, substrate))
    ones = torch.ones(3)
    fc = faithfulness_correlation(model, x, t, Attribution(phi), substrate=substrate)
    torch.testing.assert_close(fc, ones, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        faithfulness_correlation(model, x, t, Attribution(-phi), substrate=substrate), -ones, atol=1e-6, rtol=0
    )
    rnd = faithfulness_correlation(model, x, t, Attribution(torch.randn(x.shape, generator=g)), substrate=substrate)
    assert torch.all(rnd.abs() < 0.5), rnd
    # in probability space the relation is monotone, not linear: high, below 1
    prob = faithfulness_correlation(model, x, t, Attribution(phi), substrate=substrate, output="probability")
    assert torch.all(prob > 0.95) and torch.all(prob < 1 - 1e-7), prob
    # a constant map has constant subset sums: no correlation (NaN), never 0
    assert torch.isnan(faithfulness_correlation(model, x, t, Attribution(torch.ones_like(x)))).all()


def test_random_subsets_distinct_seeded_and_sized():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    s = random_subsets(x, 100, 39, 0)
    assert s.shape == (3, 100, 39) and s.dtype == torch.long
    assert all(len(set(row.tolist())) == 39 for row in s.flatten(0, 1))
    assert int(s.min()) >= 0 and int(s.max()) < 784
    assert len({tuple(sorted(row.tolist())) for row in s[0]}) == 100  # the subsets differ
    assert torch.equal(random_subsets(x, 100, 39, 0), s) and not torch.equal(random_subsets(x, 100, 39, 1), s)
    with pytest.raises(BenchError, match="frac"):
        faithfulness_correlation(
            LinearLogit(torch.ones(1, 1, 28, 28)).eval(), x, torch.ones(3, dtype=torch.long), Attribution(x), frac=0.0
        )


def test_monotonicity_correlation_linear_model():
    """Positive contributions c_i = 0.01 w_i x_i: removing a group lowers sigmoid(z) by an amount
    increasing in its contribution, so groups cut from |phi| = c correlate exactly (1); the sign
    does not matter (|phi|); ranking by 1/c puts the mass in reverse (-1)."""
    g = torch.Generator().manual_seed(5)
    w = 0.1 + torch.rand(1, 1, 28, 28, generator=g)
    x = 0.5 + 0.5 * torch.rand(3, 1, 28, 28, generator=g)
    model, t = LinearLogit(w, scale=0.01, bias=-2.0).eval(), torch.ones(3, dtype=torch.long)
    c = 0.01 * w * x
    ones = torch.ones(3)
    torch.testing.assert_close(monotonicity_correlation(model, x, t, Attribution(c)), ones)
    torch.testing.assert_close(monotonicity_correlation(model, x, t, Attribution(-c)), ones)
    torch.testing.assert_close(monotonicity_correlation(model, x, t, Attribution(1 / c)), -ones)
    rnd = monotonicity_correlation(model, x, t, Attribution(torch.randn(x.shape, generator=g)))
    assert torch.all(rnd.abs() < 0.5), rnd
    # the groups: consecutive ranks of the attribution, cut where the deletion curve cuts
    groups = attribution_groups(c, 49)
    assert groups.shape == (3, 784) and torch.equal(torch.bincount(groups[0]), torch.full((49,), 16))
    order = rank_pixels(c)
    assert torch.equal(groups.gather(1, order), torch.arange(784).div(16, rounding_mode="floor").expand(3, -1))
    sizes = torch.bincount(attribution_groups(c, 10)[0]).tolist()
    assert sizes == np.diff(curve_boundaries(784, 10)).tolist()


# ----------------------------------------------------------------------------- robustness


def test_sensitivity_and_lipschitz_analytic():
    """phi(x) = x (an 'explainer' returning its input): phi(x + delta) - phi(x) = delta, so the
    sensitivity is ||delta|| / ||x|| and the unnormalised Lipschitz ratio exactly 1 (3 for 3x); a
    map that ignores the input is perfectly robust; a zero map has no relative change (NaN)."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(3, 1, 28, 28, generator=g)
    model, t = LinearLogit(torch.ones(1, 1, 28, 28)).eval(), torch.ones(3, dtype=torch.long)
    calls = []

    def scaled(k):
        return lambda m, inputs=None: calls.append(k) or k * (x if inputs is None else inputs)

    ident = MetricContext(explain=scaled(1.0))
    deltas = uniform_perturbations(x, 10, 0.02, 0, "sensitivity")
    assert deltas.abs().max() <= 0.02 and deltas.abs().max() > 0.019
    rel = deltas.flatten(2).norm(dim=2) / x.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(max_sensitivity(model, x, t, Attribution(x), context=ident), rel.amax(1))
    torch.testing.assert_close(avg_sensitivity(model, x, t, Attribution(x), context=ident), rel.mean(1))
    assert len(calls) == 20  # `samples` re-explanations per metric call, a batch each
    calls.clear()
    torch.testing.assert_close(
        local_lipschitz_estimate(model, x, t, Attribution(x), context=ident, normalise=False), torch.ones(3)
    )
    torch.testing.assert_close(
        local_lipschitz_estimate(
            model, x, t, Attribution(3 * x), context=MetricContext(explain=scaled(3.0)), normalise=False
        ),
        torch.full((3,), 3.0),
    )
    # normalised, the scale of the map does not matter
    torch.testing.assert_close(
        local_lipschitz_estimate(model, x, t, Attribution(3 * x), context=MetricContext(explain=scaled(3.0))),
        local_lipschitz_estimate(model, x, t, Attribution(x), context=ident),
    )
    assert len(calls) == 40
    # a map that ignores the input: 0 everywhere; a zero map: NaN
    const = MetricContext(explain=lambda m, inputs=None: torch.ones_like(x))
    for fn in (max_sensitivity, avg_sensitivity, local_lipschitz_estimate):
        assert torch.equal(fn(model, x, t, Attribution(torch.ones_like(x)), context=const), torch.zeros(3))
    zero = MetricContext(explain=lambda m, inputs=None: torch.zeros_like(x))
    assert torch.isnan(max_sensitivity(model, x, t, Attribution(torch.zeros_like(x)), context=zero)).all()
    # seeded; max >= mean over the same perturbations
    a = max_sensitivity(model, x, t, Attribution(x), context=ident, seed=4)
    assert torch.equal(a, max_sensitivity(model, x, t, Attribution(x), context=ident, seed=4))
    assert not torch.equal(a, max_sensitivity(model, x, t, Attribution(x), context=ident))
    assert torch.all(a >= avg_sensitivity(model, x, t, Attribution(x), context=ident, seed=4))
    # a re-explanation of the wrong shape is refused
    bad = MetricContext(explain=lambda m, inputs=None: torch.ones(3, 1, 27, 27))
    with pytest.raises(BenchError, match="max_sensitivity.*returned"):
        max_sensitivity(model, x, t, Attribution(x), context=bad)


def test_gradient_is_less_sensitive_than_the_random_control(tiny, batch):
    """On the tiny CNN, gradient x input changes a little under 0.02 noise; the random control,
    drawn afresh for every perturbed image, changes completely (~sqrt(2))."""
    x, _ = batch
    t = tiny(x).argmax(1)
    gxi = MetricContext(explain=lambda m, inputs=None: grad_x_input(m, x if inputs is None else inputs, t))
    ours = max_sensitivity(tiny, x, t, Attribution(grad_x_input(tiny, x, t)), context=gxi)

    def control(m, inputs=None):
        return run_explainer("random", m, x if inputs is None else inputs, t, background=x).values

    rnd = max_sensitivity(tiny, x, t, Attribution(control(tiny)), context=MetricContext(explain=control))
    assert torch.all(ours < 0.8) and torch.all(rnd > 1.3), (ours, rnd)


# ----------------------------------------------------------------------------- contracts


def _context_for(model, x, t):
    masks = torch.zeros(x.shape[0], 1, 28, 28, dtype=torch.bool)
    masks[:, :, 5:15, 8:20] = True
    masks[-1] = False
    return MetricContext(
        masks=masks, explain=lambda m, inputs=None: grad_x_input(m, x if inputs is None else inputs, t)
    )


def test_every_metric_batch_equals_per_image_and_leaves_model_untouched(tiny, batch):
    x, a = batch
    t = torch.tensor([0, 1, 1, 0, 1])
    attr = Attribution(a, outputs=torch.randn(5), base_values=torch.randn(5))
    state = copy.deepcopy(tiny.state_dict())
    for name in METRICS.names():
        res = compute_metric(name, tiny, x, t, attr, context=_context_for(tiny, x, t))
        full = res.scores
        for curve in res.curves.values():  # a curve per image, one point per abscissa
            assert curve.y.shape == (5, len(curve.x)) and all(0.0 <= f <= 1.0 for f in curve.x), name
        assert full.shape == (5,) and full.dtype == x.dtype and full.device == x.device, name
        parts = []
        for i in range(5):
            ai = Attribution(a[i : i + 1], attr.outputs[i : i + 1], attr.base_values[i : i + 1])
            ctx = _context_for(tiny, x[i : i + 1], t[i : i + 1])
            ctx = MetricContext(masks=_context_for(tiny, x, t).masks[i : i + 1], explain=ctx.explain)
            parts.append(compute_metric(name, tiny, x[i : i + 1], t[i : i + 1], ai, context=ctx).scores)
        torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=1e-5, equal_nan=True, msg=name)
        assert not tiny.training and not tiny._forward_hooks and not tiny._forward_pre_hooks
        for k, v in tiny.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_registry_docstrings_directions_and_needs():
    expected = {
        "drop_rate": False,
        "increase_rate": True,
        "deletion_auc": False,
        "insertion_auc": True,
        "additivity_error": False,
        "additivity_error_relative": False,
        "road_morf": True,
        "road_lerf": False,
        "randomisation_similarity": False,
        "localisation_precision": True,
        "pointing_game": True,
        "max_sensitivity": False,
        "avg_sensitivity": False,
        "local_lipschitz_estimate": False,
        "sparseness": True,
        "complexity": False,
        "infidelity": False,
        "faithfulness_correlation": True,
        "monotonicity_correlation": True,
    }
    assert set(expected) <= set(METRICS.names())
    for entry in METRICS.entries():
        doc = entry.obj.__doc__ or ""
        assert re.search(r"et al\.|&", doc) and re.search(r"\b(19|20)\d\d\b", doc), entry.name
        if entry.name in expected:
            assert entry.meta["higher_is_better"] is expected[entry.name], entry.name
    assert METRICS.get("randomisation_similarity").meta["needs"] == ("explain",)
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate"):
        assert METRICS.get(name).meta["needs"] == ("explain",) and METRICS.get(name).meta["reads"] == "raw", name
    assert METRICS.get("localisation_precision").meta["needs"] == ("masks",)
    assert METRICS.get("pointing_game").meta["needs"] == ("masks",)
    assert metric_params("deletion_auc") == {"steps": 49, "substrate": "zero", "blur_sigma": 2.0, "chunk_size": 32}
    with pytest.raises(BenchError, match="already registered"):
        register_metric("deletion_auc", higher_is_better=False)(lambda *a, **k: None)
    with pytest.raises(BenchError, match="unknown context"):
        register_metric("x_new_metric", higher_is_better=False, needs=("labels",))
    with pytest.raises(BenchError, match="control_role='chance' is not one of baseline, none"):
        register_metric("x_new_metric", higher_is_better=False, control_role="chance")
    assert "x_new_metric" not in METRICS.names()


def test_every_in_repo_metric_declares_its_kind_and_control_role():
    """The reliability card reads what a control means from the registration: faithfulness,
    localisation and randomisation metrics have the controls as their chance level; robustness
    and complexity metrics do not (a random map is maximally spread out and unstable, a map that
    ignores the input perfectly robust), nor additivity (the controls have no value)."""
    expected = {
        "faithfulness": "baseline",
        "localisation": "baseline",
        "randomisation": "baseline",
        "robustness": "none",
        "complexity": "none",
        "axiomatic": "none",
    }
    in_repo = [e for e in METRICS.entries() if e.obj.__module__.startswith("bench.metrics.")]
    assert {e.meta["kind"] for e in in_repo} == set(expected)
    for entry in in_repo:
        assert entry.meta["control_role"] in CONTROL_ROLES, entry.name
        assert entry.meta["control_role"] == expected[entry.meta["kind"]], entry.name


def test_full_profile_names_every_metric_family():
    """configs/full.toml scores faithfulness, robustness and complexity (the families the field grades)."""
    from bench.run.config import load_config

    names = load_config(Path(__file__).resolve().parents[1] / "configs" / "full.toml", []).metrics.names
    kinds = {METRICS.get(n).meta["kind"] for n in names}
    assert {"faithfulness", "robustness", "complexity"} <= kinds
    new = {
        "max_sensitivity",
        "avg_sensitivity",
        "local_lipschitz_estimate",
        "sparseness",
        "complexity",
        "infidelity",
        "faithfulness_correlation",
        "monotonicity_correlation",
    }
    assert new <= set(names)


def test_unknown_param_missing_context_unknown_name_raise(tiny, batch):
    x, a = batch
    t = torch.zeros(5, dtype=torch.long)
    with pytest.raises(BenchError, match=r"no parameter .stepz. \(did you mean .steps.\?\); its parameters: steps=49"):
        compute_metric("deletion_auc", tiny, x, t, Attribution(a), stepz=3)
    for name, field in [
        ("randomisation_similarity", "explain"),
        ("localisation_precision", "masks"),
        ("pointing_game", "masks"),
    ]:
        with pytest.raises(BenchError, match=rf"{name}.*context\.{field}"):
            compute_metric(name, tiny, x, t, Attribution(a))
        with pytest.raises(BenchError, match=rf"{name}.*context\.{field}"):
            METRICS.get(name).obj(tiny, x, t, Attribution(a), context=MetricContext())
    with pytest.raises(BenchError, match="known metrics"):
        compute_metric("delition_auc", tiny, x, t, Attribution(a))
    with pytest.raises(BenchError, match="substrate"):
        deletion_auc(tiny, x, t, Attribution(a), substrate="black")
    with pytest.raises(BenchError, match="do not match"):
        deletion_auc(tiny, x, t, Attribution(a[:, :, :27]))
    with pytest.raises(BenchError, match="eval"):
        deletion_auc(copy.deepcopy(tiny).train(), x, t, Attribution(a))


def test_preprocess_attributions_modes():
    v = torch.tensor([-2.0, 0.0, 3.0])
    assert preprocess_attributions(v, "signed") is v
    # every mode the config accepts (PREPROCESS_MODES) is implemented, and does what it says
    assert {m: preprocess_attributions(v, m).tolist() for m in PREPROCESS_MODES} == {
        "signed": [-2.0, 0.0, 3.0],
        "abs": [2.0, 0.0, 3.0],
        "positive": [0.0, 0.0, 3.0],
    }
    with pytest.raises(BenchError, match="signed, abs, positive"):
        preprocess_attributions(v, "absolute")


def test_normalised_trapezoid_span():
    c = torch.tensor([[0.0, 1.0, 1.0]])
    assert normalised_trapezoid(c, [0.1, 0.5, 0.9]).item() == pytest.approx((0.5 * 0.4 + 1.0 * 0.4) / 0.8)


def test_substrates():
    """ "mean" is each image's own per-channel mean; "blur" equals scipy's Gaussian filter with
    mirror (torch "reflect") borders, so a constant image stays constant (zero padding would
    darken the border)."""
    import scipy.ndimage

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 28, 28, generator=g)
    mean = make_substrate(x, "mean")
    torch.testing.assert_close(mean[:, :, 3, 7], x.mean(dim=(2, 3)))
    assert torch.equal(mean.amin(dim=(2, 3)), mean.amax(dim=(2, 3)))
    assert torch.equal(make_substrate(x, "zero"), torch.zeros_like(x))
    blur = make_substrate(x, "blur", blur_sigma=2.0)
    ref = np.stack(
        [
            [
                scipy.ndimage.gaussian_filter(x[i, c].double().numpy(), 2.0, mode="mirror", truncate=3.0)
                for c in range(2)
            ]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(blur.double().numpy(), ref, atol=1e-6)
    const = torch.full((1, 1, 28, 28), 0.7)
    torch.testing.assert_close(make_substrate(const, "blur"), const)


def test_compute_metric_takes_plain_tensors_and_arrays(tiny, batch):
    """A map computed elsewhere, as a tensor or an array of any float dtype, (B, H, W), (B, 1, H, W) or
    (B, C, H, W): scored exactly as the same values wrapped in an Attribution."""
    x, a = batch
    t = torch.zeros(len(x), dtype=torch.long)
    ref = compute_metric("deletion_auc", tiny, x, t, Attribution(a), steps=8).scores
    for given in (a, a[:, 0], a[:, 0].numpy(), a.numpy().astype(np.float64), a.double()):
        assert torch.equal(compute_metric("deletion_auc", tiny, x, t, given, steps=8).scores, ref)
    # a one-channel map of three-channel images counts each pixel's value in every channel (as the CAM adapters do)
    x3 = x.expand(-1, 3, -1, -1).contiguous()
    m = nn.Sequential(nn.Conv2d(3, 2, 28), nn.Flatten()).eval()
    assert torch.equal(
        compute_metric("drop_rate", m, x3, t, a).scores,
        compute_metric("drop_rate", m, x3, t, Attribution(a.expand_as(x3))).scores,
    )
    for bad, words in [
        (a[:-1], f"a map of {len(x)} images of 1x28x28 is ({len(x)}, 28, 28) or ({len(x)}, 1, 28, 28)"),
        (a[:, :, :27], "has shape"),
        (a.clone().fill_(float("nan")), "NaN"),
        (a > 0, "real numbers"),
        ("map", "tensor or an array"),
    ]:
        with pytest.raises(BenchError) as err:
            compute_metric("deletion_auc", tiny, x, t, bad)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
