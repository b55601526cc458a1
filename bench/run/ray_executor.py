"""Fan the benchmark's units of work out over a Ray cluster (``python -m bench run --executor ray``).

Each pending unit (checkpoint, explainer with its parameters, shard of images) becomes one Ray
task; it requests a GPU when the run's device is CUDA. Checkpoints are trained and tuned before
fan-out, by the driver; each model travels once through Ray's object store, keyed by its
checkpoint hash, so workers never read (or race on) checkpoint files. Workers compute and return;
the driver writes every result into the run's cache atomically as it arrives, so a Ray run and a
local run of one config fill the same cache and produce the same tables, and a killed run
resumes. A worker that dies is retried by Ray (``max_retries``); a unit that fails
deterministically is recorded like any failing explainer (its error is caught inside the task).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterator

import torch

from bench.core.errors import BenchError, one_line
from bench.perf.allocator import tune_allocator
from bench.run.unit import failed_attribution

MAX_RETRIES = 3
FAULT_ENV = "BENCH_RAY_FAULT_ONCE"  # test hook: path of a marker file; the first task to run exits


def _compute(unit, model, attr, threads: int):
    """Runs in a Ray worker: put the model on the unit's device and compute (no file I/O)."""
    marker = os.environ.get(FAULT_ENV)
    if marker and not os.path.exists(marker):  # crash-recovery test: die once, abruptly
        open(marker, "w").close()
        os._exit(1)
    tune_allocator()  # as the driver's CLI does (bench/allocator.py)
    torch.set_num_threads(threads)  # same intra-op threads as the driver: bitwise-equal results
    unit.stage.model = model.to(unit.device).eval()
    return unit.compute(attr)


def compute_on_ray(units: list, pending: list[int], cached_attr: dict[int, Any], *,
                   address: str | None = None) -> Iterator[tuple[int, tuple[dict, dict]]]:
    """Yield ``(unit position, (attribution record, scores))`` as the Ray tasks finish."""
    try:
        import ray
    except ImportError as exc:
        raise BenchError("--executor ray needs Ray: pip install -e \".[ray]\" (or use --executor local)") from exc
    if not pending:
        return
    if not ray.is_initialized():
        try:
            local = {} if address else {"_node_ip_address": "127.0.0.1"}  # a new local instance: loopback only
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BenchError(f"cannot connect to the Ray cluster at {address or 'a new local instance'} "
                             f"({one_line(exc, 200)}); check --ray-address") from exc
    gpu = units[pending[0]].device.type == "cuda"
    task = ray.remote(num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES)(_compute)
    model_refs: dict[str, Any] = {}
    futures = {}
    threads = torch.get_num_threads()
    for i in pending:
        unit = units[i]
        sha = unit.stage.sha256
        if sha not in model_refs:  # one copy per checkpoint in the object store, on the CPU
            model_refs[sha] = ray.put(copy.deepcopy(unit.stage.model).cpu())
        light = copy.copy(unit)
        light.stage = copy.copy(unit.stage)
        light.stage.model = None  # the model travels by reference, not inside every task
        futures[task.remote(light, model_refs[sha], cached_attr.get(i), threads)] = i
    while futures:
        done, _ = ray.wait(list(futures), num_returns=1)
        i = futures.pop(done[0])
        try:
            yield i, ray.get(done[0])
        except ray.exceptions.RayError as exc:  # retries exhausted: recorded as this unit's failure
            msg = one_line(f"{type(exc).__name__}: {exc}")
            yield i, units[i].compute(failed_attribution(f"Ray task failed after {MAX_RETRIES} retries: {msg}"))
