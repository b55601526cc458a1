"""Peak-memory measurement of a block of code, on CPU or CUDA (shared by the runner and benchmarks)."""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from bench.perf.allocator import malloc_trim

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class PeakMemory:
    """``peak_mb``: peak growth above the level at entry, in MiB (CUDA: allocated tensors; CPU:
    resident set size sampled every ``interval`` seconds, so very short spikes may be missed)."""

    peak_mb: float = float("nan")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak (an upper bound on the growth)
        import resource  # POSIX only: imported where it is needed

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """``gc.collect()`` and, on glibc, ``malloc_trim(0)``: hand memory that earlier work freed
    back to the OS, so that a resident-set measurement starting now sees the block's own peak
    instead of silently reusing what the allocator kept (bench.perf.allocator keeps freed blocks)."""
    gc.collect()
    malloc_trim()


@contextmanager
def measure_peak_memory(device: torch.device | str = "cpu", interval: float = 0.005) -> Iterator[PeakMemory]:
    """Measure the peak memory growth of the enclosed block on ``device``.

    CPU: freed memory is released first (:func:`release_freed_memory`), then the resident set is
    sampled every ``interval`` seconds.
    """
    out = PeakMemory()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield out
        finally:
            torch.cuda.synchronize(device)
            out.peak_mb = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    release_freed_memory()
    start = _rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        out.peak_mb = (peak[0] - start) / 2**20
