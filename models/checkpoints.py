"""Checkpoints: their names, their files and sidecars, and loading them safely.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``::

    {"format": "pneumobench.checkpoint/1", "model": "resnet18",
     "model_kwargs": {"in_channels": 1, "num_classes": 2, "image_size": 28},
     "state_dict": {...}, "stage": "pre" | "post"}

Beside it, ``<checkpoint>.json`` (the sidecar) records the config, the data MD5, the epoch chosen
on the validation split, val and test metrics (ACC, AUC, sensitivity, specificity, confusion
matrix; for K > 2 classes ACC, macro one-vs-rest AUC, per-class recall, confusion matrix), the
training time and, for a tuned checkpoint, the comparison with its parent. The file name is a
content key of the recipe and the data (:func:`checkpoint_key`), so ``bench train`` and
``bench run`` share one cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_torch_save, atomic_write_json, file_sha256, read_regular
from bench.core.params import tunable_params
from datasets.base import ImageSplit
from models.recipes import TrainConfig, TuneConfig
from models.registry import MODELS, build_model

CHECKPOINT_FORMAT = "pneumobench.checkpoint/1"


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
    return {
        "in_channels": int(split.images.shape[1]),
        "num_classes": num_classes,
        "image_size": int(split.images.shape[-1]),
    }


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, int],
    stage: str,
    sidecar: dict[str, Any],
) -> dict[str, Any]:
    """Write the checkpoint and its JSON sidecar atomically; returns the sidecar with the hash."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": model_name,
            "model_kwargs": dict(model_kwargs),
            "state_dict": state,
            "stage": stage,
        },
    )
    sidecar = dict(
        sidecar,
        checkpoint=path.name,
        sha256=file_sha256(path),
        stage=stage,
        model=model_name,
        model_kwargs=dict(model_kwargs),
    )
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
        if (
            not isinstance(side[key], want)
            or key == "test_preds"
            and not all(isinstance(v, int) and not isinstance(v, bool) for v in side[key])
        ):
            raise BenchError(
                f"checkpoint sidecar {p}: {key} is not {'a list of classes' if want is list else 'a table'}; {fix}"
            )
    return side


def load_checkpoint(
    path: str | Path, *, expected_model: str | None = None, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint (``weights_only=True``) into a fresh registered model in eval mode.

    Raises BenchError for a missing or corrupt file, a file that is not a pneumobench checkpoint,
    a checkpoint of another architecture than ``expected_model``, or weights that do not fit.
    """
    path = Path(path)
    fix = "re-create it with `python -m bench train`"
    try:
        ckpt = load_torch_file(read_regular(path, follow=True))
    except FileNotFoundError:
        raise BenchError(
            f"checkpoint {path} not found; train one with `python -m bench train` or fix the path"
        ) from None
    except BenchError:
        raise
    except Exception as exc:  # pickle/zip errors of many kinds
        raise BenchError(
            f"checkpoint {path} cannot be read ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
            f"it is corrupt or not a torch file: {fix}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BenchError(
            f"{path} is not a pneumobench checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            f"create one with `python -m bench train`"
        )
    name = ckpt.get("model")
    if not isinstance(name, str):
        raise BenchError(f"checkpoint {path} has no 'model' entry naming its architecture; {fix}")
    MODELS.get(name)  # an unknown architecture: one line listing the known ones
    if expected_model is not None and name != expected_model:
        raise BenchError(
            f"checkpoint {path} is for architecture {name!r}, not {expected_model!r}; use a "
            f"{expected_model} checkpoint, or explain it as the model {name!r}"
        )
    kwargs, state = _check_model_kwargs(path, ckpt.get("model_kwargs"), fix), ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise BenchError(f"checkpoint {path}: its state_dict is not a table of named tensors; {fix}")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    if sum(bad.values()):
        first = next(k for k, v in bad.items() if v)
        raise BenchError(
            f"checkpoint {path} holds {sum(bad.values())} NaN or infinite weight(s) (first in {first}); "
            f"its training diverged: re-train it (e.g. with a lower --lr)"
        )
    model = build_model(name, **kwargs)
    missing, unexpected = _state_dict_mismatch(model, state)
    if missing or unexpected:
        raise BenchError(
            f"checkpoint {path} does not fit architecture {name!r} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {(missing + unexpected)[0]}); "
            f"it was written by another model definition: re-train it"
        )
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


def _check_model_kwargs(path: Path, kwargs: Any, fix: str) -> dict[str, int]:
    """``model_kwargs`` must be a table of the registered factories' integer arguments (returned)."""
    known = tunable_params(build_model)
    if not isinstance(kwargs, dict):
        raise BenchError(
            f"checkpoint {path}: its model_kwargs is not a table (it holds {type(kwargs).__name__}); {fix}"
        )
    for key, value in kwargs.items():
        if key not in known:
            raise BenchError(
                f"checkpoint {path}: its model_kwargs has {key!r}, which the models do not take "
                f"(they take {', '.join(known)}); {fix}"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BenchError(f"checkpoint {path}: its model_kwargs {key} = {value!r} is not a positive integer; {fix}")
    return kwargs


def _state_dict_mismatch(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    missing += [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    return missing, unexpected
