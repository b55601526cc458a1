"""A batched engine for DeepSHAP's rescale rule (the values of shap.DeepExplainer, faster).

Shrikumar et al. 2017 (DeepLIFT, rescale rule); Lundberg & Lee 2017 (DeepSHAP). For a network
whose only nonlinearities are ``nn.ReLU`` modules (each called once) between linear maps
(convolutions, linear layers, BatchNorm in eval, average pools, flatten, out-of-place residual
additions), DeepLIFT's multipliers for an input ``x`` and a reference ``r`` are the gradient of
the *linearised* network in which every ReLU ``k`` is replaced by multiplication with

    m_k = (relu(a_k(x)) - relu(a_k(r))) / (a_k(x) - a_k(r)),   or relu'(a_k(x)) where |a_k(x) - a_k(r)| < eps,

``a_k`` being the ReLU's input, exactly as shap's ``nonlinear_1d`` handler computes them. Then
``phi(x) = mean_r (x - r) * d f_lin,target / dx``. ``a_k(r)`` is computed once for the whole
background and ``a_k(x)`` once per image; the rest is one forward + backward of the linearised
network per (image, reference) pair, i.e. the pass-count floor, where shap's hooks run a doubled
batch and keep every intermediate twice.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LINEAR_LEAVES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
EPS = 1e-6  # shap's threshold for |delta_in| below which the plain gradient is used


def unsupported_reason(model: nn.Module, example: Tensor) -> str | None:
    """Why the batched engine cannot reproduce DeepExplainer on ``model``, or None if it can."""
    from models.safety import check_explainer_safe

    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        if not isinstance(m, LINEAR_LEAVES + (nn.ReLU,)):
            return f"module {name or type(m).__name__} ({type(m).__name__}) has no linear/ReLU rule here"
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            return f"module {name} is in training mode"
    report = check_explainer_safe(model, example)
    if not report.ok:
        return "not explainer-safe: " + " ".join(str(report).split())[:200]
    return None


def rescale_attributions(model: nn.Module, inputs: Tensor, targets: Tensor, background: Tensor, *,
                         pair_chunk: int = 16) -> Tensor:
    """DeepSHAP values ``(B, C, H, W)`` of ``model(x)[target]`` against ``background (N, C, H, W)``.

    ``pair_chunk`` (image, reference) pairs go through one linearised forward + backward.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    ref_acts = _relu_inputs(model, relus, background)
    img_acts = _relu_inputs(model, relus, inputs)
    n = background.shape[0]
    out = torch.empty_like(inputs)
    current: dict[int, Tensor] = {}

    def linearise(module: nn.Module, args: tuple[Tensor, ...], output: Tensor, k: int) -> Tensor:
        return args[0] * current[k]

    hooks = [r.register_forward_hook(lambda mod, args, output, k=k: linearise(mod, args, output, k))
             for k, r in enumerate(relus)]
    try:
        for b in range(inputs.shape[0]):
            total = torch.zeros_like(inputs[b])
            for j0 in range(0, n, pair_chunk):
                j1 = min(n, j0 + pair_chunk)
                for k in range(len(relus)):
                    ax, ar = img_acts[k][b:b + 1], ref_acts[k][j0:j1]
                    dx = ax - ar
                    small = dx.abs() < EPS
                    slope = (torch.relu(ax) - torch.relu(ar)) / torch.where(small, torch.ones_like(dx), dx)
                    current[k] = torch.where(small, (ax > 0).to(dx.dtype).expand_as(dx), slope)
                z = inputs[b:b + 1].expand(j1 - j0, *inputs.shape[1:]).clone().requires_grad_(True)
                score = model(z)[:, int(targets[b])].sum()
                (grad,) = torch.autograd.grad(score, z)
                total += ((inputs[b:b + 1] - background[j0:j1]) * grad).sum(0)
            out[b] = total / n
    finally:
        for h in hooks:
            h.remove()
        current.clear()
    return out.detach()


def _relu_inputs(model: nn.Module, relus: list[nn.Module], x: Tensor, chunk: int = 64) -> list[Tensor]:
    """The input of every ReLU for each row of ``x`` (no grad), in ``relus`` order."""
    per_relu: list[list[Tensor]] = [[] for _ in relus]
    hooks = [r.register_forward_hook(lambda mod, args, output, k=k: per_relu[k].append(args[0].detach()))
             for k, r in enumerate(relus)]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                model(x[i:i + chunk])
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(parts) for parts in per_relu]
