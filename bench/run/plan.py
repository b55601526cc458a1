"""What a run computes: its data, its checkpoints, the images it explains and its units of work.

The unit of work is one (checkpoint, explainer with its parameters, shard of ``explain.shard_size``
images): :func:`plan_units` lists them, with the per-image facts (label, prediction, confusion
cell) their score rows carry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from bench.core.io import check_entry, ensure_folder
from bench.core.schema import cell_names, confusion_cells
from bench.run.config import RunConfig, checkpoint_dir, model_label, selection_seed, training_seeds, tune_variants
from bench.run.unit import Stage, Unit
from datasets import ImageSplit, check_splits, load_split
from explainers import EXPLAINERS, explainer_params
from models.checkpoints import default_checkpoint_path, default_tuned_path, load_checkpoint, read_sidecar, sidecar_path
from models.recipes import TrainConfig
from models.training import train_model
from models.tuning import tune_model
from models.user import UserModelSpec, checked_predictions, load_user_model


@dataclass
class Planned:
    """A unit of work with the per-image facts its score rows carry. A ``reference`` unit only
    explains (no metrics, not in the tables): the second explainer seed of a stochastic explainer,
    the noise level the map similarities are read against."""

    stage: Stage
    explainer: str
    index: Tensor
    labels: Tensor
    preds: Tensor
    cells: list[str]
    unit: Unit
    reference: bool = False


@dataclass
class Examples:
    """The images of one model shown in the attribution figures: their positions among the
    model's explained images, and their cells under each stage's model."""

    positions: list[int]
    images: Tensor
    labels: Tensor
    index: Tensor
    cells: dict[str, np.ndarray]


def load_data(cfg: RunConfig) -> list[ImageSplit]:
    """(train, val, explained split) of the configured dataset, with ``[data.options]`` passed through."""
    d = cfg.data
    out = [load_split(d.dataset, s, **d.options) for s in ("train", "val", "test")]
    if d.split != "test":
        out[2] = load_split(d.dataset, d.split, **d.options)
    check_splits(*out)  # before any training
    return out


def data_fingerprint(split: ImageSplit) -> str:
    return f"{split.name}:{split.fingerprint}:{split.split}"


def ensure_checkpoints(
    cfg: RunConfig,
    train: ImageSplit,
    val: ImageSplit,
    test: ImageSplit,
    device: torch.device,
    progress: bool,
    say: Callable[[str], None],
) -> list[Stage]:
    """Train (pre) and tune (post) checkpoints on first use; later runs reuse them by content key.
    Before any training, user models (``[models.user.<name>]``) are loaded and checked, and so is
    every checkpoint already there, with its sidecar, the image-picking model of another seed
    (``models.select_seed``) included: a broken one stops the run before it trains."""
    ck_dir = checkpoint_dir(cfg)
    user = {n: user_stage(cfg, n, test, device, say) for n in cfg.models.names if n in cfg.models.user}
    tuned = "post" in cfg.models.stages
    loaded: dict[Path, tuple[nn.Module, dict, dict]] = {}

    def load(path: Path, arch: str) -> tuple[nn.Module, dict, dict]:
        if path not in loaded:
            loaded[path] = _load_checked(path, arch, device)
        return loaded[path]

    trained = [
        (name, seed, _train_config(cfg, name, seed, train))
        for name in cfg.models.names
        if name not in user
        for seed in training_seeds(cfg)
    ]
    paths = {(name, seed): default_checkpoint_path(tcfg, train.fingerprint, ck_dir) for name, seed, tcfg in trained}
    for (name, _), pre_path in paths.items():  # what is there must be sound before anything is trained
        if os.path.lexists(pre_path):
            load(pre_path, name)
            for recipe in tune_variants(cfg).values() if tuned else ():
                post_path = default_tuned_path(pre_path, recipe)
                if os.path.lexists(post_path):
                    load(post_path, name)
    pick = selection_seed(cfg)  # the image-picking model of another seed (selection_stages) is checked too
    if pick not in training_seeds(cfg):
        for name in (n for n in cfg.models.names if n not in user):
            picker = default_checkpoint_path(_train_config(cfg, name, pick, train), train.fingerprint, ck_dir)
            if os.path.lexists(picker):
                _load_checked(picker, name, device)

    def untrained(pre: Path) -> bool:
        return (
            not pre.exists()
            or tuned
            and any(not default_tuned_path(pre, r).exists() for r in tune_variants(cfg).values())
        )

    if any(untrained(pre) for pre in paths.values()):  # it will train: a place to keep that, before it starts
        ensure_folder(ck_dir, what="checkpoint folder", follow=bool(cfg.checkpoint_dir), probe=True)
    stages = []
    for name in cfg.models.names:
        if name in user:
            stages.append(user[name])
            continue
        for seed in training_seeds(cfg):
            label, tcfg, pre_path = (
                model_label(cfg, name, seed),
                _train_config(cfg, name, seed, train),
                paths[name, seed],
            )
            if not pre_path.exists():
                say(f"[{label} pre] no checkpoint {pre_path}: training ({tcfg.epochs} epochs) ...")
                train_model(tcfg, train, val, test, out=pre_path, device=str(device), progress=progress)
            model, info, side = load(pre_path, name)
            stages.append(Stage(label, "pre", pre_path, info["sha256"], side, model, name, seed))
            for stage, ucfg in tune_variants(cfg).items() if tuned else ():
                ucfg.validate()
                post_path = default_tuned_path(pre_path, ucfg)
                if not post_path.exists():
                    say(f"[{label} {stage}] no checkpoint {post_path}: tuning {','.join(ucfg.unfreeze)} ...")
                    tune_model(pre_path, ucfg, train, val, test, out=post_path, device=str(device), progress=progress)
                model, info, side = load(post_path, name)
                stages.append(Stage(label, stage, post_path, info["sha256"], side, model, name, seed))
    return stages


def selection_stages(
    cfg: RunConfig,
    stages: list[Stage],
    train: ImageSplit,
    val: ImageSplit,
    test: ImageSplit,
    device: torch.device,
    progress: bool,
    say: Callable[[str], None],
) -> dict[str, Stage]:
    """Each architecture's image-picking model: the pre model of ``models.select_seed``
    (:func:`~bench.run.config.selection_seed`). One of the run's stages when it trains that seed;
    otherwise its checkpoint is trained if missing (the recipe of the run's seeds, at that seed)
    and loaded to pick images and targets only, never explained (a later part of a study picks
    the images of its first part). A user model picks its own."""
    seed = selection_seed(cfg)
    out: dict[str, Stage] = {}
    for arch in cfg.models.names:
        found = next(
            (s for s in stages if s.arch == arch and s.stage == "pre" and (arch in cfg.models.user or s.seed == seed)),
            None,
        )
        if found is None:
            tcfg = _train_config(cfg, arch, seed, train)
            path = default_checkpoint_path(tcfg, train.fingerprint, checkpoint_dir(cfg))
            if not path.exists():
                ensure_folder(
                    checkpoint_dir(cfg), what="checkpoint folder", follow=bool(cfg.checkpoint_dir), probe=True
                )
                say(
                    f"[{arch}@seed{seed} pre] picks the images: no checkpoint {path}: training ({tcfg.epochs} "
                    f"epochs) ..."
                )
                train_model(tcfg, train, val, test, out=path, device=str(device), progress=progress)
            model, info, side = _load_checked(path, arch, device)
            found = Stage(f"{arch}@seed{seed}", "pre", path, info["sha256"], side, model, arch, seed)
        out[arch] = found
    return out


def selection_record(selectors: Mapping[str, Stage]) -> dict[str, dict[str, object]]:
    """What the manifest records of the models that picked the images ({arch: model, seed, sha256, path})."""
    return {
        arch: {"model": s.model_name, "seed": s.seed, "sha256": s.sha256, "path": str(s.path)}
        for arch, s in selectors.items()
    }


def _load_checked(path: Path, arch: str, device: torch.device) -> tuple[nn.Module, dict, dict]:
    """(model, checkpoint info, sidecar) of a checkpoint of ``arch``, the file and its sidecar never
    read through a link or from a FIFO."""
    check_entry(path, folder=False)
    check_entry(sidecar_path(path), folder=False)
    model, info = load_checkpoint(path, expected_model=arch, device=device)
    return model, info, read_sidecar(path)


def _train_config(cfg: RunConfig, name: str, seed: int, train: ImageSplit) -> TrainConfig:
    """The recipe a run trains ``name`` with at ``seed`` on ``train``'s data (validated)."""
    tcfg = cfg.train.recipe(name, seed=seed, dataset=train.name, size=int(train.images.shape[-1]))
    tcfg.validate()
    return tcfg


def user_stage(cfg: RunConfig, name: str, split: ImageSplit, device: torch.device, say: Callable[[str], None]) -> Stage:
    """The "pre" stage of a user model: built by its factory, its checkpoint loaded, checked against
    ``split`` (channels, classes), converted if asked (:func:`models.user.load_user_model`). Its
    ``sha256`` is the model key (checkpoint sha256, factory, kwargs, conversion); the sidecar's
    ``config`` holds the record the manifest keeps."""
    spec = UserModelSpec.from_table(name, cfg.models.user[name])
    model, record = load_user_model(spec, split.images, len(split.class_names), warn=say)
    return Stage(
        name,
        "pre",
        Path(spec.checkpoint),
        record["model_key"],
        {"test": {}, "config": {"user_model": record}},
        model.to(device),
        name,
        0,
    )


def background(train: ImageSplit, n: int, seed: int) -> Tensor:
    """``n`` reference images drawn (seeded) from the train split, in index order."""
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(train), generator=gen)[: min(n, len(train))]
    return train.images[idx.sort().values]


