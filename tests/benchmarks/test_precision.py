"""Scoring precision: the study's metrics on the same attributions in float32 and in reduced precision.

The config is configs/study.toml (its metrics and their parameters) on one trained checkpoint, the
study's first seed's pre model (``resnet18-28px-seed0-<key>.pt``, looked up under
``BENCH_CHECKPOINT_DIR``, default ``results/checkpoints``; the benchmark is skipped without it or
without the data file: ``python -m bench train --model resnet18`` makes it), the study's
per-confusion-cell image sample at ``BENCH_PRECISION_PER_CELL`` images per cell (default 2) and
the explainers ``BENCH_PRECISION_EXPLAINERS`` (default the card's six). Each unit is explained once
in float32 and its attributions are scored by the unit's own scoring (``Unit.score``) in float32 and in
each of ``BENCH_PRECISIONS`` (default ``bfloat16``; ``float16`` too on CUDA), the precisions'
order alternating from unit to unit so that a change of load falls on both.

``randomisation_similarity`` is left out: its passes are the explainer's, re-run on randomised
models, which stay float32 whatever ``metrics.precision`` says (tests/test_precision.py), so its
scores and cost are the same in every precision by construction.

Per metric: the speedup (float32 seconds / reduced seconds, summed over the units), each
precision's floor ratio against its own floor (the metrics' forward passes timed in that
precision, :func:`bench.run.manifest.time_passes`), the max and mean |score difference| per image,
the largest change of a paired mean difference between two explainers (what a verdict reads), the
paired verdicts and dominance ranks that change (:func:`bench.report.comparisons.compare`, the
run's statistics), and the errors over the smallest detectable difference of the metric in the
card's power table (results/published/card/reliability_power.csv: the smallest ``mde`` of the
metric's rows). A precision qualifies for a metric when the largest paired-mean change is below a
tenth of that difference and no verdict changes. Render a saved run with
``python -m bench.perf.floor results/benchmarks/<machine>/NNNN_precision.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from time import perf_counter

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core.precision import CUDA_ONLY, DEFAULT_PRECISION, PRECISIONS
from bench.metrics import METRICS
from bench.perf.steps import card_mde
from bench.report.comparisons import compare, goodness_tables
from bench.run import cache
from bench.run import plan as P
from bench.run.config import load_config, revalidated, stats_settings
from bench.run.manifest import cost_summary, time_passes
from bench.stats.settings import StatsSettings

from .conftest import _positive, load_average, trained_stages

pytestmark = pytest.mark.benchmark

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "configs" / "study.toml"
CARD_POWER = REPO / "results" / "published" / "card" / "reliability_power.csv"
CARD_EXPLAINERS = "shap.gradient,shap.partition,shap.deep,captum.integrated_gradients,random,edge"
SAME_IN_EVERY_PRECISION = ("randomisation_similarity",)  # its passes are the explainer's (float32)


def _reduced(device: torch.device) -> list[str]:
    raw = os.environ.get("BENCH_PRECISIONS", "").strip()
    names = (
        [p.strip() for p in raw.split(",") if p.strip()]
        if raw
        else ["bfloat16"] + (list(CUDA_ONLY) if device.type == "cuda" else [])
    )
    bad = [p for p in names if p not in PRECISIONS or p == DEFAULT_PRECISION]
    if bad or not names:
        raise pytest.UsageError(
            f"BENCH_PRECISIONS: {bad or '(none)'} are not reduced precisions; "
            f"use some of {', '.join(p for p in PRECISIONS if p != DEFAULT_PRECISION)}"
        )
    return names


def _config(tmp_path: Path, device: torch.device):
    from datasets.pneumoniamnist import resolve_data_file

    if not resolve_data_file().is_file():  # no download attempt from a benchmark
        pytest.skip(f"no PneumoniaMNIST data file at {resolve_data_file()} (set BENCH_DATA_FILE)")
    explainers = os.environ.get("BENCH_PRECISION_EXPLAINERS", "").strip() or CARD_EXPLAINERS
    ck_dir = Path(os.environ.get("BENCH_CHECKPOINT_DIR", "").strip() or REPO / "results" / "checkpoints")
    study = load_config(STUDY)
    names = [m for m in study.metrics.names if m not in SAME_IN_EVERY_PRECISION]
    cfg = load_config(
        STUDY,
        [
            "models.seeds=[0]",
            'models.stages=["pre"]',
            f"data.per_cell={_positive('BENCH_PRECISION_PER_CELL', 2)}",
            "explain.names=[" + ", ".join(f'"{e.strip()}"' for e in explainers.split(",") if e.strip()) + "]",
            "metrics.names=[" + ", ".join(f'"{m}"' for m in names) + "]",
            "reliability.enabled=false",
            f'device="{device.type}"',
            f'results_dir="{tmp_path}"',
            f'checkpoint_dir="{ck_dir}"',
        ],
    )
    return cfg


def _scores(units, records) -> pd.DataFrame:
    rows = []
    for u, r in zip(units, records):
        for metric, values in r["metrics"].items():
            hib = bool(METRICS.get(metric).meta["higher_is_better"])
            for i, v, s in zip(u.index.tolist(), values, r["metric_status"][metric]):
                rows.append(
                    [
                        u.stage.model_name,
                        u.stage.stage,
                        u.explainer,
                        metric,
                        int(i),
                        float(v),
                        "ok" if s == "ok" else s,
                        hib,
                    ]
                )
    return pd.DataFrame(
        rows, columns=["model", "stage", "explainer", "metric", "image", "value", "status", "higher_is_better"]
    )


def _outcome(row) -> str:
    """A pair's verdict by what it says, whichever explainer is called a: the winner, or the verdict."""
    return (
        f"{row.a} better"
        if row.verdict == "a better"
        else f"{row.b} better"
        if row.verdict == "b better"
        else row.verdict.split(" at n")[0]
    )


