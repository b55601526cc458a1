"""Keep large freed tensors in the process heap instead of handing them back to the OS (glibc).

On CPU, PyTorch allocates every activation and gradient with ``malloc``. glibc serves blocks
above its mmap threshold (at most 32 MiB with the default dynamic threshold) with a fresh
``mmap`` and unmaps them on ``free``, so every pass over a large batch page-faults its
activations back in, and the kernel zeroes each page first. Measured on a 2-core CPU with a
28 px ResNet-50 (tests/benchmarks): a 50-row forward + backward pass spent about a third of its
time in page faults; expected gradients over 50 samples per pass ran at 1.7x its floor with the
default allocator and 1.2x with this setting. PyTorch's CPU performance guide recommends the same
remedy through jemalloc or tcmalloc; this module gets it from glibc itself with ``mallopt``:

* ``M_MMAP_THRESHOLD`` = 1 GiB: blocks below it come from the heap and are reused after ``free``;
* ``M_TRIM_THRESHOLD`` = 2 GiB - 1: the heap top is not returned to the OS after every pass.

Memory is still reused (resident memory stays at the peak a run reached rather than growing)
and ``malloc_trim(0)`` (the benchmarks call it before measuring a peak) still releases it.

``python -m bench`` applies it at start, and so do the cost benchmarks (to the floor passes and
the methods alike) and Ray workers. Opt out with ``BENCH_MALLOC=default``. Not glibc (macOS,
Windows, musl): nothing happens and :func:`tune_allocator` returns ``False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

from bench.core.errors import BenchError

__all__ = ["tune_allocator", "allocator_state", "malloc_trim", "ENV"]

ENV = "BENCH_MALLOC"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1

_state = {"tuned": False}


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library if it is glibc, else None (looked up once: find_library runs ldconfig)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it
            return None
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Apply the thresholds above (once per process); ``True`` if they are in effect.

    ``BENCH_MALLOC=default`` leaves the allocator alone; any other value than ``default`` or
    ``tuned`` (the default) is refused with a one-line error.
    """
    choice = os.environ.get(ENV, "tuned").strip().lower() or "tuned"
    if choice not in ("tuned", "default"):
        raise BenchError(f"{ENV}={os.environ[ENV]!r} is not a choice; use 'tuned' (the default) or 'default'")
    if choice == "default":
        return False
    if _state["tuned"]:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["tuned"] = ok
    return ok


def malloc_trim() -> bool:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``); ``False`` without glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def allocator_state() -> str:
    """A short description for manifests and benchmark records."""
    if _state["tuned"]:
        return f"glibc mallopt: mmap_threshold={MMAP_THRESHOLD}, trim_threshold={TRIM_THRESHOLD}"
    return "default"