NESTED_STREAM = 1  # the seed sequence [seed, NESTED_STREAM] draws the nested subset (its own stream)


def select_images(test: ImageSplit, preds: Tensor, cfg: RunConfig, seed: int) -> Tensor:
    """All images, or ``per_cell`` images of each confusion cell of the pre model (seeded; the cells
    of ``len(test.class_names)`` classes: TP/FP/FN/TN, or per class right / wrong); with
    ``data.nested_per_cell`` > 0, a seeded subset of that many per cell of that sample, drawn from
    its own stream after it: always images a run at the same ``per_cell`` explains."""
    if cfg.data.sample == "all":
        return torch.arange(len(test))
    k = len(test.class_names)
    cells = np.array(confusion_cells(test.labels.numpy(), preds.numpy(), k))
    rng = np.random.default_rng(seed)
    picked = []
    for cell in cell_names(k):
        idx = np.flatnonzero(cells == cell)
        picked.append(sorted(rng.choice(idx, size=min(cfg.data.per_cell, len(idx)), replace=False).tolist()))
    nested = cfg.data.nested_per_cell
    if nested:
        sub = np.random.default_rng([seed, NESTED_STREAM])
        picked = [sorted(sub.choice(p, size=min(nested, len(p)), replace=False).tolist()) if p else p for p in picked]
    return torch.as_tensor(sorted(i for p in picked for i in p), dtype=torch.long)


