"""The device a run computes on."""

from __future__ import annotations

import torch

from bench.core.errors import BenchError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA is a clear error."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise BenchError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(device)
