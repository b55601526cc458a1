"""n before the run: ``python -m bench plan --config X --pilot RUN_DIR``.

For every metric of the config, from the smallest effect of interest declared in ``[stats] effects``
(per metric or kind; the equivalence margin when none is declared) and the paired variances a
pilot run measured (its ``scores.csv``: the standard deviation of the per-image differences of
every pair of the config's explainers the pilot scored, per model-stage), the number of distinct
images per model-stage the table's paired test needs to detect that effect with ``power`` (80 %)
after its multiplicity correction (:mod:`bench.stats.power`, at the Bonferroni level
``alpha / m``, ``m`` the table's pairs: slightly conservative for the max-T the tables use). Two
columns: the n for the median pair's spread and for the 90th percentile's (the harder pairs).

The cost: the config's model passes per image (explainers and metrics, the registered pass
counts) times the pilot's measured time of one pass, times the pilot's measured ratio to that
floor, times images, model-stages and seeds. Scoring the same images under several seeds adds
seeds, not images: n is distinct images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.core.text import fmt_number, markdown_table
from bench.perf.floor import floor_seconds, metric_passes_per_image, passes_per_image
from bench.report.leaderboard import metric_kinds, read_scores
from bench.run.config import RunConfig, stats_settings, training_seeds
from bench.stats.power import n_needed

__all__ = ["PLAN_COLUMNS", "plan_sample", "render_plan"]

PLAN_COLUMNS = ["metric", "kind", "effect", "declared", "pairs", "level", "sd_median", "sd_p90", "n_median", "n_p90"]
N_LAYERS = 7  # randomisation cascade steps of a resnet18 when the pilot does not say


def plan_sample(cfg: RunConfig, pilot: str | Path, power: float = 0.8) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(the n table, the cost estimate) of ``cfg`` from the pilot run folder ``pilot``."""
    pilot = Path(pilot)
    scores = read_scores(pilot / "scores.csv")
    settings = stats_settings(cfg)
    names = list(cfg.explain.names)
    k = len(names)
    m = max(1, k * (k - 1) // 2)
    level = settings.alpha / m
    kinds = metric_kinds(cfg.metrics.names)
    ok = scores[(scores["status"] == "ok") & np.isfinite(scores["value"].to_numpy(dtype=np.float64))]
    rows = []
    for metric in cfg.metrics.names:
        sds = []
        for _, g in ok[(ok["metric"] == metric) & ok["explainer"].isin(names)].groupby(["model", "stage"]):
            wide = g.pivot(index="image", columns="explainer", values="value").dropna()
            for i, a in enumerate(wide.columns):
                for b in wide.columns[i + 1 :]:
                    d = (wide[a] - wide[b]).to_numpy()
                    if d.size >= 3 and d.std(ddof=1) > 0:
                        sds.append(float(d.std(ddof=1)))
        effect = settings.effect(metric, kinds.get(metric))
        sd_med = float(np.median(sds)) if sds else float("nan")
        sd_hi = float(np.percentile(sds, 90)) if sds else float("nan")
        declared = metric in settings.effects or (kinds.get(metric) or "default") in settings.effects
        rows.append(
            [
                metric,
                kinds.get(metric) or "",
                effect,
                declared,
                m,
                level,
                sd_med,
                sd_hi,
                n_needed(effect, sd_med, level, power) if sds else float("nan"),
                n_needed(effect, sd_hi, level, power) if sds else float("nan"),
            ]
        )
    table = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    return table, _cost(cfg, pilot, table)


def _cost(cfg: RunConfig, pilot: Path, table: pd.DataFrame) -> dict[str, Any]:
    """Seconds per image-stage at the floor, the pilot's ratio to it, and the total at the n needed."""
    manifest_path = pilot / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BenchError(f"{manifest_path} is missing or not JSON; the pilot must be a finished run folder") from None
    cost = manifest.get("cost") or {}
    passes = cost.get("pass_seconds_per_image") or {}
    if not passes:
        raise BenchError(f"{manifest_path} records no pass times (cost.pass_seconds_per_image); re-run the pilot")
    t = next(iter(passes.values()))
    background = cfg.data.background_size
    per_image = 0.0
    unknown = []
    for e in cfg.explain.names:
        params = cfg.explain.params.get(e, {})
        ep = passes_per_image(e, params, background)
        f = floor_seconds(ep, t["forward_backward"], t["forward"])
        if f is None:
            unknown.append(e)
            continue
        per_image += f
        for metric in cfg.metrics.names:
            mp = metric_passes_per_image(
                metric, cfg.metrics.params.get(metric, {}), explainer_passes=ep, n_layers=N_LAYERS
            )
            fm = floor_seconds(mp, t["forward_backward"], t["forward"])
            if fm is None:
                unknown.append(metric)
            else:
                per_image += fm
    ratio = (cost.get("explain_and_metrics") or {}).get("ratio") or 1.0
    stages = len(cfg.models.stages) if not cfg.tune.variants else 1 + len(cfg.tune.variants)
    seeds = max(1, len(training_seeds(cfg)))
    sized = table[table["declared"]] if table["declared"].any() else table
    n = sized["n_median"].replace(float("inf"), np.nan).max()
    model_stages = len(cfg.models.names) * stages * seeds
    total = per_image * ratio * n * model_stages if math.isfinite(n) else float("nan")
    return {
        "floor_seconds_per_image_stage": per_image,
        "pilot_ratio": ratio,
        "model_stages": model_stages,
        "n": n,
        "seconds": total,
        "without_floor": sorted(set(unknown)),
        "pilot": str(pilot),
    }


def render_plan(cfg: RunConfig, table: pd.DataFrame, cost: dict[str, Any], power: float) -> str:
    """The plan as text: the n table (Markdown) and the cost estimate."""
    rows = [
        [
            r.metric,
            r.kind,
            fmt_number(r.effect, ".3g") + ("" if r.declared else " (margin)"),
            str(r.pairs),
            fmt_number(r.level, ".2g"),
            fmt_number(r.sd_median, ".3g"),
            fmt_number(r.sd_p90, ".3g"),
            _n(r.n_median),
            _n(r.n_p90),
        ]
        for r in table.itertuples(index=False)
    ]
    lines = [
        f"n per model-stage for {power:.0%} power (paired t at alpha / m, m = the table's pairs), from the pilot "
        f"{cost['pilot']}:",
        "",
    ]
    lines += markdown_table(
        [
            "metric",
            "kind",
            "smallest effect",
            "pairs",
            "level",
            "sd (median pair)",
            "sd (p90 pair)",
            "n (median pair)",
            "n (p90 pair)",
        ],
        rows,
    )
    n = cost["n"]
    per_cell = f"data.per_cell = {math.ceil(n / 4)}" if math.isfinite(n) else "n/a"
    which = "metrics with a declared effect" if table["declared"].any() else "all metrics: declare [stats] effects"
    lines += [
        "",
        f"Design: n = {_n(n)} distinct images per model-stage (the largest median-pair n over {which}; "
        f"{per_cell} with four confusion cells, more where a cell is smaller); the config has data.per_cell = "
        f"{cfg.data.per_cell}.",
        f"Cost: {cost['floor_seconds_per_image_stage']:.2f} s per image and model-stage at the floor x "
        f"{cost['pilot_ratio']:.2f} (the pilot's ratio) x {_n(n)} images x {cost['model_stages']} model-stages "
        f"= about {_hours(cost['seconds'])}"
        + (f" (no pass count for {', '.join(cost['without_floor'])}: not included)" if cost["without_floor"] else "")
        + ".",
    ]
    return "\n".join(lines)


def _n(x: float) -> str:
    return "> 100000" if x == float("inf") else ("n/a" if not math.isfinite(x) else str(int(x)))


def _hours(s: float) -> str:
    return "n/a" if not math.isfinite(s) else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")
