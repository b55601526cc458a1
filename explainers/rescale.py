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


def choose_engine(explainer: str, engine: str, library_engine: str, model: nn.Module,
                  example: Tensor) -> tuple[str, dict[str, str]]:
    """Which engine a DeepSHAP adapter runs: ``(engine name, extra meta)``.

    ``engine`` is ``"auto"``, ``"batched"`` or ``library_engine`` (``"shap"``, ``"captum"``):
    ``"auto"`` takes "batched" unless :func:`unsupported_reason` objects, recording the reason
    as ``meta["batched_unavailable"]``; ``"batched"`` on a model it cannot explain is a
    one-line error naming the adapter and the way out.
    """
    from bench.errors import BenchError
    from explainers.base import check_choice

    check_choice(explainer, "engine", engine, ("auto", library_engine, "batched"))
    if engine == library_engine:
        return library_engine, {}
    reason = unsupported_reason(model, example)
    if reason is None:
        return "batched", {}
    if engine == "batched":
        raise BenchError(f"{explainer} engine='batched' cannot explain this model ({reason}); "
                         f"use engine={library_engine!r}")
    return library_engine, {"batched_unavailable": reason}


def rescale_attributions(model: nn.Module, inputs: Tensor, targets: Tensor, background: Tensor, *,
                         pair_chunk: int = 16, eps: float = EPS) -> Tensor:
    """DeepSHAP values ``(B, C, H, W)`` of ``model(x)[target]`` against ``background (N, C, H, W)``.

    At most ``pair_chunk`` (image, reference) pairs go through one linearised forward + backward;
    each image's ``N`` references are split into ``ceil(N / pair_chunk)`` chunks of equal size
    (50 references at 16 -> 13, 13, 12, 12 rather than 16, 16, 16, 2: no nearly empty pass).
    During the passes every ReLU module's ``forward`` is replaced by the multiplication with its
    multiplier (computed from the stored activations when the ReLU is reached, so only one
    chunk's multipliers exist at a time); the modules are restored afterwards. Where
    ``|a(x) - a(r)| < eps`` the multiplier is the gradient ``relu'(a(x))``: shap's threshold by
    default, Captum's is 1e-10.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    ref_acts = _relu_inputs(model, relus, background)
    img_acts = _relu_inputs(model, relus, inputs)
    img_relu = [a.clamp(min=0) for a in img_acts]
    img_pos = [(a > 0).to(a.dtype) for a in img_acts]
    n = background.shape[0]
    n_chunks = -(-n // max(1, int(pair_chunk)))
    bounds = [(n * c // n_chunks, n * (c + 1) // n_chunks) for c in range(n_chunks)]
    width = max(j1 - j0 for j0, j1 in bounds)
    # Multipliers are written into buffers allocated once (one per ReLU: each is saved for the
    # backward of its chunk) plus one shared scratch pair: fresh multi-megabyte tensors per chunk
    # cost more in page faults than the arithmetic itself.
    mult = [a.new_empty((width, *a.shape[1:])) for a in ref_acts]
    scratch = inputs.new_empty(width * max((a[0].numel() for a in ref_acts), default=0))
    small = torch.empty(scratch.shape, dtype=torch.bool, device=scratch.device)
    out = torch.empty_like(inputs)
    where = {"b": 0, "j0": 0, "j1": 0}

    def linearised(k: int, a: Tensor) -> Tensor:
        b, j0, j1 = where["b"], where["j0"], where["j1"]
        ax, ar, m = img_acts[k][b:b + 1], ref_acts[k][j0:j1], mult[k][:j1 - j0]
        d = scratch[:m.numel()].view(m.shape)
        s = small[:m.numel()].view(m.shape)
        torch.sub(ax, ar, out=d)
        torch.clamp(ar, min=0, out=m)
        torch.sub(img_relu[k][b:b + 1], m, out=m).div_(d)  # (relu(x) - relu(r)) / (x - r)
        torch.lt(d.abs_(), eps, out=s)
        torch.where(s, img_pos[k][b:b + 1], m, out=m)  # shap's nonlinear_1d: the gradient where x ~ r
        return a * m

    saved = [r.__dict__.get("forward") for r in relus]
    for k, r in enumerate(relus):
        r.forward = lambda a, k=k: linearised(k, a)
    try:
        for b in range(inputs.shape[0]):
            where["b"] = b
            total = torch.zeros_like(inputs[b])
            for j0, j1 in bounds:
                where["j0"], where["j1"] = j0, j1
                z = inputs[b:b + 1].expand(j1 - j0, *inputs.shape[1:]).clone().requires_grad_(True)
                score = model(z)[:, int(targets[b])].sum()
                (grad,) = torch.autograd.grad(score, z)
                total += ((inputs[b:b + 1] - background[j0:j1]) * grad).sum(0)
            out[b] = total / n
    finally:
        for r, f in zip(relus, saved):
            if f is None:
                r.__dict__.pop("forward", None)
            else:
                r.forward = f
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
    return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in per_relu]
