"""Steps chosen by error: how far the perturbation metrics' scores drift as their step count falls.

Deletion and insertion AUC (:mod:`bench.metrics.rise`) integrate a probability curve sampled at
``steps + 1`` pixel counts (:func:`bench.metrics.perturbation.curve_boundaries`) with the
trapezoid rule; ROAD (:mod:`bench.metrics.road`) at its ``percentages``. Fewer points cost fewer
model passes and move the score. This module measures how much, against a reference at many
points, on the same model, images, targets and attributions, every score computed by
:func:`bench.metrics.compute_metric` (exactly the code a run uses, in the run's scoring
precision).

Step count ``k``:

* ``deletion_auc`` / ``insertion_auc``: ``steps = k`` (``k + 1`` forward passes per image), for
  each substrate asked for (``zero``, ``blur``);
* ``road_morf`` / ``road_lerf``: ``k`` evenly spaced percentages strictly inside (0, 1),
  :func:`road_percentages` ``(1/(k+1), ..., k/(k+1))`` (``k`` forward passes per image plus the
  imputation). The shipped default, 0.1 .. 0.9, is exactly ``k = 9`` of this family, so 9 is
  added to ROAD's grid. ROAD's imputation noise is drawn per percentage in order (seeded), so a
  different ``k`` also draws different noise: that share of the change is part of what a user
  of ``k`` points gets, and is measured with the rest.

For image ``i``, explainer ``e``, the score ``s_k`` at ``k`` steps and ``s_ref`` at the reference
(256 by default; recorded per row as ``reference``):

* per explainer: ``max_abs_err = max_i |s_k - s_ref|``, ``mean_abs_err = mean_i |s_k - s_ref|``,
  ``mean_err = mean_i (s_k - s_ref)`` (the trapezoid rule's bias, which is largely common to every
  explainer and so cancels in a paired comparison);
* per (metric, substrate, k) over every pair of explainers ``(a, b)`` (row ``explainer = "(all)"``):
  ``max_pair_shift = max_(a,b) |mean_i(a_k - b_k) - mean_i(a_ref - b_ref)|``, the largest change of
  the paired mean difference a verdict reads, with the pair it comes from (``worst_pair``);
* ``passes_fb`` / ``passes_f``: the model passes per image of ``k`` steps by the metric's
  registered ``passes`` rule (:func:`bench.perf.floor.metric_passes_per_image`).

The rule (:func:`choose_steps`): a step count qualifies for a metric when its
``max_pair_shift`` is below a tenth of the smallest detectable paired difference of the metric
(``mde``, the card's power table results/published/card/reliability_power.csv, :func:`card_mde`).
The chosen step count is the smallest grid count from which on every larger grid count qualifies
too (so a lucky dip of a non-monotone error is not chosen); the smallest qualifying count alone is
reported beside it, and so is whether the metric's current default qualifies.

Everything here is deterministic: the metrics are (ROAD's noise is seeded by its ``seed``
parameter and each image's bytes); only the image sample of a benchmark is drawn, by the run's
seed. ``tests/benchmarks/test_steps.py`` runs :func:`step_rows` on the study's trained
checkpoint; ``python -m bench.perf.steps RUN.json`` renders a saved run (:func:`steps_tables`).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.precision import DEFAULT_PRECISION
from bench.core.text import fmt_number, markdown_table
from bench.metrics import METRICS, compute_metric, metric_params
from bench.perf.floor import metric_passes_per_image, saved_infos
from explainers.base import Attribution

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_METRICS",
    "REFERENCE",
    "road_percentages",
    "step_params",
    "default_steps",
    "step_scores",
    "error_rows",
    "step_rows",
    "choose_steps",
    "steps_tables",
    "card_mde",
]

DEFAULT_METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")
DEFAULT_SUBSTRATES = ("zero", "blur")
DEFAULT_GRID = (4, 8, 12, 16, 24, 32, 49, 64, 96, 128)
REFERENCE = 256
FRACTION = 0.1  # a step count qualifies below this fraction of the smallest detectable difference
SUMMARY = "(all)"  # the explainer column of the per-(metric, substrate, steps) summary rows
NO_SUBSTRATE = "-"
KIND = "steps"  # extra_info["kind"] of a saved benchmark


def road_percentages(k: int) -> tuple[float, ...]:
    """``k`` evenly spaced fractions strictly inside (0, 1): ``(1/(k+1), ..., k/(k+1))``; ``k = 9``
    is ROAD's default 0.1 .. 0.9."""
    if int(k) < 1:
        raise BenchError(f"a ROAD step count is a positive number of percentages, got {k!r}")
    return tuple(i / (int(k) + 1) for i in range(1, int(k) + 1))


