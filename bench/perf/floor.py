"""The cost floor of an explainer or a metric: model passes per image x the time of one pass.

An attribution method cannot be cheaper than the model passes it needs: integrated gradients
with 50 steps needs 50 forward+backward passes per image, Partition SHAP with 300 evaluations
needs 300 forward passes. The *floor* of a method is::

    floor = n_fb * t_fb + n_f * t_f          (seconds per image)

where ``(n_fb, n_f)`` = :func:`passes_per_image` (forward+backward passes, forward-only passes)
and ``t_fb`` / ``t_f`` are the measured times per image of ONE batched forward+backward
(:func:`time_forward_backward`) / forward (:func:`time_forward`) pass of the same model on the
same device at the benchmark's batch size. The *floor ratio* = measured time / floor says how
much a method (or its library) spends beyond its model passes: ~1 is as cheap as the method can
be at that batch size, 5 means four fifths of the time goes to bookkeeping, per-image Python
loops, numpy round trips or smaller batches. It can fall below 1 when a library batches more
rows per pass than the benchmark's batch (larger batches cost less per image).

Forward-only passes are timed separately rather than counted as a fraction of a
forward+backward pass: the ratio of the two is not a constant (measured between ~1/2 and ~1/4
depending on the model and the load).

Counting rules (per image): only the passes the *method* needs; an adapter's extra bookkeeping
passes (f(x), f(baseline) for ``outputs``/``base_values``) count as overhead. Each explainer and
metric declares its rule where it is registered (``passes=`` of ``register_explainer`` and
``register_metric``: a constant pair or a function of its parameters), so a new method or a
plug-in needs no edit here; a registered method without a rule has no floor (``None``,
reported as missing). Controls (``control=True``) need no pass.

:func:`benchmark_table` turns a pytest-benchmark JSON saved by ``tests/benchmarks`` into
Markdown tables (``python -m bench.perf.floor results/benchmarks/<machine>/0001_run.json``).
:func:`time_passes` and :func:`unit_floor_seconds` give the runner the floor of a run's units.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.precision import DEFAULT_PRECISION, autocast
from bench.core.text import markdown_table
from bench.metrics import METRICS, metric_params
from explainers import EXPLAINERS, explainer_params

__all__ = [
    "passes_per_image",
    "metric_passes_per_image",
    "time_forward_backward",
    "time_forward",
    "floor_seconds",
    "floor_ratio",
    "format_passes",
    "benchmark_table",
]

Passes = tuple[float, float]  # (forward+backward passes, forward-only passes) per image


def _with_defaults(kind: str, name: str, defaults: dict[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` over the method's defaults; a parameter it does not have raises."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise BenchError(
            f"{kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(defaults) or '(none)'}"
        )
    return {**defaults, **params}


def _apply_rule(rule: Any, *args: Any, **context: Any) -> Passes | None:
    """A pass rule's pair. A rule's keyword-only parameters name the context it needs (``shape``,
    ``model``); without that context given (``None``) the count is unknown: ``None``."""
    if rule is None:
        return None
    if callable(rule):
        wanted = [
            p.name for p in inspect.signature(rule).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        if any(context.get(k) is None for k in wanted):
            return None
        out = rule(*args, **{k: context[k] for k in wanted})
    else:
        out = rule
    return None if out is None else (float(out[0]), float(out[1]))


def passes_per_image(
    explainer_name: str,
    params: Mapping[str, Any] | None = None,
    background_size: int = 0,
    *,
    shape: tuple[int, ...] | None = None,
    model: nn.Module | None = None,
) -> Passes | None:
    """Model passes ``(n_forward_backward, n_forward)`` one image costs with an adapter.

    ``params`` override the adapter's defaults; ``background_size`` is the number of background
    images given to the adapter. Some counts also depend on the image ``shape`` ``(C, H, W)``
    (occlusion's windows) or on the ``model`` (Score-CAM's channels): their rules declare it
    (``passes=lambda p, n_bg, *, shape: ...``) and are ``None`` unless it is given. Adapters
    registered with ``control=True`` (they ignore the model) need none: ``(0, 0)``. A registered
    adapter without a ``passes`` rule returns ``None`` (its floor is missing). An unregistered
    name, or a parameter the adapter does not have, raises.
    """
    entry = EXPLAINERS.get(explainer_name)  # unknown names raise with the known ones
    full = _with_defaults("explainer", explainer_name, explainer_params(explainer_name), params)
    if entry.meta.get("control"):
        return 0.0, 0.0
    return _apply_rule(
        entry.meta.get("passes"),
        full,
        int(background_size),
        shape=None if shape is None else tuple(int(n) for n in shape),
        model=model,
    )


def metric_passes_per_image(
    metric_name: str,
    params: Mapping[str, Any] | None = None,
    *,
    explainer_passes: Passes | None = None,
    n_layers: int | None = None,
) -> Passes | None:
    """Model passes ``(n_forward_backward, n_forward)`` a metric costs per image.

    Randomisation re-runs the explainer once per cascade step: it needs the explainer's passes
    and ``n_layers`` (``len(bench.metrics.randomisation_layers(model))``), else ``None``. A
    registered metric without a ``passes`` rule returns ``None``; an unregistered name or an
    unknown parameter raises.
    """
    entry = METRICS.get(metric_name)  # unknown names raise with the known ones
    full = _with_defaults("metric", metric_name, metric_params(metric_name), params)
    return _apply_rule(entry.meta.get("passes"), full, explainer_passes, n_layers)


# --------------------------------------------------------------------------------------------
# Timing one pass
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_per_image(step: Callable[[], None], inputs: Tensor, repeats: int, warmup: int) -> float:
    if int(repeats) < 1:
        raise BenchError(f"repeats must be a positive integer, got {repeats!r}")
    for _ in range(int(warmup)):
        step()
    best = math.inf
    for _ in range(int(repeats)):
        _sync(inputs.device)
        t0 = perf_counter()
        step()
        _sync(inputs.device)
        best = min(best, perf_counter() - t0)
    return best / inputs.shape[0]


def _targets(inputs: Tensor, targets: Tensor | None) -> Tensor:
    if targets is not None:
        return targets.to(inputs.device).long().view(-1, 1)
    return torch.zeros(inputs.shape[0], 1, dtype=torch.long, device=inputs.device)


def time_forward_backward(
    model: nn.Module,
    inputs: Tensor,
    *,
    targets: Tensor | None = None,
    repeats: int = 3,
    warmup: int = 1,
    precision: str = DEFAULT_PRECISION,
) -> float:
    """Seconds per image of ONE batched forward+backward pass, best of ``repeats``.

    The pass is what a gradient method repeats: ``model(x)[i, target_i]`` summed over the batch,
    then ``torch.autograd.grad`` with respect to the inputs only (as Captum does; no weight
    gradients are computed or stored). ``inputs (B, C, H, W)``, ``targets (B,)`` (default class
    0). ``warmup`` untimed passes first. The forward runs under autocast in ``precision``
    (:mod:`bench.core.precision`). The model's mode and parameters are left untouched.
    """
    t = _targets(inputs, targets)
    x = inputs.detach().clone().requires_grad_(True)

    def step() -> None:
        with torch.enable_grad():
            with autocast(precision, inputs.device):
                score = model(x).gather(1, t).float().sum()
            torch.autograd.grad(score, x)

    return _best_per_image(step, inputs, repeats, warmup)


def time_forward(
    model: nn.Module,
    inputs: Tensor,
    *,
    targets: Tensor | None = None,
    repeats: int = 3,
    warmup: int = 1,
    precision: str = DEFAULT_PRECISION,
) -> float:
    """Seconds per image of ONE batched forward pass without gradients, best of ``repeats``.

    What perturbation metrics and model-agnostic methods (Partition SHAP) repeat.
    ``inputs (B, C, H, W)``; ``warmup`` untimed passes first; under autocast in ``precision``,
    as the metrics score in it (:func:`bench.metrics.base.scoring_logits`).
    """
    t = _targets(inputs, targets)
    x = inputs.detach()

    def step() -> None:
        with torch.no_grad(), autocast(precision, inputs.device):
            model(x).gather(1, t).float()

    return _best_per_image(step, inputs, repeats, warmup)


def floor_seconds(passes: Passes | None, fb_seconds: float, f_seconds: float) -> float | None:
    """``n_fb * t_fb + n_f * t_f`` seconds per image; ``None`` when the passes are unknown."""
    if passes is None:
        return None
    n_fb, n_f = passes
    return float(n_fb) * float(fb_seconds) + float(n_f) * float(f_seconds)


def floor_ratio(measured_seconds: float, floor: float | None) -> float | None:
    """Measured time / floor; ``None`` without a floor or with a zero floor (no model pass)."""
    if floor is None or not floor > 0 or not math.isfinite(floor):
        return None
    return float(measured_seconds) / floor


def format_passes(passes: Passes | list | None) -> str:
    """``"50 fb"``, ``"300 f"``, ``"49 fb + 2 f"``, ``"0"``, or ``"n/a"`` for unknown."""
    if passes is None:
        return "n/a"
    n_fb, n_f = (float(v) for v in passes)
    parts = [f"{_num(n)} {kind}" for n, kind in ((n_fb, "fb"), (n_f, "f")) if n]
    return " + ".join(parts) or "0"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


# --------------------------------------------------------------------------------------------
# Saved runs -> Markdown
# --------------------------------------------------------------------------------------------


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(float(v), fmt)


def _s_per_image(b: dict[str, Any]) -> float | None:
    info = b.get("extra_info", {})
    if info.get("s_per_image") is not None:
        return info["s_per_image"]
    stats, batch = b.get("stats") or {}, info.get("batch")
    return stats["min"] / batch if "min" in stats and batch else None


def _rounds(rows: list[dict[str, Any]], first: dict[str, Any]) -> str:
    """ "rounds 1" (older runs) or "best of 1-5 timed rounds after a warm-up call"."""
    timed = sorted({b["extra_info"]["timed_rounds"] for b in rows if "timed_rounds" in b.get("extra_info", {})})
    if not timed:
        return f"rounds {first.get('rounds', '?')}"
    span = str(timed[0]) if len(timed) == 1 else f"{timed[0]}-{timed[-1]}"
    return f"best of {span} timed rounds after a warm-up call"


def saved_infos(json_path: str | Path, kind: str, test: str) -> list[dict[str, Any]]:
    """The ``extra_info`` of every benchmark of ``kind`` in a pytest-benchmark JSON saved from
    ``tests/benchmarks/<test>``; none is a one-line :class:`BenchError` saying how to make one."""
    data = json.loads(Path(json_path).read_text())
    infos = [b["extra_info"] for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("kind") == kind]
    if not infos:
        raise BenchError(
            f"{json_path} holds no {kind} rows; run `python -m pytest tests/benchmarks/{test} "
            f"--benchmark-only --benchmark-save={kind}` first"
        )
    return infos


def benchmark_table(json_path: str | Path) -> str:
    """Markdown tables of a pytest-benchmark JSON written by ``tests/benchmarks``.

    One table for explainers (explainer, model, s/image, peak MB, passes, floor ratio) and one
    for metrics (metric, model, s/image, passes, floor ratio, Quantus s/image), preceded by a
    line describing the machine. Missing values print as "n/a".
    """
    data = json.loads(Path(json_path).read_text())
    machine = data.get("machine_info", {})
    rows = data.get("benchmarks", [])
    explainers = sorted(
        (b for b in rows if b.get("extra_info", {}).get("kind") == "explainer"),
        key=lambda b: (b["extra_info"].get("model", ""), b["extra_info"].get("explainer", "")),
    )
    metrics = sorted(
        (b for b in rows if b.get("extra_info", {}).get("kind") == "metric"),
        key=lambda b: (b["extra_info"].get("model", ""), b["extra_info"].get("metric", "")),
    )
    first = (explainers or metrics or [{"extra_info": {}}])[0]["extra_info"]
    desc = [
        f"{machine.get('device_name') or machine.get('cpu', {}).get('brand_raw') or machine.get('processor', '?')}"
        f" ({machine.get('device', '?')})",
        f"torch {machine.get('torch_version', '?')}, "
        f"{first.get('torch_threads', machine.get('torch_threads', '?'))} threads",
        f"batch {first.get('batch', '?')}, background {first.get('background', '?')}, "
        f"{_rounds(explainers + metrics, first)}",
        f"saved {data.get('datetime', '?')}",
    ]
    out = ["Machine: " + "; ".join(desc) + ".", ""]
    if explainers:
        out += markdown_table(
            ["explainer", "model", "s/image", "peak MB", "passes/image", "floor s/image", "floor ratio"],
            [
                [
                    i.get("explainer"),
                    i.get("model"),
                    _cell(_s_per_image(b), ".4f"),
                    _cell(i.get("peak_mb"), ".0f"),
                    format_passes(i.get("passes")),
                    _cell(i.get("floor_s_per_image"), ".4f"),
                    _cell(i.get("floor_ratio"), ".2f"),
                ]
                for b in explainers
                for i in [b["extra_info"]]
            ],
            "llrrlrr",
        ) + [""]
    if metrics:
        out += markdown_table(
            ["metric", "model", "s/image", "passes/image", "floor ratio", "Quantus", "Quantus s/image"],
            [
                [
                    i.get("metric"),
                    i.get("model"),
                    _cell(_s_per_image(b), ".4f"),
                    format_passes(i.get("passes")),
                    _cell(i.get("floor_ratio"), ".2f"),
                    i.get("quantus_metric") or "-",
                    _cell(i.get("quantus_s_per_image"), ".4f"),
                ]
                for b in metrics
                for i in [b["extra_info"]]
            ],
            "llrlrlr",
        ) + [""]
    for b in (b for b in rows if b.get("extra_info", {}).get("kind") == "precision"):
        out += precision_table(b["extra_info"]) + [""]
    if not explainers and not metrics and len(out) == 2:
        out.append("(no pneumobench benchmarks in this file)")
    return "\n".join(out)


def _forward_seconds(total: Mapping[str, Any], precision: str) -> Any:
    """The first model's forward seconds per image at ``precision`` in a total (None when not timed)."""
    passes: Mapping[str, Any] = next(iter(total.get("pass_seconds_per_image", {}).values()), {})
    return passes.get("forward" if precision == "float32" else f"forward_{precision}")