def _pair_means(scores: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """Mean paired goodness difference of every (metric, a, b), a < b by name."""
    out = {}
    for (_, _, metric), t in goodness_tables(scores).items():
        g = t.values[0]
        for i, a in enumerate(t.explainers):
            for j, b in enumerate(t.explainers):
                if a < b:
                    out[(metric, a, b)] = float(np.mean(g[:, i] - g[:, j]))
    return out


def _compare(scores: pd.DataFrame, settings: StatsSettings):
    kinds = {m: METRICS.get(m).meta.get("kind") for m in scores["metric"].unique()}
    c = compare(goodness_tables(scores), settings, kinds)
    verdicts = {(r.metric, *sorted((r.a, r.b))): _outcome(r) for r in c.pairs.itertuples(index=False)}
    ranks = {(r.metric, r.explainer): r.rank for r in c.ranks.itertuples(index=False)}
    return verdicts, ranks


def error_rows(
    ref: pd.DataFrame,
    low: pd.DataFrame,
    seconds: dict[str, tuple[float, float]],
    cost: dict[str, dict],
    settings: StatsSettings,
    mde: dict[str, float],
    precision: str,
) -> list[dict]:
    """One row per metric: speedup, floor ratios, score errors, verdict and rank changes, error / mde."""
    key = ["explainer", "metric", "image"]
    both = ref.merge(low, on=key, suffixes=("", "_low"))
    v_ref, r_ref = _compare(ref, settings)
    v_low, r_low = _compare(low, settings)
    m_ref, m_low = _pair_means(ref), _pair_means(low)
    rows = []
    for metric, g in both.groupby("metric", sort=True):
        d = (g["value_low"] - g["value"]).abs().to_numpy(dtype=np.float64)
        d = d[np.isfinite(d)]
        pairs = [k for k in v_ref if k[0] == metric]
        changed = [
            f"{a} vs {b}: {v_ref[(metric, a, b)]} -> {v_low.get((metric, a, b))}"
            for _, a, b in pairs
            if v_low.get((metric, a, b)) != v_ref[(metric, a, b)]
        ]
        ranks = [e for (m, e), r in r_ref.items() if m == metric and r_low.get((m, e)) != r]
        shifts = [abs(m_low[k] - m_ref[k]) for k in m_ref if k[0] == metric and k in m_low]
        t32, tlow = seconds[metric]
        f32, flow = cost[DEFAULT_PRECISION]["by_metric"].get(metric, {}), cost[precision]["by_metric"].get(metric, {})
        smallest = mde.get(metric)
        pair_shift = max(shifts) if shifts else math.nan
        rows.append(
            {
                "metric": metric,
                "precision": precision,
                "images": int(g["image"].nunique()),
                "explainers": int(g["explainer"].nunique()),
                "s_float32": t32,
                "s_reduced": tlow,
                "speedup": t32 / tlow if tlow > 0 else None,
                "floor_ratio_float32": f32.get("ratio"),
                "floor_ratio_reduced": flow.get("ratio"),
                "max_abs_diff": float(d.max()) if len(d) else math.nan,
                "mean_abs_diff": float(d.mean()) if len(d) else math.nan,
                "max_pair_shift": pair_shift,
                "pairs": len(pairs),
                "verdicts_changed": changed,
                "ranks_changed": sorted(ranks),
                "card_mde": smallest,
                "shift_over_mde": pair_shift / smallest if smallest and math.isfinite(pair_shift) else None,
                "diff_over_mde": float(d.max()) / smallest if smallest and len(d) else None,
                "qualifies": bool(
                    smallest and math.isfinite(pair_shift) and pair_shift < smallest / 10 and not changed
                ),
            }
        )
    return rows


def test_scoring_precision(benchmark, bench_settings, tmp_path):
    device = bench_settings.device
    reduced = _reduced(device)
    cfg = _config(tmp_path, device)
    train, test, stages = trained_stages(cfg, device)
    reference = P.background(train, cfg.data.background_size, cfg.seed)
    precisions = [DEFAULT_PRECISION, *reduced]
    plans = {}
    for p in precisions:
        c = revalidated(replace(cfg, metrics=replace(cfg.metrics, precision=p)))
        plans[p] = [
            x.unit for x in P.plan_units(c, stages, test, reference, device, tmp_path / p)[0] if not x.reference
        ]
    assert all(len(plans[p]) == len(plans[DEFAULT_PRECISION]) for p in precisions)
    assert all(u.attr_key == v.attr_key for p in reduced for u, v in zip(plans[DEFAULT_PRECISION], plans[p]))
    load = load_average()
    pass_seconds = {p: time_passes(stages, plans[p], p) for p in precisions}
    records: dict[str, list] = {p: [] for p in precisions}
    wall = {p: 0.0 for p in precisions}
    explained: list[float] = []

    def walk():
        for p in precisions:
            records[p].clear()
            wall[p] = 0.0
        for k, unit in enumerate(plans[DEFAULT_PRECISION]):
            t0 = perf_counter()
            attr = unit.explain()
            explained.append(perf_counter() - t0)
            assert attr["status"] == "ok", attr["message"]
            for p in precisions if k % 2 == 0 else precisions[::-1]:  # alternate: load changes fall on both
                t0 = perf_counter()
                records[p].append(plans[p][k].score(attr))
                wall[p] += perf_counter() - t0
            print(
                f"unit {k + 1}/{len(plans[DEFAULT_PRECISION])} {unit.explainer}: "
                + ", ".join(f"{p} {records[p][-1]['score_seconds']:.1f} s" for p in precisions),
                flush=True,
            )
        return records

    benchmark.group = "precision-resnet18"
    benchmark.pedantic(walk, rounds=1, iterations=1, warmup_rounds=0)
    pass_after = {p: time_passes(stages, plans[p][:1], p) for p in precisions}
    attrs = [
        {
            "status": "ok",
            "message": "",
            "seconds": 0.0,
            "peak_mem_mb": math.nan,
            "values": None,
            "outputs": None,
            "base_values": None,
            "meta": "{}",
        }
    ] * len(plans[DEFAULT_PRECISION])
    cost = {
        p: cost_summary(
            plans[p],
            [cache.result(a, r, cached=False, attr_cached=True) for a, r in zip(attrs, records[p])],
            pass_seconds[p],
            wall[p],
            p,
        )
        for p in precisions
    }
    scores = {p: _scores(plans[p], records[p]) for p in precisions}
    settings = stats_settings(cfg)
    mde = card_mde(CARD_POWER)
    rows = []
    for p in reduced:
        seconds = {
            m: (
                sum(r["metric_seconds"][m] for r in records[DEFAULT_PRECISION]),
                sum(r["metric_seconds"][m] for r in records[p]),
            )
            for m in cfg.metrics.names
        }
        rows += error_rows(scores[DEFAULT_PRECISION], scores[p], seconds, cost, settings, mde, p)
    n_images = int(scores[DEFAULT_PRECISION]["image"].nunique())
    total = {
        p: {
            "s_per_image": wall[p] / (n_images * len(set(u.explainer for u in plans[p]))),
            "floor_ratio": cost[p]["explain_and_metrics"]["ratio"],
            "precision": cost[p]["precision"],
            "pass_seconds_per_image": pass_seconds[p],
            "pass_seconds_after": pass_after[p],
        }
        for p in precisions
    }
    for p in reduced:
        total[p]["speedup"] = wall[DEFAULT_PRECISION] / wall[p]
    benchmark.extra_info.update(
        {
            "kind": "precision",
            "model": "resnet18",
            "checkpoint": stages[0].path.name,
            "checkpoint_sha256": stages[0].sha256,
            "checkpoint_test": {k: stages[0].sidecar["test"].get(k) for k in ("acc", "auc")},
            **bench_settings.describe(),
            "images": n_images,
            "explainers": sorted({u.explainer for u in plans[DEFAULT_PRECISION]}),
            "per_cell": cfg.data.per_cell,
            "metrics": list(cfg.metrics.names),
            "left_out": list(SAME_IN_EVERY_PRECISION),
            "explain_seconds": sum(explained),
            "load_average": load,
            "load_average_after": load_average(),
            "total": total,
            "rows": rows,
        }
    )
    # a metric without a model pass reads the same attribution the same way in every precision (NaN
    # for the non-additive explainers: no finite difference at all)
    assert all(not r["max_abs_diff"] > 0 for r in rows if r["metric"] == "additivity_error")
    # every other score moves by less than a wrong pass would move it (a logit for a probability: ~1)
    assert all(r["max_abs_diff"] < 0.5 for r in rows if math.isfinite(r["max_abs_diff"]))