def example_positions(labels: Tensor, preds: Tensor, per_cell: int, num_classes: int = 2) -> list[int]:
    """The first ``per_cell`` positions of each confusion cell (figure examples)."""
    cells = confusion_cells(labels.numpy(), preds.numpy(), num_classes)
    out = []
    for cell in cell_names(num_classes):
        out += [i for i, c in enumerate(cells) if c == cell][:per_cell]
    return out


def plan_units(
    cfg: RunConfig,
    stages: list[Stage],
    test: ImageSplit,
    reference: Tensor,
    device: torch.device,
    run_dir: Path,
    sample: list[dict] | None = None,
    selectors: Mapping[str, Stage] | None = None,
) -> tuple[list[Planned], dict[str, Examples]]:
    """Every unit of the run, in order (model, stage, explainer, shard), and each model's examples.

    One pre model of an architecture (``selectors``, :func:`selection_stages`; default its first
    stage: the first training seed's pre model) picks its images (per confusion cell)
    and, with ``explain.target = "predicted"``, the class every seed and stage of that architecture
    explains, so maps of different seeds and stages are of one scalar on the same images. With a
    post stage or several seeds, stochastic explainers that take a ``seed`` get a reference unit on
    the first pre model with ``seed + 1`` (their own noise, for the map similarities).
    """
    plan: list[Planned] = []
    examples: dict[str, Examples] = {}
    for arch in cfg.models.names:
        arch_stages = [s for s in stages if s.arch == arch]
        picker = (selectors or {}).get(arch, arch_stages[0])
        pre_preds = checked_predictions(picker.model, test.images, device=device, where=arch).argmax(1)
        index = select_images(test, pre_preds, cfg, cfg.seed)
        if sample is not None and cfg.data.sample == "per_cell":
            k = len(test.class_names)
            cells = np.array(confusion_cells(test.labels.numpy(), pre_preds.numpy(), k))
            sample += [
                {
                    "arch": arch,
                    "model": picker.model_name,
                    "cell": c,
                    "n_test": int((cells == c).sum()),
                    "n_sampled": int((cells[index.numpy()] == c).sum()),
                }
                for c in cell_names(k)
            ]
        labels = test.labels[index]
        targets = pre_preds[index] if cfg.explain.target == "predicted" else labels
        more, shown = plan_images(
            cfg,
            arch_stages,
            data_fingerprint(test),
            index,
            test.images[index],
            labels,
            targets,
            None if test.masks is None else test.masks[index],
            pre_preds[index],
            reference,
            device,
            run_dir,
        )
        plan += more
        examples.update(shown)
    return plan, examples


