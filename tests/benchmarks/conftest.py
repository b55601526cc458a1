"""Cost benchmarks (pytest-benchmark): skipped unless asked for, configured by environment knobs.

Run: ``python -m pytest tests/benchmarks --benchmark-only`` (or ``make benchmark``, which also
saves the run under ``results/benchmarks/``). A plain ``python -m pytest`` collects these tests
and skips them: each costs seconds to minutes.

Knobs (environment variables):

* ``BENCH_MODELS``      comma-separated model names (default ``resnet18,resnet50``)
* ``BENCH_BATCH``       images per explained batch (default 16)
* ``BENCH_BACKGROUND``  background images (default 50)
* ``BENCH_ROUNDS``      minimum timed rounds per benchmark, best one reported (default 1; cheaper calls get
                        up to 5, as many as fit in 30 s, after one untimed warm-up call)
* ``BENCH_DEVICE``      ``cpu`` / ``cuda`` / ``cuda:1`` (default ``cuda`` if available, else ``cpu``)
* ``BENCH_THREADS``     torch intra-op threads (default: as tests/conftest.py sets, min(2, cores))

Quick smoke run: ``BENCH_MODELS=resnet18 BENCH_BATCH=2 BENCH_BACKGROUND=8 python -m pytest
tests/benchmarks --benchmark-only -q -x``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pytest

import torch

from bench.perf.allocator import allocator_state
from bench.core.machine import machine_info as torch_machine_info
from tests.conftest import calibrated
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = "resnet18,resnet50"


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    batch: int
    background: int
    rounds: int
    device: torch.device
    threads: int | None

    def describe(self) -> dict:
        return {
            "batch": self.batch,
            "background": self.background,
            "rounds": self.rounds,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
        }


def _positive(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise pytest.UsageError(f"{name}={raw!r} must be a positive integer")
    return value


@lru_cache(maxsize=None)
def settings() -> Settings:
    """The knobs, read once per session; bad values stop the session with a usage error."""
    from models import MODELS

    models = tuple(m.strip() for m in os.environ.get("BENCH_MODELS", DEFAULT_MODELS).split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if not models or unknown:
        raise pytest.UsageError(
            f"BENCH_MODELS: unknown model(s) {unknown or '(none given)'}; known: {', '.join(MODELS.names())}"
        )
    device = torch.device(
        os.environ.get("BENCH_DEVICE", "").strip() or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("BENCH_DEVICE asks for CUDA, which is not available")
    threads = _positive("BENCH_THREADS", 0) if os.environ.get("BENCH_THREADS", "").strip() else None
    return Settings(
        models,
        _positive("BENCH_BATCH", 16),
        _positive("BENCH_BACKGROUND", 50),
        _positive("BENCH_ROUNDS", 1),
        device,
        threads,
    )


# --------------------------------------------------------------------------------------------
# Skipped unless asked for
# --------------------------------------------------------------------------------------------


def _asked_for(config: pytest.Config) -> bool:
    if config.getoption("benchmark_only", default=False):
        return True
    markexpr = config.getoption("markexpr", default="") or ""
    return "benchmark" in markexpr and "not benchmark" not in markexpr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked_for(config):
        return
    skip = pytest.mark.skip(reason="cost benchmark: run with `python -m pytest tests/benchmarks --benchmark-only`")
    for item in items:  # this hook sees the whole session: touch only this directory's items
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames:
        # Knobs are only read when benchmarks run, so a bad BENCH_* cannot break the normal suite.
        names = settings().models if _asked_for(metafunc.config) else DEFAULT_MODELS.split(",")
        # session scope: pytest groups the tests by model, so each model is built once
        metafunc.parametrize("model_name", names, scope="session")


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Describe what the numbers were measured on: torch, its threads, the device, library versions."""
    s = settings() if _asked_for(config) else None
    device = s.device if s else torch.device("cpu")
    machine_info["torch_version"] = torch.__version__
    # the session fixture restores the thread count before this runs: report what was used
    machine_info["torch_threads"] = s.threads if s and s.threads else torch.get_num_threads()
    machine_info["torch_interop_threads"] = torch.get_num_interop_threads()
    machine_info["device"] = str(device)
    machine_info["allocator"] = allocator_state()
    host = torch_machine_info()
    machine_info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else host["cpu"]
    machine_info["torch_cpu_capability"] = host["torch_cpu_capability"]
    machine_info["cpu_count"] = host["cpu_count"]
    machine_info["cuda"] = torch.version.cuda
    machine_info["libraries"] = {
        p: _version(p) for p in ("shap", "captum", "quantus", "numpy", "scipy", "torchvision", "pytest-benchmark")
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bench_settings() -> Settings:
    return settings()


@pytest.fixture(scope="session", autouse=True)
def _bench_threads(request):
    """Apply BENCH_THREADS (benchmarks only) and import the libraries before anything is measured,
    so that no import lands in a timing or a memory peak."""
    if not _asked_for(request.config):
        yield
        return
    s = settings()
    from bench.perf.allocator import tune_allocator

    tune_allocator()  # as `python -m bench` does; the floor passes and the methods alike (bench/allocator.py)
    before = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    import captum.attr  # noqa: F401
    import quantus  # noqa: F401
    import shap  # noqa: F401

    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Case:
    """A model and the data every benchmark on it uses (all on the benchmark device)."""

    name: str
    model: nn.Module
    inputs: Tensor  # (B, 1, 28, 28) in [0, 1]
    targets: Tensor  # (B,) predicted classes
    background: Tensor  # (N, 1, 28, 28) in [0, 1]


@pytest.fixture(scope="session")
def _cases() -> dict[str, Case]:
    return {}


@pytest.fixture
def case(model_name: str, bench_settings: Settings, _cases: dict[str, Case]) -> Case:
    """The calibrated model ``model_name`` with seeded inputs, targets and background (built once)."""
    if model_name not in _cases:
        s = bench_settings
        model = calibrated(model_name).to(s.device)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(s.batch, 1, 28, 28, generator=g).to(s.device)
        bg = torch.rand(s.background, 1, 28, 28, generator=torch.Generator().manual_seed(2)).to(s.device)
        with torch.no_grad():
            t = model(x).argmax(1)
        _cases[model_name] = Case(model_name, model, x, t, bg)
    return _cases[model_name]


@contextmanager
def one_pass_times(case: Case, repeats: int = 3) -> Iterator[dict]:
    """Time one batched forward+backward and one forward pass before AND after the block.

    Yields a dict filled on exit with ``fb_s_per_image`` / ``f_s_per_image`` (best of all
    ``2 * repeats`` passes, seconds per image) and ``floor_stability`` (the slower of the
    before/after forward+backward bests over the faster: 1.0 on a quiet machine; far above 1
    means the load changed during the benchmark and its ratios are unreliable).
    """
    from bench.perf.floor import time_forward, time_forward_backward

    def measure() -> tuple[float, float]:
        return (
            time_forward_backward(case.model, case.inputs, targets=case.targets, repeats=repeats),
            time_forward(case.model, case.inputs, targets=case.targets, repeats=repeats),
        )

    out: dict = {}
    fb0, f0 = measure()
    yield out
    fb1, f1 = measure()
    out.update(fb_s_per_image=min(fb0, fb1), f_s_per_image=min(f0, f1), floor_stability=max(fb0, fb1) / min(fb0, fb1))


def release_memory() -> None:
    """Free what earlier benchmarks left and hand it back to the OS (gc, ``malloc_trim``, CUDA cache).

    CPU peak memory is measured as resident-set growth; memory freed to the allocator but not
    to the OS would be reused silently and hide part of the next benchmark's peak.
    """
    from bench.perf.profiling import release_freed_memory

    release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


ROUND_BUDGET_S = 30.0  # extra timed rounds while they fit in this many seconds ...
MAX_ROUNDS = 5  # ... up to this many (best one reported)


def run_measured(benchmark, case: "Case", settings: "Settings", fn, group: str):
    """Time ``fn()`` with pytest-benchmark, its peak memory, and the one-pass times around it.

    One untimed warm-up call first (the one-pass floor times have their warm-up too: lazy
    initialisation and first-touch allocations belong to neither), then as many timed rounds as
    fit in ``ROUND_BUDGET_S`` by the warm-up's time (at least ``settings.rounds``, at most
    ``MAX_ROUNDS`` unless ``settings.rounds`` asks for more): the floor is a best of six
    passes, so a method is compared on a best-of-several as well where that is affordable, not
    on one noisy call. Returns ``(result, best seconds per image, peak MB, one-pass dict)``.
    """
    from time import perf_counter

    from bench.perf.profiling import measure_peak_memory

    times: list[float] = []

    def timed():
        t0 = perf_counter()
        out = fn()
        if case.inputs.device.type == "cuda":
            torch.cuda.synchronize(case.inputs.device)
        times.append(perf_counter() - t0)
        return out

    benchmark.group = f"{group}-{case.name}"
    with one_pass_times(case) as one_pass:
        timed()
        warm = times.pop()
        rounds = max(settings.rounds, min(MAX_ROUNDS, int(ROUND_BUDGET_S // max(warm, 1e-9))))
        release_memory()
        with measure_peak_memory(settings.device) as mem:
            result = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    one_pass.update(warmup_s=warm, timed_rounds=rounds)
    return result, min(times) / case.inputs.shape[0], mem.peak_mb, one_pass


def cost_info(
    case: "Case", settings: "Settings", params: dict, per_image: float, peak_mb: float, passes, one_pass: dict, load
) -> dict:
    """The ``extra_info`` fields every cost benchmark records (explainers and metrics alike)."""
    from bench.perf.floor import floor_ratio, floor_seconds

    floor = floor_seconds(passes, one_pass["fb_s_per_image"], one_pass["f_s_per_image"])
    return {
        "model": case.name,
        **settings.describe(),
        "params": params,
        "s_per_image": per_image,
        "peak_mb": peak_mb,
        "passes": None if passes is None else list(passes),
        **one_pass,
        "floor_s_per_image": floor,
        "floor_ratio": floor_ratio(per_image, floor),
        "load_average": load,
    }


def trained_stages(cfg, device: torch.device):
    """``(train, test, stages)`` of ``cfg``'s data with its first seed's trained resnet18 checkpoint
    (looked up in ``cfg.checkpoint_dir``, never trained here): the benchmarks that need a trained
    model skip without it."""
    from bench.run import plan as P
    from models.checkpoints import default_checkpoint_path

    train, val, test = P.load_data(cfg)
    ckpt = default_checkpoint_path(
        P._train_config(cfg, "resnet18", 0, train), train.fingerprint, Path(cfg.checkpoint_dir)
    )
    if not ckpt.is_file():
        pytest.skip(
            f"no trained checkpoint {ckpt} (python -m bench train --model resnet18, or set "
            f"BENCH_CHECKPOINT_DIR to a folder holding it)"
        )
    return train, test, P.ensure_checkpoints(cfg, train, val, test, device, False, print)
