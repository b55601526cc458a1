"""``bench.evaluate``: benchmark your own model from a notebook, through the machinery of ``bench run``.

``evaluate(model, images)`` builds a run config from its arguments (``configs/quick.toml`` under
them, validated by :func:`bench.run.config.load_config`: unknown names and bad parameters are the
CLI's one-line errors), checks and prepares the model (:mod:`models.user`: channels, explainer
safety, ``convert``), plans the same units of work as ``bench run`` does for its images
(:func:`bench.run.plan.plan_images`) and runs them, their tables and the manifest through
:func:`bench.run.runner.run_plan`, in a temporary run directory. The :class:`Result` keeps that
directory's files in memory: its leaderboard and Markdown are the CLI's, and :meth:`Result.save`
writes a run directory that ``python -m bench report`` rebuilds byte for byte.

Maps computed elsewhere (``attributions={"my-gradcam": maps}``) are scored like an explainer's: every
metric of the run and the reliability card, beside the registered explainers or alone; see
docs/own-maps.md.

The model you pass is not changed (a copy is explained, in eval mode).
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.io import atomic_write_bytes, atomic_write_json
from bench.metrics import METRICS, map_values
from bench.report import leaderboard as L, plots
from bench.report.html import REPORT, write_html_report
from bench.report.rebuild import MEASURED, rebuild
from bench.run import plan as P
from bench.run.config import MAX_NAME, DataSection, ModelsSection, RunConfig, is_plain_name, load_config, shown
from bench.run.rundir import claim
from bench.run.runner import run_plan
from bench.run.unit import Stage, tensor_digest
from datasets import ImageSplit
from explainers import EXPLAINERS
from models.user import checked_predictions, check_fits, copy_model, object_model_key, prepare_model

__all__ = ["evaluate", "Result", "BACKGROUND_SIZE"]

BACKGROUND_SIZE = 32  # reference images drawn (seeded) from the images when no background is given
RUN_FILES_SKIPPED = ("cache", ".lock")  # what of the temporary run directory a Result does not keep
# the explainers beside maps given without ``explainers``: the reliability card's controls, its chance level
MAP_CONTROLS = ("random", "edge")


@dataclass
class Result:
    """What :func:`evaluate` measured: one model, stage "pre", a run directory held in memory.

    Attributes:
        scores: per image, explainer and metric, the columns of
            :data:`bench.core.schema.SCORE_COLUMNS` (as :func:`bench.report.leaderboard.read_scores`
            reads ``scores.csv``).
        manifest: what ``manifest.json`` records (config, versions, device, the model record under
            ``checkpoints[0].train_config.user_model``: class, state-dict sha256, safety report,
            conversion with its max output difference; timings, cost, units).
        config: the validated run config.
        files: the run's files by relative path (``scores.csv``, ``curves.csv``, ``leaderboard.md``, ...).
    """

    scores: pd.DataFrame
    manifest: dict[str, Any]
    config: RunConfig = field(repr=False)
    files: dict[str, bytes] = field(repr=False)
    _board: pd.DataFrame | None = field(default=None, init=False, repr=False)

    @property
    def model_info(self) -> dict[str, Any]:
        """The model record: class, state-dict sha256, safety report, conversion (the modules it rewrote, its max
        output difference)."""
        return self.manifest["checkpoints"][0]["train_config"]["user_model"]

    def leaderboard(self) -> pd.DataFrame:
        """Per explainer and metric: mean, 95 % BCa CI, n, rank, cost, status
        (:func:`bench.report.leaderboard.leaderboard`, the statistics of ``leaderboard.csv``)."""
        if self._board is None:
            self._board = L.leaderboard(self.scores)
        return self._board

    def to_markdown(self) -> str:
        """``leaderboard.md``, as the run wrote it (with the reliability card's marks)."""
        return self.files["leaderboard.md"].decode()

    def curves(self) -> pd.DataFrame:
        """``curves.csv``: the per-image curves of the curve metrics (empty without one)."""
        data = self.files.get("curves.csv")
        return (
            pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values={"prob": ["", "nan", "NaN"]})
            if data
            else pd.DataFrame()
        )

    def plot(self) -> dict[str, Figure]:
        """``{"leaderboard": heatmap, "curves": deletion/insertion curves}`` (the latter only with a
        curve metric): the figures of the run directory (:mod:`bench.report.plots`), as matplotlib
        figures."""
        board = self.leaderboard()
        model, stage = board[["model", "stage"]].iloc[0]
        out = {"leaderboard": plots.leaderboard_heatmap(board, model, stage)}
        curves = self.curves()
        if len(curves):
            out["curves"] = plots.curves_figure(curves, model, stage)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the run directory (scores.csv, curves.csv, manifest.json, tables, figures) to ``path``;
        ``python -m bench report path`` rebuilds it byte for byte. A folder holding another run is
        refused (one line); one holding this run is rewritten. Returns ``path``."""
        path = Path(path)
        with claim(path, self.config):
            for name in (*MEASURED, "prepost_models.json", "attributions.npz"):
                if name not in self.files:
                    (path / name).unlink(missing_ok=True)  # a file of an earlier run must not feed the tables
            kept = [
                atomic_write_bytes(path / name, data)
                for name, data in sorted(self.files.items())
                if name != "manifest.json"
            ]
            written = kept + rebuild(path, figures=True, page=False) + [path / REPORT]
            files = sorted({str(p.relative_to(path)) for p in written})
            atomic_write_json(path / "manifest.json", {**self.manifest, "files": files})
            write_html_report(path)  # after the final manifest it shows, as `bench report` sees it
        return path


def evaluate(
    model: nn.Module,
    images: Tensor | np.ndarray,
    targets: Tensor | np.ndarray | Sequence[int] | int | None = None,
    *,
    labels: Tensor | np.ndarray | Sequence[int] | None = None,
    masks: Tensor | np.ndarray | None = None,
    explainers: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    background: Tensor | np.ndarray | None = None,
    explainer_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    attribution: str = "signed",
    output: str = "logit",
    device: str = "auto",
    precision: str = "float32",
    convert: bool = False,
    seed: int = 0,
    shard_size: int = 8,
    name: str = "notebook",
    model_name: str | None = None,
    overrides: Sequence[str] = (),
    attributions: Mapping[str, Tensor | np.ndarray] | None = None,
    verbose: bool = True,
) -> Result:
    """Benchmark explainers on ``model`` with ``images``: the CLI's units, scores and tables.

    Args:
        model: a classifier returning logits ``(B, K)``; not changed (a copy is explained).
        images: ``(N, C, H, W)``, C matching the model's first conv; finite.
        targets: the classes explained, ``(N,)`` or one int for all; default the model's predicted class.
        labels: true labels ``(N,)``: the confusion cells TP/FP/FN/TN (class 1 positive). Without
            them the label column is -1 and the cell says the predicted class (TP: 1, TN: 0).
        masks: ``(N, 1, H, W)`` ground-truth regions, for the localisation metrics.
        explainers, metrics: registered names (default: the quick profile's, ``configs/quick.toml``;
            with ``attributions``, the explainers default to the controls ``random`` and ``edge``,
            the chance level of the reliability card, and ``explainers=[]`` scores the maps alone).
        background: reference images ``(M, C, H, W)``; default a seeded draw of up to
            :data:`BACKGROUND_SIZE` of ``images``.
        explainer_params, metric_params: ``{name: {parameter: value}}`` (``explain.params``,
            ``metrics.params``).
        attribution: "signed" | "abs" | "positive", the one preprocessing step before the metrics.
        output: "logit" | "probability", the explained scalar's space.
        device: "auto" | "cpu" | "cuda".
        precision: "float32" | "bfloat16" | "float16" (CUDA only): the metrics' own model passes, under
            autocast (``metrics.precision``); the explainers run in float32 unless a gradient
            explainer's own ``precision`` parameter says otherwise (``explainer_params``).
        convert: replace the model by :func:`models.convert_explainer_safe`'s equivalent copy (in-place
            ReLUs, reused ReLU modules, torchvision residual blocks, overlapping max-pools after a
            ReLU) and record the rewritten modules and the max absolute output difference on
            ``images``; a model it cannot rewrite exactly is refused in one line naming the module,
            before any work. Without it an unsafe model gives a warning, and DeepExplainer-based
            explainers fail (recorded in one line).
        seed: the run's seed (explainers, background draw). shard_size: images per unit of work.
        name: the run's name. model_name: the model column (default: the model's class name).
        overrides: further ``--set``-style config overrides, e.g. ``["reliability.substrates=[]"]``.
        attributions: maps computed elsewhere, ``{name: (N, H, W) | (N, 1, H, W) | (N, C, H, W)}``
            (numpy or torch, any float dtype), aligned with ``images`` and explaining ``targets``
            (pass the classes they explain). Each enters the run as an explainer named ``name``
            (not a registered explainer's name) and is scored by every metric, except those that
            re-run the explainer (``randomisation_similarity``, ``max_sensitivity``,
            ``avg_sensitivity``, ``local_lipschitz_estimate``: "n/a" with the reason in the
            message column) and is left out of MetaQuantus; additivity is n/a (a map has no
            outputs). The cache key carries each map's digest.
        verbose: print one line per unit of work.

    Bad input is a one-line :class:`bench.core.errors.BenchError` naming the problem and the fix.
    """
    t_all = time.perf_counter()
    given_targets = targets is not None
    maps_given = _map_names(attributions, explainers)
    registered = list(MAP_CONTROLS) if maps_given and explainers is None else explainers
    # maps alone: the config is validated with one control (explain.names may not be empty), then holds the maps only
    cfg = _config(
        name,
        seed,
        device,
        registered or ([MAP_CONTROLS[0]] if maps_given else registered),
        metrics,
        explainer_params,
        metric_params,
        attribution,
        output,
        shard_size,
        overrides,
        precision,
    )
    if maps_given and not registered:
        cfg = replace(cfg, explain=replace(cfg.explain, names=()))
    dev = resolve_device(cfg.device)
    if not isinstance(model, nn.Module):
        raise BenchError(f"model must be a torch nn.Module returning logits, got {type(model).__name__}")
    x = _images(images, "images")
    n = len(x)
    maps = {  # the order of maps_given
        key: map_values(value, x.shape, f"attributions[{key!r}]") for key, value in (attributions or {}).items()
    }
    work = copy_model(model).cpu().eval()
    k = check_fits(work, x, where="model")
    y = None if labels is None else _classes(labels, "labels", n, k)
    t = None if targets is None else _classes(targets, "targets", n, k)
    m = None if masks is None else _masks(masks, x)
    split = ImageSplit(
        images=x,
        labels=y if y is not None else torch.full((n,), -1, dtype=torch.long),
        name="notebook",
        split="given",
        masks=m,
    )
    if background is None:
        bg, bg_source = P.background(split, BACKGROUND_SIZE, seed), f"drawn from the images (seed {seed})"
    else:
        bg, bg_source = _images(background, "background"), "given"
        if bg.shape[1:] != x.shape[1:]:
            raise BenchError(
                f"background has images of shape {tuple(bg.shape[1:])}, the images {tuple(x.shape[1:])}; "
                f"give reference images like the explained ones"
            )
    label = model_name if model_name is not None else type(model).__name__
    if not is_plain_name(label):
        raise BenchError(
            f"model_name {shown(label)} is not a plain name (letters, digits and ._+-, not starting "
            f'with a dot, at most {MAX_NAME} characters); pass e.g. model_name="my-resnet"'
        )

    t0 = time.perf_counter()
    fix = "pass convert=True to bench.evaluate (it rewrites what has an exact rewrite, or says what it cannot)"
    work, record = prepare_model(
        work,
        x,
        convert=convert,
        fix=fix,
        warn=lambda s: warnings.warn(s.removeprefix("warning: "), UserWarning, stacklevel=4),
    )
    timings = {"model": time.perf_counter() - t0}
    key = object_model_key(model, record)
    info = {
        "source": "bench.evaluate",
        "n_images": n,
        "images_sha256": tensor_digest(x),
        "labels": y is not None,
        "targets": "given" if given_targets else "predicted",
        "background": bg_source,
        "background_size": int(len(bg)),
        "background_sha256": tensor_digest(bg),
    }
    split = ImageSplit(images=x, labels=split.labels, name="notebook", split="given", masks=m, info=info)
    cfg = _describe(cfg, label, record, key, info, maps)
    stage = Stage(
        label, "pre", Path("notebook"), key, {"test": {}, "config": {"user_model": record}}, work.to(dev), label, 0
    )
    preds = checked_predictions(stage.model, x, device=dev).argmax(1)
    say = print if verbose else (lambda s: None)
    with tempfile.TemporaryDirectory(prefix="pneumobench-") as tmp:
        run_dir = Path(tmp) / cfg.name
        with claim(run_dir, cfg):
            plan, examples = P.plan_images(
                cfg,
                [stage],
                P.data_fingerprint(split),
                torch.arange(n),
                x,
                y,
                preds if t is None else t,
                m,
                preds,
                bg,
                dev,
                run_dir,
                maps,
            )
            run_plan(
                cfg,
                run_dir,
                dev,
                split,
                [stage],
                plan,
                examples,
                timings,
                t_all,
                say=say,
                progress=False,
                figures=False,
            )
        files = {
            str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in RUN_FILES_SKIPPED
        }
        scores = L.read_scores(run_dir / "scores.csv")
    return Result(scores=scores, manifest=json.loads(files["manifest.json"]), config=cfg, files=files)


# ----------------------------------------------------------------------------- the config


def _config(
    name: str,
    seed: int,
    device: str,
    explainers: Sequence[str] | None,
    metrics: Sequence[str] | None,
    explainer_params: Mapping[str, Any] | None,
    metric_params: Mapping[str, Any] | None,
    attribution: str,
    output: str,
    shard_size: int,
    overrides: Sequence[str],
    precision: str = "float32",
) -> RunConfig:
    """The run config of the arguments: ``configs/quick.toml``, the arguments as ``--set`` overrides,
    then ``overrides``, validated by :func:`load_config` (the CLI's checks and messages)."""
    given = [
        ("name", name),
        ("seed", seed),
        ("device", device),
        ("explain.output", output),
        ("explain.shard_size", shard_size),
        ("metrics.attribution", attribution),
        ("metrics.precision", precision),
        ("explain.names", None if explainers is None else list(_names(explainers, "explainers"))),
        ("metrics.names", None if metrics is None else list(_names(metrics, "metrics"))),
        ("explain.params", explainer_params),
        ("metrics.params", metric_params),
    ]
    if isinstance(overrides, str):
        raise BenchError(f"overrides must be a list of KEY=VALUE strings, got the string {overrides!r}; wrap it in [ ]")
    sets = [f"{key}={_toml(value, key)}" for key, value in given if value is not None]
    return load_config(None, sets + list(overrides))


def _names(names: Any, what: str) -> Sequence[Any]:
    if isinstance(names, str):
        raise BenchError(f"{what} must be a list of names, got the string {names!r}; e.g. {what}=[{names!r}]")
    return names


def _map_names(attributions: Any, explainers: Sequence[str] | None) -> list[str]:
    """The names of the given maps, in order; a one-line error for a name that is not plain or is taken."""
    if attributions is None:
        return []
    if not isinstance(attributions, Mapping):
        raise BenchError(
            f"attributions must be a dict {{name: maps}}, got {type(attributions).__name__}; e.g. "
            f'attributions={{"my-gradcam": maps}}'
        )
    taken = set(explainers) if explainers is not None and not isinstance(explainers, str) else set()
    for key in attributions:
        if not is_plain_name(key):
            raise BenchError(
                f"attributions: {shown(key)} is not a plain name (letters, digits and ._+-, not starting "
                f'with a dot, at most {MAX_NAME} characters); name the map e.g. "my-gradcam"'
            )
        if key in EXPLAINERS or key in taken:
            raise BenchError(
                f"attributions: {key!r} is the name of a registered explainer; name your map otherwise, "
                f'e.g. "my-{key}" (the tables would not tell the two apart)'
            )
    return list(attributions)


def _describe(
    cfg: RunConfig, label: str, record: dict[str, Any], key: str, info: dict[str, Any], maps: Mapping[str, Tensor]
) -> RunConfig:
    """The config with its data and models sections saying what was evaluated (the notebook's
    images and model, not the quick profile's data set and ResNet), and the given maps among the
    explainers, each with its digest (so another map is another run) and the metrics that cannot
    score it."""
    explain = replace(cfg.explain, target=info["targets"])
    if maps:
        fixed = [m for m in cfg.metrics.names if "explain" in METRICS.get(m).meta.get("needs", ())]
        explain = replace(
            explain,
            names=(*explain.names, *maps),
            given={
                k: {"sha256": tensor_digest(v), "shape": list(v.shape), "not_scored": fixed} for k, v in maps.items()
            },
        )
    data = DataSection(
        dataset="notebook",
        options={},
        split="given",
        sample="all",
        per_cell=cfg.data.per_cell,
        nested_per_cell=0,
        background_size=info["background_size"],
        described={k: info[k] for k in ("n_images", "images_sha256", "labels", "background", "background_sha256")},
    )
    users = {label: {"object": record["class"], "convert": record["convert"], "model_key": key}}
    return replace(
        cfg,
        data=data,
        explain=explain,
        models=ModelsSection(names=(label,), stages=("pre",), seeds=(), select_seed=-1, user=users),
        source=f"bench.evaluate (arguments over {cfg.source})",
    )


TOML_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(value: Any, what: str) -> str:
    """``value`` as a TOML value (numbers, booleans, strings, lists, tables)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf") if not math.isfinite(v) else repr(v)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v, what) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(
                f"{k if TOML_KEY.match(str(k)) else json.dumps(str(k))} = {_toml(v, what)}" for k, v in value.items()
            )
            + "}"
        )
    raise BenchError(
        f"{what}: {value!r} ({type(value).__name__}) is not a number, string, boolean, list or table; "
        f"leave a parameter out to use its default"
    )


# ----------------------------------------------------------------------------- the inputs


def _tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().cpu()
    try:
        return torch.as_tensor(np.array(a))  # a copy: a read-only array makes torch warn
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BenchError(f"{what} must be a tensor or an array, got {type(a).__name__} ({exc})") from None


def _images(a: Any, what: str) -> Tensor:
    """``(N, C, H, W)`` float32 on the CPU, N >= 1, finite."""
    x = _tensor(a, what)
    if x.ndim != 4 or x.shape[0] == 0:
        hint = "; add the batch and channel axes, e.g. x[None, None] for one (H, W) image" if x.ndim < 4 else ""
        raise BenchError(f"{what} must be a non-empty (N, C, H, W) batch, got shape {tuple(x.shape)}{hint}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise BenchError(f"{what} must hold numbers, got dtype {x.dtype}")
    x = x.float().contiguous()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise BenchError(
            f"{what} hold {bad} NaN or infinite values; clean them (e.g. torch.nan_to_num) before explaining"
        )
    return x


def _classes(a: Any, what: str, n: int, k: int) -> Tensor:
    """``(n,)`` int64 classes in [0, k); one int is repeated."""
    if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
        a = [int(a)] * n
    c = _tensor(a, what)
    if c.ndim != 1 or len(c) != n:
        raise BenchError(f"{what} must be one class per image, shape ({n},), got shape {tuple(c.shape)}")
    if c.is_floating_point() and not bool((c == c.round()).all()):
        raise BenchError(f"{what} must be class indices (integers), got fractional values")
    if c.dtype == torch.bool or c.is_complex():
        raise BenchError(f"{what} must be class indices (integers), got dtype {c.dtype}")
    c = c.long()
    if bool(((c < 0) | (c >= k)).any()):
        raise BenchError(
            f"{what} must be classes 0..{k - 1} of the model's {k} outputs, got values {sorted(set(c.tolist()))[:5]}"
        )
    return c


def _masks(a: Any, x: Tensor) -> Tensor:
    m = _tensor(a, "masks")
    want = (len(x), 1, *x.shape[2:])
    if tuple(m.shape) != want:
        raise BenchError(f"masks must be (N, 1, H, W) = {want} like the images, got shape {tuple(m.shape)}")
    return m.bool()
