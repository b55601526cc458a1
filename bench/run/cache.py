"""The unit cache: ``<run>/cache/attributions/<key>.pt`` and ``<run>/cache/scores/<key>.json``.

Each entry is written atomically when its unit finishes, so a killed run resumes where it
stopped and a finished run re-runs from the cache without computing anything. Every entry
carries a SHA-256 checksum of its contents and is checked against the unit's schema (shapes,
types, the configured metrics) when read: an entry that fails either check (binary garbage,
valid JSON of the wrong shape, tensors of the wrong structure, a flipped bit) is reported in a
warning naming the file and recomputed, never trusted and never fatal.

Failures are not cached: a unit whose explainer raised, or a score record with a metric that
raised, is recorded in the run's tables but computed again by the next run (a transient failure,
such as running out of memory or a killed worker, heals by itself; a deterministic one is
reported again).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from bench.core.errors import one_line
from bench.core.io import atomic_torch_save, atomic_write_json, dumps_json, read_regular
from bench.run.unit import Unit

Warn = Callable[[str], None]


class Damaged(Exception):
    """A cache entry that cannot be trusted; the message says why."""


def load(unit: Unit, warn: Warn) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(finished result, cached attribution record) of a unit, from the cache when present and sound."""
    attr = _read(unit.attr_path, lambda data: _check_attr(_torch_load(data), unit), warn)
    if attr is None:
        return None, None
    scores = load_record(unit.score_path, lambda r: _check_scores(r, unit), warn)
    if scores is None:
        return None, attr
    return result(attr, scores, cached=True), attr


def store(unit: Unit, attr: dict[str, Any], scores: dict[str, Any], *, attr_was_cached: bool) -> dict[str, Any]:
    """Cache what succeeded (atomically, with checksums); returns the unit's result."""
    if attr["status"] == "ok" and not attr_was_cached:
        atomic_torch_save(unit.attr_path, {**attr, "checksum": _attr_checksum(attr)})
    if attr["status"] == "ok" and not failed_metrics(scores):
        store_record(unit.score_path, scores)
    return result(attr, scores, cached=False, attr_cached=attr_was_cached)


def failed_metrics(scores: dict[str, Any]) -> list[str]:
    """The metrics of a score record that raised on some image (and the substrate sensitivity)."""
    failed = [m for m, st in scores["metric_status"].items() if any(s.startswith("error") for s in st)]
    return sorted(failed + (["(substrates)"] if scores.get("substrates_error") else []))


def result(
    attr: dict[str, Any], scores: dict[str, Any], *, cached: bool, attr_cached: bool | None = None
) -> dict[str, Any]:
    """A unit's result: its score record, its attribution values (None if the explainer failed), and
    whether the whole unit (``cached``) or only its attributions (``attr_cached``) came from the cache."""
    return {
        **scores,
        "values": attr["values"] if attr["status"] == "ok" else None,
        "cached": cached,
        "attr_cached": cached if attr_cached is None else attr_cached,
    }


def load_record(path: Path, check: Callable[[dict[str, Any]], Any], warn: Warn) -> dict[str, Any] | None:
    """A checksummed JSON record written by :func:`store_record`, if present, sound and accepted
    by ``check`` (which raises :class:`Damaged` or returns nothing); else None (with a warning)."""

    def parse(data: bytes) -> dict[str, Any]:
        obj = json.loads(data)
        if not isinstance(obj, dict) or "checksum" not in obj:
            raise Damaged("not a cache record")
        record = {k: v for k, v in obj.items() if k != "checksum"}
        if obj["checksum"] != _json_checksum(record):
            raise Damaged("checksum mismatch")
        check(record)
        return record

    return _read(path, parse, warn)


