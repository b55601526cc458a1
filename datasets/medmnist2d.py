"""Every other single-label 2D MedMNIST data set, registered from ``medmnist.INFO``.

Yang et al., "MedMNIST v2", Scientific Data 2023. One dataset per flag of ``medmnist.INFO`` that
is 2D (no ``3d`` suffix) and whose task is ``binary-class``, ``multi-class`` or
``ordinal-regression`` (RetinaMNIST: its 5 grades are treated as 5 unordered classes);
multi-label ChestMNIST is skipped, PneumoniaMNIST keeps its own module. Channels (1 grayscale,
3 RGB), classes and class names come from ``INFO``; sizes are medmnist's 28, 64, 128 and 224.
Files are located, validated and fingerprinted by :func:`datasets.pneumoniamnist.load_medmnist`:
``data_file``; ``<data_root>/<flag>[_<size>].npz``; ``<BENCH_DATA_ROOT>/...``; medmnist's default
root, where medmnist downloads the official file when it is missing and ``download`` is true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from datasets.base import ImageSplit, register_dataset
from datasets.pneumoniamnist import FLAG as PNEUMONIA, SIZES, class_names, load_medmnist, num_channels

TASKS = ("binary-class", "multi-class", "ordinal-regression")


def medmnist_flags() -> tuple[str, ...]:
    """The flags registered here: single-label 2D data sets of ``medmnist.INFO`` but PneumoniaMNIST."""
    from medmnist.info import INFO

    return tuple(f for f, info in INFO.items() if f != PNEUMONIA and not f.endswith("3d") and info["task"] in TASKS)


def _loader(flag: str) -> Callable[..., ImageSplit]:
    """The registered loader of ``flag``: its keyword options are the dataset's options."""

    def load(
        split: str,
        *,
        size: int = 28,
        data_file: str | Path | None = None,
        data_root: str | Path | None = None,
        download: bool = True,
    ) -> ImageSplit:
        return load_medmnist(flag, split, size=size, data_file=data_file, data_root=data_root, download=download)

    load.__name__ = load.__qualname__ = flag
    load.__doc__ = (
        f"One split of MedMNIST's {flag} at ``size`` x ``size``: images ``(N, {num_channels(flag)}, size, "
        f"size)`` float32 in [0, 1], labels ``(N,)`` int64 in 0..{len(class_names(flag)) - 1}, no masks."
    )
    return load


def _meta(flag: str) -> dict[str, Any]:
    from medmnist.info import INFO

    return {
        "sizes": SIZES,
        "in_channels": num_channels(flag),
        "num_classes": len(class_names(flag)),
        "has_masks": False,
        "task": INFO[flag]["task"],
        "constraints": {"size": SIZES},
    }


FLAGS = medmnist_flags()
for _flag in FLAGS:
    register_dataset(_flag, **_meta(_flag))(_loader(_flag))
