"""``python -m bench run``: a validated config -> units of work -> cache -> scores -> tables, figures, manifest.

The unit of work is one (checkpoint, explainer with its parameters, shard of images). Each unit's
attributions and its metric scores are cached in ``results/<run>/cache/`` under a content key
(checkpoint hash, explainer and parameters, code, data fingerprint, image indices, targets,
background, seed, device type), written atomically as soon as the unit finishes. A killed run
resumes where it stopped; re-running a finished run recomputes nothing and rewrites
byte-identical tables. An explainer that raises is recorded (status and message) and the run
goes on.
"""

from __future__ import annotations

import time
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.core.precision import DEFAULT_PRECISION
from bench.core.device import resolve_device
from bench.core.schema import (
    CURVE_COLUMNS,
    SAMPLE_COLUMNS,
    SCORE_COLUMNS,
    SUBSTRATE_COLUMNS,
    SUBSTRATE_CURVE_COLUMNS,
    stage_key,
)
from bench.metrics import METRICS
from bench.report.plots import AttributionExamples, ModelExamples
from bench.report.html import REPORT, write_html_report
from bench.report.rebuild import write_outputs
from bench.run import meta
from bench.run import plan as P
from bench.run.config import RunConfig
from bench.run.executors import execute_units
from bench.run.manifest import cost_summary, time_passes, write_manifest
from bench.run.rundir import claim
from bench.run.similarity import MAPS, pre_maps, similarity_table, write_maps
from bench.stats.classifier import compare_classifiers


def run(cfg: RunConfig, *, progress: bool = True, executor: str = "local", ray_address: str | None = None) -> Path:
    """Execute a validated config; returns the run directory.

    ``executor="local"`` computes the units in this process; ``"ray"`` fans them out as Ray tasks
    (:func:`bench.run.executors.execute_units`). Both fill the same cache and give the same tables.
    """
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.results_dir) / cfg.name
    say = tqdm.write if progress else (lambda s: print(s, flush=True))
    with claim(run_dir, cfg):  # one run per directory, one config per directory
        return _run(cfg, run_dir, device, say, progress, executor, ray_address)


def _run(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    say: Callable[[str], None],
    progress: bool,
    executor: str,
    ray_address: str | None,
) -> Path:
    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()
    train, val, test = P.load_data(cfg)
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    stages = P.ensure_checkpoints(cfg, train, val, test, device, progress, say)
    selectors = P.selection_stages(cfg, stages, train, val, test, device, progress, say)
    timings["checkpoints"] = time.perf_counter() - t

    reference = P.background(train, cfg.data.background_size, cfg.seed)
    sample: list[dict] = []
    plan, examples = P.plan_units(cfg, stages, test, reference, device, run_dir, sample, selectors)
    return run_plan(
        cfg,
        run_dir,
        device,
        test,
        stages,
        plan,
        examples,
        timings,
        t_all,
        say=say,
        progress=progress,
        sample=pd.DataFrame(sample, columns=list(SAMPLE_COLUMNS)) if sample else None,
        executor=executor,
        ray_address=ray_address,
        selection=P.selection_record(selectors),
    )