def store_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record with its checksum, atomically (strict JSON: NaN as null)."""
    atomic_write_json(path, {**record, "checksum": _json_checksum(record)})


def _read(path: Path, parse: Callable[[bytes], dict[str, Any]], warn: Warn) -> dict[str, Any] | None:
    try:  # a link or a non-regular file (a FIFO would block) is a one-line error, not a damaged entry
        data = read_regular(path)
    except FileNotFoundError:
        return None
    try:
        return parse(data)
    except Exception as exc:  # a damaged entry of any kind is recomputed, never trusted
        reason = str(exc) if isinstance(exc, Damaged) else f"unreadable: {type(exc).__name__}: {exc}"
        warn(f"warning: damaged cache entry {path} ({one_line(reason, 160)}); recomputing it")
        return None


# ----------------------------------------------------------------------------- attribution records


ATTR_KEYS = {"status", "message", "seconds", "peak_mem_mb", "values", "outputs", "base_values", "meta", "checksum"}


def _attr_checksum(attr: dict[str, Any]) -> str:
    h = hashlib.sha256(
        dumps_json({k: attr[k] for k in ("status", "message", "seconds", "peak_mem_mb", "meta")}, indent=None).encode()
    )
    for key in ("values", "outputs", "base_values"):
        t = attr[key]
        h.update(key.encode())
        if t is not None:
            h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_attr(obj: Any, unit: Unit) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != ATTR_KEYS:
        raise Damaged(f"not an attribution record: keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    n = len(unit)
    if obj["status"] != "ok" or not _tensor(obj["values"], (n, *unit.images.shape[1:])):
        raise Damaged(f"values are not a float tensor of shape {(n, *unit.images.shape[1:])}")
    for key in ("outputs", "base_values"):
        if obj[key] is not None and not _tensor(obj[key], (n,)):
            raise Damaged(f"{key} is not None or a float tensor of shape ({n},)")
    if not isinstance(obj["meta"], str) or not isinstance(obj["seconds"], float):
        raise Damaged("meta or seconds of the wrong type")
    if obj["checksum"] != _attr_checksum(obj):
        raise Damaged("checksum mismatch")
    return obj


def _torch_load(data: bytes) -> Any:
    with warnings.catch_warnings():  # torch warns about pickle protocols before failing: the warning names the file
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), weights_only=True)


def _tensor(t: Any, shape: tuple[int, ...]) -> bool:
    return isinstance(t, Tensor) and tuple(t.shape) == tuple(shape) and t.is_floating_point()


# ----------------------------------------------------------------------------- score records


def _json_checksum(record: dict[str, Any]) -> str:
    return hashlib.sha256(dumps_json(record, indent=None).encode()).hexdigest()


def _check_scores(record: dict[str, Any], unit: Unit) -> dict[str, Any]:
    n, names = len(unit), unit.metric_names
    try:
        if sorted(record["metrics"]) != sorted(names) or sorted(record["metric_status"]) != sorted(names):
            raise Damaged(f"metrics {sorted(record['metrics'])} are not the configured {sorted(names)}")
        for name in names:
            values, status = record["metrics"][name], record["metric_status"][name]
            if len(values) != n or len(status) != n or not all(isinstance(s, str) for s in status):
                raise Damaged(f"metric {name} does not have {n} values and statuses")
            record["metrics"][name] = [math.nan if v is None else float(v) for v in values]  # null = n/a
        for curve in record["curves"].values():
            if len(curve["probs"]) != n or any(len(p) != len(curve["fractions"]) for p in curve["probs"]):
                raise Damaged("a curve does not have one row per image and one point per fraction")
        for metric, by_substrate in record.get("substrates", {}).items():
            if metric == "(computed)":
                continue
            for sub, entry in by_substrate.items():
                if len(entry["values"]) != n or len(entry["status"]) != n:
                    raise Damaged(f"substrate {sub} of {metric} does not have {n} values")
                entry["values"] = [math.nan if v is None else float(v) for v in entry["values"]]
        record["seconds_per_image"] = float(record["seconds_per_image"])
        record["peak_mem_mb"] = math.nan if record["peak_mem_mb"] is None else float(record["peak_mem_mb"])
        if not isinstance(record["status"], str) or not isinstance(record["message"], str):
            raise Damaged("status or message is not text")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Damaged(f"wrong structure ({type(exc).__name__}: {exc})") from None
    return record
