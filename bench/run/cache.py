"""The unit cache: ``<run>/cache/attributions/<key>.pt`` and ``<run>/cache/scores/<key>.json``.

Each entry is written atomically when its unit finishes, so a killed run resumes where it
stopped and a finished run re-runs from the cache without computing anything. An entry that
cannot be read is recomputed, never trusted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bench.core.io import atomic_torch_save, atomic_write_json
from bench.run.unit import Unit


def load(unit: Unit) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(finished result, cached attribution record) of a unit: both from the cache when present and readable."""
    attr = _read_attr(unit.attr_path)
    scores = _read_json(unit.score_path) if attr is not None else None
    if scores is not None:
        return result(attr, scores, cached=True), attr
    return None, attr


def store(unit: Unit, attr: dict[str, Any], scores: dict[str, Any], *, attr_was_cached: bool) -> dict[str, Any]:
    """Write a unit's cache entries atomically; returns its result."""
    if not attr_was_cached:
        atomic_torch_save(unit.attr_path, attr)
    atomic_write_json(unit.score_path, scores)
    return result(attr, scores, cached=False, attr_cached=attr_was_cached)


def result(attr: dict[str, Any], scores: dict[str, Any], *, cached: bool, attr_cached: bool | None = None) -> dict[str, Any]:
    """A unit's result: its score record, its attribution values (None if the explainer failed), and
    whether the whole unit (``cached``) or only its attributions (``attr_cached``) came from the cache."""
    return {**scores, "values": attr["values"] if attr["status"] == "ok" else None, "cached": cached,
            "attr_cached": cached if attr_cached is None else attr_cached}


def _read_attr(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a corrupt cache entry is recomputed, never trusted
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
