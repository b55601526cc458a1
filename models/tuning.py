"""Fine-tuning with frozen blocks: a checkpoint's named top-level modules train, the rest stays bitwise.

:func:`tune_model` checks that the data is the parent's before any training, runs the shared
epoch loop of :mod:`models.training` on the unfrozen modules only, and records in the sidecar
the comparison with the parent (:func:`bench.stats.classifier.compare_classifiers`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.machine import machine_info
from bench.stats.classifier import compare_classifiers
from datasets.base import ImageSplit
from models.checkpoints import load_checkpoint, read_sidecar, save_checkpoint
from models.recipes import TuneConfig, check_unfreeze, top_level_modules
from models.training import data_record, evaluate, fit, strip_preds


def tune_model(
    parent: str | Path,
    cfg: TuneConfig,
    train: ImageSplit,
    val: ImageSplit,
    test: ImageSplit,
    *,
    out: str | Path,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the top-level modules ``cfg.unfreeze`` of a checkpoint; everything else frozen.

    The sidecar adds ``comparison``: the parent's and the tuned model's test metrics and their
    deltas, McNemar's exact test on the test predictions, and the confusion-cell transition counts.
    """
    cfg.validate()
    dev = resolve_device(device)
    model, info = load_checkpoint(parent, device=dev)
    names = top_level_modules(model)
    unfreeze = check_unfreeze(model, cfg.unfreeze, info["model"])
    parent_side = read_sidecar(parent)
    _check_tuning_data(parent, info, parent_side, train, val, test)
    trainable, frozen = [], []
    for name, module in names.items():
        is_trainable = name in unfreeze
        for p in module.parameters():
            p.requires_grad_(is_trainable)
            if is_trainable:
                trainable.append(p)
        if not is_trainable:
            frozen.append(module)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    best_state, history, best_epoch = fit(
        model,
        cfg,
        train,
        val,
        dev,
        trainable=trainable,
        frozen_modules=frozen,
        desc=f"{info['model']} tune",
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    val_m, test_m = evaluate(model, val, device=dev), evaluate(model, test, device=dev)
    parent_test = parent_side["test"]
    labels = test.labels.numpy()
    pre_preds, post_preds = np.asarray(parent_side["test_preds"]), np.asarray(test_m["preds"])
    comparison = {
        "parent": {"checkpoint": str(parent), "sha256": info["sha256"]},
        **compare_classifiers(
            labels, parent_test, test_m, pre_preds, post_preds, num_classes=info["model_kwargs"]["num_classes"]
        ),
    }
    sidecar = {
        "config": {**asdict(cfg), "unfreeze": list(cfg.unfreeze)},
        "data": data_record(train, val, test),
        "best_epoch": best_epoch,
        "history": history,
        "val": strip_preds(val_m),
        "test": strip_preds(test_m),
        "test_preds": test_m["preds"],
        "train_seconds": round(seconds, 1),
        "device": str(dev),
        "torch": torch.__version__,
        "platform": machine_info(),
        "comparison": comparison,
    }
    return save_checkpoint(
        out, model, model_name=info["model"], model_kwargs=info["model_kwargs"], stage="post", sidecar=sidecar
    )


def _check_tuning_data(
    parent: str | Path, info: dict[str, Any], side: dict[str, Any], train: ImageSplit, val: ImageSplit, test: ImageSplit
) -> None:
    """Before any training: the data must be what the parent was trained and evaluated on (its
    image size and channels, its test images, its data set, file and sizes)."""
    mk = info["model_kwargs"]
    want = (mk.get("in_channels", 1), mk.get("image_size", 28), mk.get("image_size", 28))
    if tuple(test.images.shape[1:]) != want:
        raise BenchError(
            f"checkpoint {parent} expects {want[1]} px images with {want[0]} channel(s), data has "
            f"{tuple(test.images.shape[1:])}; use {want[1]} px images (--size, or data.options.size in a "
            f"run config)"
        )
    fix = "tune on the data the parent was trained on"
    if len(side["test_preds"]) != len(test):
        raise BenchError(
            f"parent checkpoint {parent} was evaluated on {len(side['test_preds'])} test images, "
            f"this data has {len(test)}; {fix}"
        )
    recorded, given = side.get("data"), data_record(train, val, test)
    if isinstance(recorded, dict):
        keys = ("dataset", "md5", "seed", "size", "n")
        if any(k in recorded and recorded[k] != given.get(k) for k in keys):

            def describe(r: dict[str, Any]) -> str:
                return ", ".join(f"{k} {r[k]}" for k in keys[1:] if k in r)

            raise BenchError(
                f"parent checkpoint {parent} was trained on {recorded.get('dataset')} "
                f"({describe(recorded)}), this data is {given['dataset']} ({describe(given)}); {fix}"
            )


def frozen_state(model: nn.Module, unfreeze: tuple[str, ...]) -> dict[str, Tensor]:
    """Parameters and buffers outside the unfrozen top-level modules (to check they are unchanged)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".")[0] not in unfreeze}
