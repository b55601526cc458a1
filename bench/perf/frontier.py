"""Accuracy per pass: the cost-accuracy frontier of approximate explainers (issue 18).

An approximate explainer spends a budget of model passes per image (``nsamples``, ``n_steps``,
``max_evals``: the parameter named by ``budget=`` where it is registered) and converges to a
value it approximates. Its frontier is its error against that converged value as a function of
the passes per image, on the same model, images, targets and background:

* **relative L2** ``||phi_n - phi_ref|| / ||phi_ref||`` per image, averaged over images; for
  stochastic methods per explainer seed, reported as the mean and the standard deviation over
  seeds (the seed-to-seed spread);
* **completeness gap** ``|sum(phi_n) - (f(x) - base)|`` in the explained output's units (logits),
  the absolute value of :func:`explainers.base.completeness_gap`, averaged over images: ``base``
  is the adapter's ``base_values`` (``E_bg f`` for expected gradients, where completeness holds
  in expectation; ``f(baseline)`` for integrated gradients; ``f(masked)`` for Partition SHAP,
  where it holds exactly).

The converged references, each with its own error estimate (relative L2), so an error near it is
not read as real:

* expected-gradients family (``family="expected_gradients"``: ``shap.gradient``,
  ``captum.gradient_shap`` without noise, ``pneumobench.expected_gradients``; one expectation,
  ``E_{x'~U(bg), a~U(0,1)} [(x - x') * df/dx(x' + a (x - x'))]``): the mean of
  ``reference_seeds`` independent runs of the unbiased stratified estimator
  (``pneumobench.expected_gradients``, seeds 10000+, disjoint from the measured ones) at
  ``reference_budget`` passes each; own error = the standard error of that mean. A fixed
  sampler-free rule (every row x a midpoint grid) was tried first and rejected: on a
  random-weight resnet18 its error decays only as ~1/steps (ReLU kinks along every path; 7 %
  between 32 and 64 steps), a bias no averaging removes;
* every other stochastic method: the same mean-of-seeds construction with the method itself;
* a deterministic method: the adapter at ``reference_budget``; own error = its distance to the
  adapter at half that budget (an upper estimate: the error roughly halves per doubling).

Integrated gradients is measured with each of Captum's quadrature rules (the adapter's
``method``: Gauss-Legendre, the default, and ``riemann_middle/trapezoid/left``) against one
reference (Gauss-Legendre at ``reference_budget`` steps), to say which rule gives the lowest
error per step.

**Reduced precision.** An explainer with a ``precision`` parameter (the gradient explainers,
:func:`explainers.base.explainer_precision`) is also walked in ``bfloat16`` (variant label
``bfloat16``), against the same float32 reference: its passes are the same, its seconds are not,
so the tables give the seconds per image to reach the target beside the passes, and the figure
(``x="seconds"``) puts every method on error per second of compute. Where bfloat16 reaches the
target error it does so in fewer seconds; where its rounding error is above the target it never
does, whatever the budget (the error flattens at the precision's floor).

:func:`frontier_rows` computes the rows for one model; ``tests/benchmarks/test_frontier.py``
runs it under pytest-benchmark (saved in ``extra_info``); :func:`frontier_tables` and
:func:`frontier_figure` render a saved run (``python -m bench.perf.frontier RUN.json
[RUN2.json ...] [--figure PATH]``). The numbers in docs/benchmarks.md come from there.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.perf.floor import passes_per_image, saved_infos
from explainers import EXPLAINERS, completeness_gap, explainer_params, run_explainer

TARGET_ERROR = 0.05  # "passes to reach 5 % relative L2"


@dataclass(frozen=True)
class FrontierSpec:
    """How to walk one explainer's frontier."""

    name: str
    budget: str  # the parameter that sets the passes per image
    budgets: tuple[int, ...]
    family: str | None = None  # "expected_gradients": the sampler-free reference applies
    reference_budget: int = 1024
    params: Mapping[str, Any] = field(default_factory=dict)  # fixed parameters besides the budget
    variant: str = ""  # a label for a parameter variant (e.g. a quadrature rule, a precision)


