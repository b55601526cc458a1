"""The dataset record and registry shared by every loader."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from bench.core.errors import BenchError
from bench.core.registry import Registry

ENTRY_POINT_GROUP = "bench.datasets"
DATASETS: Registry[Callable[..., "ImageSplit"]] = Registry("dataset", entry_point_group=ENTRY_POINT_GROUP)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSplit:
    """One split of an image classification dataset, as tensors on the CPU.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices.
        masks: ``(N, 1, H, W)`` bool ground-truth region of the finding, or None when unknown.
        name: registered dataset name; split: "train" | "val" | "test".
        info: provenance recorded in manifests: source path, md5, whether the md5 is the
            official one, image size, seed of a synthetic generator, ...
        counterfactual: ``(N, C, H, W)`` the same images with one planted feature toggled
            (added where it is absent, removed where present; ``marked``), or None. The model-truth
            test (:mod:`bench.run.truth`) measures a model's reliance on the feature from the pair.
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str
    masks: Tensor | None = None
    class_names: tuple[str, ...] = ("normal", "pneumonia")
    info: dict[str, Any] = field(default_factory=dict)
    counterfactual: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def fingerprint(self) -> str:
        """The data file's MD5 when the split came from a file, else a hash of the tensors."""
        if self.info.get("md5"):
            return str(self.info["md5"])
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:32]

    def subset(self, index: Tensor | list[int]) -> "ImageSplit":
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSplit(
            images=self.images[idx],
            labels=self.labels[idx],
            name=self.name,
            split=self.split,
            masks=None if self.masks is None else self.masks[idx],
            class_names=self.class_names,
            info=dict(self.info),
            counterfactual=None if self.counterfactual is None else self.counterfactual[idx],
        )


def register_dataset(name: str, **meta: Any):
    """Register a loader ``fn(split, *, <options with defaults>) -> ImageSplit``.

    The loader's keyword-only parameters with defaults are the dataset's options: a run config
    passes them through ``[data.options]`` and ``python -m bench list datasets`` shows them.
    """
    return DATASETS.register(name, **meta)


def dataset_options(name: str) -> dict[str, Any]:
    """The options of a registered dataset with their defaults; unknown names raise with the known ones."""
    return DATASETS.get(name).params()


def load_split(name: str, split: str, **options: Any) -> ImageSplit:
    """Load one split of a registered dataset (e.g. ``load_split("pneumoniamnist", "test", size=28)``).

    ``options`` are the loader's keyword options (:func:`dataset_options`); one it does not have
    is a one-line error listing those it has.
    """
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    entry = DATASETS.get(name)
    entry.check_params("dataset", options, noun="option")
    return entry.obj(split, **options)


def check_splits(*splits: ImageSplit) -> None:
    """Refuse, in one line naming the split, data that cannot be trained or evaluated: an empty
    split, or a split whose labels hold a single class (AUC, the confusion cells and a
    class-balanced loss need both)."""
    for s in splits:
        where = f"the {s.split} split of {s.name}" + (f" ({s.info['source']})" if s.info.get("source") else "")
        if len(s) == 0:
            raise BenchError(f"{where} has no images; use a data file whose {s.split} split is not empty")
        classes = sorted(int(c) for c in s.labels.unique())
        if len(classes) < 2:
            raise BenchError(
                f"{where} holds only class {classes[0]} ({len(s)} images); every split needs images of "
                f"at least two classes: use another data file or more images"
            )
