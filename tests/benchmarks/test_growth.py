"""How cost grows with the image size (bench.perf.growth): the study's method set per image.

The set is configs/study.toml's explainers (with its parameters and background size) and its
metric set, on every model of ``BENCH_MODELS`` (random weights: a pass costs the same whatever the
weights) at the sizes ``BENCH_GROWTH_SIZES`` (default 28,64,128,224), timed on ``BENCH_BATCH``
images (``BENCH_GROWTH_BATCH`` overrides it; default 8, the study's shard). At the sizes of
``BENCH_GROWTH_MEASURE`` (default 28,64) the metric set is also run for real on the batch and its
seconds per image set beside its floor. The estimate scales the floor to the study at
``BENCH_GROWTH_IMAGES`` images per model-stage (default 100) x ``BENCH_GROWTH_STAGES`` model-stages
(default 9), here and on a device sustaining ``BENCH_GROWTH_DEVICE_TFLOPS`` TFLOP/s (default 20:
about what a single recent data-centre GPU sustains on ResNet convolutions in FP32 with TF32 tensor
cores; state the device when quoting it). Render a saved run::

    python -m pytest tests/benchmarks/test_growth.py --benchmark-only \
        --benchmark-save=growth --benchmark-storage=results/benchmarks
    python -m bench.perf.growth results/benchmarks/<machine>/NNNN_growth.json
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.perf.growth import SIZES, growth_rows, study_estimate
from bench.run.config import load_config

from .conftest import _positive, load_average

pytestmark = pytest.mark.benchmark

STUDY = Path(__file__).resolve().parents[2] / "configs" / "study.toml"


def _sizes(name: str, default: str) -> list[int]:
    raw = os.environ.get(name, "").strip() or default
    try:
        sizes = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 16:
        raise pytest.UsageError(f"{name}={raw!r} must be comma-separated image sizes of at least 16 px")
    return sizes


def test_growth(benchmark, bench_settings):
    s = bench_settings
    cfg = load_config(STUDY)
    explainers = {n: dict(cfg.explain.params.get(n, {})) for n in cfg.explain.names}
    metrics = {n: dict(cfg.metrics.params.get(n, {})) for n in cfg.metrics.names}
    sizes = _sizes("BENCH_GROWTH_SIZES", ",".join(map(str, SIZES)))
    measure = _sizes("BENCH_GROWTH_MEASURE", "28,64")
    batch = _positive("BENCH_GROWTH_BATCH", 8)
    tflops = float(os.environ.get("BENCH_GROWTH_DEVICE_TFLOPS", "").strip() or 20)
    n_images, stages = _positive("BENCH_GROWTH_IMAGES", 100), _positive("BENCH_GROWTH_STAGES", 9)
    load = load_average()
    rows: list[dict] = []

    def walk():
        rows[:] = growth_rows(
            s.models,
            sizes,
            explainers,
            metrics,
            background_size=cfg.data.background_size,
            batch=batch,
            device=s.device,
            measure=measure,
        )
        return rows

    benchmark.group = "growth"
    benchmark.pedantic(walk, rounds=1, iterations=1, warmup_rounds=0)
    # FLOPs grow with the feature maps: at the large stem (>= 64 px) a 4x larger side is ~16x the FLOPs
    by = {(r["model"], r["size"]): r for r in rows}
    for m in s.models:
        if (m, 64) in by and (m, 128) in by:
            assert 3.5 < by[m, 128]["forward_flops"] / by[m, 64]["forward_flops"] < 4.5
    est = study_estimate(rows, n_images=n_images, model_stages=stages, device_flops_per_second=tflops * 1e12)
    benchmark.extra_info.update(
        {
            "kind": "growth",
            **s.describe(),
            "batch": batch,
            "load_average": load,
            "rows": rows,
            "explainers": list(explainers),
            "metrics": list(metrics),
            "background_size": cfg.data.background_size,
            "estimate": {
                "n_images": n_images,
                "model_stages": stages,
                "device_flops_per_second": tflops * 1e12,
                "device": "assumed, not measured",
                "rows": est,
            },
        }
    )
