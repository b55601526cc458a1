"""Cost of every registered explainer: wall time, peak memory, model passes and floor ratio.

For each (model, explainer): the wall time of ``run_explainer`` on the fixed batch with the
adapter's default parameters (``benchmark.pedantic``, no warm-up: these are expensive), the
peak memory growth during it (bench.profiling), the model passes the method needs per image
(bench.floor.passes_per_image) and its floor: those passes x the time of one batched pass of
the same model on the same device at the same batch size, measured right before and right after
(best of both), under the same load. See docs/benchmarks.md.
"""

from __future__ import annotations

import pytest

from bench.perf.floor import passes_per_image
from explainers import EXPLAINERS, explainer_params, run_explainer

from .conftest import cost_info, load_average, run_measured

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("explainer", EXPLAINERS.names())
def test_explainer_cost(benchmark, case, bench_settings, explainer):
    s = bench_settings
    params = explainer_params(explainer)
    passes = passes_per_image(
        explainer,
        params,
        background_size=case.background.shape[0],
        shape=tuple(case.inputs.shape[1:]),
        model=case.model,
    )
    load = load_average()

    attr, per_image, peak_mb, one_pass = run_measured(
        benchmark,
        case,
        s,
        lambda: run_explainer(explainer, case.model, case.inputs, case.targets, background=case.background),
        "explainers",
    )
    assert attr.values.shape == case.inputs.shape

    benchmark.extra_info.update(
        {
            "kind": "explainer",
            "explainer": explainer,
            "library": EXPLAINERS.get(explainer).meta.get("library"),
            **cost_info(case, s, params, per_image, peak_mb, passes, one_pass, load),
        }
    )
