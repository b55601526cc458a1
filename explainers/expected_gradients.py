"""A batched engine for expected gradients with shap.GradientExplainer's exact draws (faster).

Erion et al. 2021 ("Improving performance of deep learning models with axiomatic attribution
priors and expected gradients"); Lundberg & Lee 2017. For an image ``x``, ``nsamples`` draws
``(r_k, t_k)`` (a background row and a point on the segment) give

    phi(x) = 1/n sum_k (x - bg[r_k]) * df/dz (z_k),     z_k = t_k x + (1 - t_k) bg[r_k].

shap's ``_PyTorchGradient.shap_values`` computes this one image at a time: it seeds numpy's
global generator with ``rseed`` and, for each sample, draws ``r_k = np.random.choice(N)`` then
``t_k = np.random.uniform()``, builds the points in float32 (``t * x + (1 - t) * bg[r]``), takes
the gradients ``batch_size`` rows at a time and averages ``grad * (x - bg[r])`` in float64.
This engine makes the same draws from a private ``numpy.random.RandomState(rseed)`` per image
(the global generator is untouched), the same float32 points and the same float64 average, but
puts the rows of *all* images into the gradient passes, ``batch_size`` rows per pass, one target
class per row. Same values as shap up to the last float32 bit (the gradient of a row does not
depend on the other rows of its batch in eval mode, except for the convolution's summation order).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def draws(rseed: int, nsamples: int, n_background: int) -> tuple[np.ndarray, np.ndarray]:
    """shap's draws for one image: background row indices ``(nsamples,)`` and ``t`` ``(nsamples,)``."""
    rs = np.random.RandomState(int(rseed))
    rows, ts = np.empty(nsamples, dtype=np.int64), np.empty(nsamples, dtype=np.float64)
    for k in range(nsamples):  # interleaved, as shap draws them: choice, uniform, choice, ...
        rows[k] = rs.choice(n_background)
        ts[k] = rs.uniform()
    return rows, ts


def expected_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    background: Tensor,
    *,
    nsamples: int,
    seeds: list[int],
    batch_size: int = 50,
) -> Tensor:
    """Expected-gradients values ``(B, C, H, W)`` (float32 like the inputs) of ``model(x)[target]``.

    ``seeds[i]`` is shap's ``rseed`` for image ``i``; ``batch_size`` rows (from any images) per
    forward + backward pass.
    """
    b, n = inputs.shape[0], background.shape[0]
    rows, ts = zip(*(draws(s, nsamples, n) for s in seeds))
    rows_t = torch.from_numpy(np.concatenate(rows)).to(background.device)
    t = np.concatenate(ts)
    shape = (-1,) + (1,) * (inputs.dim() - 1)
    a = torch.from_numpy(t).to(inputs.dtype).to(inputs.device).view(shape)  # float32(t), as torch rounds the scalar
    c = torch.from_numpy(1.0 - t).to(inputs.dtype).to(inputs.device).view(shape)  # float32(1 - t) from the double
    image_of_row = torch.arange(b, device=inputs.device).repeat_interleave(nsamples)
    target_of_row = targets.to(inputs.device).long()[image_of_row].view(-1, 1)
    phi = torch.zeros((b, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    for start in range(0, b * nsamples, batch_size):
        idx = slice(start, min(b * nsamples, start + batch_size))
        x, r = inputs[image_of_row[idx]], background[rows_t[idx]]
        z = (a[idx] * x + c[idx] * r).requires_grad_(True)
        with torch.enable_grad():
            score = model(z).gather(1, target_of_row[idx]).sum()
            (grad,) = torch.autograd.grad(score, z)
        phi.index_add_(0, image_of_row[idx], grad.double() * (x - r).double())
    return (phi / nsamples).to(inputs.dtype)
