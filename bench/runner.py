"""``python -m bench run``: config -> (model, stage) x explainer x shard -> cache -> metrics -> tables.

The unit of work is one (checkpoint, explainer with its parameters, shard of images). Each unit's
attributions and its metric scores are cached in ``results/<run>/cache/`` under a content key
(checkpoint hash, explainer and parameters, data fingerprint, image indices, targets, background,
seed, device type), written atomically as soon as the unit finishes. A killed run resumes where
it stopped; re-running a finished run recomputes nothing and rewrites byte-identical tables.
An explainer that raises is recorded (status and message) and the run goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench import metrics as M
from bench.config import RunConfig, load_config, resolve_device
from bench.allocator import allocator_state
from bench.machine import machine_info
from bench.errors import BenchError
from bench.io import atomic_torch_save, atomic_write_json, atomic_write_text
from bench.profiling import measure_peak_memory
from datasets import ImageSplit, load_split
from explainers import EXPLAINERS, Attribution, with_output_space
from explainers.base import run_explainer
from models.training import (CELLS, TrainConfig, TuneConfig, confusion_cells, default_checkpoint_path,
                             default_tuned_path, load_checkpoint, predict_proba, read_sidecar, train_model,
                             tune_model)

SCORE_COLUMNS = ["model", "stage", "explainer", "metric", "image", "label", "pred", "cell", "value", "status",
                 "message", "higher_is_better", "seconds_per_image", "peak_mem_mb"]
CURVE_COLUMNS = ["model", "stage", "explainer", "curve", "image", "fraction", "prob"]
CACHE_VERSION = 1
PACKAGES = ("torch", "torchvision", "shap", "captum", "quantus", "medmnist", "numpy", "scipy", "pandas",
            "matplotlib", "seaborn", "tqdm")


# ----------------------------------------------------------------------------- entry point


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (("name", "name"), ("results", "results_dir"), ("data_file", "data.data_file"),
                      ("data_root", "data.data_root")):
        value = getattr(args, flag, None)
        if value:
            overrides.append(f"{key}={json.dumps(str(value))}")
    if getattr(args, "device", "auto") != "auto":
        overrides.append(f"device={json.dumps(args.device)}")
    cfg = load_config(args.config, overrides)
    run_dir = run(cfg, progress=not args.no_progress, executor=getattr(args, "executor", "local"),
                  ray_address=getattr(args, "ray_address", None))
    print(f"results in {run_dir}: leaderboard.md, prepost.md, scores.csv, figures/, manifest.json")
    return 0


@dataclass
class Stage:
    """One checkpoint to explain: a model at a stage (pre = trained, post = tuned)."""

    model_name: str
    stage: str
    path: Path
    sha256: str
    sidecar: dict[str, Any]
    model: nn.Module = field(repr=False, default=None)


def run(cfg: RunConfig, *, progress: bool = True, executor: str = "local", ray_address: str | None = None) -> Path:
    """Execute a validated config; returns the run directory.

    ``executor="local"`` computes the units in this process; ``"ray"`` fans them out as Ray tasks
    (see :func:`execute_units`). Both fill the same cache and give the same tables.
    """
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    seed = cfg["seed"]
    device = resolve_device(cfg["device"])
    run_dir = Path(cfg["results_dir"]) / cfg["name"]
    _guard_run_dir(run_dir, cfg)
    say = tqdm.write if progress else (lambda s: print(s, flush=True))

    t = time.perf_counter()
    train, val, test = _load_data(cfg)
    fingerprint = _data_fingerprint(test)
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    stages = _ensure_checkpoints(cfg, train, val, test, device, progress, say)
    timings["checkpoints"] = time.perf_counter() - t

    background = _background(train, cfg["data"]["background_size"], seed)
    plan: list[_Planned] = []
    example_meta: dict[str, Any] = {}
    for model_name in cfg["models"]["names"]:
        model_stages = [s for s in stages if s.model_name == model_name]
        pre_preds = predict_proba(model_stages[0].model, test.images, device=device).argmax(1)
        index = _select_images(test, pre_preds, cfg, seed)
        images, labels = test.images[index], test.labels[index]
        masks = None if test.masks is None else test.masks[index]
        targets = pre_preds[index] if cfg["explain"]["target"] == "predicted" else labels
        ex_pos = _example_positions(labels, pre_preds[index], cfg["figures"]["examples_per_cell"])
        stage_cells = {}
        for st in model_stages:
            preds = predict_proba(st.model, images, device=device).argmax(1)
            cells = confusion_cells(labels.numpy(), preds.numpy())
            stage_cells[st.stage] = np.array(cells)
            for name in cfg["explain"]["names"]:
                params = dict(cfg["explain"]["params"].get(name, {}))
                for lo in range(0, len(index), cfg["explain"]["shard_size"]):
                    sl = slice(lo, lo + cfg["explain"]["shard_size"])
                    unit = _Unit(cfg, st, name, params, fingerprint, index[sl], images[sl], labels[sl], targets[sl],
                                 None if masks is None else masks[sl], background, device, run_dir)
                    plan.append(_Planned(st, name, index[sl], labels[sl], preds[sl], cells[sl], unit))
        if ex_pos:
            example_meta[model_name] = {"images": images[ex_pos].sum(1).numpy(), "labels": labels[ex_pos].numpy(),
                                        "index": index[ex_pos].numpy(), "positions": ex_pos,
                                        "cells": {k: v[ex_pos] for k, v in stage_cells.items()}}

    t = time.perf_counter()
    results = execute_units([p.unit for p in plan], executor=executor, ray_address=ray_address, say=say,
                            progress=progress)
    timings["explain_and_metrics"] = time.perf_counter() - t

    records, curves, unit_log, shard_values = [], [], [], {}
    for p, res in zip(plan, results):
        st = p.stage
        unit_log.append({"model": st.model_name, "stage": st.stage, "explainer": p.explainer,
                         "images": [int(i) for i in p.index], "cached": res["cached"], "status": res["status"]})
        records += _rows(st, p.explainer, p.index, p.labels, p.preds, p.cells, res)
        curves += _curve_rows(st, p.explainer, p.index, res)
        shard_values.setdefault((st.model_name, st.stage, p.explainer), []).append(res.get("values"))
    examples: dict[str, Any] = {"__meta__": {m: {k: v for k, v in e.items() if k != "positions"}
                                             for m, e in example_meta.items()}} if example_meta else {}
    for (model_name, stage, name), shards in shard_values.items():
        if model_name in example_meta and all(v is not None for v in shards):
            examples[f"{model_name}|{stage}|{name}"] = torch.cat(shards)[example_meta[model_name]["positions"]].sum(1).numpy()

    t = time.perf_counter()
    scores = pd.DataFrame.from_records(records, columns=SCORE_COLUMNS)
    scores = scores.sort_values(["model", "stage", "explainer", "metric", "image"], kind="stable").reset_index(drop=True)
    curves_df = pd.DataFrame.from_records(curves, columns=CURVE_COLUMNS)
    prepost_models = {s.model_name: s.sidecar["comparison"] for s in stages if s.stage == "post"}
    written = write_outputs(run_dir, scores, curves_df, prepost_models, examples, figures=cfg["figures"]["enabled"])
    timings["tables_and_figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    _write_manifest(run_dir, cfg, device, test, stages, timings, unit_log, written, executor)
    n_cached = sum(u["cached"] for u in unit_log)
    failed = sorted({(u["model"], u["stage"], u["explainer"]) for u in unit_log if u["status"] != "ok"})
    say(f"{len(unit_log)} units ({n_cached} from cache) in {timings['total']:.0f} s"
        + (f"; failed: {', '.join('/'.join(f) for f in failed)}" if failed else ""))
    return run_dir


# ----------------------------------------------------------------------------- data and checkpoints


def _guard_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Never mix two configs' results in one directory."""
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text()).get("config")
        except json.JSONDecodeError:
            old = None
        if old is not None and old != json.loads(json.dumps(cfg.values)):
            raise BenchError(f"{run_dir} holds a run with another config; choose another --name (or delete "
                             f"{run_dir} to replace it)")


