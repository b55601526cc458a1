"""The MODELS registry."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from bench.core.registry import Registry

ENTRY_POINT_GROUP = "bench.models"
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", entry_point_group=ENTRY_POINT_GROUP)


def register_model(name: str, **meta: Any):
    """Register a factory ``fn(*, in_channels=1, num_classes=2, image_size=28) -> nn.Module``."""
    return MODELS.register(name, **meta)


def build_model(name: str, *, in_channels: int = 1, num_classes: int = 2, image_size: int = 28) -> nn.Module:
    """Instantiate a registered model (random weights, train mode)."""
    return MODELS.get(name).obj(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
