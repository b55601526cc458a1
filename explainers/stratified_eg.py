"""Variance-reduced expected gradients: pneumobench's own estimator of shap.gradient's expectation.

Expected gradients (Erion et al. 2021, "Improving performance of deep learning models with
axiomatic attribution priors and expected gradients"; GradientSHAP, Lundberg & Lee 2017)::

    phi(x) = E_{x'~U(bg), a~U(0,1)} [(x - x') * df/dx (x' + a (x - x'))]
           = 1/N sum_r (x - bg_r) * int_0^1 df/dx (bg_r + a (x - bg_r)) da.

shap.GradientExplainer and Captum's GradientShap estimate it with ``n`` iid draws ``(r_k, a_k)``.
This estimator spends the same ``n`` gradient passes per image on draws that cover the domain
evenly (``sampler="stratified"``, the default)::

    P = a random permutation of the N background rows,   u_k ~ iid U(0, 1),
    r_k = P[k mod N],   a_k = (k + u_k) / n,              k = 0 .. n-1,
    phi_hat(x) = 1/n sum_k (x - bg[r_k]) * df/dx (bg[r_k] + a_k (x - bg[r_k])).

Every background row is used floor(n/N) or ceil(n/N) times (the reference term of the iid
variance is gone when N divides n), the points ``a_k`` take one of ``n`` equal strata of [0, 1]
each, and a row used q times gets q strata spread over the segment (k, k+N, k+2N, ...).
Unbiased: for each k, ``r_k`` is uniform over the rows and independent of ``a_k``, so
E phi_hat = 1/n sum_k 1/N sum_r n int_{k/n}^{(k+1)/n} h_r(a) da = 1/N sum_r int_0^1 h_r = phi.
``sampler="iid"`` draws ``(r_k, a_k)`` iid as the libraries do (same generator), the baseline
of tests/test_stratified_eg.py. Draws come from ``numpy.random.default_rng`` seeded per image
(:func:`~explainers.base.image_seeds`), so a batch equals its images one at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.params import Range
from explainers.base import (
    PRECISION_CHOICES,
    Attribution,
    check_choice,
    check_positive,
    explainer_precision,
    image_seeds,
    mean_target_score,
    model_guard,
    register_explainer,
    target_scores,
)

SAMPLERS = ("stratified", "iid")


def draws(seed: int, n: int, n_background: int, sampler: str = "stratified") -> tuple[np.ndarray, np.ndarray]:
    """One image's draws: background row indices ``(n,)`` int64 and path points ``a`` ``(n,)`` float64."""
    rng = np.random.default_rng(int(seed))
    if sampler == "iid":
        return rng.integers(0, n_background, size=n), rng.random(n)
    perm = rng.permutation(n_background)
    k = np.arange(n)
    return perm[k % n_background].astype(np.int64), (k + rng.random(n)) / n


def eg_values(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    background: Tensor,
    *,
    n_samples: int,
    seeds: list[int],
    sampler: str = "stratified",
    batch_size: int = 50,
) -> Tensor:
    """Expected-gradients estimate ``(B, C, H, W)`` of ``model(x)[target]`` from :func:`draws`.

    ``seeds[i]`` seeds image ``i``'s draws; ``batch_size`` rows (from any images) per
    forward + backward pass; accumulated in float64, returned in the inputs' dtype.
    """
    b, n = inputs.shape[0], background.shape[0]
    rows, ts = zip(*(draws(s, n_samples, n, sampler) for s in seeds))
    rows_t = torch.from_numpy(np.concatenate(rows)).to(background.device)
    shape = (-1,) + (1,) * (inputs.dim() - 1)
    a = torch.from_numpy(np.concatenate(ts)).to(device=inputs.device, dtype=inputs.dtype).view(shape)
    image_of_row = torch.arange(b, device=inputs.device).repeat_interleave(n_samples)
    target_of_row = targets.to(inputs.device).long()[image_of_row].view(-1, 1)
    phi = torch.zeros((b, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    for start in range(0, b * n_samples, batch_size):
        idx = slice(start, min(b * n_samples, start + batch_size))
        x, r = inputs[image_of_row[idx]].detach(), background[rows_t[idx]].detach()
        z = (r + a[idx] * (x - r)).requires_grad_(True)
        with torch.enable_grad():
            score = model(z).gather(1, target_of_row[idx]).sum()
            (grad,) = torch.autograd.grad(score, z)
        phi.index_add_(0, image_of_row[idx], grad.double() * (x - r).double())
    return (phi / n_samples).to(inputs.dtype)


@register_explainer(
    "pneumobench.expected_gradients",
    library="pneumobench",
    additive=False,
    stochastic=True,
    budget="n_samples",
    family="expected_gradients",
    passes=lambda p, n_bg: (p["n_samples"], 0),  # one gradient per (reference, point) draw
    constraints={"n_samples": Range(1), "batch_size": Range(1), "sampler": SAMPLERS, "precision": PRECISION_CHOICES},
    paper="Erion et al. 2021 (expected gradients); Lundberg & Lee 2017 (GradientSHAP)",
)
def expected_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 50,
    sampler: str = "stratified",
    seed: int = 0,
    batch_size: int = 50,
    precision: str = "float32",
) -> Attribution:
    """Expected gradients with stratified draws: E_{x'~bg, a~U(0,1)} [(x - x') * df/dx(x' + a(x - x'))].

    The expectation of ``shap.gradient`` / ``captum.gradient_shap`` with lower variance at the
    same ``n_samples`` gradient passes per image (:mod:`explainers.stratified_eg`): every
    background row used equally often (randomly paired), the path points in ``n_samples``
    strata. ``sampler="iid"`` draws as the libraries do. Seeded per image from ``seed`` and the
    image; ``batch_size`` rows of all images per pass. Additive only in expectation
    (sum -> f(x) - E_bg f), so ``additive=False``; ``outputs`` and ``base_values`` are reported.
    ``precision``: the gradient passes' (:func:`~explainers.base.explainer_precision`).
    """
    name = "pneumobench.expected_gradients"
    check_positive(name, n_samples=n_samples, batch_size=batch_size)
    check_choice(name, "sampler", sampler, SAMPLERS)
    seeds = image_seeds(seed, inputs)
    with model_guard(model), explainer_precision(name, precision, inputs.device):
        phi = eg_values(
            model, inputs, targets, background, n_samples=n_samples, seeds=seeds, sampler=sampler, batch_size=batch_size
        )
    meta = {
        "n_samples": n_samples,
        "sampler": sampler,
        "background_size": background.shape[0],
        "seeds": seeds,
        "additive_in_expectation": True,
        "precision": precision,
    }
    return Attribution(phi, target_scores(model, inputs, targets), mean_target_score(model, background, targets), meta)
