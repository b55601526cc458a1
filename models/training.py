"""The training loop: predictions, evaluation on a split, and training a model from scratch.

:func:`train_model` trains a recipe (:class:`models.recipes.TrainConfig`), keeps the epoch chosen
on the validation split, evaluates it once on the test split and writes the checkpoint and its
sidecar (:mod:`models.checkpoints`); :mod:`models.tuning` fine-tunes one with the same loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.machine import machine_info
from bench.stats.classifier import classification_metrics
from datasets.base import ImageSplit
from models.checkpoints import model_kwargs_for, save_checkpoint
from models.recipes import TrainConfig
from models.registry import build_model

PREDICT_BATCH = 512  # images per forward pass of predict_outputs
SPACES = ("logit", "probability")


def predict_outputs(
    model: nn.Module,
    images: Tensor,
    *,
    space: str = "logit",
    device: torch.device | str = "cpu",
    batch_size: int = PREDICT_BATCH,
) -> Tensor:
    """The model's outputs ``(N, K)`` on the CPU in float32, batched, in eval mode (mode restored after):
    its logits (``space="logit"``) or its class probabilities, their softmax (``"probability"``)."""
    if space not in SPACES:
        raise BenchError(f"unknown output space {space!r}; use one of {', '.join(SPACES)}")
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            scores = model(images[i : i + batch_size].to(device))
            out.append((F.softmax(scores, dim=1) if space == "probability" else scores).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 2)


def predict_proba(
    model: nn.Module, images: Tensor, *, device: torch.device | str = "cpu", batch_size: int = PREDICT_BATCH
) -> Tensor:
    """Class probabilities ``(N, K)``: :func:`predict_outputs` in the probability space."""
    return predict_outputs(model, images, space="probability", device=device, batch_size=batch_size)


def evaluate(model: nn.Module, split: ImageSplit, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Metrics of ``model`` on a split, plus per-image predictions (for McNemar and cell moves)."""
    probs = predict_proba(model, split.images, device=device)
    out = classification_metrics(split.labels.numpy(), probs.numpy())
    out["preds"] = probs.argmax(1).tolist()
    out["loss"] = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), split.labels).item())
    return out


# ----------------------------------------------------------------------------- the loops


def _shift_batch(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Random integer translation of each image by up to ``max_shift`` px, zero fill."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


def _class_weights(labels: Tensor, num_classes: int, mode: str) -> Tensor | None:
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return counts.sum() / (num_classes * counts)


def _make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _selection_score(metrics: dict[str, Any], select_on: str) -> float:
    """Higher is better."""
    if select_on == "val_loss":
        return -metrics["loss"]
    return metrics[select_on.removeprefix("val_")]


def fit(
    model: nn.Module,
    cfg,
    train: ImageSplit,
    val: ImageSplit,
    device: torch.device,
    *,
    trainable: list[nn.Parameter],
    frozen_modules: list[nn.Module],
    desc: str,
    progress: bool,
) -> tuple[dict[str, Tensor], list[dict[str, Any]], int]:
    """Shared epoch loop; returns the best state (chosen on val), the history and the best epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    weights = _class_weights(train.labels, len(train.class_names), cfg.class_weighting)
    weights = None if weights is None else weights.to(device)
    opt = _make_optimizer(trainable, cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    best_state, best_score, best_epoch, history = None, -math.inf, -1, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for m in frozen_modules:
            m.eval()
        t_epoch = time.perf_counter()
        perm = torch.randperm(len(train), generator=gen)
        total, seen = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for s in bar:
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            x = _shift_batch(train.images[idx], cfg.shift, gen).to(device)
            y = train.labels[idx].to(device)
            loss = F.cross_entropy(model(x), y, weight=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        val_m = evaluate(model, val, device=device)
        score = _selection_score(val_m, cfg.select_on)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / seen,
                "val_loss": val_m["loss"],
                "val_acc": val_m["acc"],
                "val_auc": val_m["auc"],
                "seconds": round(time.perf_counter() - t_epoch, 1),
            }
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        line = (
            f"{desc} epoch {epoch}/{cfg.epochs}: train loss {total / seen:.4f}, val loss {val_m['loss']:.4f}, "
            f"val acc {val_m['acc']:.4f}, val auc {val_m['auc']:.4f}" + ("  *" if best_epoch == epoch else "")
        )
        if progress:
            tqdm.write(line)  # above the progress bars
        else:
            print(line, flush=True)
    if best_state is None:  # every epoch's score was NaN (score > -inf never held): nothing to keep
        raise BenchError(
            f"{desc}: no epoch gave a finite validation score ({cfg.select_on} was NaN in all "
            f"{cfg.epochs} epochs); the training diverged: re-train with a lower lr"
        )
    return best_state, history, best_epoch


def strip_preds(metrics: dict[str, Any]) -> dict[str, Any]:
    """:func:`evaluate`'s metrics without the per-image predictions (the sidecar keeps the test ones apart)."""
    return {k: v for k, v in metrics.items() if k != "preds"}


def data_record(*splits: ImageSplit) -> dict[str, Any]:
    """What the sidecar records of the data: its name, fingerprint, source, seed, size and split sizes."""
    info = splits[0].info
    return {
        "dataset": splits[0].name,
        **{k: info[k] for k in ("md5", "md5_official", "source", "seed", "size") if k in info},
        "n": {s.split: len(s) for s in splits},
    }


def train_model(
    cfg: TrainConfig,
    train: ImageSplit,
    val: ImageSplit,
    test: ImageSplit,
    *,
    out: str | Path,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.model`` from scratch, keep the epoch chosen on val, write checkpoint + sidecar."""
    cfg = replace(cfg, dataset=train.name, size=int(train.images.shape[-1]))
    cfg.validate()
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    kwargs = model_kwargs_for(train)
    model = build_model(cfg.model, **kwargs).to(dev)
    t0 = time.perf_counter()
    best_state, history, best_epoch = fit(
        model,
        cfg,
        train,
        val,
        dev,
        trainable=list(model.parameters()),
        frozen_modules=[],
        desc=cfg.model,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    val_m, test_m = evaluate(model, val, device=dev), evaluate(model, test, device=dev)
    sidecar = {
        "config": asdict(cfg),
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
    }
    return save_checkpoint(out, model, model_name=cfg.model, model_kwargs=kwargs, stage="pre", sidecar=sidecar)
