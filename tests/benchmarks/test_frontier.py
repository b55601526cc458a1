"""Accuracy per pass (issue 18): the cost-accuracy frontier of every approximate explainer.

For each model of ``BENCH_MODELS`` (random weights, BatchNorm calibrated, as the cost benchmarks)
and, when ``BENCH_FRONTIER_CHECKPOINT`` names a checkpoint, that trained model too
(``BENCH_FRONTIER_RANDOM=0``: the trained model only): every
explainer registered with ``budget=`` is run over its pass grid (bench.perf.frontier) against its
converged reference, on ``BENCH_FRONTIER_IMAGES`` images (default 4) with ``BENCH_FRONTIER_SEEDS``
explainer seeds (default 3). Images: test images of the real data when it is there
(``BENCH_DATA_FILE`` or medmnist's folder), else the seeded uniform batch of the cost benchmarks;
background: ``BENCH_BACKGROUND`` (default 50; 32 is the runner's default) train images.

The rows go into the benchmark's ``extra_info`` (one pytest-benchmark round, the wall time of the
whole frontier). Render a saved run::

    python -m pytest tests/benchmarks/test_frontier.py --benchmark-only \
        --benchmark-save=frontier --benchmark-storage=results/benchmarks
    python -m bench.perf.frontier results/benchmarks/<machine>/0001_frontier.json --figure docs/frontier.png
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.perf.frontier import default_specs, frontier_rows

from .conftest import _positive, load_average

pytestmark = pytest.mark.benchmark


def _data(n_images: int, n_background: int, device):
    """Real test images (the first ``n_images`` of a seeded permutation) and train background, or None."""
    from bench.core.errors import BenchError
    from datasets import load_split
    from datasets.pneumoniamnist import resolve_data_file

    if not resolve_data_file().is_file():  # no download attempt from a benchmark
        return None
    try:
        test, train = load_split("pneumoniamnist", "test"), load_split("pneumoniamnist", "train")
    except BenchError:
        return None
    g = torch.Generator().manual_seed(0)
    x = test.images[torch.randperm(len(test), generator=g)[:n_images]]
    bg = train.images[torch.randperm(len(train), generator=g)[:n_background]]
    return x.to(device), bg.to(device), test.info.get("md5")


def _cases(model_name: str, settings):
    from tests.conftest import calibrated

    n_images, n_bg = _positive("BENCH_FRONTIER_IMAGES", 4), settings.background
    data = _data(n_images, n_bg, settings.device)
    if data is None:
        g = torch.Generator().manual_seed(1)
        data = (
            torch.rand(n_images, 1, 28, 28, generator=g).to(settings.device),
            torch.rand(n_bg, 1, 28, 28, generator=torch.Generator().manual_seed(2)).to(settings.device),
            None,
        )
    x, bg, md5 = data
    random_weights = os.environ.get("BENCH_FRONTIER_RANDOM", "1").strip()
    if random_weights not in ("0", "1"):
        raise pytest.UsageError(f"BENCH_FRONTIER_RANDOM={random_weights!r} must be 0 or 1")
    cases = []
    if random_weights == "1":
        cases.append((f"{model_name} (random weights)", calibrated(model_name).to(settings.device)))
    ckpt = os.environ.get("BENCH_FRONTIER_CHECKPOINT", "").strip()
    if ckpt:
        from models.checkpoints import load_checkpoint

        model, info = load_checkpoint(ckpt, device=settings.device)
        if info["model"] == model_name:
            cases.insert(0, (f"{model_name} (trained, {os.path.basename(ckpt)[:24]})", model))
    if not cases:
        pytest.skip(f"BENCH_FRONTIER_RANDOM=0 and no BENCH_FRONTIER_CHECKPOINT of {model_name}: nothing to measure")
    return cases, x, bg, md5


def test_frontier(benchmark, model_name, bench_settings):
    s = bench_settings
    cases, x, bg, md5 = _cases(model_name, s)
    seeds = _positive("BENCH_FRONTIER_SEEDS", 3)
    names = [n.strip() for n in os.environ.get("BENCH_FRONTIER_EXPLAINERS", "").split(",") if n.strip()] or None
    specs = default_specs(names)
    load = load_average()
    rows: list[dict] = []

    def walk():
        rows.clear()
        for label, model in cases:
            with torch.no_grad():
                t = model(x).argmax(1)
            rows.extend(frontier_rows(label, model, x, t, bg, specs, seeds=seeds, progress=print))
        return rows

    benchmark.group = f"frontier-{model_name}"
    benchmark.pedantic(walk, rounds=1, iterations=1, warmup_rounds=0)
    assert rows and all(r["rel_l2"] >= 0 for r in rows)
    benchmark.extra_info.update(
        {
            "kind": "frontier",
            "model": model_name,
            **s.describe(),
            "images": x.shape[0],
            "explainer_seeds": seeds,
            "data_md5": md5,
            "load_average": load,
            "rows": rows,
        }
    )
