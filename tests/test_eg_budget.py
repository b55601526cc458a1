"""The variance budget of docs/experiments/eg_budget.py on grids whose parts are known by construction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "eg_budget.py"


@pytest.fixture(scope="module")
def eg():
    spec = importlib.util.spec_from_file_location("eg_budget", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _centered(x: np.ndarray, axes) -> np.ndarray:
    for ax in axes:
        x = x - x.mean(ax, keepdims=True)
    return x


def test_budget_splits_a_grid_into_its_known_parts(eg):
    rng = np.random.default_rng(0)
    n_rows, cells, pixels = 32, 64, 400
    t = np.ones(pixels)
    b = _centered(rng.normal(0, 0.5, (n_rows, 1, pixels)), (0,))  # per reference, mean 0 over rows
    s = _centered(rng.normal(0, 0.3, (1, cells, pixels)), (1,))  # shared along the path, mean 0 over a
    e = _centered(rng.normal(0, 1.0, (n_rows, cells, pixels)), (1,))  # idiosyncratic, mean 0 per path
    h = t + b + s + e
    got = eg.budget(h)
    t2 = pixels  # ||T||^2 (b, s, e have mean 0 over the grid)
    assert got["between"] == pytest.approx((b**2).sum(2).mean() / t2, rel=1e-9)
    assert got["within"] == pytest.approx(((s + e) ** 2).sum(2).mean() / t2, rel=1e-9)
    assert got["total"] == pytest.approx(got["between"] + got["within"], rel=1e-9)
    assert got["shared"] == pytest.approx((s**2).sum(2).mean() / t2, rel=0.1)  # 0.09 against within ~1.1
    assert got["autocorr"][0] == pytest.approx(0.0, abs=0.05)  # white noise along the path


def test_autocorr_follows_an_ar1_path(eg):
    rng = np.random.default_rng(1)
    rho, n_rows, cells, pixels = 0.8, 16, 256, 50
    e = np.empty((n_rows, cells, pixels))
    e[:, 0] = rng.normal(size=(n_rows, pixels))
    for j in range(1, cells):
        e[:, j] = rho * e[:, j - 1] + np.sqrt(1 - rho**2) * rng.normal(size=(n_rows, pixels))
    got = eg.budget(5.0 + e, lags=(1, 2, 4))["autocorr"]
    assert got == pytest.approx([rho, rho**2, rho**4], abs=0.05)


def test_neyman_gain_of_two_row_spreads(eg):
    rng = np.random.default_rng(2)
    u = _centered(rng.normal(size=(1, 8, 20)), (1,))
    u /= np.sqrt((u**2).sum(2).mean())  # mean ||u(a)||^2 = 1 exactly
    sigma = np.array([1.0, 3.0] * 4).reshape(-1, 1, 1)
    got = eg.budget(1.0 + sigma * u)["neyman_gain"]
    assert got == pytest.approx(5.0 / 4.0, rel=1e-9)  # mean(sigma^2) / mean(sigma)^2 = 5 / 2^2


def test_is_gain_matches_sampling_with_the_optimal_density(eg):
    rng = np.random.default_rng(3)
    h = rng.normal(0.3, 1.0, (4, 6, 3)) * rng.choice([0.2, 1.0, 4.0], size=(4, 6, 1))  # uneven norms
    pts = h.reshape(-1, 3)
    t = pts.mean(0)
    norms = np.linalg.norm(pts, axis=1)
    q = norms / norms.sum()
    draws = rng.choice(len(pts), size=400_000, p=q)
    est = pts[draws] / (len(pts) * q[draws, None])  # unbiased one-draw estimates under q
    var_is = ((est - t) ** 2).sum(1).mean()
    var_uniform = ((pts - t) ** 2).sum(1).mean()
    assert eg.budget(h)["is_gain"] == pytest.approx(var_uniform / var_is, rel=0.03)
    signs = np.eye(3)[rng.integers(0, 3, (4, 6))] * rng.choice([-2.0, 2.0], size=(4, 6, 1))
    assert eg.budget(signs)["is_gain"] == pytest.approx(1.0)  # every ||h|| equal: nothing to gain


def test_simulated_errors_of_iid_and_stratified_draws(eg):
    rng = np.random.default_rng(4)
    n_rows, cells, pixels = 32, 16, 300
    h = 1.0 + rng.normal(0, 2.0, (n_rows, cells, pixels))
    total = eg.budget(h)["total"]
    assert eg.simulated_errors(h, "iid", 50, range(200)).mean() == pytest.approx(np.sqrt(total / 50), rel=0.05)
    rows_only = np.broadcast_to(h[:, :1], h.shape)  # the integrand does not vary along a path
    assert eg.simulated_errors(rows_only, "stratified", n_rows, range(5)).max() == pytest.approx(0.0, abs=1e-12)
    assert eg.simulated_errors(rows_only, "iid", n_rows, range(5)).min() > 0.1


def test_antithetic_draws_are_unbiased_and_pair_each_row(eg):
    from eg_designs import design  # on the path once eg_budget is loaded

    rows, a, w = design("antithetic", 7, 12, 8)
    assert (rows[8:] == rows[:4]).all() and np.allclose(a[8:], 1.0 - a[:4])  # a row's second point mirrored
    strata = np.sort(np.floor(a * 12).astype(int))
    assert (strata == np.arange(12)).all()  # the points still take one stratum each
    h = np.random.default_rng(5).normal(0.5, 1.0, (8, 24, 6))
    est = np.mean([eg.snapped_estimate(h, *design("antithetic", s, 12, 8)) for s in range(6000)], axis=0)
    sd = np.sqrt(((h - h.mean((0, 1))) ** 2).mean((0, 1)) / 12 / 6000)  # iid bound on the mean's sd
    assert np.abs(est - h.mean((0, 1))).max() < 5 * sd.max()
    with pytest.raises(ValueError, match="N <= n <= 2N"):
        design("antithetic", 0, 17, 8)
