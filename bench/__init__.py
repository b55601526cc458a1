"""pneumobench. ``bench.evaluate`` and ``bench.Result`` (the notebook API, :mod:`bench.api`) are
loaded on first use (PEP 562): every layer imports this package (through ``bench.core``), so an
eager ``from bench.api import ...`` here would run the whole stack while ``datasets`` or ``models``
are half-imported (``import datasets`` first: ImportError, a circular import).

``bench.__version__`` is the installed distribution's version (``pyproject.toml``)."""

import importlib
from importlib import metadata
from typing import Any

__all__ = ["evaluate", "Result"]

try:
    __version__ = metadata.version("pneumobench")
except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("bench.api"), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