def default_specs(names: Iterable[str] | None = None, precisions: Iterable[str] = ("bfloat16",)) -> list[FrontierSpec]:
    """Specs of every registered explainer that declares ``budget=`` (or of ``names``).

    The pass grid and the reference budget are the registration's ``budgets=`` and
    ``reference_budget=`` (integrated gradients 4-128 steps against 1024, Partition SHAP 100-1000
    evaluations against 3000); without them the grid is the default budget x 1/4 .. 4 and the
    reference 16 x the default. ``budget_variants=(param, values)`` walks the grid once per value
    (integrated gradients: every Captum quadrature rule). The expected-gradients family: 10-200
    samples against its shared reference. An explainer with a ``precision`` parameter gets one more
    spec per value of ``precisions`` (its first variant's parameters, in that precision).
    """
    specs: list[FrontierSpec] = []
    for name in EXPLAINERS.names() if names is None else names:
        meta = EXPLAINERS.get(name).meta
        budget = meta.get("budget")
        if not budget:
            continue
        family = meta.get("family")
        own: list[FrontierSpec] = []
        if family == "expected_gradients":
            own.append(FrontierSpec(name, budget, (10, 25, 50, 100, 200), family))
        else:
            default = int(explainer_params(name)[budget])
            grid = tuple(
                meta.get("budgets")
                or sorted({max(1, default // 4), max(1, default // 2), default, 2 * default, 4 * default})
            )
            param, values = meta.get("budget_variants") or (None, ("",))
            for value in values:
                own.append(
                    FrontierSpec(
                        name,
                        budget,
                        grid,
                        family,
                        int(meta.get("reference_budget") or 16 * default),
                        {param: value} if param else {},
                        value,
                    )
                )
        if "precision" in explainer_params(name):
            first = own[0]
            own += [
                replace(first, params={**first.params, "precision": p}, variant=f"{first.variant} {p}".strip())
                for p in precisions
                if p != "float32"
            ]
        specs += own
    return specs


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------


def _run(spec: FrontierSpec, model, inputs, targets, background, budget: int, seed: int | None):
    params = {**spec.params, spec.budget: budget}
    if seed is not None:
        params["seed"] = seed
    return run_explainer(spec.name, model, inputs, targets, background=background, **params)


def _passes(spec: FrontierSpec, budget: int, background_size: int) -> tuple[int, int]:
    p = passes_per_image(spec.name, {**spec.params, spec.budget: budget}, background_size=background_size)
    return (0, 0) if p is None else (int(p[0]), int(p[1]))


def rel_l2(values: Tensor, reference: Tensor) -> np.ndarray:
    """``||values - reference|| / ||reference||`` per image."""
    d = (values.double().cpu() - reference.double().cpu()).flatten(1).norm(dim=1)
    return (d / reference.double().cpu().flatten(1).norm(dim=1).clamp_min(1e-12)).numpy()


def _reference(
    spec: FrontierSpec, model, inputs, targets, background, *, reference_seeds: int, cache: dict
) -> tuple[Tensor, float, float]:
    """``(reference values, its own error estimate, seconds)``, cached per family/method."""
    key = spec.family or spec.name  # variants of a method share its reference (adapter defaults, float32)
    if key in cache:
        return cache[key]
    t0 = perf_counter()
    stochastic = bool(EXPLAINERS.get(spec.name).meta.get("stochastic"))
    if spec.family == "expected_gradients" or stochastic:
        name = "pneumobench.expected_gradients" if spec.family == "expected_gradients" else spec.name
        fixed = {k: v for k, v in spec.params.items() if k != "precision"}  # the reference is float32
        base = FrontierSpec(
            name,
            EXPLAINERS.get(name).meta["budget"],
            spec.budgets,
            spec.family,
            spec.reference_budget,
            {} if name != spec.name else fixed,
        )
        runs = torch.stack(
            [
                _run(base, model, inputs, targets, background, spec.reference_budget, s).values.double().cpu()
                for s in range(10_000, 10_000 + reference_seeds)
            ]
        )
        ref = runs.mean(0)
        se = runs.var(0).flatten(1).sum(1).div(reference_seeds).sqrt() / ref.flatten(1).norm(dim=1).clamp_min(1e-12)
        own = float(se.mean())
    else:
        base = FrontierSpec(spec.name, spec.budget, spec.budgets, spec.family, spec.reference_budget)
        ref = _run(base, model, inputs, targets, background, spec.reference_budget, None).values.double().cpu()
        half = _run(base, model, inputs, targets, background, spec.reference_budget // 2, None).values.double().cpu()
        own = float(rel_l2(half, ref).mean())
    out = (ref, own, perf_counter() - t0)
    cache[key] = out
    return out


def _describe_reference(spec: FrontierSpec, reference_seeds: int) -> str:
    if spec.family == "expected_gradients":
        return f"mean of {reference_seeds} pneumobench.expected_gradients runs, n_samples={spec.reference_budget}"
    if EXPLAINERS.get(spec.name).meta.get("stochastic"):
        return f"mean of {reference_seeds} runs, {spec.budget}={spec.reference_budget}"
    return f"{spec.budget}={spec.reference_budget}"


def frontier_rows(
    model_label: str,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    background: Tensor,
    specs: list[FrontierSpec],
    *,
    seeds: int = 3,
    reference_seeds: int = 4,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, variant, budget, seed): mean relative L2 and completeness gap over the
    images, passes per image, seconds, and the reference it was measured against (``reference``,
    its own error estimate ``reference_error``, its seconds ``reference_s``)."""
    cache: dict = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        ref, ref_err, ref_s = _reference(
            spec, model, inputs, targets, background, reference_seeds=reference_seeds, cache=cache
        )
        stochastic = bool(EXPLAINERS.get(spec.name).meta.get("stochastic"))
        label = spec.name + (f" [{spec.variant}]" if spec.variant else "")
        precision = str(spec.params.get("precision", "float32"))
        plain = spec.variant.removesuffix(precision).strip() if precision != "float32" else spec.variant
        float32_label = spec.name + (f" [{plain}]" if plain else "")  # the same method in float32
        described = _describe_reference(spec, reference_seeds)
        for budget in spec.budgets:
            for seed in range(seeds) if stochastic else [None]:
                t0 = perf_counter()
                attr = _run(spec, model, inputs, targets, background, budget, seed)
                seconds = perf_counter() - t0
                fb, f = _passes(spec, budget, background.shape[0])
                err = rel_l2(attr.values, ref)
                gap = (  # |gap|, NaN: none
                    completeness_gap(attr).abs().cpu().numpy()
                    if attr.outputs is not None and attr.base_values is not None
                    else np.full(inputs.shape[0], np.nan)
                )
                rows.append(
                    {
                        "model": model_label,
                        "method": label,
                        "budget": budget,
                        "passes_fb": fb,
                        "passes_f": f,
                        "precision": precision,
                        "float32_method": float32_label,
                        "seed": seed,
                        "rel_l2": float(err.mean()),
                        "gap": float(np.nanmean(gap)) if np.isfinite(gap).any() else None,
                        "s_per_image": seconds / inputs.shape[0],
                        "reference": described,
                        "reference_error": ref_err,
                        "reference_s": ref_s,
                    }
                )
                if progress:
                    progress(f"{model_label} {label} {spec.budget}={budget} seed={seed}: rel L2 {err.mean():.4f}")
    return rows


# ------------------------------------------------------------------------------------------------
# tables and figure from a saved run
# ------------------------------------------------------------------------------------------------


def frontier_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> one line per (model, method, budget): passes, mean and sd over seeds of the relative
    L2 and of the gap, seconds per image."""
    df = pd.DataFrame(list(rows))
    df["passes"] = df["passes_fb"] + df["passes_f"]
    for column, default in (("precision", "float32"), ("float32_method", df["method"])):  # runs saved before them
        df[column] = df[column].fillna(default) if column in df.columns else default
    g = df.groupby(["model", "method", "budget"], sort=False)
    out = g.agg(
        passes=("passes", "first"),
        kind=("passes_fb", lambda s: "fb" if s.iloc[0] else "f"),
        precision=("precision", "first"),
        float32_method=("float32_method", "first"),
        seeds=("rel_l2", "size"),
        rel_l2=("rel_l2", "mean"),
        rel_l2_sd=("rel_l2", "std"),
        gap=("gap", "mean"),
        gap_sd=("gap", "std"),
        s_per_image=("s_per_image", "median"),
        reference_error=("reference_error", "first"),
    ).reset_index()
    return out


def _reach(x: np.ndarray, e: np.ndarray, target: float) -> float:
    """Where the error ``e`` over the cost ``x`` (ascending budgets) first falls to ``target``,
    log-log between the points around it; ``NaN`` when it does not."""
    for i in range(len(x)):
        if e[i] <= target:
            if i == 0:
                return float(x[0])
            t = (math.log(target) - math.log(e[i - 1])) / (math.log(e[i]) - math.log(e[i - 1]))
            return math.exp(math.log(x[i - 1]) + t * (math.log(x[i]) - math.log(x[i - 1])))
    return math.nan


def passes_to_reach(frame: pd.DataFrame, target: float = TARGET_ERROR) -> pd.DataFrame:
    """Per (model, method): the passes per image where the mean relative L2 first falls to
    ``target``, interpolated log-log between the grid points around it; ``NaN`` when the grid's
    largest budget does not reach it (the table then says "> max"). ``seconds_to_target``: the
    same on the measured seconds per image (the budget's order), the cost a precision changes."""
    out = []
    for (model, method), grp in frame.groupby(["model", "method"], sort=False):
        grp = grp.sort_values("passes")
        p, e = grp["passes"].to_numpy(float), grp["rel_l2"].to_numpy(float)
        slope = np.polyfit(np.log(p), np.log(np.maximum(e, 1e-12)), 1)[0] if len(p) > 1 else math.nan
        out.append(
            {
                "model": model,
                "method": method,
                "passes_to_target": _reach(p, e, target),
                "max_passes": p[-1],
                "kind": grp["kind"].iloc[0],
                "slope": slope,
                "seconds_to_target": _reach(grp["s_per_image"].to_numpy(float), e, target),
            }
        )
    return pd.DataFrame(out)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}f}"


def frontier_tables(rows: Iterable[Mapping[str, Any]], target: float = TARGET_ERROR) -> str:
    """Markdown: the passes to reach ``target`` per method, then the frontier per model."""
    frame = frontier_frame(rows)
    reach = passes_to_reach(frame, target)
    lines = [
        (
            f"Passes per image to reach {target:.0%} relative L2 against the converged reference "
            f"(log-log interpolation between grid points; slope = fitted exponent of error vs passes; "
            f"ms = the same on the measured milliseconds per image):"
        ),
        "",
        "| model | method | passes to reach | ms to reach | slope |",
        "|---|---|---:|---:|---:|",
    ]
    for r in reach.itertuples():
        reached = (
            f"{r.passes_to_target:.0f} {r.kind}"
            if math.isfinite(r.passes_to_target)
            else f"> {r.max_passes:.0f} {r.kind}"
        )
        ms = f"{1000 * r.seconds_to_target:.1f}" if math.isfinite(r.seconds_to_target) else "never"
        lines.append(f"| {r.model} | {r.method} | {reached} | {ms} | {r.slope:.2f} |")
    lines += precision_lines(frame)
    for model, grp in frame.groupby("model", sort=False):
        lines += [
            "",
            f"**{model}** (relative L2 and completeness gap: mean over images; +- = sd over explainer seeds)",
            "",
            "| method | budget | passes/image | rel. L2 | +- | gap | +- | s/image | reference's own error |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in grp.itertuples():
            lines.append(
                f"| {r.method} | {r.budget} | {r.passes} {r.kind} | {_fmt(r.rel_l2, 4)} | "
                f"{_fmt(r.rel_l2_sd, 4)} | {_fmt(r.gap)} | {_fmt(r.gap_sd)} | {_fmt(r.s_per_image)} | "
                f"{_fmt(r.reference_error, 4)} |"
            )
    return "\n".join(lines) + "\n"


def precision_lines(frame: pd.DataFrame) -> list[str]:
    """Markdown lines comparing each reduced-precision variant with its float32 method, budget by
    budget (the same passes): the relative L2 of both and the speedup of the seconds per image;
    nothing when the frame has no reduced-precision rows."""
    reduced = frame[frame["precision"] != "float32"]
    if reduced.empty:
        return []
    lines = [
        "",
        "Reduced precision against float32, the same passes (relative L2 to the float32 reference; "
        "speedup = float32 s/image / reduced s/image):",
        "",
        "| model | method | precision | budget | rel. L2 float32 | rel. L2 reduced | speedup |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    fp32 = frame[frame["precision"] == "float32"].set_index(["model", "method", "budget"])
    for r in reduced.itertuples():
        base = str(r.float32_method)
        key = (r.model, base, r.budget)
        if key not in fp32.index:
            continue
        ref = fp32.loc[key]
        lines.append(
            f"| {r.model} | {base} | {r.precision} | {r.budget} | {_fmt(ref['rel_l2'], 4)} | "
            f"{_fmt(r.rel_l2, 4)} | {float(ref['s_per_image']) / float(r.s_per_image):.2f}x |"
        )
    return lines


def frontier_figure(
    rows: Iterable[Mapping[str, Any]], path: str | Path, target: float = TARGET_ERROR, x: str = "passes"
) -> Path:
    """Log-log relative L2 vs passes per image (``x="seconds"``: vs measured seconds per image, where
    reduced precision moves a method), one panel per model, error bars = sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if x not in ("passes", "seconds"):
        raise BenchError(f"frontier figure: x must be 'passes' or 'seconds', got {x!r}")
    column = "passes" if x == "passes" else "s_per_image"
    frame = frontier_frame(rows)
    models = list(dict.fromkeys(frame["model"]))
    ncols = len(models) if len(models) <= 3 else 2  # four panels: 2 x 2
    nrows = math.ceil(len(models) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False, sharey=True)
    axes = grid.ravel()
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    methods = list(dict.fromkeys(frame["method"]))  # one colour per method in every panel
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    assert isinstance(cmap, ListedColormap)  # tab10 and tab20 are listed colour maps
    # matplotlib types .colors as ArrayLike (scalars included); it is the list the map was made of
    colours = dict(zip(methods, cmap.colors))  # type: ignore[arg-type]
    for ax, model in zip(axes, models):
        for method, grp in frame[frame["model"] == model].groupby("method", sort=False):
            ax.errorbar(
                grp[column],
                grp["rel_l2"],
                yerr=grp["rel_l2_sd"].fillna(0),
                marker="o",
                ms=3,
                capsize=2,
                label=method,
                color=colours[method],
            )
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set(
            xscale="log",
            yscale="log",
            title=model,
            xlabel="model passes per image" if x == "passes" else "seconds per image (measured)",
        )
        ax.grid(True, which="both", lw=0.3)
    for row in grid:
        row[0].set_ylabel("relative L2 to the converged value")
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    per_row = min(len(methods), ncols)  # legend columns: one per panel width, so long labels fit
    fig.legend([handles[m] for m in methods], methods, fontsize=7, loc="lower center", ncol=per_row, frameon=False)
    fig.tight_layout(rect=(0, (0.06 + 0.035 * ((len(methods) - 1) // per_row)) / nrows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def saved_rows(json_path: str | Path) -> list[dict[str, Any]]:
    """The frontier rows of a pytest-benchmark JSON saved from tests/benchmarks/test_frontier.py."""
    return [r for info in saved_infos(json_path, "frontier", "test_frontier.py") for r in info["rows"]]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m bench.perf.frontier",
        description="Markdown tables (and a figure) of a saved frontier benchmark run",
    )
    ap.add_argument("run_json", nargs="+", help="saved runs; their rows are shown together")
    ap.add_argument("--figure", help="write the log-log figure here (PNG)")
    ap.add_argument(
        "--x",
        choices=("passes", "seconds"),
        default="passes",
        help="the figure's cost axis: model passes or measured seconds per image",
    )
    args = ap.parse_args(argv)
    try:
        rows = [r for path in args.run_json for r in saved_rows(path)]
    except (BenchError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(frontier_tables(rows))
    if args.figure:
        frontier_figure(rows, args.figure, x=args.x)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