def _family(metric: str) -> str:
    params = metric_params(metric)
    if "steps" in params:
        return "steps"
    if "percentages" in params:
        return "percentages"
    raise BenchError(
        f"metric {metric!r} has neither a 'steps' nor a 'percentages' parameter; step counts apply to "
        f"{', '.join(n for n in METRICS.names() if {'steps', 'percentages'} & set(metric_params(n)))}"
    )


def step_params(metric: str, k: int) -> dict[str, Any]:
    """The metric's parameters for step count ``k``: ``{"steps": k}`` or ``{"percentages": road_percentages(k)}``."""
    return {"steps": int(k)} if _family(metric) == "steps" else {"percentages": road_percentages(k)}


def default_steps(metric: str) -> int | None:
    """The step count of the metric's registered default: ``steps``, or the number of default
    percentages when they are :func:`road_percentages` of that count (``None`` when they are not)."""
    params = metric_params(metric)
    if _family(metric) == "steps":
        return int(params["steps"])
    p = tuple(float(v) for v in params["percentages"])
    return len(p) if p == road_percentages(len(p)) else None


def _grid(metric: str, grid: Sequence[int], reference: int, n_pixels: int) -> list[int]:
    """The grid with the metric's default added, below the reference (and at most the pixels for steps)."""
    default = default_steps(metric)
    ks = sorted({int(k) for k in grid} | ({default} if default else set()))
    top = n_pixels if _family(metric) == "steps" else math.inf
    return [k for k in ks if 1 <= k < reference and k <= top]


def _reference_of(metric: str, reference: int | Mapping[str, int]) -> int:
    return int(reference.get(metric, REFERENCE) if isinstance(reference, Mapping) else reference)


