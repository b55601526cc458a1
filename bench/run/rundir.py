"""A run directory: one run at a time, one config per directory, nothing outside it.

:func:`claim` is held for the whole run: it locks ``<run>/.lock`` (a second run on the same
directory fails at once with one line), refuses a directory holding another config (what a run
is does not depend on how its path is spelled or its page is laid out: the name, results folder,
checkpoint folder and ``[report]`` are left out of the comparison), refuses a damaged
``manifest.json`` with one line naming it, and records the config in ``manifest.json`` before any
work, so a killed run's partial results are protected too. The final manifest replaces that
record when the run ends.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_write_json, dumps_json
from bench.run.config import RunConfig, checkpoint_dir

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

# where a run lives and how its page shows it, not what it computes
NOT_IDENTITY = ("name", "results_dir", "checkpoint_dir", "report")


def identity(values: dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run: everything but where it lives, as JSON types."""
    return json.loads(dumps_json({k: v for k, v in values.items() if k not in NOT_IDENTITY}))


@contextlib.contextmanager
def claim(run_dir: Path, cfg: RunConfig) -> Iterator[None]:
    """Hold ``run_dir`` for this run (see the module docstring)."""
    _check_placement(run_dir, checkpoint_dir(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BenchError(f"{run_dir} is in use by another run (pid {pid}); wait for it to finish or "
                             f"choose another --name")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _guard(run_dir, cfg)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _check_placement(run_dir: Path, checkpoints: Path) -> None:
    run, ck = run_dir.resolve(), checkpoints.resolve()
    if run == ck or ck in run.parents or run in ck.parents:
        raise BenchError(f"the run folder {run_dir} and the checkpoint folder {checkpoints} overlap; choose another "
                         f"--name (or set checkpoint_dir elsewhere)")


def _guard(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse another config's directory and a damaged manifest; record this config otherwise."""
    path = run_dir / "manifest.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
                raise ValueError("no config object in it")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BenchError(f"{path} is damaged ({one_line(exc, 120)}); delete that file to re-run {run_dir} "
                             f"(its other files are kept), or choose another --name") from None
        if identity(old["config"]) != identity(cfg.values):
            raise BenchError(f"{run_dir} holds a run with another config; choose another --name (or delete "
                             f"{run_dir} to replace it)")
        return
    atomic_write_json(path, {"config": cfg.values, "config_source": cfg.source, "status": "running"})