def plan_images(
    cfg: RunConfig,
    arch_stages: list[Stage],
    fingerprint: str,
    index: Tensor,
    images: Tensor,
    labels: Tensor | None,
    targets: Tensor,
    masks: Tensor | None,
    pre_preds: Tensor,
    reference: Tensor,
    device: torch.device,
    run_dir: Path,
    maps: Mapping[str, Tensor] | None = None,
) -> tuple[list[Planned], dict[str, Examples]]:
    """The units of one architecture's stages (the first is its first seed's pre model) on given
    images, and its examples: :func:`plan_units` for the images it selected, ``bench.evaluate``
    for the images it was given (``maps``: ``{name: (N, C, H, W)}`` maps computed elsewhere, aligned
    with ``images``; the names are among ``explain.names``, scored like an explainer's maps).

    ``index (N,)`` names the images in the tables, ``images (N, C, H, W)``, ``targets (N,)`` the
    explained classes, ``pre_preds (N,)`` the first stage's predictions. ``labels`` None
    (unlabelled images): the label column holds -1 and a cell says only the predicted class (TP:
    predicted 1, TN: predicted 0).
    """
    shard = cfg.explain.shard_size
    first = arch_stages[0]
    maps = dict(maps or {})
    plan: list[Planned] = []
    examples: dict[str, Examples] = {}
    known = labels is not None
    labels = labels if labels is not None else torch.full_like(pre_preds, -1)
    # the cells follow the model's number of outputs: TP/FP/FN/TN for 2, per class right / wrong above
    k = int(checked_predictions(first.model, images[:1], device=device, where=first.model_name).shape[1])

    def cells_of(preds: Tensor) -> list[str]:
        return confusion_cells((labels if known else preds).numpy(), preds.numpy(), k)

    positions = example_positions(labels if known else pre_preds, pre_preds, cfg.figures.examples_per_cell, k)
    compared = len(arch_stages) > 1
    for label in dict.fromkeys(s.model_name for s in arch_stages):
        stage_cells = {}
        for st in (s for s in arch_stages if s.model_name == label):
            preds = checked_predictions(st.model, images, device=device, where=st.model_name).argmax(1)
            cells = cells_of(preds)
            stage_cells[st.stage] = np.array(cells)
            for name in cfg.explain.names:
                params = dict(cfg.explain.params.get(name, {}))
                runs = [(params, False)]
                if st is first and compared and name not in maps and _reseedable(name):
                    own = params.get("seed", explainer_params(name)["seed"])
                    runs.append(({**params, "seed": own + 1}, True))
                for p, ref in runs:
                    for lo in range(0, len(index), shard):
                        sl = slice(lo, lo + shard)
                        unit = Unit(
                            cfg,
                            st,
                            name,
                            p,
                            fingerprint,
                            index[sl],
                            images[sl],
                            labels[sl],
                            targets[sl],
                            None if masks is None else masks[sl],
                            reference,
                            device,
                            run_dir,
                            scored=not ref,
                            given=maps[name][sl] if name in maps else None,
                        )
                        plan.append(Planned(st, name, index[sl], labels[sl], preds[sl], cells[sl], unit, ref))
        if positions:
            examples[label] = Examples(
                positions,
                images[positions],
                labels[positions],
                index[positions],
                {k: v[positions] for k, v in stage_cells.items()},
            )
    return plan, examples


def _reseedable(explainer: str) -> bool:
    """A stochastic explainer whose draws a ``seed`` parameter sets."""
    entry = EXPLAINERS.get(explainer)
    return bool(entry.meta.get("stochastic")) and "seed" in explainer_params(explainer)
