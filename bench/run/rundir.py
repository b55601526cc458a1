"""A run directory: one run at a time, one config per directory, nothing outside it.

:func:`claim` is held for the whole run. It adopts only a folder that is new, empty or carries a
run's record (``manifest.json``); it refuses a run folder that is a symbolic link, and any link,
non-regular file (FIFO, socket, device) or file where a folder belongs inside it
(:func:`check_run_tree`), so nothing a run reads or writes can lead outside it. It locks
``<run>/.lock`` (a second run on the same directory fails at once with one line), refuses a
directory holding another config (what a run is does not depend on how its path is spelled or its
page is laid out: the name, results folder, checkpoint folder and ``[report]`` are left out of the
comparison; the message names what differs), refuses a damaged ``manifest.json`` with one line
naming it, and records the config in ``manifest.json`` before any work, so a killed run's partial
results are protected too. The final manifest replaces that record when the run ends.

A run that fails before it has produced anything (bad data, a broken checkpoint found after the
record was written) takes its record back, so the corrected re-run is not refused as "another
config"; so is the record of an earlier such run found in a folder that holds nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Iterator

from bench.core.errors import BenchError, one_line
from bench.core.io import (
    atomic_write_json,
    check_entry,
    check_regular,
    check_tree,
    dumps_json,
    ensure_folder,
    os_error,
    read_regular,
)
from bench.core.precision import DEFAULT_PRECISION
from bench.run.config import RunConfig, checkpoint_dir

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

# where a run lives and how its page shows it, not what it computes
# (and how a study is cut into parts: each part's folder checks its own config)
NOT_IDENTITY = ("name", "results_dir", "checkpoint_dir", "report", "stats", "truth", "parts")
# keys added after runs were recorded: at their default they are no part of the identity, so the
# record of an older run (without the key) still names the same run
ADDED_KEYS: dict[tuple[str, ...], Any] = {
    ("models", "seeds"): [],
    ("models", "user"): {},
    ("metrics", "precision"): DEFAULT_PRECISION,
    ("data", "nested_per_cell"): 0,
    ("models", "select_seed"): -1,
    ("parts",): {},
    ("report", "maps"): False,
}
MARKER = "manifest.json"  # a run's record: a folder without one is not a run's to adopt
PARTS = "parts"  # a study's parts (bench/run/parts.py): a folder holding only them is the study's to adopt
LOCK = ".lock"
# the layout of a run folder: these are folders, whatever matches RUN_FILES is a file
RUN_FOLDERS = ("cache", "cache/attributions", "cache/scores", "cache/meta", "figures")
RUN_FILES = (LOCK, "*.json", "*.csv", "*.md", "*.html", "*.npz", "*.png", "cache/*/*", "figures/*")


def check_run_tree(run_dir: Path) -> None:
    """One line naming the first entry of ``run_dir`` (or ``run_dir`` itself) that is a symbolic
    link, a non-regular file, a file where a run's folder belongs or a folder where its file belongs."""
    check_tree(run_dir, folders=RUN_FOLDERS, files=RUN_FILES)


def check_adoptable(run_dir: Path) -> None:
    """Refuse a folder that holds files but no run's record: a folder of the user's own."""
    try:
        names = set(os.listdir(run_dir))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, run_dir, "read") from None
    if names - {LOCK, PARTS} and MARKER not in names:
        raise BenchError(
            f"{run_dir} is not a run folder (it has no {MARKER}); pneumobench adopts only a new, empty or "
            f"run folder: choose another --name or --results"
        )