def run_plan(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    test: P.ImageSplit,
    stages: list[P.Stage],
    plan: list[P.Planned],
    examples: dict[str, P.Examples],
    timings: dict[str, float],
    t_all: float,
    *,
    say: Callable[[str], None],
    progress: bool,
    executor: str = "local",
    ray_address: str | None = None,
    figures: bool | None = None,
    sample: pd.DataFrame | None = None,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Everything after planning, shared by ``bench run`` and ``bench.evaluate``: the units executed
    through the cache in ``run_dir``, the tables, the figures (``figures``: default the config's)
    and the manifest (``test``: the explained images' split; ``timings``: the phases so far since
    ``t_all``; ``sample``: the sampling design, written as ``sample.csv``; ``selection``: the models
    that picked the images, for the manifest). With ``report.maps``, also ``maps.npz`` (every pre
    map). Returns ``run_dir``."""
    units = [p.unit for p in plan]
    precision = cfg.metrics.precision
    pass_seconds = time_passes(stages, units, precision)

    t = time.perf_counter()
    results = execute_units(units, executor=executor, ray_address=ray_address, say=say, progress=progress)
    timings["explain_and_metrics"] = time.perf_counter() - t

    main = [(p, r) for p, r in zip(plan, results) if not p.reference]  # reference units only explain
    tables = _tables([p for p, _ in main], [r for _, r in main])
    tables["similarity"] = similarity_table(cfg, plan, results)
    tables["sample"] = sample
    if cfg.reliability.enabled and cfg.reliability.meta.enabled:
        runs, floor = meta.estimate(cfg, [p for p, _ in main], pass_seconds)
        say(
            f"MetaQuantus: {runs} explainer and metric runs on {cfg.reliability.meta.n_images} images per "
            f"stage; about {'?' if floor is None else f'{floor:.0f}'} s at the floor (cached as it goes)"
        )
        t = time.perf_counter()
        tables["meta"], tables["meta_scores"] = meta.run_meta(cfg, [p for p, _ in main], [r for _, r in main], say)
        timings["meta"] = time.perf_counter() - t

    t = time.perf_counter()
    written = write_outputs(
        run_dir,
        tables,
        _model_comparisons(stages, test),
        _attribution_examples([p for p, _ in main], [r for _, r in main], examples),
        figures=cfg.figures.enabled if figures is None else figures,
    )
    (run_dir / MAPS).unlink(missing_ok=True)  # a file of an earlier config must not be combined
    if cfg.report.maps:
        written.append(write_maps(run_dir / MAPS, pre_maps([p for p, _ in main], [r for _, r in main])))
    timings["tables_and_figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    unit_log = [
        {
            "model": p.stage.model_name,
            "stage": p.stage.stage,
            "explainer": p.explainer,
            "images": [int(i) for i in p.index],
            "cached": r["cached"],
            "status": r["status"],
            "reference": p.reference,
        }
        for p, r in zip(plan, results)
    ]
    cost = cost_summary(units, results, pass_seconds, timings["explain_and_metrics"], precision)
    write_manifest(
        run_dir, cfg, device, test, stages, timings, unit_log, [*written, run_dir / REPORT], executor, cost, selection
    )
    write_html_report(run_dir)  # after the final manifest it shows: the page `bench report` rebuilds
    say(summary_line(plan, unit_log, timings["total"], cost["explain_and_metrics"]["ratio"], precision))
    return run_dir


def summary_line(
    plan: list[P.Planned],
    unit_log: list[dict[str, Any]],
    seconds: float,
    ratio: float | None,
    precision: str = DEFAULT_PRECISION,
) -> str:
    """The run's last line, in plain words: what was explained and scored, in how long, against the
    least time the model passes it needs would take (manifest.json: cost), what came from the cache,
    what failed."""
    scored = [p for p in plan if not p.reference]
    images = len({(p.stage.arch, int(i)) for p in scored for i in p.index})
    explainers = len({p.explainer for p in scored})
    stages = len({(p.stage.model_name, p.stage.stage) for p in scored})
    n_cached = sum(u["cached"] for u in unit_log)
    failed = sorted({(u["model"], u["stage"], u["explainer"]) for u in unit_log if u["status"] != "ok"})
    plural = lambda k, word: f"{k} {word}{'' if k == 1 else 's'}"  # noqa: E731
    return (
        f"explained and scored {plural(images, 'image')} with {plural(explainers, 'explainer')} on "
        f"{plural(stages, 'model stage')} in {seconds:.0f} s"
        + (
            f" ({ratio:.1f} x the time of the model passes it needs"
            f"{'' if precision == DEFAULT_PRECISION else f', scoring in {precision}'})"
            if ratio is not None
            else ""
        )
        + (f"; {n_cached} of {len(unit_log)} units of work from the cache" if n_cached else "")
        + (
            f"; failed: {', '.join('/'.join(f) for f in failed)} (failures are not cached: the next run retries them)"
            if failed
            else ""
        )
    )


def _tables(plan: list[P.Planned], results: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """scores (one row per model, stage, explainer, metric, image), curves (one row per curve
    point), and for the reliability card the substrate scores and their mean curves."""
    records: list[list[Any]] = []
    curves: list[list[Any]] = []
    substrates: list[list[Any]] = []
    sub_curves: dict[tuple[str, ...], list[Any]] = {}
    for p, res in zip(plan, results):
        st = p.stage
        for name in res["metrics"]:
            hib = bool(METRICS.get(name).meta["higher_is_better"])
            for k, (i, label, pred, cell) in enumerate(zip(p.index, p.labels, p.preds, p.cells)):
                status = res["metric_status"][name][k]
                state, _, msg = status.partition(": ")  # "error: <message>", "n/a: <reason>", "ok", "n/a"
                records.append(
                    [
                        st.model_name,
                        st.stage,
                        p.explainer,
                        name,
                        int(i),
                        int(label),
                        int(pred),
                        cell,
                        res["metrics"][name][k],
                        state,
                        msg,
                        hib,
                        res["seconds_per_image"],
                        res["peak_mem_mb"],
                    ]
                )
        for curve, c in res.get("curves", {}).items():
            for k, i in enumerate(p.index):
                curves += [
                    [st.model_name, st.stage, p.explainer, curve, int(i), f, prob]
                    for f, prob in zip(c["fractions"], c["probs"][k])
                ]
        for metric, by_substrate in res.get("substrates", {}).items():
            if metric == "(computed)":
                continue
            hib = bool(METRICS.get(metric).meta["higher_is_better"])
            for sub, e in by_substrate.items():
                substrates += [
                    [st.model_name, st.stage, p.explainer, metric, sub, int(i), v, s, hib]
                    for i, v, s in zip(p.index, e["values"], e["status"])
                ]
        for curve, c in res.get("substrate_curves", {}).items():
            for sub, probs in c["probs"].items():
                acc = sub_curves.setdefault(
                    (st.model_name, st.stage, p.explainer, curve, sub), [c["fractions"][sub], []]
                )
                acc[1] += probs
    scores = pd.DataFrame.from_records(records, columns=list(SCORE_COLUMNS))
    scores = scores.sort_values(["model", "stage", "explainer", "metric", "image"], kind="stable").reset_index(
        drop=True
    )
    mean_curves = [
        [*key, f, float(np.mean(col)), len(col)]
        for key, (fractions, rows) in sorted(sub_curves.items())
        for f, col in zip(fractions, np.asarray(rows, dtype=np.float64).T)
    ]
    subs = pd.DataFrame.from_records(substrates, columns=list(SUBSTRATE_COLUMNS))
    subs = subs.sort_values(["model", "stage", "explainer", "metric", "substrate", "image"], kind="stable")
    return {
        "scores": scores,
        "curves": pd.DataFrame.from_records(curves, columns=list(CURVE_COLUMNS)),
        "substrates": subs.reset_index(drop=True),
        "substrate_curves": pd.DataFrame.from_records(mean_curves, columns=list(SUBSTRATE_CURVE_COLUMNS)),
    }


def _model_comparisons(stages: list[P.Stage], test: P.ImageSplit) -> dict[str, Any]:
    """``prepost_models.json``: each tuned model against its parent (keyed by the model label for
    "post", by "label · post:<variant>" for variants), and the tuning variants of a model against
    each other ("label · post:a vs post:b")."""
    out: dict[str, Any] = {}
    labels = test.labels.numpy()
    for s in stages:
        if s.stage != "pre":
            out[s.model_name if s.stage == "post" else f"{s.model_name} · {s.stage}"] = s.sidecar["comparison"]
    for label in dict.fromkeys(s.model_name for s in stages):
        posts = sorted(
            (s for s in stages if s.model_name == label and s.stage != "pre"), key=lambda s: stage_key(s.stage)
        )
        for a, b in combinations(posts, 2):
            out[f"{label} · {a.stage} vs {b.stage}"] = compare_classifiers(
                labels,
                a.sidecar["test"],
                b.sidecar["test"],
                np.asarray(a.sidecar["test_preds"]),
                np.asarray(b.sidecar["test_preds"]),
                num_classes=len(test.class_names),
            )
    return out


def _attribution_examples(
    plan: list[P.Planned], results: list[dict[str, Any]], examples: dict[str, P.Examples]
) -> AttributionExamples:
    """Each model's example images with the maps of every (stage, explainer) whose shards all succeeded."""
    shards: dict[tuple[str, str, str], list[Any]] = {}
    for p, res in zip(plan, results):
        shards.setdefault((p.stage.model_name, p.stage.stage, p.explainer), []).append(res.get("values"))
    # ModelExamples takes the runner's tensors as they are (its docstring; it converts them on save)
    models = {
        m: ModelExamples(images=e.images, labels=e.labels, index=e.index, cells=e.cells)  # type: ignore[arg-type]
        for m, e in examples.items()
    }
    for (model, stage, name), values in shards.items():
        if model in examples and all(v is not None for v in values):
            models[model].maps[(stage, name)] = torch.cat(values)[examples[model].positions]  # type: ignore[assignment]
    return AttributionExamples(models=models)
