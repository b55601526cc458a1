"""Training, fine-tuning with frozen blocks, evaluation and checkpoints.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``::

    {"format": "pneumobench.checkpoint/1", "model": "resnet18",
     "model_kwargs": {"in_channels": 1, "num_classes": 2, "image_size": 28},
     "state_dict": {...}, "stage": "pre" | "post"}

Beside it, ``<checkpoint>.json`` (the sidecar) records the config, the data MD5, the epoch chosen
on the validation split, val and test metrics (ACC, AUC, sensitivity, specificity, confusion
matrix; for K > 2 classes ACC, macro one-vs-rest AUC, per-class recall, confusion matrix), the
training time and, for a tuned checkpoint, the comparison with its parent.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.core.device import resolve_device
from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_torch_save, atomic_write_json, file_sha256, read_regular
from bench.core.params import SEED_RANGE, is_seed, tunable_params
from bench.core.machine import machine_info
from bench.core.schema import cell_names, confusion_cells
from datasets.base import ImageSplit
from models.registry import MODELS, build_model

CHECKPOINT_FORMAT = "pneumobench.checkpoint/1"
OPTIMIZERS = ("adam", "sgd")
SELECTION = ("val_loss", "val_auc", "val_acc")
CLASS_WEIGHTING = ("balanced", "none")


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A recipe field whose ``help`` (and ``choices``) the CLI turns into a flag."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Recipe:
    """What training and fine-tuning share: optimiser, schedule, batches, augmentation, selection.

    ``momentum`` is SGD's momentum, or Adam's beta1. The loss is cross-entropy with class weights
    ``N / (K * N_k)`` when ``class_weighting == "balanced"`` (the train split is 74 % pneumonia, the
    test split 62.5 %). Augmentation: random integer shifts of up to ``shift`` pixels (zero fill).
    The learning rate follows a cosine schedule over all steps. The epoch with the best
    ``select_on`` score on the validation split is kept; the test split is only evaluated once,
    on that epoch. The command-line flags of ``bench train`` and ``bench tune`` are generated from
    these fields (their ``help`` metadata).
    """

    epochs: int = _field(10, "training epochs")
    lr: float = _field(1e-3, "peak learning rate (cosine schedule)")
    optimizer: str = _field("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = _field(0.9, "SGD momentum, or Adam's beta1")
    weight_decay: float = _field(0.0, "weight decay")
    batch_size: int = _field(128, "images per step")
    shift: int = _field(2, "max random shift in px (augmentation)")
    class_weighting: str = _field("balanced", "class weights of the loss", choices=CLASS_WEIGHTING)
    select_on: str = _field("val_loss", "the epoch kept is the best on", choices=SELECTION)
    seed: int = _field(0, "random seed")

    def validate(self) -> None:
        _check(is_seed(self.seed), f"seed must be an integer {SEED_RANGE}, got {self.seed}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shift >= 0, f"shift must be >= 0, got {self.shift}")
        _check(self.class_weighting in CLASS_WEIGHTING,
               f"class_weighting must be one of {CLASS_WEIGHTING}, got {self.class_weighting!r}")
        _check(self.select_on in SELECTION, f"select_on must be one of {SELECTION}, got {self.select_on!r}")


@dataclass(frozen=True)
class TrainConfig(Recipe):
    """Recipe for training ``model`` from scratch (defaults: the recipe measured in the README).

    ``dataset`` and ``size`` are the data's (set from it when training; recorded in the sidecar
    and the checkpoint key), not settings.
    """

    model: str = _field("resnet18", "registered model")
    dataset: str = field(default="pneumoniamnist", metadata={"from_data": True})
    size: int = field(default=28, metadata={"from_data": True})

    def validate(self) -> None:
        MODELS.get(self.model)  # unknown names raise with the known ones
        super().validate()


@dataclass(frozen=True)
class TuneConfig(Recipe):
    """Fine-tuning with frozen blocks: only the top-level modules named in ``unfreeze`` train.

    Frozen modules are kept in eval mode during tuning, so their BatchNorm statistics do not move
    either: every frozen parameter and buffer stays bitwise unchanged.
    """

    epochs: int = _field(3, "tuning epochs")
    optimizer: str = _field("sgd", "optimizer", choices=OPTIMIZERS)
    shift: int = _field(3, "max random shift in px (augmentation)")
    seed: int = _field(1, "random seed")
    unfreeze: tuple[str, ...] = _field(("fc", "layer4"), "comma-separated top-level modules to train (* = all)")

    def validate(self) -> None:
        super().validate()
        _check(len(self.unfreeze) > 0, "unfreeze must name at least one module, e.g. fc,layer4")


def top_level_modules(model: nn.Module | str) -> dict[str, nn.Module]:
    """The top-level modules of a model, or of a registered architecture (built on the meta device:
    no memory, no weights)."""
    if isinstance(model, str):
        name = model
        try:
            with torch.device("meta"):
                model = build_model(name)
        except BenchError:
            raise
        except Exception:  # a plug-in factory that cannot build on the meta device: build it for real
            try:
                model = build_model(name)
            except Exception as exc:
                raise BenchError(f"model {name!r} cannot be built ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
                                 f"fix its factory or its plug-in") from None
    return dict(model.named_children())


def check_unfreeze(model: nn.Module | str, unfreeze: tuple[str, ...], name: str | None = None) -> tuple[str, ...]:
    """The top-level modules ``unfreeze`` names (``("*",)``: all of them); a one-line error naming
    the modules with parameters when one does not exist. ``model``: a model or a registered name."""
    names = top_level_modules(model)
    unfreeze = tuple(names) if tuple(unfreeze) == ("*",) else tuple(unfreeze)
    unknown = [n for n in unfreeze if n not in names]
    if unknown:
        trainable = [n for n, m in names.items() if any(True for _ in m.parameters())]
        label = name or (model if isinstance(model, str) else type(model).__name__)
        raise BenchError(f"cannot unfreeze {', '.join(unknown)}: {label} has no such top-level module; its modules "
                         f"with parameters are {', '.join(trainable)}: name some of them (e.g. {trainable[-1]!r}) in "
                         f"bench tune --unfreeze or the run config's tune.unfreeze")
    return unfreeze


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BenchError(message)


# ----------------------------------------------------------------------------- evaluation


PREDICT_BATCH = 512  # images per forward pass of predict_proba


def predict_proba(model: nn.Module, images: Tensor, *, device: torch.device | str = "cpu",
                  batch_size: int = PREDICT_BATCH) -> Tensor:
    """Class probabilities ``(N, K)`` on the CPU, batched, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(F.softmax(model(images[i:i + batch_size].to(device)), dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 2)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic: AUC = U / (n_pos * n_neg)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC of a K-class task: the mean over classes k of
    :func:`roc_auc` (class k vs the rest, scored by ``probs[:, k]``), over the classes that occur
    and do not make up every label (MedMNIST's multi-class AUC; sklearn's ``multi_class="ovr"``,
    ``average="macro"``). NaN when no class qualifies."""
    labels = np.asarray(labels).astype(int)
    aucs = [roc_auc(labels == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < (labels == k).sum() < len(labels)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(labels: Tensor | np.ndarray, probs: Tensor | np.ndarray) -> dict[str, Any]:
    """ACC, AUC, sensitivity, specificity and the confusion matrix for a binary task.

    ``probs (N, 2)``; the prediction is the argmax (MedMNIST's 0.5 threshold). Positive = class 1.
    Confusion matrix rows are true labels, columns predictions: ``[[TN, FP], [FN, TP]]``.
    ``probs (N, K)`` with K > 2: ACC, macro one-vs-rest AUC (:func:`macro_auc`), ``recall`` per
    class (NaN, written as null, for a class without images) and the K x K confusion matrix.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(1)
    if probs.ndim == 2 and probs.shape[1] > 2:
        k = probs.shape[1]
        confusion = np.zeros((k, k), dtype=int)
        np.add.at(confusion, (labels, preds), 1)
        support = confusion.sum(1)
        return {
            "acc": float((preds == labels).mean()) if len(labels) else 0.0,
            "auc": macro_auc(labels, probs),
            "recall": [float(confusion[c, c] / support[c]) if support[c] else None for c in range(k)],
            "confusion": confusion.tolist(),
            "n": int(len(labels)),
        }
    tp = int(((preds == 1) & (labels == 1)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    return {
        "acc": (tp + tn) / max(1, len(labels)),
        "auc": roc_auc(labels, probs[:, 1]),
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
        "confusion": [[tn, fp], [fn, tp]],
        "n": int(len(labels)),
    }


def evaluate(model: nn.Module, split: ImageSplit, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Metrics of ``model`` on a split, plus per-image predictions (for McNemar and cell moves)."""
    probs = predict_proba(model, split.images, device=device)
    out = classification_metrics(split.labels.numpy(), probs.numpy())
    out["preds"] = probs.argmax(1).tolist()
    out["loss"] = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), split.labels).item())
    return out


def mcnemar_exact(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same images.

    b = images A gets right and B wrong, c = the reverse; under H0 b ~ Binomial(b + c, 1/2);
    two-sided exact p-value from ``scipy.stats.binomtest`` (McNemar 1947; exact form per
    Fagerland et al. 2013). p = 1 when b + c = 0.
    """
    labels, a, b_ = (np.asarray(v).astype(int) for v in (labels, preds_a, preds_b))
    ok_a, ok_b = a == labels, b_ == labels
    b = int((ok_a & ~ok_b).sum())
    c = int((~ok_a & ok_b).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "p_value": p}


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_key(cfg: TrainConfig | TuneConfig, data_md5: str, parent_sha256: str | None = None) -> str:
    """A short content key of a recipe and its data: the cache name of the checkpoint it produces."""
    payload = json.dumps({"config": asdict(cfg), "data_md5": data_md5, "parent": parent_sha256}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def default_checkpoint_path(cfg: TrainConfig, data_md5: str, root: str | Path = "results/checkpoints") -> Path:
    """Where ``bench train`` and ``bench run`` keep the checkpoint of a recipe (shared cache)."""
    return Path(root) / f"{cfg.model}-{cfg.size}px-seed{cfg.seed}-{checkpoint_key(cfg, data_md5)}.pt"


def default_tuned_path(parent: str | Path, cfg: TuneConfig) -> Path:
    """``<parent>-post-<key>.pt`` beside the parent checkpoint."""
    parent = Path(parent)
    key = checkpoint_key(cfg, "", file_sha256(parent))
    return parent.with_name(f"{parent.stem}-post-{key}.pt")


def model_kwargs_for(split: ImageSplit, num_classes: int | None = None) -> dict[str, int]:
    """A registered model's keyword arguments for ``split``'s data: its channels, its number of
    classes (``len(split.class_names)`` unless given) and its image size."""
    num_classes = len(split.class_names) if num_classes is None else num_classes
    return {"in_channels": int(split.images.shape[1]), "num_classes": num_classes,
            "image_size": int(split.images.shape[-1])}


def save_checkpoint(path: str | Path, model: nn.Module, *, model_name: str, model_kwargs: dict[str, int],
                    stage: str, sidecar: dict[str, Any]) -> dict[str, Any]:
    """Write the checkpoint and its JSON sidecar atomically; returns the sidecar with the hash."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, "model": model_name,
                             "model_kwargs": dict(model_kwargs), "state_dict": state, "stage": stage})
    sidecar = dict(sidecar, checkpoint=path.name, sha256=file_sha256(path), stage=stage, model=model_name,
                   model_kwargs=dict(model_kwargs))
    atomic_write_json(sidecar_path(path), sidecar)
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a checkpoint, checked: a JSON object with the ``config``, ``test`` metrics and
    ``test_preds`` the runs and ``tune`` read (and ``comparison`` for a tuned checkpoint)."""
    p = sidecar_path(path)
    fix = "re-create the checkpoint with `python -m bench train` (or delete it and re-run)"
    try:
        side = json.loads(read_regular(p, follow=True))
    except FileNotFoundError:
        raise BenchError(f"checkpoint sidecar {p} is missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BenchError(f"checkpoint sidecar {p} is not valid JSON ({one_line(exc, 100)}); {fix}") from None
    if not isinstance(side, dict):
        raise BenchError(f"checkpoint sidecar {p} is not a JSON object (it holds {type(side).__name__}); {fix}")
    needed = ("test", "test_preds", "config") + (("comparison",) if side.get("stage") == "post" else ())
    for key in needed:
        if key not in side:
            raise BenchError(f"checkpoint sidecar {p} has no {key!r}; {fix}")
        want = list if key == "test_preds" else dict
        if not isinstance(side[key], want) or key == "test_preds" and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in side[key]):
            raise BenchError(f"checkpoint sidecar {p}: {key} is not {'a list of classes' if want is list else 'a table'}"
                             f"; {fix}")
    return side


def load_checkpoint(path: str | Path, *, expected_model: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint (``weights_only=True``) into a fresh registered model in eval mode.

    Raises BenchError for a missing or corrupt file, a file that is not a pneumobench checkpoint,
    a checkpoint of another architecture than ``expected_model``, or weights that do not fit.
    """
    path = Path(path)
    fix = "re-create it with `python -m bench train`"
    try:
        ckpt = load_torch_file(read_regular(path, follow=True))
    except FileNotFoundError:
        raise BenchError(f"checkpoint {path} not found; train one with `python -m bench train` or fix the path") from None
    except BenchError:
        raise
    except Exception as exc:  # pickle/zip errors of many kinds
        raise BenchError(f"checkpoint {path} cannot be read ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
                         f"it is corrupt or not a torch file: {fix}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BenchError(f"{path} is not a pneumobench checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                         f"create one with `python -m bench train`")
    name = ckpt.get("model")
    if not isinstance(name, str):
        raise BenchError(f"checkpoint {path} has no 'model' entry naming its architecture; {fix}")
    MODELS.get(name)  # an unknown architecture: one line listing the known ones
    if expected_model is not None and name != expected_model:
        raise BenchError(f"checkpoint {path} is for architecture {name!r}, not {expected_model!r}; use a "
                         f"{expected_model} checkpoint, or explain it as the model {name!r}")
    kwargs, state = ckpt.get("model_kwargs"), ckpt.get("state_dict")
    _check_model_kwargs(path, kwargs, fix)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise BenchError(f"checkpoint {path}: its state_dict is not a table of named tensors; {fix}")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    if sum(bad.values()):
        first = next(k for k, v in bad.items() if v)
        raise BenchError(f"checkpoint {path} holds {sum(bad.values())} NaN or infinite weight(s) (first in {first}); "
                         f"its training diverged: re-train it (e.g. with a lower --lr)")
    model = build_model(name, **kwargs)
    missing, unexpected = _state_dict_mismatch(model, state)
    if missing or unexpected:
        raise BenchError(f"checkpoint {path} does not fit architecture {name!r} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected tensors, e.g. {(missing + unexpected)[0]}); "
                         f"it was written by another model definition: re-train it")
    model.load_state_dict(state)
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info["sha256"] = file_sha256(path)
    info["path"] = str(path)
    return model.to(device).eval(), info


def load_torch_file(data: bytes) -> Any:
    """``torch.load(..., weights_only=True)`` of a file's bytes, on the CPU, without torch's warnings
    (a raw pickle makes torch warn before it fails: the caller's one-line error says it all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _check_model_kwargs(path: Path, kwargs: Any, fix: str) -> None:
    """``model_kwargs`` must be a table of the registered factories' integer arguments."""
    known = tunable_params(build_model)
    if not isinstance(kwargs, dict):
        raise BenchError(f"checkpoint {path}: its model_kwargs is not a table (it holds {type(kwargs).__name__}); {fix}")
    for key, value in kwargs.items():
        if key not in known:
            raise BenchError(f"checkpoint {path}: its model_kwargs has {key!r}, which the models do not take (they take "
                             f"{', '.join(known)}); {fix}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BenchError(f"checkpoint {path}: its model_kwargs {key} = {value!r} is not a positive integer; {fix}")


def _state_dict_mismatch(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    missing += [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    return missing, unexpected


# ----------------------------------------------------------------------------- the loops


def _shift_batch(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Random integer translation of each image by up to ``max_shift`` px, zero fill."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


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


def _fit(model: nn.Module, cfg, train: ImageSplit, val: ImageSplit, device: torch.device, *,
         trainable: list[nn.Parameter], frozen_modules: list[nn.Module], desc: str,
         progress: bool) -> tuple[dict[str, Tensor], list[dict[str, Any]], int]:
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
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch}/{cfg.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for s in bar:
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
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
        history.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val_m["loss"],
                        "val_acc": val_m["acc"], "val_auc": val_m["auc"],
                        "seconds": round(time.perf_counter() - t_epoch, 1)})
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        line = (f"{desc} epoch {epoch}/{cfg.epochs}: train loss {total / seen:.4f}, val loss {val_m['loss']:.4f}, "
                f"val acc {val_m['acc']:.4f}, val auc {val_m['auc']:.4f}" + ("  *" if best_epoch == epoch else ""))
        if progress:
            tqdm.write(line)  # above the progress bars
        else:
            print(line, flush=True)
    return best_state, history, best_epoch


def _strip(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "preds"}


def _data_record(*splits: ImageSplit) -> dict[str, Any]:
    info = splits[0].info
    return {"dataset": splits[0].name, **{k: info[k] for k in ("md5", "md5_official", "source", "seed", "size")
                                          if k in info}, "n": {s.split: len(s) for s in splits}}


def train_model(cfg: TrainConfig, train: ImageSplit, val: ImageSplit, test: ImageSplit, *,
                out: str | Path, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` from scratch, keep the epoch chosen on val, write checkpoint + sidecar."""
    cfg = replace(cfg, dataset=train.name, size=int(train.images.shape[-1]))
    cfg.validate()
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    kwargs = model_kwargs_for(train)
    model = build_model(cfg.model, **kwargs).to(dev)
    t0 = time.perf_counter()
    best_state, history, best_epoch = _fit(model, cfg, train, val, dev, trainable=list(model.parameters()),
                                           frozen_modules=[], desc=cfg.model, progress=progress)
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    val_m, test_m = evaluate(model, val, device=dev), evaluate(model, test, device=dev)
    sidecar = {"config": asdict(cfg), "data": _data_record(train, val, test), "best_epoch": best_epoch,
               "history": history, "val": _strip(val_m), "test": _strip(test_m),
               "test_preds": test_m["preds"], "train_seconds": round(seconds, 1), "device": str(dev),
               "torch": torch.__version__, "platform": machine_info()}
    return save_checkpoint(out, model, model_name=cfg.model, model_kwargs=kwargs, stage="pre", sidecar=sidecar)


def tune_model(parent: str | Path, cfg: TuneConfig, train: ImageSplit, val: ImageSplit, test: ImageSplit, *,
               out: str | Path, device: str = "auto", progress: bool = True) -> dict[str, Any]:
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
    best_state, history, best_epoch = _fit(model, cfg, train, val, dev, trainable=trainable,
                                           frozen_modules=frozen, desc=f"{info['model']} tune", progress=progress)
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    val_m, test_m = evaluate(model, val, device=dev), evaluate(model, test, device=dev)
    parent_test = parent_side["test"]
    labels = test.labels.numpy()
    pre_preds, post_preds = np.asarray(parent_side["test_preds"]), np.asarray(test_m["preds"])
    comparison = {"parent": {"checkpoint": str(parent), "sha256": info["sha256"]},
                  **compare_classifiers(labels, parent_test, test_m, pre_preds, post_preds,
                                        num_classes=info["model_kwargs"]["num_classes"])}
    sidecar = {"config": {**asdict(cfg), "unfreeze": list(cfg.unfreeze)}, "data": _data_record(train, val, test),
               "best_epoch": best_epoch, "history": history, "val": _strip(val_m), "test": _strip(test_m),
               "test_preds": test_m["preds"], "train_seconds": round(seconds, 1), "device": str(dev),
               "torch": torch.__version__, "platform": machine_info(), "comparison": comparison}
    return save_checkpoint(out, model, model_name=info["model"], model_kwargs=info["model_kwargs"],
                           stage="post", sidecar=sidecar)


def _check_tuning_data(parent: str | Path, info: dict[str, Any], side: dict[str, Any], train: ImageSplit,
                       val: ImageSplit, test: ImageSplit) -> None:
    """Before any training: the data must be what the parent was trained and evaluated on (its
    image size and channels, its test images, its data set, file and sizes)."""
    mk = info["model_kwargs"]
    want = (mk.get("in_channels", 1), mk.get("image_size", 28), mk.get("image_size", 28))
    if tuple(test.images.shape[1:]) != want:
        raise BenchError(f"checkpoint {parent} expects {want[1]} px images with {want[0]} channel(s), data has "
                         f"{tuple(test.images.shape[1:])}; use {want[1]} px images (--size, or data.options.size in a "
                         f"run config)")
    fix = "tune on the data the parent was trained on"
    if len(side["test_preds"]) != len(test):
        raise BenchError(f"parent checkpoint {parent} was evaluated on {len(side['test_preds'])} test images, this data "
                         f"has {len(test)}; {fix}")
    recorded, given = side.get("data"), _data_record(train, val, test)
    if isinstance(recorded, dict):
        keys = ("dataset", "md5", "seed", "size", "n")
        if any(k in recorded and recorded[k] != given.get(k) for k in keys):
            def describe(r: dict[str, Any]) -> str:
                return ", ".join(f"{k} {r[k]}" for k in keys[1:] if k in r)
            raise BenchError(f"parent checkpoint {parent} was trained on {recorded.get('dataset')} "
                             f"({describe(recorded)}), this data is {given['dataset']} ({describe(given)}); {fix}")


def compare_classifiers(labels: np.ndarray, test_a: dict[str, Any], test_b: dict[str, Any], preds_a: np.ndarray,
                        preds_b: np.ndarray, num_classes: int = 2) -> dict[str, Any]:
    """Two classifiers on the same test images: their metrics and deltas (b - a), McNemar's exact
    test and how many images moved between confusion cells (``test_pre`` is a, ``test_post`` b;
    the cells of :func:`bench.core.schema.cell_names` for ``num_classes``)."""
    cells = cell_names(num_classes)
    moves: dict[str, dict[str, int]] = {a: {b: 0 for b in cells} for a in cells}
    for a, b in zip(confusion_cells(labels, preds_a, num_classes), confusion_cells(labels, preds_b, num_classes)):
        moves[a][b] += 1
    scalar = ("acc", "auc", "sensitivity", "specificity", "loss")
    return {
        "test_pre": {k: test_a[k] for k in scalar if k in test_a},
        "test_post": {k: test_b[k] for k in scalar if k in test_b},
        "delta": {k: test_b[k] - test_a[k] for k in scalar if k in test_a and k in test_b},
        "mcnemar": mcnemar_exact(labels, preds_a, preds_b),
        "cell_moves": moves,
        "images_changed_cell": int(sum(moves[a][b] for a in cells for b in cells if a != b)),
    }


def frozen_state(model: nn.Module, unfreeze: tuple[str, ...]) -> dict[str, Tensor]:
    """Parameters and buffers outside the unfrozen top-level modules (to check they are unchanged)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".")[0] not in unfreeze}


__all__ = [
    "Recipe", "TrainConfig", "TuneConfig", "train_model", "tune_model", "evaluate", "classification_metrics",
    "mcnemar_exact", "macro_auc", "load_checkpoint", "save_checkpoint", "read_sidecar", "roc_auc",
    "predict_proba", "frozen_state",
]
