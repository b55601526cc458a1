"""How the cost of a method set grows with the image size: passes x seconds per pass, and FLOPs.

The plan for users whose images are larger than MedMNIST's 28 px. For each model and input size
(28, 64, 128, 224 px by default), on random weights (a pass costs the same whatever the weights):

* **FLOPs per pass** per image, counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a
  batch of one: a forward pass ``F``, and a forward+input-gradient pass ``FB`` (what a gradient
  explainer repeats: ``torch.autograd.grad`` of the target logit with respect to the input only,
  as :func:`bench.perf.floor.time_forward_backward` times it);
* **seconds per pass** per image, ``t_f`` and ``t_fb``, timed at the batch size given
  (:func:`bench.perf.floor.time_forward`, :func:`~bench.perf.floor.time_forward_backward`);
* for every explainer of the set, its **floor** per image (:mod:`bench.perf.floor`)::

      explain(e)  = n_fb(e) t_fb + n_f(e) t_f
      metrics(e)  = sum_m n_fb(m | e) t_fb + n_f(m | e) t_f      (m over the metric set, e's passes
                                                                  for the metrics that re-run it)
      per image   = sum_e explain(e) + metrics(e)

  and the same sums in FLOPs (``n_fb FB + n_f F``);
* optionally the **measured** seconds per image of the metric set on one attribution (its cost
  does not depend on the values), beside its floor, since a metric's work outside the model
  (ROAD's imputation: a sparse linear solve over every pixel) grows with the pixels too and is
  no model pass.

From the rows, :func:`study_estimate` scales one image's cost to a study (``n`` images per model-
stage x the model-stages) on this machine, and on another device by FLOPs at a stated throughput
(FLOP/s actually sustained, not the data-sheet peak). Both are estimates of model passes; the
floor ratio of a real run (its manifest's ``cost``) says how close runs come to them.

Note on the ResNet stems (models/resnet.py): up to 63 px a 3x3 stride-1 stem without pooling
(MedMNIST's "ResNet (28)"), from 64 px torchvision's 7x7/2 stem and a 2x2 pool: the 28 px model's
feature maps are 28 x 28, the 64 px model's 16 x 16, so a 64 px pass costs less than a 28 px one.

``tests/benchmarks/test_growth.py`` runs :func:`growth_rows` under pytest-benchmark;
``python -m bench.perf.growth RUN.json`` renders a saved run.
"""

from __future__ import annotations

import json
import sys
from time import perf_counter
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench.core.errors import BenchError
from bench.core.text import markdown_table
from bench.metrics import compute_metric, randomisation_layers
from bench.perf.floor import (
    floor_seconds,
    metric_passes_per_image,
    passes_per_image,
    saved_infos,
    time_forward,
    time_forward_backward,
)
from models import build_model

__all__ = ["SIZES", "pass_flops", "set_passes", "growth_rows", "measure_metric_set", "study_estimate", "growth_tables"]

SIZES = (28, 64, 128, 224)
_TIMED_BY_EXPLAINER = ("randomisation_similarity",)  # metrics whose passes are the explainer's (none measured)