def _load_data(cfg: RunConfig) -> list[ImageSplit]:
    d = cfg["data"]
    opts: dict[str, Any] = {"size": d["size"]}
    if d["dataset"] == "pneumoniamnist":
        opts.update(data_file=d["data_file"] or None, data_root=d["data_root"] or None)
    elif d["dataset"] == "synthetic":
        opts["seed"] = cfg["seed"]
        if d["synthetic_n"]:
            opts["n"] = d["synthetic_n"]
    out = [load_split(d["dataset"], s, **opts) for s in ("train", "val", "test")]
    if d["split"] != "test":
        out[2] = load_split(d["dataset"], d["split"], **opts)
    return out


def _data_fingerprint(split: ImageSplit) -> str:
    return f"{split.name}:{split.fingerprint}:{split.split}"


def _ensure_checkpoints(cfg: RunConfig, train, val, test, device, progress, say) -> list[Stage]:
    """Train (pre) and tune (post) checkpoints on first use; later runs reuse them by content key."""
    stages = []
    ck_dir = Path(cfg["checkpoint_dir"])
    for name in cfg["models"]["names"]:
        tcfg = TrainConfig(**{**cfg["train"], "model": name, "dataset": train.name, "size": cfg["data"]["size"]})
        tcfg.validate()
        pre_path = default_checkpoint_path(tcfg, train.fingerprint, ck_dir)
        if not pre_path.exists():
            say(f"[{name} pre] no checkpoint {pre_path}: training ({tcfg.epochs} epochs) ...")
            train_model(tcfg, train, val, test, out=pre_path, device=str(device), progress=progress)
        model, info = load_checkpoint(pre_path, expected_model=name, device=device)
        stages.append(Stage(name, "pre", pre_path, info["sha256"], read_sidecar(pre_path), model))
        if "post" in cfg["models"]["stages"]:
            ucfg = TuneConfig(**{**cfg["tune"], **({"unfreeze": tuple(cfg["tune"]["unfreeze"])}
                                                    if "unfreeze" in cfg["tune"] else {})})
            ucfg.validate()
            post_path = default_tuned_path(pre_path, ucfg)
            if not post_path.exists():
                say(f"[{name} post] no checkpoint {post_path}: tuning {','.join(ucfg.unfreeze)} ...")
                tune_model(pre_path, ucfg, train, val, test, out=post_path, device=str(device), progress=progress)
            model, info = load_checkpoint(post_path, expected_model=name, device=device)
            stages.append(Stage(name, "post", post_path, info["sha256"], read_sidecar(post_path), model))
    return stages


