"""A user's own model: built by a factory, weights from a state-dict checkpoint, checked, made explainer-safe.

Two ways in, one path through :func:`prepare_model`:

* a run config names it (``[models.user.<name>]``: ``factory = "module:function"``, ``kwargs``,
  ``checkpoint``, ``convert``; :class:`UserModelSpec`, loaded by :func:`load_user_model`);
* ``bench.evaluate`` takes the model object itself.

Either way the model is checked against the images (:func:`check_fits`: the first conv's input
channels and, in a run, the number of classes), its explainer safety is reported
(:func:`models.check_explainer_safe`), and with ``convert`` it is replaced by
:func:`models.convert_explainer_safe`'s equivalent copy (any model whose problems all have an exact
rewrite; the others are refused in one line naming the module), the rewritten modules and the
largest absolute difference of their outputs on the images recorded. What was done is returned as
a JSON-able record for the manifest, with a model key (:func:`model_key`) that changes with the
weights, the factory and the conversion.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError, did_you_mean, one_line
from bench.core.io import file_sha256, json_digest, read_regular, source_digest
from models.safety import SafetyReport, check_explainer_safe, convert_explainer_safe
from models.checkpoints import load_torch_file
from models.training import PREDICT_BATCH, predict_proba

__all__ = [
    "UserModelSpec",
    "resolve_factory",
    "load_state_dict",
    "load_user_model",
    "check_fits",
    "prepare_model",
    "input_channels",
    "state_dict_sha256",
    "model_key",
    "object_model_key",
    "safety_record",
    "torchvision_resnet",
    "copy_model",
    "checked_predictions",
]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one line, at most 100 characters
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
KEYS = ("factory", "kwargs", "checkpoint", "convert")
COMPARE_BATCH = 256  # images per forward pass when comparing the converted model's outputs
# a converted model's outputs may differ from the original's by float rounding only (ReLUTreeMaxPool2d:
# about 1 ulp per tree level), relative to the outputs' scale
CONVERT_RTOL = 1e-4


@dataclass(frozen=True)
class UserModelSpec:
    """One ``[models.user.<name>]`` table: ``factory(**kwargs)`` builds the model, ``checkpoint`` (a
    state dict, read with ``torch.load(..., weights_only=True)``) holds its weights, and ``convert``
    asks for :func:`models.convert_explainer_safe`."""

    name: str
    factory: str
    checkpoint: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    convert: bool = False

    @classmethod
    def from_table(cls, name: str, table: Any) -> "UserModelSpec":
        """Check a config table (keys, types, the factory path, which must import) and return the spec.
        Problems are one-line :class:`BenchError` s naming ``models.user.<name>.<key>``."""
        where = f"models.user.{name}"
        if not NAME.fullmatch(name):
            raise BenchError(
                f"{where!r}: a model name is letters, digits and ._- (not starting with . _ or -, at most "
                f"100 characters); rename the table"
            )
        if not isinstance(table, dict):
            raise BenchError(f"{where} must be a table with factory, checkpoint (and kwargs, convert), got {table!r}")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise BenchError(
                f"{where}.{unknown[0]}: unknown key{did_you_mean(unknown[0], KEYS)}; known keys: {', '.join(KEYS)}"
            )
        for key in ("factory", "checkpoint"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise BenchError(
                    f'{where}.{key}: required, a string; e.g. factory = "torchvision.models:resnet18", '
                    f'checkpoint = "path/to/state_dict.pt"'
                )
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise BenchError(f"{where}.kwargs: must be a table of keyword arguments, e.g. {{ num_classes = 2 }}")
        convert = table.get("convert", False)
        if not isinstance(convert, bool):
            raise BenchError(f"{where}.convert: must be true or false, got {convert!r}")
        resolve_factory(table["factory"], f"{where}.factory")
        return cls(name, table["factory"], table["checkpoint"], dict(kwargs), convert)


def resolve_factory(path: str, where: str = "factory") -> Callable[..., nn.Module]:
    """The callable named by ``"module:function"`` (``function`` may be dotted: ``"pkg.mod:Class.build"``)."""
    if not isinstance(path, str) or not FACTORY.match(path):
        raise BenchError(
            f'{where}: {path!r} is not "module:function"; e.g. "torchvision.models:resnet18" or "mypkg.nets:build"'
        )
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised by the module's own code
        raise BenchError(
            f"{where}: cannot import {module_name!r} ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
            f"install the package that has it, or run from the folder that holds it"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BenchError(f"{where}: {module_name!r} has no {attr!r}; name a function of it that builds the model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BenchError(f"{where}: {path!r} is a {type(obj).__name__}, not a function that builds the model")
    return obj


def load_state_dict(path: str | Path, where: str = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """(state dict, file sha256) of a checkpoint read with ``torch.load(..., weights_only=True)``: a
    plain state dict, or a dict holding one under ``"state_dict"`` (as pneumobench's checkpoints do)."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(
            f"{where}: checkpoint {p} not found; fix the path (a relative path is read from the current "
            f"folder) or save the weights with torch.save(model.state_dict(), path)"
        )
    try:
        obj = load_torch_file(read_regular(p, follow=True))
    except BenchError:
        raise
    except Exception as exc:  # pickle, zip and unsafe-global errors of many kinds
        raise BenchError(
            f"{where}: checkpoint {p} cannot be read ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
            f"it is corrupt or not a torch file: save it again with torch.save(model.state_dict(), "
            f"path)"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise BenchError(
            f"{where}: checkpoint {p} holds a {type(obj).__name__}, not a state dict (names -> tensors); "
            f"save it with torch.save(model.state_dict(), path)"
        )
    return obj, file_sha256(p)


def _load_into(model: nn.Module, state: dict[str, Tensor], where: str, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        example = shapes[0] if shapes else (missing + unexpected)[0]
        raise BenchError(
            f"{where}: the state dict in {source} does not fit the model the factory builds "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape, "
            f"e.g. {example}); use the factory and kwargs the checkpoint was saved from"
        )
    model.load_state_dict(state)


def input_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the model's first convolution (in registration order), None without one."""
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return None if conv is None else int(conv.in_channels)


def check_fits(
    model: nn.Module, images: Tensor, num_classes: int | None = None, *, where: str = "model", in_config: bool = False
) -> int:
    """Check ``model`` against ``images (N, C, H, W)`` and return its number of outputs (classes).

    The first conv must take ``C`` channels and the model must return logits ``(B, K)``, with
    ``K == num_classes`` when that is given. ``in_config`` picks the fix the messages name (a
    factory for a run config, the model object for ``bench.evaluate``). Runs one forward pass on
    one image in eval mode (the mode is restored).
    """
    c_data, c_model = int(images.shape[1]), input_channels(model)
    if c_model is not None and c_model != c_data:
        fix = (
            f"use a factory that builds it with a {c_data}-channel first conv, e.g. factory = "
            f'"models.user:torchvision_resnet" with kwargs = {{ arch = "resnet18", in_channels = {c_data}, '
            f"num_classes = 2 }}, and train it on {c_data}-channel images"
            if in_config
            else f"build the model with a {c_data}-channel first conv (e.g. model.conv1 = "
            f"nn.Conv2d({c_data}, 64, 7, 2, 3, bias=False) before training), or pass {c_model}-channel images"
        )
        raise BenchError(
            f"{where}: the model's first conv takes {c_model}-channel images, the images have {c_data} "
            f"channel(s); {fix}"
        )
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(images[:1])
    except Exception as exc:
        raise BenchError(
            f"{where}: the model fails on one image of shape {tuple(images.shape[1:])} "
            f"({one_line(f'{type(exc).__name__}: {exc}', 200)}); give it images of the size and channels "
            f"it was built for"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BenchError(
            f"{where}: the model returns {shape} for one image, not logits of shape (1, classes); "
            f"return the logits tensor"
        )
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        fix = f"kwargs = {{ num_classes = {num_classes} }}" if in_config else f"a {num_classes}-class head"
        raise BenchError(f"{where}: the model has {k} outputs, the data has {num_classes} classes; build it with {fix}")
    return k


def copy_model(model: nn.Module, where: str = "model") -> nn.Module:
    """A deep copy of ``model`` (what is explained, so the caller's model is left as it is), or a
    one-line error saying what cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # a lock, an open file, a generator among its attributes
        raise BenchError(
            f"{where}: the model cannot be copied ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
            f"pneumobench explains a copy so that your model is left as it is: remove what cannot be "
            f"copied from it (a lock, an open file) or give it a __deepcopy__"
        ) from None


def checked_predictions(
    model: nn.Module, images: Tensor, *, device: torch.device | str = "cpu", where: str = "model"
) -> Tensor:
    """:func:`models.training.predict_proba` ``(N, K)``, a model that fails on a batch (though it
    passed :func:`check_fits` on one image) a one-line error instead of its exception."""
    try:
        return predict_proba(model, images, device=device)
    except Exception as exc:
        raise BenchError(
            f"{where}: the model fails on a batch of {min(len(images), PREDICT_BATCH)} images "
            f"({one_line(f'{type(exc).__name__}: {exc}', 200)}) though it runs on one; make its forward "
            f"take any batch size"
        ) from None


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of the state dict: every name, dtype, shape and byte, in the module's order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_key(**facts: Any) -> str:
    """A content key of what defines the explained model (weights' hash, factory or class and the
    source of its module, conversion): the ``sha256`` its units' cache keys carry."""
    return json_digest(facts)


def safety_record(report: SafetyReport) -> dict[str, Any]:
    """:class:`models.SafetyReport` as JSON: ``ok`` and the findings of each kind as text."""
    return {
        "ok": report.ok,
        **{
            kind: [str(f) for f in getattr(report, kind)]
            for kind in ("reused_modules", "inplace_ops", "functional_nonlinearities", "overlapping_maxpools")
        },
    }


def _max_difference(a: nn.Module, b: nn.Module, images: Tensor) -> tuple[float, float]:
    """(max |a(x) - b(x)|, max |a(x)|) over ``images``."""
    out = scale = 0.0
    with torch.no_grad():
        for i in range(0, len(images), COMPARE_BATCH):
            x = images[i : i + COMPARE_BATCH]
            ya = a(x)
            out, scale = max(out, float((ya - b(x)).abs().max())), max(scale, float(ya.abs().max()))
    return out, scale


def prepare_model(
    model: nn.Module, images: Tensor, *, convert: bool, warn: Callable[[str], None], fix: str
) -> tuple[nn.Module, dict[str, Any]]:
    """(the model to explain, the record of what was done), ``model`` in eval mode on the CPU.

    Reports explainer safety on two of ``images``; with ``convert`` returns
    :func:`models.convert_explainer_safe`'s copy and records the modules it rewrote and the largest
    absolute output difference on all ``images`` (a model it cannot rewrite exactly, or whose copy
    differs by more than float rounding, is refused in one line before any other work); without it
    an unsafe model is kept and ``warn`` gets one line naming ``fix`` (DeepExplainer-based
    explainers then fail and are recorded as failed).
    """
    model = model.eval()
    report = check_explainer_safe(model, images[:2])
    kind = type(model)
    record: dict[str, Any] = {
        "class": f"{kind.__module__}.{kind.__qualname__}",
        "state_dict_sha256": state_dict_sha256(model),
        "safety": safety_record(report),
        "convert": convert,
        "conversion": None,
    }
    if convert:
        safe, rewrites = convert_explainer_safe(model, images[:2])
        safe = safe.eval()
        diff, scale = _max_difference(model, safe, images)
        if not diff <= CONVERT_RTOL * max(1.0, scale):
            raise BenchError(
                f"convert: the explainer-safe copy of {kind.__name__} differs from it by {diff:.3g} on "
                f"the images (outputs up to {scale:.3g}), more than float rounding: its forward depends "
                f"on what was rewritten ({one_line('; '.join(rewrites), 120) or 'nothing'}); "
                f"run without convert"
            )
        record["conversion"] = {
            "max_abs_output_difference": diff,
            "n_images": int(len(images)),
            "rewritten": rewrites,
            "safety_after": safety_record(check_explainer_safe(safe, images[:2])),
        }
        return safe, record
    if not report.ok:
        kinds = [k.replace("_", " ") for k, v in record["safety"].items() if k != "ok" and v]
        warn(
            f"warning: the model ({kind.__name__}) is not explainer-safe ({', '.join(kinds)}): DeepExplainer-based "
            f"explainers (shap.deep, captum.deeplift_shap) will fail or be inexact and are recorded as such; {fix}"
        )
    return model, record


def load_user_model(
    spec: UserModelSpec, images: Tensor, num_classes: int, *, warn: Callable[[str], None]
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``spec``'s model, load its checkpoint, check it against ``images`` and ``num_classes``,
    convert it if asked: (model in eval mode on the CPU, record with ``model_key``)."""
    where = f"models.user.{spec.name}"
    factory = resolve_factory(spec.factory, f"{where}.factory")
    try:
        model = factory(**spec.kwargs)
    except Exception as exc:
        raise BenchError(
            f"{where}: {spec.factory}(**{spec.kwargs}) raised "
            f"{one_line(f'{type(exc).__name__}: {exc}', 200)}; fix kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise BenchError(f"{where}.factory: {spec.factory} returned a {type(model).__name__}, not a torch nn.Module")
    state, sha = load_state_dict(spec.checkpoint, f"{where}.checkpoint")
    _load_into(model, state, where, spec.checkpoint)
    check_fits(model, images, num_classes, where=where, in_config=True)
    model, record = prepare_model(
        model, images, convert=spec.convert, warn=warn, fix=f"set convert = true in [models.user.{spec.name}]"
    )
    record = {
        "factory": spec.factory,
        "kwargs": spec.kwargs,
        "checkpoint": spec.checkpoint,
        "checkpoint_sha256": sha,
        **record,
    }
    record["model_key"] = model_key(
        checkpoint_sha256=sha,
        factory=spec.factory,
        kwargs=spec.kwargs,
        factory_code=source_digest(factory),
        convert=spec.convert,
    )
    return model, record


def object_model_key(model: nn.Module, record: dict[str, Any]) -> str:
    """:func:`model_key` of a model passed as an object (``bench.evaluate``), from :func:`prepare_model`'s record."""
    return model_key(
        state_dict_sha256=record["state_dict_sha256"],
        cls=record["class"],
        class_code=source_digest(type(model)),
        convert=record["convert"],
    )


def torchvision_resnet(arch: str = "resnet18", *, in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A torchvision ResNet (``torchvision.models.<arch>``, random weights) whose first conv takes
    ``in_channels`` channels: torchvision's stem otherwise (7x7/2 conv, 3x3/2 max-pool), so the
    state dict of ``resnet18(num_classes=2)`` with ``conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)``
    loads into ``torchvision_resnet("resnet18", in_channels=1)``."""
    import torchvision  # only this helper needs it

    builder = getattr(torchvision.models, arch, None)
    if not arch.startswith(("resnet", "resnext", "wide_resnet")) or not callable(builder):
        raise BenchError(f"torchvision_resnet: {arch!r} is not a torchvision ResNet; use e.g. resnet18, resnet50")
    model = builder(weights=None, num_classes=num_classes)
    old = model.conv1
    model.conv1 = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
    )
    return model
