"""The floating-point precision of model passes: float32, or bfloat16 / float16 under autocast.

A precision names the dtype that :func:`torch.autocast` runs a model's matrix products and
convolutions in (:data:`PRECISIONS`); ``"float32"`` is no autocast at all, so results in float32
are bit for bit those of a plain ``model(x)``. float16 autocast is refused off CUDA: on the CPU
bfloat16 is the reduced precision with hardware support (AVX512-BF16, AMX) and float16's 5-bit
exponent overflows where bfloat16's 8-bit one does not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from bench.core.errors import BenchError

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_PRECISION = "float32"
CUDA_ONLY = ("float16",)


def check_precision(
    precision: str, device: torch.device | str | None = None, *, where: str = "precision"
) -> torch.dtype:
    """The dtype of ``precision``; an unknown name, or float16 on a device that is not CUDA, is a
    one-line :class:`BenchError` (``where`` names the setting in it). ``device=None`` checks the name only."""
    if precision not in PRECISIONS:
        raise BenchError(f"{where}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device is not None and precision in CUDA_ONLY and torch.device(device).type != "cuda":
        raise BenchError(
            f"{where}: {precision} runs on CUDA only, the device is {torch.device(device).type}; use "
            f'"bfloat16" (or "float32") on this device'
        )
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Model passes inside run in ``precision`` on ``device``'s type (float32: no autocast)."""
    dtype = check_precision(precision, device)
    if dtype is torch.float32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield
