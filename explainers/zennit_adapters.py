"""Adapters for zennit (Anders et al. 2021, "Software for Dataset-wide XAI: From Local Explanations to
Global Insights with Zennit, CoRelAy, and ViRelAy"): layer-wise relevance propagation (LRP).

LRP (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation") starts from the target's output, R = f(x)[target], and sends
relevance backwards layer by layer; a linear layer z_j = sum_i x_i w_ij + b_j passes on
R_i = sum_j x_i w_ij / z_j * R_j (epsilon rule: z_j + eps sign(z_j); z+ rule: positive parts only;
gamma rule: w + gamma w+; flat rule: uniform; z-box rule: bounded inputs). Where every layer is
bias-free and the stabilisers vanish, the relevance is conserved: sum_i R_i = f(x)[target]
(Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview").

zennit applies the rules as backward hooks chosen per module type by a *composite*. Two things
of a ResNet have no rule of their own and need a *canonizer* that rewrites them for the call:
a batch norm (merged into the convolution before it) and the residual sum ``out + identity``
(routed through a ``zennit.layer.Sum`` module, whose rule splits relevance in proportion to
the two summands). zennit's ``ResNetCanonizer`` matches torchvision's block classes only, and
merges batch norms in module registration order, where this repository's ResNet stem registers
its max-pool between ``conv1`` and ``bn1``: on models/resnet.py it runs but leaves every
residual sum unsplit (measured: summed relevance ~225 against a logit ~0.2). :class:`ResNetCanonizer`
below is the one for models/resnet.py (and the tiny test CNN of models/tiny.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from explainers.base import (
    Attribution,
    check_positive,
    chunks,
    library_version,
    model_guard,
    register_explainer,
    target_scores,
)
from models.resnet import BasicBlock, Bottleneck, ResNet
from models.tiny import TinyResCNN, _TinyBlock

OUTPUT_RTOL = 1e-4  # largest change of the outputs the canonizer may cause, relative to their scale


def _residual_sum(block: nn.Module) -> nn.Module:
    """The ``zennit.layer.Sum`` the canonizer attached to ``block`` as ``canonizer_sum``."""
    return block.get_submodule("canonizer_sum")


def _basic_block(self: BasicBlock, x: Tensor) -> Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(_residual_sum(self)(torch.stack([identity, out], dim=-1)))


def _bottleneck(self: Bottleneck, x: Tensor) -> Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.relu2(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu3(_residual_sum(self)(torch.stack([identity, out], dim=-1)))


def _tiny_block(self: _TinyBlock, x: Tensor) -> Tensor:
    out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(_residual_sum(self)(torch.stack([x, out], dim=-1)))


BLOCK_FORWARDS = {BasicBlock: _basic_block, Bottleneck: _bottleneck, _TinyBlock: _tiny_block}
CONV_BN_MODULES = (ResNet, TinyResCNN, BasicBlock, Bottleneck, _TinyBlock)  # forward applies bn_k(conv_k(.))


def conv_bn_pairs(model: nn.Module) -> list[tuple[tuple[str], str]]:
    """``[((conv name,), batch-norm name)]``: each batch norm applied right after a convolution.

    ``conv{k}`` / ``bn{k}`` of the ResNet, the tiny CNN and their blocks (their forward is
    ``bn_k(conv_k(.))``), and a convolution followed by a batch norm inside an ``nn.Sequential``
    (the ``downsample`` shortcuts, the tiny CNN's ``layer2``).
    """
    pairs = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, CONV_BN_MODULES):
            for k in (1, 2, 3):
                if isinstance(getattr(m, f"conv{k}", None), nn.Conv2d) and isinstance(
                    getattr(m, f"bn{k}", None), nn.BatchNorm2d
                ):
                    pairs.append(((f"{prefix}conv{k}",), f"{prefix}bn{k}"))
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            pairs += [
                ((prefix + a,), prefix + b)
                for (a, ma), (b, mb) in zip(children, children[1:])
                if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d)
            ]
    return pairs


def resnet_canonizer(model: nn.Module):
    """A zennit canonizer for models/resnet.py (and models/tiny.py): BN merge + residual ``Sum`` modules.

    Batch norms are merged into the convolution before them (:func:`conv_bn_pairs`, zennit
    ``NamedMergeBatchNorm``: w' = w gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps)
    + beta, the batch norm then the identity), and each residual block's forward is replaced by
    one that adds ``out`` and ``identity`` through a ``zennit.layer.Sum`` (zennit
    ``AttributeCanonizer``). Applied by the composite's ``register`` and undone by its ``remove``:
    the original weights, statistics and forwards are put back.
    """
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, NamedMergeBatchNorm
    from zennit.layer import Sum

    class ExactMergeBatchNorm(NamedMergeBatchNorm):
        """zennit's merge, leaving the batch norm the exact identity: zennit sets its variance to 1,
        so it still divides by sqrt(1 + eps) (outputs off by ~5e-6 per batch norm in a chain, 2.3e-5
        relative on the tiny CNN, measured); a variance of 1 - eps divides by 1."""

        @staticmethod
        def merge_batch_norm(modules, batch_norm):
            NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)

    def residual(name: str, module: nn.Module) -> dict[str, Any] | None:
        forward = BLOCK_FORWARDS.get(type(module))
        return None if forward is None else {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    return CompositeCanonizer([ExactMergeBatchNorm(conv_bn_pairs(model)), AttributeCanonizer(residual)])


def run_lrp(
    name: str, composite: str, model: nn.Module, inputs: Tensor, targets: Tensor, *, batch_size: int, **rule_params: Any
) -> Attribution:
    """zennit's ``Gradient`` attributor with ``composite`` (a class of ``zennit.composites``) and
    :func:`resnet_canonizer`; the relevance starts as f(x)[target] at the target and 0 elsewhere.

    ``outputs`` = f(x)[target] and ``base_values`` = 0, so the shared completeness gap measures
    how much relevance the rules did not conserve (biases and stabilisers absorb some).
    """
    import zennit.composites
    from zennit.attribution import Gradient

    check_positive(name, batch_size=batch_size)
    scores = target_scores(model, inputs, targets)
    comp = getattr(zennit.composites, composite)(canonizers=[resnet_canonizer(model)], **rule_params)
    relevance, outputs = [], []
    with model_guard(model), Gradient(model=model, composite=comp) as attributor:
        for s in chunks(inputs.shape[0], batch_size):
            x = inputs[s].detach().clone()
            out, rel = attributor(x, attr_output=_start(targets[s]))
            relevance.append(rel.detach())
            outputs.append(out.detach().gather(1, targets[s].view(-1, 1)).squeeze(1))
    canonized = torch.cat(outputs)
    change = (canonized - scores).abs().max().item()
    if change > OUTPUT_RTOL * max(1.0, scores.abs().max().item()):
        raise BenchError(
            f"explainer {name!r}: the LRP canonizer changed the model's outputs by {change:.3g}; it "
            f"supports models/resnet.py and models/tiny.py (batch norms right after a convolution, "
            f"residual blocks of those classes): explain this model with another method"
        )
    meta = {
        "library_version": library_version("zennit"),
        "composite": composite,
        **rule_params,
        "canonizer": "explainers.zennit_adapters.resnet_canonizer",
        "canonizer_output_change": change,
        "base_value_is": "0 (LRP conserves f(x) where rules and layers allow)",
    }
    return Attribution(torch.cat(relevance), scores, torch.zeros_like(scores), meta)


def _start(targets: Tensor):
    """The output relevance: f(x)[target] at the target class, 0 elsewhere."""

    def start(output: Tensor) -> Tensor:
        return output * torch.zeros_like(output).scatter_(1, targets.view(-1, 1), 1.0)

    return start


LRP_PARAMS = {"epsilon": Range(0, low_open=True), "batch_size": Range(1)}


@register_explainer(
    "zennit.epsilon_plus_flat",
    library="zennit",
    additive=False,
    passes=(1, 0),
    per_pixel=True,  # the flat rule spreads relevance evenly over the first layer's inputs
    constraints=LRP_PARAMS,
    paper="Bach et al. 2015 (LRP); Kohlbrenner et al. 2020, Towards Best Practice in Explaining "
    "Neural Network Decisions with LRP",
)
def epsilon_plus_flat(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    epsilon: float = 1e-6,
    batch_size: int = 64,
) -> Attribution:
    """LRP, zennit ``EpsilonPlusFlat``: flat rule at the first convolution, z+ at the others, epsilon at ``fc``.

    z+ : R_i = sum_j x_i w+_ij / sum_i' x_i' w+_i'j R_j;  flat: R_i = sum_j R_j / n_j (n_j inputs of
    unit j);  epsilon: R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j. Residual sums and the average
    pool split relevance in proportion to their inputs; ReLUs pass it on (:func:`resnet_canonizer`).
    """
    return run_lrp(
        "zennit.epsilon_plus_flat", "EpsilonPlusFlat", model, inputs, targets, batch_size=batch_size, epsilon=epsilon
    )


@register_explainer(
    "zennit.epsilon_gamma_box",
    library="zennit",
    additive=False,
    passes=(1, 0),
    constraints={**LRP_PARAMS, "gamma": Range(0)},
    paper="Bach et al. 2015 (LRP); Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview (gamma, z-box)",
)
def epsilon_gamma_box(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    low: float = 0.0,
    high: float = 1.0,
    batch_size: int = 64,
) -> Attribution:
    """LRP, zennit ``EpsilonGammaBox``: z-box at the first convolution, gamma at the others, epsilon at ``fc``.

    gamma: R_i = sum_j x_i (w_ij + gamma w+_ij) / sum_i' x_i' (w_i'j + gamma w+_i'j) R_j;
    z-box: R_i = sum_j (x_i w_ij - l w+_ij - h w-_ij) / z^B_j R_j with the pixel range [``low``,
    ``high``] (images are in [0, 1] here).
    """
    if not low < high:
        raise BenchError(
            f"explainer 'zennit.epsilon_gamma_box': low={low} must be below high={high} (the range of the input pixels)"
        )
    return run_lrp(
        "zennit.epsilon_gamma_box",
        "EpsilonGammaBox",
        model,
        inputs,
        targets,
        batch_size=batch_size,
        epsilon=epsilon,
        gamma=gamma,
        low=low,
        high=high,
    )


@register_explainer(
    "zennit.epsilon_alpha2_beta1",
    library="zennit",
    additive=False,
    passes=(1, 0),
    constraints=LRP_PARAMS,
    paper="Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
    "Layer-Wise Relevance Propagation (alpha-beta rule)",
)
def epsilon_alpha2_beta1(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    background: Tensor,
    epsilon: float = 1e-6,
    batch_size: int = 64,
) -> Attribution:
    """LRP, zennit ``EpsilonAlpha2Beta1``: alpha-beta (alpha 2, beta 1) at every convolution, epsilon at ``fc``.

    alpha-beta: R_i = sum_j (2 x_i w+_ij / z+_j - x_i w-_ij / z-_j) R_j.
    """
    return run_lrp(
        "zennit.epsilon_alpha2_beta1",
        "EpsilonAlpha2Beta1",
        model,
        inputs,
        targets,
        batch_size=batch_size,
        epsilon=epsilon,
    )
