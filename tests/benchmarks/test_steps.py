"""Step counts: the perturbation metrics' score error by step count against a 256-step reference.

The config is configs/study.toml on one trained checkpoint, the study's first seed's pre model
(``resnet18-28px-seed0-<key>.pt``, looked up under ``BENCH_CHECKPOINT_DIR``, default
``results/checkpoints``; the benchmark is skipped without it or without the data file:
``python -m bench train --model resnet18`` makes it), the study's per-confusion-cell image sample
at ``BENCH_STEPS_PER_CELL`` images per cell (default 2: 8 images) and the explainers
``BENCH_STEPS_EXPLAINERS`` (default ``captum.integrated_gradients,shap.gradient,random,edge``),
explained once by the run's own units (``Unit.explain``, the study's parameters, background and
targets) and preprocessed as the study's metrics read them (``metrics.attribution``).

:func:`bench.perf.steps.step_rows` then scores them with deletion and insertion AUC (substrates
zero and blur) and ROAD MoRF / LeRF at every step count of :data:`bench.perf.steps.DEFAULT_GRID`
(plus each metric's default) and at the reference ``BENCH_STEPS_REFERENCE`` (default 256), in the
study's scoring precision. The rows, the card's smallest detectable differences
(results/published/card/reliability_power.csv) and the choice are saved in ``extra_info``; render
a saved run with ``python -m bench.perf.steps results/benchmarks/<machine>/NNNN_steps.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from bench.metrics import preprocess_attributions
from bench.perf import steps as S
from bench.run import plan as P
from bench.run.config import load_config
from explainers.base import Attribution

from .conftest import _positive, load_average, trained_stages

pytestmark = pytest.mark.benchmark

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "configs" / "study.toml"
CARD_POWER = REPO / "results" / "published" / "card" / "reliability_power.csv"
EXPLAINERS = "captum.integrated_gradients,shap.gradient,random,edge"


def _config(tmp_path: Path, device: torch.device):
    from datasets.pneumoniamnist import resolve_data_file

    if not resolve_data_file().is_file():  # no download attempt from a benchmark
        pytest.skip(f"no PneumoniaMNIST data file at {resolve_data_file()} (set BENCH_DATA_FILE)")
    names = [
        e.strip() for e in (os.environ.get("BENCH_STEPS_EXPLAINERS", "").strip() or EXPLAINERS).split(",") if e.strip()
    ]
    ck_dir = Path(os.environ.get("BENCH_CHECKPOINT_DIR", "").strip() or REPO / "results" / "checkpoints")
    return load_config(
        STUDY,
        [
            "models.seeds=[0]",
            'models.stages=["pre"]',
            f"data.per_cell={_positive('BENCH_STEPS_PER_CELL', 2)}",
            "explain.names=[" + ", ".join(f'"{e}"' for e in names) + "]",
            "metrics.names=[" + ", ".join(f'"{m}"' for m in S.DEFAULT_METRICS) + "]",
            "reliability.enabled=false",
            f'device="{device.type}"',
            f'results_dir="{tmp_path}"',
            f'checkpoint_dir="{ck_dir}"',
        ],
    )


def _attributions(cfg, units) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Attribution]]:
    """Each explainer's units explained and concatenated (the same images, in the same order, for all)."""
    by_name: dict[str, list] = {}
    for u in units:
        by_name.setdefault(u.explainer, []).append(u)
    index = images = targets = None
    attrs = {}
    for name, us in by_name.items():
        recs = []
        for u in us:
            rec = u.explain()
            assert rec["status"] == "ok", f"{name}: {rec['message']}"
            recs.append(rec)
        idx = torch.cat([u.index for u in us])
        if index is None:
            index, images, targets = idx, torch.cat([u.images for u in us]), torch.cat([u.targets for u in us])
        assert torch.equal(idx, index), "every explainer explains the same images"
        outputs = [r["outputs"] for r in recs]
        base = [r["base_values"] for r in recs]
        values = torch.cat([r["values"] for r in recs])
        attrs[name] = Attribution(
            preprocess_attributions(values, cfg.metrics.attribution),
            None if any(o is None for o in outputs) else torch.cat(outputs),
            None if any(b is None for b in base) else torch.cat(base),
        )
        print(f"explained {name}: {sum(r['seconds'] for r in recs):.1f} s", flush=True)
    return index, images, targets, attrs


def test_step_counts(benchmark, bench_settings, tmp_path):
    device = bench_settings.device
    cfg = _config(tmp_path, device)
    train, test, stages = trained_stages(cfg, device)
    background = P.background(train, cfg.data.background_size, cfg.seed)
    units = [x.unit for x in P.plan_units(cfg, stages, test, background, device, tmp_path)[0] if not x.reference]
    index, images, targets, attrs = _attributions(cfg, units)
    x, t = images.to(device), targets.to(device)
    attrs = {k: Attribution(a.values.to(device), a.outputs, a.base_values) for k, a in attrs.items()}
    reference = _positive("BENCH_STEPS_REFERENCE", S.REFERENCE)
    # fixed parameters of the study besides the ones varied here (the step count and the substrate)
    fixed = {
        m: {k: v for k, v in cfg.metrics.params.get(m, {}).items() if k not in ("steps", "percentages", "substrate")}
        for m in S.DEFAULT_METRICS
    }
    load = load_average()
    out = {}

    def walk():
        out["rows"] = S.step_rows(
            stages[0].model,
            x,
            t,
            attrs,
            reference=reference,
            params=fixed,
            precision=cfg.metrics.precision,
            progress=lambda s: print(s, flush=True),
        )
        return out["rows"]

    benchmark.group = "steps-resnet18"
    benchmark.pedantic(walk, rounds=1, iterations=1, warmup_rounds=0)
    rows = out["rows"]
    mde = S.card_mde(CARD_POWER)
    choice = S.choose_steps(rows, mde)
    print(S.steps_tables(rows, mde))
    benchmark.extra_info.update(
        {
            "kind": S.KIND,
            "model": "resnet18",
            "checkpoint": stages[0].path.name,
            "checkpoint_sha256": stages[0].sha256,
            "checkpoint_test": {k: stages[0].sidecar["test"].get(k) for k in ("acc", "auc")},
            **bench_settings.describe(),
            "images": int(x.shape[0]),
            "image_index": index.tolist(),
            "explainers": list(attrs),
            "per_cell": cfg.data.per_cell,
            "attribution": cfg.metrics.attribution,
            "precision": cfg.metrics.precision,
            "grid": list(S.DEFAULT_GRID),
            "reference": reference,
            "fixed_params": fixed,
            "mde": mde,
            "mde_source": str(CARD_POWER.relative_to(REPO)),
            "choice": [{k: v for k, v in c.items()} for c in choice.values()],
            "load_average": load,
            "load_average_after": load_average(),
            "rows": S.records(rows),
        }
    )
    at_ref = rows[rows["steps"] == rows["reference"]]
    assert not at_ref.empty and (at_ref[["max_abs_err", "max_pair_shift"]].fillna(0) == 0).all().all()
    summary = rows[rows["explainer"] == S.SUMMARY]
    assert all(math.isfinite(v) for v in summary["max_abs_err"])
    # the trapezoid rule converges: a curve metric's largest error at 128 steps is below its error at 4
    for (metric, sub), g in summary[summary["metric"].isin(["deletion_auc", "insertion_auc"])].groupby(
        ["metric", "substrate"]
    ):
        err = dict(zip(g["steps"], g["max_abs_err"]))
        assert err[128] <= err[4], (metric, sub, err)
