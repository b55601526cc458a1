"""``python -m bench truth``: do the metrics measure faithfulness? The planted-marker test.

A config whose data set is ``marked`` (datasets/marked.py) runs once per (polarity, training
condition) of its ``[truth]`` table, each an ordinary run in ``<results_dir>/<name>/runs/<condition>-<polarity>``
(its own cache, tables, card and manifest; checkpoints in the parent's checkpoint folder). Every
sub-run explains the same test images (the marked test split is the same under every condition).
Then, for every trained model, the model truth is measured by intervention on the same images:
the target score with the marker and without it (``ImageSplit.counterfactual``), everything else
equal; and on the whole test split the accuracy with and without the marker. The tables
(bench/report/truth.py) grade each explainer by whether its share of attribution on the marker
follows the model's use of it, and each faithfulness metric by whether its ranking of the
explainers agrees with that truth; they then rebuild every sub-run, its reliability card with a
``truth`` column of that agreement.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.io import atomic_write_json, read_regular
from bench.core.machine import machine_info
from bench.report.truth import RELIANCE_COLUMNS, write_truth
from bench.run import plan as P
from bench.run import runner
from bench.run.config import RunConfig, checkpoint_dir, revalidated, stats_settings
from bench.run.manifest import git_commit, package_versions
from bench.run.rundir import MARKER, claim
from datasets import ImageSplit, load_split
from models.training import predict_outputs

BATCH = 256  # images per forward pass (the recorded truth tables were computed in batches of 256)


def sub_runs(cfg: RunConfig) -> list[tuple[str, str, RunConfig]]:
    """(condition, polarity, config) of every sub-run of a truth config."""
    if cfg.data.dataset != "marked":
        raise BenchError(
            f'bench truth needs marked data (data.dataset = "marked"), got {cfg.data.dataset!r}; see configs/truth.toml'
        )
    if cfg.explain.target != "label":
        raise BenchError('bench truth explains the same class under every model: set explain.target = "label"')
    if "mask_share" not in cfg.metrics.names:
        raise BenchError('bench truth grades explainers by mask_share: add "mask_share" to metrics.names')
    out = []
    parent = Path(cfg.results_dir) / cfg.name
    for polarity in cfg.truth.polarities:
        for condition in cfg.truth.conditions:
            data = replace(cfg.data, options={**cfg.data.options, "condition": condition, "polarity": polarity})
            out.append(
                (
                    condition,
                    polarity,
                    revalidated(
                        replace(
                            cfg,
                            name=f"{condition}-{polarity}",
                            results_dir=str(parent / "runs"),
                            checkpoint_dir=str(checkpoint_dir(cfg)),
                            data=data,
                        )
                    ),
                )
            )
    return out


def _with_and_without(split: ImageSplit) -> tuple[Tensor, Tensor, Tensor]:
    """(planted (N,): the image has the marker, every image with the marker, every image without it)."""
    if split.masks is None or split.counterfactual is None:
        raise BenchError(
            f"the {split.split} split of {split.name!r} has no marker masks or counterfactual images; "
            f'bench truth needs marked data (data.dataset = "marked")'
        )
    planted = split.masks.flatten(1).any(1)
    on = planted.view(-1, 1, 1, 1)
    with_marker = torch.where(on, split.images, split.counterfactual)
    return planted, with_marker, torch.where(on, split.counterfactual, split.images)


def reliance_rows(
    cfg: RunConfig, condition: str, polarity: str, device: torch.device, progress: bool, say: Callable[[str], None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model and explained image: the target score and p(class 1) with and without the marker;
    per model on the whole test split: accuracy with the marker on every image, without it on any."""
    train, val, test = P.load_data(cfg)
    stages = [s for s in P.ensure_checkpoints(cfg, train, val, test, device, progress, say) if s.stage == "pre"]
    full = load_split("marked", "test", **{**cfg.data.options, "test_n": 0})
    logit = cfg.explain.output == "logit"
    planted, with_m, without = _with_and_without(test)
    _, f_with, f_without = _with_and_without(full)
    rows, models = [], []
    for st in stages:
        a, b = (predict_outputs(st.model, x, device=device, batch_size=BATCH) for x in (with_m, without))
        pa, pb = a.softmax(1), b.softmax(1)
        t = test.labels
        sa = (a if logit else pa).gather(1, t.view(-1, 1)).squeeze(1)
        sb = (b if logit else pb).gather(1, t.view(-1, 1)).squeeze(1)
        for i in range(len(t)):
            rows.append(
                {
                    "condition": condition,
                    "polarity": polarity,
                    "model": st.model_name,
                    "seed": st.seed,
                    "image": i,
                    "label": int(t[i]),
                    "planted": bool(planted[i]),
                    "score_with": float(sa[i]),
                    "score_without": float(sb[i]),
                    "p1_with": float(pa[i, 1]),
                    "p1_without": float(pb[i, 1]),
                }
            )
        fa, fb = (predict_outputs(st.model, x, device=device, batch_size=BATCH) for x in (f_with, f_without))
        d = (fa.softmax(1)[:, 1] - fb.softmax(1)[:, 1]).numpy()
        models.append(
            {
                "condition": condition,
                "polarity": polarity,
                "model": st.model_name,
                "seed": st.seed,
                "checkpoint_sha256": st.sha256,
                "n_test": len(full),
                "acc_without": float((fb.argmax(1) == full.labels).float().mean()),
                "acc_with": float((fa.argmax(1) == full.labels).float().mean()),
                "_reliance": d,
                "_labels": full.labels.numpy(),
            }
        )
    return pd.DataFrame(rows, columns=list(RELIANCE_COLUMNS)), pd.DataFrame(models)


