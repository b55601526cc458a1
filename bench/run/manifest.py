"""``manifest.json``: what a run computed, on what, with which code, and what it cost against its floor.

The cost section compares the explain-and-score phase with its floor (:mod:`bench.perf.floor`):
the model passes every computed unit needed (its explainer's passes and each metric's, per
image, from their registrations) times the time of one pass of that model, measured at the
start of the run on ``explain.shard_size`` images (the batch a unit hands its explainer). The
metrics' forward passes are timed in the precision they score in (``metrics.precision``, recorded
as ``cost.precision``), so the floor ratio of a bfloat16 run is against a bfloat16 floor.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import typing
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_write_json
from bench.core.machine import machine_info
from bench.core.precision import DEFAULT_PRECISION
from bench.metrics import METRICS, randomisation_layers
from bench.perf.allocator import allocator_state
from bench.perf.floor import (
    floor_ratio,
    floor_seconds,
    metric_passes_per_image,
    passes_per_image,
    time_forward,
    time_forward_backward,
)
from bench.run.config import RunConfig, thaw
from bench.run.unit import Stage, Unit
from datasets import ImageSplit

PACKAGES = (
    "torch",
    "torchvision",
    "shap",
    "captum",
    "quantus",
    "medmnist",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "seaborn",
    "tqdm",
)
REPO = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["torch"] = torch.__version__  # with the build tag (+cpu, +cu130, ...)
    out["cuda"] = torch.version.cuda
    return out


def git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# ----------------------------------------------------------------------------- cost against the floor


PASS_WARMUP, PASS_REPEATS = 3, 10  # best of 10 after 3 warm-up passes: best-of-3 moved by ~25 % between runs


def time_passes(
    stages: list[Stage], units: list[Unit], precision: str = DEFAULT_PRECISION
) -> dict[str, dict[str, float]]:
    """Seconds per image of one forward+backward and one forward pass of each model, on its
    units' device, at the batch of its first unit (best of :data:`PASS_REPEATS` after
    :data:`PASS_WARMUP` warm-up passes), in float32 (the explainers' passes); with a scoring
    ``precision`` other than float32 also one forward pass in it, ``forward_<precision>`` (the
    metrics' passes: :func:`scoring_forward`)."""
    out: dict[str, dict[str, float]] = {}
    for st in stages:
        if st.model_name in out:
            continue  # the stages of a model share its architecture
        first = next((u for u in units if u.stage.model_name == st.model_name), None)
        if first is None:
            continue
        x = first.images.to(first.device)
        try:
            out[st.model_name] = {
                "forward_backward": time_forward_backward(st.model, x, repeats=PASS_REPEATS, warmup=PASS_WARMUP),
                "forward": time_forward(st.model, x, repeats=PASS_REPEATS, warmup=PASS_WARMUP),
                "batch": int(x.shape[0]),
            }
            if precision != DEFAULT_PRECISION:
                out[st.model_name][f"forward_{precision}"] = time_forward(
                    st.model, x, repeats=PASS_REPEATS, warmup=PASS_WARMUP, precision=precision
                )
        except Exception as exc:  # the model's own failure, before any unit: one line, not its traceback
            raise BenchError(
                f"{st.model_name}: the model fails in a forward and backward pass on {len(x)} images "
                f"({one_line(f'{type(exc).__name__}: {exc}', 200)}); it must run on batches and have "
                f"gradients"
            ) from None
    return out


def scoring_forward(pass_seconds: dict[str, float], precision: str) -> float:
    """Seconds per image of one forward pass in the scoring ``precision`` (:func:`time_passes`)."""
    return pass_seconds["forward"] if precision == DEFAULT_PRECISION else pass_seconds[f"forward_{precision}"]


def unit_floor(unit: Unit, result: dict[str, Any], pass_seconds: dict[str, float]) -> dict[str, Any]:
    """Measured seconds and floor seconds of the part of a unit computed in this run.

    The explainer's part counts unless its attributions came from the cache. A metric's
    forward passes cost one forward pass in the unit's scoring precision, those of a metric that
    re-runs the explainer (``needs=("explain",)``) the explainer's float32 passes. A method
    without a pass rule makes its floor unknown (``None``).
    """
    cfg, n = unit.cfg, len(unit)
    t_fb, t_f = pass_seconds["forward_backward"], pass_seconds["forward"]
    t_score = scoring_forward(pass_seconds, unit.precision)
    e_passes = (
        (0.0, 0.0)
        if unit.given is not None  # a given map: no model passes
        else passes_per_image(
            unit.explainer,
            unit.params,
            background_size=unit.background.shape[0],
            shape=tuple(unit.images.shape[1:]),
            model=unit.stage.model,
        )
    )
    measured: dict[str, Any] = {"explain": 0.0, "metrics": {}}
    floor: dict[str, Any] = {"explain": 0.0, "metrics": {}}
    if not result["attr_cached"]:
        measured["explain"] = result["seconds_per_image"] * n
        f = floor_seconds(e_passes, t_fb, t_f)
        floor["explain"] = None if f is None else f * n
    layers = len(randomisation_layers(unit.stage.model))
    for name, seconds in result.get("metric_seconds", {}).items():
        # the substrate sensitivity re-runs metrics: the passes of each run it made
        runs = result.get("substrates", {}).get("(computed)", []) if name == "(substrates)" else [name]
        total: float | None = 0.0
        for m in runs:
            reexplains = "explain" in METRICS.get(m).meta.get("needs", ())
            f = floor_seconds(
                metric_passes_per_image(m, cfg.metrics.params.get(m, {}), explainer_passes=e_passes, n_layers=layers),
                t_fb,
                t_f if reexplains else t_score,
            )
            total = None if f is None or total is None else total + f * n
        measured["metrics"][name] = seconds
        floor["metrics"][name] = total
    return {"measured": measured, "floor": floor}


def cost_summary(
    units: list[Unit],
    results: list[dict[str, Any]],
    pass_seconds: dict[str, dict[str, float]],
    phase_seconds: float,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, Any]:
    """The explain-and-score phase against its floor: overall, by explainer and by metric, the
    metrics' passes timed in the scoring ``precision`` they ran in (recorded as ``precision``).

    Only the units computed in this run count; a failed unit (its explainer raised) counts in
    the phase's wall time but has no floor, since what it would have cost is unknown.
    """
    by_explainer: dict[str, list[float | None]] = {}
    by_metric: dict[str, list[float | None]] = {}
    total_floor: float | None = 0.0
    computed = failed = 0
    for u, r in zip(units, results):
        if r["cached"]:
            continue
        computed += 1
        if r["status"] != "ok":
            failed += 1
            continue
        c = unit_floor(u, r, pass_seconds[u.stage.model_name])
        parts = [(by_explainer, u.explainer, c["measured"]["explain"], c["floor"]["explain"])]
        parts += [
            (by_metric, m, c["measured"]["metrics"][m], c["floor"]["metrics"][m]) for m in c["measured"]["metrics"]
        ]
        for table, key, measured, floor in parts:
            acc = table.setdefault(key, [0.0, 0.0])
            acc[0] += measured
            acc[1] = None if acc[1] is None or floor is None else acc[1] + floor
            total_floor = None if total_floor is None or floor is None else total_floor + floor

    def summary(acc: list[float | None]) -> dict[str, Any]:
        measured = typing.cast(float, acc[0])  # the measured seconds are always known; the floor may not be
        return {
            "measured_seconds": round(measured, 3),
            "floor_seconds": None if acc[1] is None else round(acc[1], 3),
            "ratio": _round(floor_ratio(measured, acc[1])),
        }

    return {
        "precision": precision,  # of the metrics' passes and of their floor; explainers' passes are float32
        "pass_seconds_per_image": pass_seconds,
        "units_computed": computed,
        "units_failed": failed,
        "explain_and_metrics": {
            "wall_seconds": round(phase_seconds, 2),
            "floor_seconds": None if total_floor is None else round(total_floor, 2),
            "ratio": _round(floor_ratio(phase_seconds, total_floor)) if computed else None,
        },
        "by_explainer": {k: summary(v) for k, v in sorted(by_explainer.items())},
        "by_metric": {k: summary(v) for k, v in sorted(by_metric.items())},
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ----------------------------------------------------------------------------- the manifest


def write_manifest(
    run_dir: Path,
    cfg: RunConfig,
    device: torch.device,
    test: ImageSplit,
    stages: list[Stage],
    timings: dict[str, float],
    unit_log: list[dict],
    written: list[Path],
    executor: str,
    cost: dict[str, Any],
    selection: dict[str, Any] | None = None,
) -> None:
    manifest = {
        "status": "complete",
        "config": cfg.to_dict(),
        "config_source": cfg.source,
        "command": " ".join(["python -m bench", *sys.argv[1:]]) if sys.argv and "bench" in sys.argv[0] else None,
        "versions": package_versions(),
        "platform": machine_info(),
        "device": str(device),
        "executor": executor,
        "allocator": allocator_state(),
        "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "git": git_commit(),
        "data": {"dataset": test.name, "split": test.split, "options": thaw(cfg.data.options), **test.info},
        "checkpoints": [
            {
                "model": s.model_name,
                "stage": s.stage,
                "path": str(s.path),
                "sha256": s.sha256,
                "test": {k: s.sidecar["test"].get(k) for k in ("acc", "auc", "sensitivity", "specificity")},
                "train_config": s.sidecar.get("config"),
            }
            for s in stages
        ],
        **({"selection": selection} if selection else {}),  # the models that picked the images
        "wall_seconds": {k: round(v, 2) for k, v in timings.items()},
        "cost": cost,
        "units": {
            "total": len(unit_log),
            "from_cache": sum(u["cached"] for u in unit_log),
            "reference": sum(u.get("reference", False) for u in unit_log),  # explain only, not scored
            "failed": [u for u in unit_log if u["status"] != "ok"],
        },
        "files": sorted(str(p.relative_to(run_dir)) for p in written),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