def pass_flops(model: nn.Module, shape: Sequence[int]) -> tuple[float, float]:
    """``(FB, F)``: FLOPs of one forward+input-gradient pass and of one forward pass, per image
    of ``shape`` ``(C, H, W)`` (a batch of one, on the model's device)."""
    device = next(model.parameters()).device
    x = torch.rand(1, *shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    forward = float(counter.get_total_flops())
    xg = x.clone().requires_grad_(True)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # the gradient of the input only, as a gradient explainer takes it
        p.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.enable_grad():
            model(xg)[:, 0].sum().backward()  # (autograd.grad trips FlopCounterMode's module hooks)
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
    return float(counter.get_total_flops()), forward


def set_passes(
    explainers: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    background_size: int,
    shape: Sequence[int],
    model: nn.Module,
) -> dict[str, dict[str, Any]]:
    """Per explainer: its passes per image ``explain = (n_fb, n_f)`` and its metric set's
    ``metrics = (n_fb, n_f)`` (the metrics' passes summed; None where a rule is missing)."""
    layers = len(randomisation_layers(model))
    out: dict[str, dict[str, Any]] = {}
    for name, params in explainers.items():
        e = passes_per_image(name, params, background_size=background_size, shape=tuple(shape), model=model)
        total: list[float] | None = [0.0, 0.0]
        for m, mp in metrics.items():
            p = metric_passes_per_image(m, mp, explainer_passes=e, n_layers=layers)
            total = None if p is None or total is None else [total[0] + p[0], total[1] + p[1]]
        out[name] = {"explain": e, "metrics": None if total is None else (total[0], total[1])}
    return out


def _sum(values: Sequence[float | None]) -> float | None:
    """The sum, or None when any part is unknown (a method without a pass rule)."""
    return None if any(v is None for v in values) else float(sum(v for v in values if v is not None))


def measure_metric_set(
    model: nn.Module, inputs: Tensor, metrics: Mapping[str, Mapping[str, Any]], *, repeats: int = 1
) -> float:
    """Measured seconds per image of the metric set (the metrics that re-run the explainer left
    out: their cost is the explainer's) on one seeded random attribution, best of ``repeats``."""
    targets = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(inputs.shape, generator=g).to(inputs.device)
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        t0 = perf_counter()
        for m, mp in metrics.items():
            if m not in _TIMED_BY_EXPLAINER:
                compute_metric(m, model, inputs, targets, values, **dict(mp))
        best = min(best, perf_counter() - t0)
    return best / inputs.shape[0]


def growth_rows(
    model_names: Sequence[str],
    sizes: Sequence[int],
    explainers: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    background_size: int,
    batch: int = 8,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    measure: Sequence[int] = (),
    in_channels: int = 1,
) -> list[dict[str, Any]]:
    """One row per (model, size): FLOPs and seconds per pass, the set's floor per image by
    explainer and in total, in seconds and in FLOPs; with ``size in measure`` also the metric
    set's measured seconds per image (on ``batch`` images) beside its floor."""
    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    for name in model_names:
        for size in sizes:
            torch.manual_seed(0)
            model = build_model(name, in_channels=in_channels, image_size=int(size)).to(device).eval()
            for w in model.parameters():
                w.requires_grad_(False)
            shape = (in_channels, int(size), int(size))
            x = torch.rand(int(batch), *shape, generator=torch.Generator().manual_seed(1)).to(device)
            fb_flops, f_flops = pass_flops(model, shape)
            t_fb = time_forward_backward(model, x, repeats=repeats)
            t_f = time_forward(model, x, repeats=repeats)
            passes = set_passes(explainers, metrics, background_size=background_size, shape=shape, model=model)
            by: dict[str, Any] = {}
            for e, n in passes.items():  # the floor's formula n_fb x FB + n_f x F gives the FLOPs too
                by[e] = {
                    "explain_passes": n["explain"],
                    "metric_passes": n["metrics"],
                    "explain_seconds": floor_seconds(n["explain"], t_fb, t_f),
                    "metric_seconds": floor_seconds(n["metrics"], t_fb, t_f),
                    "explain_flops": floor_seconds(n["explain"], fb_flops, f_flops),
                    "metric_flops": floor_seconds(n["metrics"], fb_flops, f_flops),
                }
            total_s = _sum([v for b in by.values() for v in (b["explain_seconds"], b["metric_seconds"])])
            total_flops = _sum([v for b in by.values() for v in (b["explain_flops"], b["metric_flops"])])
            row: dict[str, Any] = {
                "model": name,
                "size": int(size),
                "batch": int(batch),
                "forward_flops": f_flops,
                "forward_backward_flops": fb_flops,
                "forward_seconds": t_f,
                "forward_backward_seconds": t_fb,
                "by_explainer": by,
                "floor_seconds_per_image": total_s,
                "flops_per_image": total_flops,
            }
            if int(size) in {int(s) for s in measure}:
                measured = {m: mp for m, mp in metrics.items() if m not in _TIMED_BY_EXPLAINER}
                floor = sum(
                    floor_seconds(metric_passes_per_image(m, mp), t_fb, t_f) or 0.0 for m, mp in measured.items()
                )
                row["metric_set_measured_seconds"] = measure_metric_set(model, x, measured)
                row["metric_set_floor_seconds"] = floor
            rows.append(row)
    return rows


def study_estimate(
    rows: Sequence[Mapping[str, Any]], *, n_images: int, model_stages: int, device_flops_per_second: float
) -> list[dict[str, Any]]:
    """Per (model, size): the set's cost for ``n_images`` per model-stage x ``model_stages``, in
    hours on the benchmark's machine (the floor) and on a device sustaining
    ``device_flops_per_second`` (FLOPs / throughput)."""
    if device_flops_per_second <= 0:
        raise BenchError(f"device_flops_per_second must be positive, got {device_flops_per_second!r}")
    out = []
    for r in rows:
        k = n_images * model_stages
        s, fl = r.get("floor_seconds_per_image"), r.get("flops_per_image")
        out.append(
            {
                "model": r["model"],
                "size": r["size"],
                "images": k,
                "hours_here": None if s is None else s * k / 3600,
                "hours_on_device": None if fl is None else fl * k / device_flops_per_second / 3600,
            }
        )
    return out


def _g(v: float | None, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    return "n/a" if v is None else fmt.format(v / scale)


def growth_tables(info: Mapping[str, Any]) -> str:
    """Markdown of a saved run's ``extra_info`` (:func:`growth_rows` rows plus the estimate)."""
    rows = info["rows"]
    lines = [
        f"Cost per image of the set ({len(info['explainers'])} explainers x {len(info['metrics'])} metrics, "
        f"background {info['background_size']}), batch {rows[0]['batch']}, {info.get('device', 'cpu')}:",
        "",
    ]
    head = [
        "model",
        "px",
        "GFLOP F",
        "GFLOP FB",
        "ms F",
        "ms FB",
        "floor s / image",
        "TFLOP / image",
        "metric set measured / floor (s / image)",
    ]
    body = []
    for r in rows:
        meas = r.get("metric_set_measured_seconds")
        body.append(
            [
                r["model"],
                str(r["size"]),
                _g(r["forward_flops"], 1e9),
                _g(r["forward_backward_flops"], 1e9),
                _g(r["forward_seconds"], 1e-3),
                _g(r["forward_backward_seconds"], 1e-3),
                _g(r["floor_seconds_per_image"]),
                _g(r["flops_per_image"], 1e12),
                "-" if meas is None else f"{meas:.3g} / {r['metric_set_floor_seconds']:.3g}",
            ]
        )
    lines += markdown_table(head, body)
    names = list(rows[0]["by_explainer"])
    lines += ["", "Floor seconds per image by explainer (explain + its metric set):", ""]
    body = []
    for r in rows:
        body.append(
            [r["model"], str(r["size"])]
            + [
                _g(
                    None
                    if b["explain_seconds"] is None or b["metric_seconds"] is None
                    else b["explain_seconds"] + b["metric_seconds"]
                )
                for b in (r["by_explainer"][e] for e in names)
            ]
        )
    lines += markdown_table(["model", "px", *names], body)
    est = info.get("estimate")
    if est:
        lines += [
            "",
            f"The study at {est['n_images']} images per model-stage x {est['model_stages']} model-stages "
            f"({est['n_images'] * est['model_stages']} image explanations per explainer): hours here (floor) "
            f"and on a device sustaining {est['device_flops_per_second'] / 1e12:g} TFLOP/s "
            f"({est['device']}):",
            "",
        ]
        lines += markdown_table(
            ["model", "px", "hours here", "hours on the device"],
            [[e["model"], str(e["size"]), _g(e["hours_here"]), _g(e["hours_on_device"])] for e in est["rows"]],
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m bench.perf.growth RUN.json (a pytest-benchmark file of tests/benchmarks/test_growth.py)",
            file=sys.stderr,
        )
        return 2
    try:
        infos = saved_infos(args[0], "growth", "test_growth.py")
    except (BenchError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for info in infos:
        print(growth_tables(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