def with_added_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a recorded config with every key of :data:`ADDED_KEYS` it lacks at its default:
    the config of a run recorded before those keys existed, as this version reads it."""
    out = copy.deepcopy(values)
    for path, default in ADDED_KEYS.items():
        node = _table(out, path)
        if node is not None:
            node.setdefault(path[-1], copy.deepcopy(default))
    return out


def _table(values: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The table of ``values`` that holds the key ``path[-1]`` (None when it is not a table)."""
    node: Any = values
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def identity(values: dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run: everything but where it lives, as JSON types, and
    without the keys of :data:`ADDED_KEYS` at their defaults."""
    out = json.loads(dumps_json({k: v for k, v in values.items() if k not in NOT_IDENTITY}))
    for path, default in ADDED_KEYS.items():
        node = _table(out, path)
        if node is not None and node.get(path[-1], default) == default:
            node.pop(path[-1], None)
    return out


@contextlib.contextmanager
def claim(run_dir: Path, cfg: RunConfig) -> Iterator[None]:
    """Hold ``run_dir`` for this run (see the module docstring)."""
    _check_placement(run_dir, checkpoint_dir(cfg))
    check_entry(run_dir, folder=True)
    check_adoptable(run_dir)
    created = not os.path.lexists(run_dir)
    ensure_folder(run_dir)
    fd = _open_lock(run_dir / LOCK)
    try:
        if not _try_lock(fd):
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BenchError(
                f"{run_dir} is in use by another run (pid {pid}); wait for it to finish or choose another --name"
            )
        check_run_tree(run_dir)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            raise os_error(exc, run_dir / LOCK) from None
        recorded = _guard(run_dir, cfg)
        try:
            yield
        except BaseException:
            if recorded and _holds_only_record(run_dir):
                _take_back(run_dir, created)
            raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _open_lock(path: Path) -> int:
    """The lock file's descriptor: a regular file, never through a link, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        check_regular(fd, path)
    except BenchError:
        os.close(fd)
        raise
    return fd


def _holds_only_record(run_dir: Path) -> bool:
    """Nothing in ``run_dir`` but the record, the lock and empty folders: no work to protect."""
    for here, _, names in os.walk(run_dir):
        if Path(here) != run_dir and names or Path(here) == run_dir and set(names) - {MARKER, LOCK}:
            return False
    return True


def _take_back(run_dir: Path, created: bool) -> None:
    """Remove the record of a run that produced nothing (and the folder, if this run made it)."""
    for name in (MARKER, LOCK):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    if created:
        for here, _, _ in sorted(os.walk(run_dir), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(here)


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
        raise BenchError(
            f"the run folder {run_dir} and the checkpoint folder {checkpoints} overlap; choose another "
            f"--name (or set checkpoint_dir elsewhere)"
        )


def _guard(run_dir: Path, cfg: RunConfig) -> bool:
    """Refuse another config's directory and a damaged manifest; record this config otherwise.
    Returns whether the record was written now (a new run, or one replacing a run that made nothing)."""
    path = run_dir / MARKER
    if os.path.lexists(path):
        try:
            old = json.loads(read_regular(path))
            if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
                raise ValueError("no config object in it")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BenchError(
                f"{path} is damaged ({one_line(exc, 120)}); delete that file to re-run {run_dir} "
                f"(its other files are kept), or choose another --name"
            ) from None
        values = cfg.to_dict()
        if identity(old["config"]) == identity(values):
            return False
        if old.get("status") != "running" or not _holds_only_record(run_dir):
            raise BenchError(
                f"{run_dir} holds a run with another config (it differs in "
                f"{_differences(old['config'], values)}); to keep both, give this run another "
                f"--name; to replace that run, delete {run_dir} and run again"
            )
    atomic_write_json(path, {"config": cfg.to_dict(), "config_source": cfg.source, "status": "running"})
    return True


def _differences(old: dict[str, Any], new: dict[str, Any], most: int = 3) -> str:
    """The first ``most`` dotted keys whose values differ, with both values (JSON)."""
    a, b = _flat(identity(old)), _flat(identity(new))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "absent") != b.get(k, "absent")]
    shown = [f"{k} ({_json(a, k)} there, {_json(b, k)} here)" for k in keys[:most]]
    return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _json(flat: dict[str, Any], key: str) -> str:
    return one_line(json.dumps(flat[key]), 60) if key in flat else "absent"