def _background(train: ImageSplit, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(train), generator=gen)[: min(n, len(train))]
    return train.images[idx.sort().values]


def _select_images(test: ImageSplit, preds: Tensor, cfg: RunConfig, seed: int) -> Tensor:
    """All images, or ``per_cell`` images of each confusion cell of the pre model (seeded)."""
    if cfg["data"]["sample"] == "all":
        return torch.arange(len(test))
    cells = np.array(confusion_cells(test.labels.numpy(), preds.numpy()))
    rng = np.random.default_rng(seed)
    chosen = []
    for cell in CELLS:
        idx = np.flatnonzero(cells == cell)
        chosen += sorted(rng.choice(idx, size=min(cfg["data"]["per_cell"], len(idx)), replace=False).tolist())
    return torch.as_tensor(sorted(chosen), dtype=torch.long)


def _example_positions(labels: Tensor, preds: Tensor, per_cell: int) -> list[int]:
    cells = confusion_cells(labels.numpy(), preds.numpy())
    out = []
    for cell in CELLS:
        out += [i for i, c in enumerate(cells) if c == cell][:per_cell]
    return out


# ----------------------------------------------------------------------------- one unit of work


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _source_digest(obj: Any) -> str:
    """Hash of the source of the module defining ``obj``: changed code invalidates cached results."""
    import inspect

    try:
        return hashlib.sha256(inspect.getsource(inspect.getmodule(obj)).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source (compiled plug-in): fall back to its name
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def _explainer_code_digest(obj: Any) -> str:
    """:func:`_source_digest` of an adapter plus every module of the in-repo ``explainers`` and
    ``models`` packages: an adapter's values also depend on the helpers it calls (the batched
    engines in explainers/rescale.py and explainers/expected_gradients.py, explainers/base.py,
    models/safety.py), so a change there invalidates cached attributions too."""
    import explainers
    import models

    h = hashlib.sha256(_source_digest(obj).encode())
    for package in (explainers, models):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _tensor_digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class _Planned:
    """A unit of work with the per-image facts its score rows carry."""

    stage: Stage
    explainer: str
    index: Tensor
    labels: Tensor
    preds: Tensor
    cells: list[str]
    unit: "_Unit"


EXECUTORS = ("local", "ray")


def execute_units(units: list["_Unit"], *, executor: str = "local", ray_address: str | None = None,
                  say=print, progress: bool = True) -> list[dict[str, Any]]:
    """Results of every unit, in order: cached ones are read, the others computed and cached as
    each finishes (so a killed run resumes). ``executor="ray"``: one Ray task per pending unit
    (:mod:`bench.ray_executor`); results are written here, by the driver, to the same cache."""
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    results: list[dict[str, Any] | None] = []
    cached_attr: dict[int, dict[str, Any]] = {}
    for i, u in enumerate(units):
        res, attr = u.load_cached()
        results.append(res)
        if res is None and attr is not None:
            cached_attr[i] = attr
    pending = [i for i, r in enumerate(results) if r is None]
    bar = tqdm(total=len(units), initial=len(units) - len(pending), desc="units (model, stage, explainer, shard)",
               unit="unit", disable=not progress)
    if executor == "local":
        computed = ((i, units[i].compute(cached_attr.get(i))) for i in pending)
    else:
        from bench.ray_executor import compute_on_ray

        computed = compute_on_ray(units, pending, cached_attr, address=ray_address)
    for i, (attr, scores) in computed:
        results[i] = units[i].finish(attr, scores, say, attr_was_cached=i in cached_attr)
        bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]


