"""Run a plan's units: cached ones are read, the others computed here or on Ray and cached as each finishes."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Generator

from tqdm.auto import tqdm

from bench.core.errors import BenchError
from bench.run import cache, ray_executor
from bench.run.unit import Unit

EXECUTORS = ("local", "ray")


def execute_units(
    units: list[Unit],
    *,
    executor: str = "local",
    ray_address: str | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Results of every unit, in order (see :func:`bench.run.cache.result`).

    ``executor="local"`` computes the pending units in this process; ``"ray"`` makes each one a
    Ray task (:mod:`bench.run.ray_executor`). Either way the results are written here, by this
    process, into the same cache as each arrives, so a killed run resumes.
    """
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    results: list[dict[str, Any] | None] = []
    cached_attr: dict[int, dict[str, Any]] = {}
    for i, u in enumerate(units):
        res, attr = cache.load(u, say)
        results.append(res)
        if res is None and attr is not None:
            cached_attr[i] = attr
    pending = [i for i, r in enumerate(results) if r is None]
    bar = tqdm(
        total=len(units),
        initial=len(units) - len(pending),
        desc="units (model, stage, explainer, shard)",
        unit="unit",
        disable=not progress,
    )
    computed: Generator[tuple[int, tuple[dict[str, Any], dict[str, Any]]], None, None]
    if executor == "local":
        computed = ((i, units[i].compute(cached_attr.get(i))) for i in pending)
    else:
        computed = ray_executor.compute_on_ray(units, pending, cached_attr, address=ray_address)
    with contextlib.closing(computed):  # a run that stops stops its executor too (Ray: shut down, cleaned up)
        for i, (attr, scores) in computed:
            u = units[i]
            results[i] = cache.store(u, attr, scores, attr_was_cached=i in cached_attr)
            broken = cache.failed_metrics(scores)
            tag = ("ok" if scores["status"] == "ok" else f"FAILED: {scores['message']}") + (
                f"; metric(s) failed: {', '.join(broken)}" if broken and scores["status"] == "ok" else ""
            )
            say(
                f"  {u.stage.model_name} {u.stage.stage} {u.explainer:<28} images {int(u.index[0])}.."
                f"{int(u.index[-1])}: {scores['seconds_per_image']:.3f} s/image, {scores['peak_mem_mb']:.0f} MB, {tag}"
            )
            bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]