def _qualifies(row: dict[str, Any]) -> str:
    """ "yes" / "no", or "n/a" for a metric with no finite score to compare (additivity of non-additive maps)."""
    shift = row.get("max_pair_shift")
    if shift is None or not math.isfinite(shift):
        return "n/a"
    return "yes" if row["qualifies"] else "no"


def precision_table(info: dict[str, Any]) -> list[str]:
    """Markdown lines of a scoring-precision benchmark (tests/benchmarks/test_precision.py): per
    reduced precision and metric the speedup, the floor ratios, the score errors against float32,
    the paired verdicts and ranks that changed and the largest paired-mean change over the card's
    smallest detectable difference; then the whole metric set's time per image in each precision."""
    test = info.get("checkpoint_test") or {}
    out = [
        f"Scoring precision: {info.get('model')} ({info.get('checkpoint')}, sha256 "
        f"{str(info.get('checkpoint_sha256'))[:12]}, test acc {_cell(test.get('acc'), '.3f')}, auc "
        f"{_cell(test.get('auc'), '.3f')}), {info.get('images')} images x "
        f"{len(info.get('explainers', []))} explainers ({', '.join(info.get('explainers', []))}); left out: "
        f"{', '.join(info.get('left_out', [])) or 'none'}; load average {info.get('load_average')} before, "
        f"{info.get('load_average_after')} after.",
        "",
    ]
    out += markdown_table(
        [
            "precision",
            "metric",
            "speedup",
            "floor ratio fp32",
            "floor ratio reduced",
            "max abs diff",
            "mean abs diff",
            "max pair shift",
            "card mde",
            "shift / mde",
            "verdicts changed",
            "ranks changed",
            "qualifies",
        ],
        [
            [
                r["precision"],
                r["metric"],
                _cell(r.get("speedup"), ".2f"),
                _cell(r.get("floor_ratio_float32"), ".2f"),
                _cell(r.get("floor_ratio_reduced"), ".2f"),
                _cell(r.get("max_abs_diff"), ".2g"),
                _cell(r.get("mean_abs_diff"), ".2g"),
                _cell(r.get("max_pair_shift"), ".2g"),
                _cell(r.get("card_mde"), ".3g"),
                _cell(r.get("shift_over_mde"), ".3f"),
                f"{len(r['verdicts_changed'])} of {r['pairs']}",
                str(len(r["ranks_changed"])),
                _qualifies(r),
            ]
            for r in info.get("rows", [])
        ],
        "llrrrrrrrrrrl",
    ) + [""]
    total = info.get("total", {})
    out += markdown_table(
        ["precision", "s/image (metric set)", "speedup", "floor ratio (own precision)", "forward s/image"],
        [
            [
                p,
                _cell(t.get("s_per_image"), ".3f"),
                _cell(t.get("speedup", 1.0 if p == "float32" else None), ".2f"),
                _cell(t.get("floor_ratio"), ".2f"),
                _cell(_forward_seconds(t, p), ".4f"),
            ]
            for p, t in total.items()
        ],
        "lrrrr",
    )
    changed = [f"- {r['precision']} {r['metric']}: {c}" for r in info.get("rows", []) for c in r["verdicts_changed"]]
    return out + ([""] + ["Verdicts that changed:"] + changed if changed else [])


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.perf.floor RUN.json [...]``: print the Markdown tables of saved runs."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m bench.perf.floor results/benchmarks/<machine>/NNNN_run.json [...]", file=sys.stderr)
        return 2
    for p in paths:
        print(f"## {p}\n")
        print(benchmark_table(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
