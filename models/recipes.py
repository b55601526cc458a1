"""Training recipes: what ``bench train`` and ``bench tune`` are told, checked before any work.

:class:`TrainConfig` trains a registered model from scratch, :class:`TuneConfig` fine-tunes the
top-level modules it names with everything else frozen; their fields generate the command-line
flags of ``bench train`` and ``bench tune`` and are recorded in every checkpoint's sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.core.errors import BenchError, one_line
from bench.core.params import SEED_RANGE, is_seed
from models.registry import MODELS, build_model

OPTIMIZERS = ("adam", "sgd")
SELECTION = ("val_loss", "val_auc", "val_acc")
CLASS_WEIGHTING = ("balanced", "none")


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A recipe field whose ``help`` (and ``choices``) the CLI turns into a flag."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Recipe:
    """What training and fine-tuning share: optimiser, schedule, batches, augmentation, selection.

    ``momentum`` is SGD's momentum, or Adam's beta1. The loss is cross-entropy with class weights
    ``N / (K * N_k)`` when ``class_weighting == "balanced"`` (the train split is 74 % pneumonia, the
    test split 62.5 %). Augmentation: random integer shifts of up to ``shift`` pixels (zero fill).
    The learning rate follows a cosine schedule over all steps. The epoch with the best
    ``select_on`` score on the validation split is kept; the test split is only evaluated once,
    on that epoch. The command-line flags of ``bench train`` and ``bench tune`` are generated from
    these fields (their ``help`` metadata).
    """

    epochs: int = _field(10, "training epochs")
    lr: float = _field(1e-3, "peak learning rate (cosine schedule)")
    optimizer: str = _field("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = _field(0.9, "SGD momentum, or Adam's beta1")
    weight_decay: float = _field(0.0, "weight decay")
    batch_size: int = _field(128, "images per step")
    shift: int = _field(2, "max random shift in px (augmentation)")
    class_weighting: str = _field("balanced", "class weights of the loss", choices=CLASS_WEIGHTING)
    select_on: str = _field("val_loss", "the epoch kept is the best on", choices=SELECTION)
    seed: int = _field(0, "random seed")

    def validate(self) -> None:
        _check(is_seed(self.seed), f"seed must be an integer {SEED_RANGE}, got {self.seed}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shift >= 0, f"shift must be >= 0, got {self.shift}")
        _check(
            self.class_weighting in CLASS_WEIGHTING,
            f"class_weighting must be one of {CLASS_WEIGHTING}, got {self.class_weighting!r}",
        )
        _check(self.select_on in SELECTION, f"select_on must be one of {SELECTION}, got {self.select_on!r}")


@dataclass(frozen=True)
class TrainConfig(Recipe):
    """Recipe for training ``model`` from scratch (defaults: the recipe measured in the README).

    ``dataset`` and ``size`` are the data's (set from it when training; recorded in the sidecar
    and the checkpoint key), not settings.
    """

    model: str = _field("resnet18", "registered model")
    dataset: str = field(default="pneumoniamnist", metadata={"from_data": True})
    size: int = field(default=28, metadata={"from_data": True})

    def validate(self) -> None:
        MODELS.get(self.model)  # unknown names raise with the known ones
        super().validate()


@dataclass(frozen=True)
class TuneConfig(Recipe):
    """Fine-tuning with frozen blocks: only the top-level modules named in ``unfreeze`` train.

    Frozen modules are kept in eval mode during tuning, so their BatchNorm statistics do not move
    either: every frozen parameter and buffer stays bitwise unchanged.
    """

    epochs: int = _field(3, "tuning epochs")
    optimizer: str = _field("sgd", "optimizer", choices=OPTIMIZERS)
    shift: int = _field(3, "max random shift in px (augmentation)")
    seed: int = _field(1, "random seed")
    unfreeze: tuple[str, ...] = _field(("fc", "layer4"), "comma-separated top-level modules to train (* = all)")

    def validate(self) -> None:
        super().validate()
        _check(len(self.unfreeze) > 0, "unfreeze must name at least one module, e.g. fc,layer4")


def top_level_modules(model: nn.Module | str) -> dict[str, nn.Module]:
    """The top-level modules of a model, or of a registered architecture (built on the meta device:
    no memory, no weights)."""
    if isinstance(model, str):
        name = model
        try:
            with torch.device("meta"):
                model = build_model(name)
        except BenchError:
            raise
        except Exception:  # a plug-in factory that cannot build on the meta device: build it for real
            try:
                model = build_model(name)
            except Exception as exc:
                raise BenchError(
                    f"model {name!r} cannot be built ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
                    f"fix its factory or its plug-in"
                ) from None
    return dict(model.named_children())


def check_unfreeze(model: nn.Module | str, unfreeze: tuple[str, ...], name: str | None = None) -> tuple[str, ...]:
    """The top-level modules ``unfreeze`` names (``("*",)``: all of them); a one-line error naming
    the modules with parameters when one does not exist. ``model``: a model or a registered name."""
    names = top_level_modules(model)
    unfreeze = tuple(names) if tuple(unfreeze) == ("*",) else tuple(unfreeze)
    unknown = [n for n in unfreeze if n not in names]
    if unknown:
        trainable = [n for n, m in names.items() if any(True for _ in m.parameters())]
        label = name or (model if isinstance(model, str) else type(model).__name__)
        raise BenchError(
            f"cannot unfreeze {', '.join(unknown)}: {label} has no such top-level module; its modules "
            f"with parameters are {', '.join(trainable)}: name some of them (e.g. {trainable[-1]!r}) in "
            f"bench tune --unfreeze or the run config's tune.unfreeze"
        )
    return unfreeze


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BenchError(message)