class _Unit:
    """(checkpoint, explainer + params, shard): cached attributions, then cached metric scores."""

    def __init__(self, cfg, stage: Stage, explainer: str, params: dict, fingerprint: str, index: Tensor,
                 images: Tensor, labels: Tensor, targets: Tensor, masks: Tensor | None, background: Tensor,
                 device: torch.device, run_dir: Path) -> None:
        self.cfg, self.stage, self.explainer, self.params = cfg, stage, explainer, params
        self.index, self.labels, self.targets, self.masks = index, labels, targets, masks
        self.images, self.background, self.device = images, background, device
        self.attr_key = _key({"v": CACHE_VERSION, "ckpt": stage.sha256, "explainer": explainer, "params": params,
                              "code": _explainer_code_digest(EXPLAINERS.get(explainer).obj),
                              "output": cfg["explain"]["output"], "data": fingerprint,
                              "index": index.tolist(), "targets": targets.tolist(),
                              "background": _tensor_digest(background), "seed": cfg["seed"],
                              "device": device.type})
        self.score_key = _key({"attr": self.attr_key, "metrics": cfg["metrics"]["names"], "code": _source_digest(M),
                               "params": cfg["metrics"]["params"], "attribution": cfg["metrics"]["attribution"],
                               "curves": cfg["metrics"]["curves"]})
        self.attr_path = run_dir / "cache" / "attributions" / f"{self.attr_key}.pt"
        self.score_path = run_dir / "cache" / "scores" / f"{self.score_key}.json"

    def load_cached(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(finished result, cached attribution): both from the cache when present and readable."""
        attr = self._load_attr()
        scores = _read_json(self.score_path) if attr is not None else None
        if scores is not None:
            return {**scores, "values": attr["values"] if attr["status"] == "ok" else None, "cached": True}, attr
        return None, attr

    def compute(self, attr: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(attribution record, scores): explains unless ``attr`` is given, then scores. No file I/O,
        so it can run in another process (the Ray executor)."""
        if attr is None:
            attr = self._explain()
        return attr, self._score(attr)

    def finish(self, attr: dict[str, Any], scores: dict[str, Any], say, *, attr_was_cached: bool) -> dict[str, Any]:
        """Write the unit's cache entries atomically and report it in one line."""
        if not attr_was_cached:
            atomic_torch_save(self.attr_path, attr)
        atomic_write_json(self.score_path, scores)
        tag = "ok" if scores["status"] == "ok" else f"FAILED: {scores['message']}"
        say(f"  {self.stage.model_name} {self.stage.stage} {self.explainer:<28} images {int(self.index[0])}.."
            f"{int(self.index[-1])}: {scores['seconds_per_image']:.3f} s/image, {scores['peak_mem_mb']:.0f} MB, {tag}")
        return {**scores, "values": attr["values"] if attr["status"] == "ok" else None, "cached": False}

    def _load_attr(self) -> dict[str, Any] | None:
        if not self.attr_path.exists():
            return None
        try:
            return torch.load(self.attr_path, weights_only=True)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            return None

    def _explain(self) -> dict[str, Any]:
        model = with_output_space(self.stage.model, self.cfg["explain"]["output"]).eval()
        x, y = self.images.to(self.device), self.targets.to(self.device)
        bg = self.background.to(self.device)
        torch.manual_seed(self.cfg["seed"])
        t0 = time.perf_counter()
        try:
            with measure_peak_memory(self.device) as mem:
                t0 = time.perf_counter()  # after the memory baseline is taken (gc, malloc_trim)
                attr = run_explainer(self.explainer, model, x, y, background=bg, **self.params)
                seconds = time.perf_counter() - t0
        except Exception as exc:  # recorded, the run goes on
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            return {"status": "error", "message": msg, "seconds": time.perf_counter() - t0, "peak_mem_mb": math.nan,
                    "values": None, "outputs": None, "base_values": None, "meta": "{}"}
        return {"status": "ok", "message": "", "seconds": seconds, "peak_mem_mb": mem.peak_mb,
                "values": attr.values.detach().float().cpu(),
                "outputs": None if attr.outputs is None else attr.outputs.detach().float().cpu(),
                "base_values": None if attr.base_values is None else attr.base_values.detach().float().cpu(),
                "meta": json.dumps(attr.meta, default=str)}

    def _score(self, attr: dict[str, Any]) -> dict[str, Any]:
        n = len(self.index)
        base = {"status": attr["status"], "message": attr["message"], "seconds_per_image": attr["seconds"] / n,
                "peak_mem_mb": attr["peak_mem_mb"], "metrics": {}, "metric_status": {}, "curves": {}}
        if attr["status"] != "ok":  # every metric of a failed explainer carries its error
            for name in self.cfg["metrics"]["names"]:
                base["metrics"][name] = [math.nan] * n
                base["metric_status"][name] = ["error: " + attr["message"]] * n
            return base
        model = self.stage.model
        x, y = self.images.to(self.device), self.targets.to(self.device)
        values = M.preprocess_attributions(attr["values"].to(self.device), self.cfg["metrics"]["attribution"])
        a = Attribution(values=values,
                        outputs=None if attr["outputs"] is None else attr["outputs"].to(self.device),
                        base_values=None if attr["base_values"] is None else attr["base_values"].to(self.device))
        raw = Attribution(values=attr["values"].to(self.device), outputs=a.outputs, base_values=a.base_values)
        additive = bool(EXPLAINERS.get(self.explainer).meta.get("additive", False))
        context = M.MetricContext(masks=None if self.masks is None else self.masks.to(self.device),
                                  explain=self._explain_on, additive=additive)
        for name in self.cfg["metrics"]["names"]:
            params = dict(self.cfg["metrics"]["params"].get(name, {}))
            # additivity is a property of the raw attribution, not of a preprocessed ranking
            use = raw if M.METRICS.get(name).meta.get("kind") == "axiomatic" else a
            try:
                # metrics that re-run the explainer need gradients; the others never do
                needs_grad = "explain" in M.METRICS.get(name).meta.get("needs", ())
                with contextlib.nullcontext() if needs_grad else torch.no_grad():
                    v = M.compute_metric(name, model, x, y, use, context=context, **params)
                vals = [float(f) for f in v.detach().float().cpu()]
                base["metrics"][name] = vals
                base["metric_status"][name] = ["ok" if math.isfinite(f) else "n/a" for f in vals]
            except Exception as exc:
                base["metrics"][name] = [math.nan] * n
                base["metric_status"][name] = ["error: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:300]] * n
        if self.cfg["metrics"]["curves"]:
            with torch.no_grad():
                for curve, mode, metric in (("deletion", "delete", "deletion_auc"), ("insertion", "insert", "insertion_auc")):
                    p = {**M.metric_params(metric), **self.cfg["metrics"]["params"].get(metric, {})}
                    sub = M.make_substrate(x, p["substrate"], blur_sigma=p["blur_sigma"])
                    c = M.perturbation_curve(model, x, y, M.rank_pixels(values), sub, p["steps"], mode=mode,
                                             chunk_size=p["chunk_size"])
                    n_pix = x.shape[2] * x.shape[3]
                    base["curves"][curve] = {"fractions": [b / n_pix for b in M.curve_boundaries(n_pix, p["steps"])],
                                             "probs": c.float().cpu().tolist()}
        return base

    def _explain_on(self, other: nn.Module) -> Tensor:
        """Re-run this unit's explainer on another model (for randomisation metrics)."""
        model = with_output_space(other, self.cfg["explain"]["output"]).eval()
        torch.manual_seed(self.cfg["seed"])
        return run_explainer(self.explainer, model, self.images.to(self.device), self.targets.to(self.device),
                             background=self.background.to(self.device), **self.params).values


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _rows(st: Stage, explainer: str, index, labels, preds, cells, res) -> list[list[Any]]:
    rows = []
    for name in res["metrics"]:
        hib = bool(M.METRICS.get(name).meta["higher_is_better"])
        for k, (i, l, p, c) in enumerate(zip(index, labels, preds, cells)):
            status = res["metric_status"][name][k]
            state, msg = ("error", status[7:]) if status.startswith("error: ") else (status, "")
            rows.append([st.model_name, st.stage, explainer, name, int(i), int(l), int(p), c,
                         res["metrics"][name][k], state, msg, hib, res["seconds_per_image"], res["peak_mem_mb"]])
    return rows


def _curve_rows(st: Stage, explainer: str, index, res) -> list[list[Any]]:
    rows = []
    for curve, c in res.get("curves", {}).items():
        for k, i in enumerate(index):
            rows += [[st.model_name, st.stage, explainer, curve, int(i), f, p]
                     for f, p in zip(c["fractions"], c["probs"][k])]
    return rows


# ----------------------------------------------------------------------------- outputs


def write_outputs(run_dir: Path, scores: pd.DataFrame, curves: pd.DataFrame | None,
                  prepost_models: dict[str, Any] | None, examples: dict[str, Any] | None, *,
                  figures: bool = True) -> list[Path]:
    """scores.csv, curves.csv, attributions, tables and figures; each file written atomically."""
    from bench import leaderboard, plots

    run_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(run_dir / "scores.csv", scores.to_csv(index=False, float_format="%.8g",
                                                                       lineterminator="\n"))]
    # tables are built from the file as written, so `bench report` reproduces them byte for byte
    scores = leaderboard.read_scores(run_dir / "scores.csv")
    if curves is not None and len(curves):
        written.append(atomic_write_text(run_dir / "curves.csv", curves.to_csv(index=False, float_format="%.8g",
                                                                               lineterminator="\n")))
        curves = pd.read_csv(run_dir / "curves.csv")
    if prepost_models:
        written.append(atomic_write_json(run_dir / "prepost_models.json", prepost_models))
    attr_path = None
    if examples:
        attr_path = plots.save_attribution_examples(run_dir / "attributions.npz", examples)
        written.append(attr_path)
    written += leaderboard.write_tables(run_dir, scores, curves=curves, prepost_models=prepost_models)
    if figures:
        written += plots.write_figures(run_dir, scores, curves=curves, attributions_path=attr_path)
    return written


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["torch"] = torch.__version__  # with the build tag (+cpu, +cu130, ...)
    out["cuda"] = torch.version.cuda
    return out


def _write_manifest(run_dir: Path, cfg: RunConfig, device, test: ImageSplit, stages: list[Stage],
                    timings: dict[str, float], unit_log: list[dict], written: list[Path], executor: str) -> None:
    manifest = {
        "config": cfg.values,
        "config_source": cfg.source,
        "command": " ".join(["python -m bench", *sys.argv[1:]]) if sys.argv and "bench" in sys.argv[0] else None,
        "versions": package_versions(),
        "platform": machine_info(),
        "device": str(device),
        "executor": executor,
        "allocator": allocator_state(),
        "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "git": _git_commit(),
        "data": {"dataset": test.name, "split": test.split, **{k: v for k, v in test.info.items()}},
        "checkpoints": [{"model": s.model_name, "stage": s.stage, "path": str(s.path), "sha256": s.sha256,
                         "test": {k: s.sidecar["test"].get(k) for k in ("acc", "auc", "sensitivity", "specificity")},
                         "train_config": s.sidecar.get("config")} for s in stages],
        "wall_seconds": {k: round(v, 2) for k, v in timings.items()},
        "units": {"total": len(unit_log), "from_cache": sum(u["cached"] for u in unit_log),
                  "failed": [u for u in unit_log if u["status"] != "ok"]},
        "files": sorted(str(p.relative_to(run_dir)) for p in written),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