def run_truth(cfg: RunConfig, *, progress: bool = True) -> Path:
    """Every sub-run, the model truth of every model, the truth tables; returns the parent folder.

    The parent folder is claimed like a run folder (one truth run at a time, one config per folder,
    nothing followed through a link); its ``manifest.json`` records the config, the sub-runs with
    their data fingerprints and checkpoint hashes, package versions and the git commit."""
    subs = sub_runs(cfg)
    device = resolve_device(cfg.device)
    parent = Path(cfg.results_dir) / cfg.name
    runs, reliance, models = [], [], []
    with claim(parent, cfg):
        for condition, polarity, sub in subs:
            say(f"[truth] {condition} · {polarity}: {Path(sub.results_dir) / sub.name}")
            run_dir = runner.run(sub, progress=progress)
            record = json.loads(read_regular(run_dir / MARKER))
            runs.append(
                {
                    "condition": condition,
                    "polarity": polarity,
                    "run": run_dir.relative_to(parent).as_posix(),
                    "data": record.get("data"),
                    "checkpoints": record.get("checkpoints"),
                }
            )
            r, m = reliance_rows(sub, condition, polarity, device, progress, say)
            reliance.append(r)
            models.append(m)
        write_truth(
            parent,
            pd.DataFrame([{k: r[k] for k in ("condition", "polarity", "run")} for r in runs]),
            pd.concat(reliance, ignore_index=True),
            pd.concat(models, ignore_index=True),
            name=cfg.name,
            options=cfg.data.options,
            stats=stats_settings(cfg),
            reliance_margin=cfg.truth.reliance_margin,
            share_margin=cfg.truth.share_margin,
            bootstrap=cfg.truth.bootstrap,
        )
        atomic_write_json(
            parent / MARKER,
            {
                "kind": "truth",
                "status": "done",
                "config": cfg.to_dict(),
                "config_source": cfg.source,
                "runs": runs,
                "versions": package_versions(),
                "git": git_commit(),
                "machine": machine_info(),
            },
        )
    return parent


def say(text: str) -> None:
    print(text, flush=True)
