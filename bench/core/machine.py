"""What a number was computed on: CPU model, the SIMD level torch's CPU kernels use, threads.

Float results of torch's CPU kernels depend on the instruction set they dispatch to (AVX2 and
AVX-512 kernels accumulate in different orders), so a training run or an explanation is
bitwise reproducible on machines with the same ``torch_cpu_capability``, and equal only up to
float rounding (which training amplifies) across them. Manifests and checkpoint sidecars record
this next to the package versions.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """``machine``, ``system``, ``cpu``, ``cpu_count``, ``torch_threads`` and
    ``torch_cpu_capability`` (e.g. ``"AVX2"``, ``"AVX512"``: the kernels torch dispatches to)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = None
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": capability,
    }
