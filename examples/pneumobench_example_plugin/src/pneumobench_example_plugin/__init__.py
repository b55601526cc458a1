"""An example pneumobench plug-in: SmoothGrad as a third-party explainer adapter.

Install it next to pneumobench (``pip install examples/pneumobench_example_plugin``) and
``python -m bench list explainers`` shows ``example.smoothgrad``; the contract tests in
tests/test_explainers.py then cover it too, because they enumerate the registry.

The package also ships a metric, ``example.topk_deletion_drop``, in its own module
:mod:`pneumobench_example_plugin.metrics` with its own entry point (group ``bench.metrics``):
this module does not import it, so each registry imports only what its group declares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from explainers import Attribution, register_explainer
from explainers.base import chunks, image_seeds


def _passes(params: dict, background_size: int) -> tuple[int, int]:
    """One forward+backward pass per noisy sample, no forward-only pass (background unused)."""
    return params["n_samples"], 0


@register_explainer(
    "example.smoothgrad", library="pneumobench-example-plugin", additive=False, stochastic=True, passes=_passes
)
def smoothgrad(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    n_samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 4,
) -> Attribution:
    """SmoothGrad (Smilkov et al. 2017): mean over e ~ N(0, (noise * (max x - min x))^2) of df/dx(x + e).

    Noise is drawn per image from ``seed`` and the image (batch-independent); ``batch_size``
    images (x ``n_samples`` rows) per pass. The background is unused. Cost: ``n_samples``
    forward+backward passes per image (``passes=``, read by the cost floor).
    """
    b = inputs.shape[0]
    sigma = noise * (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))
    eps = torch.stack(
        [
            torch.randn((n_samples, *inputs.shape[1:]), generator=torch.Generator().manual_seed(s))
            for s in image_seeds(seed, inputs)
        ]
    ).to(inputs.device, inputs.dtype)
    out = []
    for s in chunks(b, batch_size):
        x = (inputs[s, None] + sigma[s].view(-1, 1, 1, 1, 1) * eps[s]).flatten(0, 1).detach().requires_grad_(True)
        score = model(x).gather(1, targets[s].repeat_interleave(n_samples).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, x)
        out.append(grad.view(-1, n_samples, *inputs.shape[1:]).mean(1))
    return Attribution(torch.cat(out), meta={"n_samples": n_samples, "noise": noise})
