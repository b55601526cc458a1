"""Fan the benchmark's units of work out over a Ray cluster (``python -m bench run --executor ray``).

Each pending unit (checkpoint, explainer with its parameters, shard of images) becomes one Ray
task; it requests a GPU when the run's device is CUDA. Checkpoints are trained and tuned before
fan-out, by the driver; each model travels once through Ray's object store, keyed by its
checkpoint hash, so workers never read (or race on) checkpoint files. Workers compute and return;
the driver writes every result into the run's cache atomically as it arrives, so a Ray run and a
local run of one config fill the same cache and produce the same tables, and a killed run
resumes. A worker that dies is retried by Ray (``max_retries``); a unit that fails
deterministically is recorded like any failing explainer (its error is caught inside the task).

A local Ray instance started here (no ``--ray-address``) keeps its session files (sockets, logs)
in a private folder of the system temp folder, not in Ray's shared ``<temp>/ray``; it is shut down
and that folder removed when the units are done, or the run stops. (Not inside the run folder:
Ray's socket paths must fit in 107 bytes.)
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any, Generator, Iterator

import torch

from bench.core.errors import BenchError, one_line
from bench.perf.allocator import tune_allocator
from bench.run.unit import Unit, failed_attribution
from models.user import copy_model

MAX_RETRIES = 3
FAULT_ENV = "BENCH_RAY_FAULT_ONCE"  # test hook: path of a marker file; the first task to run exits


def _compute(
    unit: Unit, model: torch.nn.Module, attr: dict[str, Any] | None, threads: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs in a Ray worker: put the model on the unit's device and compute (no file I/O)."""
    marker = os.environ.get(FAULT_ENV)
    if marker and not os.path.exists(marker):  # crash-recovery test: die once, abruptly
        open(marker, "w").close()
        os._exit(1)
    tune_allocator()  # as the driver's CLI does (bench/allocator.py)
    torch.set_num_threads(threads)  # same intra-op threads as the driver: bitwise-equal results
    unit.stage.model = model.to(unit.device).eval()
    return unit.compute(attr)


def compute_on_ray(
    units: list, pending: list[int], cached_attr: dict[int, Any], *, address: str | None = None
) -> Generator[tuple[int, tuple[dict, dict]], None, None]:
    """Yield ``(unit position, (attribution record, scores))`` as the Ray tasks finish."""
    try:
        import ray
    except ImportError as exc:
        raise BenchError('--executor ray needs Ray: pip install -e ".[ray]" (or use --executor local)') from exc
    if not pending:
        return
    started = not ray.is_initialized()
    session = None if address or not started else tempfile.mkdtemp(prefix="pnb-ray-")
    if started:
        try:
            # a new local instance: loopback only, its files in a folder of its own
            local: dict[str, Any] = {} if address else {"_node_ip_address": "127.0.0.1", "_temp_dir": session}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            _stop(ray, session)
            raise BenchError(
                f"cannot connect to the Ray cluster at {address or 'a new local instance'} "
                f"({one_line(exc, 200)}); check --ray-address"
            ) from exc
    try:
        yield from _run_tasks(ray, units, pending, cached_attr)
    finally:
        if started:
            _stop(ray, session)


def _stop(ray: Any, session: str | None) -> None:
    """Shut down the Ray instance this run started and remove its session folder."""
    ray.shutdown()
    if session is not None:
        shutil.rmtree(session, ignore_errors=True)


def _run_tasks(
    ray: Any, units: list, pending: list[int], cached_attr: dict[int, Any]
) -> Iterator[tuple[int, tuple[dict, dict]]]:
    gpu = units[pending[0]].device.type == "cuda"
    task = ray.remote(num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES)(_compute)
    model_refs: dict[str, Any] = {}
    futures = {}
    threads = torch.get_num_threads()
    for i in pending:
        unit = units[i]
        sha = unit.stage.sha256
        if sha not in model_refs:  # one copy per checkpoint in the object store, on the CPU
            model_refs[sha] = ray.put(copy_model(unit.stage.model, unit.stage.model_name).cpu())
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