@torch.no_grad()
def step_scores(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attributions: Mapping[str, Attribution],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    substrates: Sequence[str] = DEFAULT_SUBSTRATES,
    grid: Sequence[int] = DEFAULT_GRID,
    reference: int | Mapping[str, int] = REFERENCE,
    precision: str = DEFAULT_PRECISION,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Per-image scores at every step count of the grid and at the reference.

    ``inputs (B, C, H, W)``, ``targets (B,)``, ``attributions``: explainer name -> attribution of
    those images (as the metrics read it: preprocessed). ``params``: fixed parameters per metric
    besides the step count (e.g. ``blur_sigma``); ``reference``: one count, or one per metric.
    Returns one row per (metric, substrate, steps, explainer, image): ``value``, ``is_reference``,
    ``reference``, ``seconds`` (the metric call's time over the batch).
    """
    if not attributions:
        raise BenchError("step_scores needs at least one attribution")
    params = dict(params or {})
    n_pixels = int(inputs.shape[2] * inputs.shape[3])
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        ref = _reference_of(metric, reference)
        family = _family(metric)
        if family == "steps" and not 1 <= ref <= n_pixels:
            raise BenchError(f"{metric}: reference {ref} steps must be in [1, {n_pixels}] (the pixels)")
        subs = tuple(substrates) if "substrate" in metric_params(metric) else (NO_SUBSTRATE,)
        for sub in subs:
            for k in [*_grid(metric, grid, ref, n_pixels), ref]:
                extra = {**params.get(metric, {}), **step_params(metric, k)}
                if sub != NO_SUBSTRATE:
                    extra["substrate"] = sub
                for name, attr in attributions.items():
                    t0 = perf_counter()
                    res = compute_metric(metric, model, inputs, targets, attr, precision=precision, **extra)
                    seconds = perf_counter() - t0
                    for i, v in enumerate(res.scores.detach().double().cpu().tolist()):
                        rows.append(
                            {
                                "metric": metric,
                                "substrate": sub,
                                "steps": k,
                                "is_reference": k == ref,
                                "reference": ref,
                                "explainer": name,
                                "image": i,
                                "value": v,
                                "seconds": seconds,
                            }
                        )
                if progress:
                    progress(f"{metric} {sub} steps={k}: {len(attributions)} explainers")
    return pd.DataFrame(rows)


def error_rows(scores: pd.DataFrame, precision: str = DEFAULT_PRECISION) -> pd.DataFrame:
    """Errors of :func:`step_scores`' scores against their reference (the module docstring's formulas).

    One row per (metric, substrate, steps, explainer) with ``max_abs_err``, ``mean_abs_err``,
    ``mean_err``, ``max_pair_shift`` (over the pairs that include the explainer), and one
    ``explainer = "(all)"`` row per (metric, substrate, steps) over every explainer and pair, with
    ``worst_pair``. Every row carries ``reference``, ``passes_fb`` / ``passes_f`` of its step count,
    ``default_steps``, ``images``, ``explainers``, ``s_per_image`` and ``precision``. The reference
    is listed too (errors 0). Non-finite scores are left out of the errors.
    """
    out: list[dict[str, Any]] = []
    for (metric, sub), g in scores.groupby(["metric", "substrate"], sort=False):
        ref_rows = g[g["is_reference"]]
        if ref_rows.empty:
            raise BenchError(f"{metric} {sub}: no reference scores")
        ref_k = int(ref_rows["steps"].iloc[0])
        ref = ref_rows.pivot(index="image", columns="explainer", values="value")
        names = list(dict.fromkeys(g["explainer"]))
        for k, gk in g.groupby("steps", sort=True):
            cur = gk.pivot(index="image", columns="explainer", values="value").reindex(
                index=ref.index, columns=ref.columns
            )
            diff = cur - ref
            shifts: dict[tuple[str, str], float] = {}
            for a, b in itertools.combinations(names, 2):
                ok = np.isfinite(cur[a]) & np.isfinite(cur[b]) & np.isfinite(ref[a]) & np.isfinite(ref[b])
                if ok.any():
                    shifts[(a, b)] = abs(float((cur[a] - cur[b])[ok].mean() - (ref[a] - ref[b])[ok].mean()))
            passes = metric_passes_per_image(metric, step_params(metric, int(k)))
            common = {
                "metric": metric,
                "substrate": sub,
                "steps": int(k),
                "reference": ref_k,
                "passes_fb": None if passes is None else passes[0],
                "passes_f": None if passes is None else passes[1],
                "default_steps": default_steps(metric),
                "images": int(len(ref.index)),
                "precision": precision,
            }
            per_call = gk.drop_duplicates("explainer")["seconds"]
            for name in names:
                d = diff[name].to_numpy(dtype=np.float64)
                d = d[np.isfinite(d)]
                mine = [v for p, v in shifts.items() if name in p]
                out.append(
                    {
                        **common,
                        "explainer": name,
                        "explainers": 1,
                        "max_abs_err": float(np.abs(d).max()) if len(d) else math.nan,
                        "mean_abs_err": float(np.abs(d).mean()) if len(d) else math.nan,
                        "mean_err": float(d.mean()) if len(d) else math.nan,
                        "max_pair_shift": max(mine) if mine else math.nan,
                        "worst_pair": None,
                        "s_per_image": float(gk.loc[gk["explainer"] == name, "seconds"].iloc[0]) / len(ref.index),
                    }
                )
            d = diff.to_numpy(dtype=np.float64).ravel()
            d = d[np.isfinite(d)]
            worst = max(shifts, key=lambda pair: shifts[pair]) if shifts else None
            worst = worst if worst and shifts[worst] > 0 else None  # no pair is the worst of all-zero shifts
            out.append(
                {
                    **common,
                    "explainer": SUMMARY,
                    "explainers": len(names),
                    "max_abs_err": float(np.abs(d).max()) if len(d) else math.nan,
                    "mean_abs_err": float(np.abs(d).mean()) if len(d) else math.nan,
                    "mean_err": float(d.mean()) if len(d) else math.nan,
                    "max_pair_shift": shifts[worst] if worst else 0.0 if shifts else math.nan,
                    "worst_pair": f"{worst[0]} vs {worst[1]}" if worst else None,
                    "s_per_image": float(per_call.sum()) / (len(ref.index) * len(names)),
                }
            )
    return pd.DataFrame(out)


def step_rows(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attributions: Mapping[str, Attribution],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    substrates: Sequence[str] = DEFAULT_SUBSTRATES,
    grid: Sequence[int] = DEFAULT_GRID,
    reference: int | Mapping[str, int] = REFERENCE,
    precision: str = DEFAULT_PRECISION,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """:func:`error_rows` of :func:`step_scores`: the error table of every metric, substrate, step
    count and explainer (shapes and parameters as :func:`step_scores`)."""
    scores = step_scores(
        model,
        inputs,
        targets,
        attributions,
        metrics=metrics,
        substrates=substrates,
        grid=grid,
        reference=reference,
        precision=precision,
        params=params,
        progress=progress,
    )
    return error_rows(scores, precision)


def _frame(rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    return df[df["explainer"] == SUMMARY]


def choose_steps(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]], mde: Mapping[str, float], *, fraction: float = FRACTION
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (metric, substrate): the step count the rule picks (module docstring).

    ``rows``: :func:`error_rows` (or its records); ``mde``: metric -> smallest detectable paired
    difference. Returns ``{(metric, substrate): {...}}`` with ``threshold`` (``fraction * mde``),
    ``chosen`` (the smallest grid count from which on every larger one qualifies; ``None`` when the
    largest does not: "none qualifies"), ``smallest_qualifying``, ``chosen_shift``, ``default``,
    ``default_shift``, ``default_qualifies`` (``None`` when unknown), ``reference`` and ``note``.
    A metric without an ``mde`` is reported with no choice, never guessed.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (metric, sub), g in _frame(rows).groupby(["metric", "substrate"], sort=False):
        g = g[g["steps"] < g["reference"]].sort_values("steps")
        ks = g["steps"].astype(int).tolist()
        shift = dict(zip(ks, g["max_pair_shift"].astype(float)))
        default = g["default_steps"].iloc[0] if "default_steps" in g and len(g) else None
        default = None if default is None or (isinstance(default, float) and math.isnan(default)) else int(default)
        smallest = mde.get(metric)
        entry: dict[str, Any] = {
            "metric": metric,
            "substrate": sub,
            "mde": smallest,
            "threshold": None,
            "chosen": None,
            "smallest_qualifying": None,
            "chosen_shift": None,
            "default": default,
            "default_shift": shift.get(default) if default else None,
            "default_qualifies": None,
            "reference": int(g["reference"].iloc[0]) if len(g) else None,
            "note": "",
        }
        if smallest is None or not math.isfinite(float(smallest)) or float(smallest) <= 0:
            entry["note"] = "no smallest detectable difference for this metric: no choice"
            out[(metric, sub)] = entry
            continue
        threshold = fraction * float(smallest)
        ok = {k: math.isfinite(v) and v < threshold for k, v in shift.items()}
        entry["threshold"] = threshold
        entry["smallest_qualifying"] = next((k for k in ks if ok[k]), None)
        chosen = next((k for i, k in enumerate(ks) if all(ok[j] for j in ks[i:])), None)
        entry["chosen"] = chosen
        entry["chosen_shift"] = shift.get(chosen) if chosen is not None else None
        if default in ok:
            entry["default_qualifies"] = ok[default]
        if chosen is None:
            largest = ks[-1] if ks else None
            entry["note"] = (
                "none qualifies: even "
                + (
                    f"{largest} steps shift a paired mean by {fmt_number(shift[largest], '.3g')}"
                    if largest
                    else "the grid is empty"
                )
                + f" (threshold {fmt_number(threshold, '.3g')})"
            )
        elif entry["smallest_qualifying"] != chosen:
            entry["note"] = (
                f"{entry['smallest_qualifying']} qualifies, but a larger count does not: "
                f"chosen from where every larger count qualifies"
            )
        out[(metric, sub)] = entry
    return out


def _passes(fb: Any, f: Any) -> str:
    parts = [
        f"{fmt_number(n, '.0f')} {kind}"
        for n, kind in ((fb, "fb"), (f, "f"))
        if n is not None and not (isinstance(n, float) and math.isnan(n)) and n
    ]
    return " + ".join(parts) or "0"


def steps_tables(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]], mde: Mapping[str, float], *, fraction: float = FRACTION
) -> str:
    """Markdown: the choice per (metric, substrate), then each one's errors by step count."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    choice = choose_steps(df, mde, fraction=fraction)
    yes = {True: "yes", False: "no", None: "n/a"}
    head = [
        f"Step counts chosen by error: a count qualifies when the largest change of a paired mean "
        f"difference between two explainers (against the reference) is below {fraction:g} x the metric's "
        f"smallest detectable difference (mde); chosen = the smallest grid count from which on every "
        f"larger one qualifies.",
        "",
    ]
    head += markdown_table(
        [
            "metric",
            "substrate",
            "mde",
            "threshold",
            "default",
            "default's shift",
            "default qualifies",
            "chosen",
            "chosen's shift",
            "reference",
            "note",
        ],
        [
            [
                c["metric"],
                c["substrate"],
                fmt_number(c["mde"], ".3g"),
                fmt_number(c["threshold"], ".3g"),
                c["default"] if c["default"] is not None else "n/a",
                fmt_number(c["default_shift"], ".2g"),
                yes[c["default_qualifies"]],
                c["chosen"] if c["chosen"] is not None else "none qualifies",
                fmt_number(c["chosen_shift"], ".2g"),
                c["reference"],
                c["note"],
            ]
            for c in choice.values()
        ],
        "llrrrrlrrrl",
    )
    summary = _frame(df)
    per = df[df["explainer"] != SUMMARY]
    for (metric, sub), g in summary.groupby(["metric", "substrate"], sort=False):
        c = choice[(metric, sub)]
        first = g.iloc[0]
        names = list(dict.fromkeys(per.loc[(per["metric"] == metric) & (per["substrate"] == sub), "explainer"]))
        head += [
            "",
            f"**{metric}** (substrate {sub}; reference {int(first['reference'])} steps; "
            f"{int(first['images'])} images x {int(first['explainers'])} explainers; "
            f"precision {first['precision']}; errors in score units)",
            "",
        ]
        table = []
        for r in g.sort_values("steps").itertuples(index=False):
            mine = per[(per["metric"] == metric) & (per["substrate"] == sub) & (per["steps"] == r.steps)]
            by_name = dict(zip(mine["explainer"], mine["max_abs_err"]))
            over = r.max_pair_shift / c["mde"] if c["mde"] else math.nan
            mark = (" (default)" if r.steps == c["default"] else "") + (
                " (reference)" if r.steps == r.reference else ""
            )
            qualifies = (
                ""
                if r.steps == r.reference or c["threshold"] is None
                else yes[bool(math.isfinite(r.max_pair_shift) and r.max_pair_shift < c["threshold"])]
            )
            table.append(
                [
                    f"{r.steps}{mark}",
                    _passes(r.passes_fb, r.passes_f),
                    fmt_number(r.max_abs_err, ".2g"),
                    fmt_number(r.mean_abs_err, ".2g"),
                    fmt_number(r.mean_err, ".2g"),
                    fmt_number(r.max_pair_shift, ".2g"),
                    fmt_number(over, ".2f"),
                    qualifies,
                    r.worst_pair if isinstance(r.worst_pair, str) else "",
                    fmt_number(r.s_per_image, ".3f"),
                    *(fmt_number(by_name.get(n), ".2g") for n in names),
                ]
            )
        head += markdown_table(
            [
                "steps",
                "passes/image",
                "max abs err",
                "mean abs err",
                "mean err",
                "max paired-mean shift",
                "shift / mde",
                "qualifies",
                "worst pair",
                "s/image",
                *(f"max abs err {n}" for n in names),
            ],
            table,
            "lrrrrrrllr" + "r" * len(names),
        )
    return "\n".join(head) + "\n"


def card_mde(path: str | Path) -> dict[str, float]:
    """The smallest detectable paired difference of each metric in a power table (the card's
    reliability_power.csv): the smallest finite positive ``mde`` of the metric's rows; ``{}``
    without the file."""
    path = Path(path)
    if not path.is_file():
        return {}
    power = pd.read_csv(path)
    power = power[np.isfinite(power["mde"]) & (power["mde"] > 0)]
    return {str(m): float(g["mde"].min()) for m, g in power.groupby("metric")}


def records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe records (NaN -> None), for a benchmark's ``extra_info``."""
    return [
        {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v.item() if isinstance(v, np.generic) else v)
            for k, v in r.items()
        }
        for r in rows.to_dict("records")
    ]


def saved_run(json_path: str | Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The rows and the mde of a pytest-benchmark JSON saved from tests/benchmarks/test_steps.py."""
    infos = saved_infos(json_path, KIND, "test_steps.py")
    rows = [r for info in infos for r in info["rows"]]
    mde = {k: float(v) for info in infos for k, v in (info.get("mde") or {}).items()}
    return rows, mde


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.perf.steps RUN.json [--power CSV]``: the Markdown tables of a saved run."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m bench.perf.steps", description="Markdown tables of a saved step-count benchmark run"
    )
    ap.add_argument("run_json", nargs="+", help="saved runs (tests/benchmarks/test_steps.py); rows shown together")
    ap.add_argument("--power", help="a power table (reliability_power.csv) whose mde replaces the saved one")
    args = ap.parse_args(argv)
    try:
        runs = [saved_run(p) for p in args.run_json]
        mde = card_mde(args.power) if args.power else {k: v for _, m in runs for k, v in m.items()}
        if args.power and not mde:
            raise BenchError(f"no mde in {args.power}")
    except (BenchError, OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(steps_tables([r for rows, _ in runs for r in rows], mde))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
