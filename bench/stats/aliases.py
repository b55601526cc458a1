"""Explainers that are one method under two names: reported once, counted once.

Two adapters can run the same engine (``shap.deep`` and ``captum.deeplift_shap`` both run the
batched DeepLIFT rescale engine by default): their maps are identical, so every score of every
image is identical too. Counting them twice would inflate Kendall's W, the test families and
every "k of m beat random". :func:`find_aliases` groups explainers whose scores agree on every
(model, stage, metric, image) row (and every substrate row, when given) within
``atol + rtol * max(|a|, |b|)``, with the same status everywhere and at least one finite value; when
maps are given (the stored example maps), they must agree within the same tolerance too. Maps
that differ by 1e-3 anywhere move some score by far more than the default ``rtol = 1e-6``.

The first name in sorted order represents its group; the others are its aliases.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, overload

import numpy as np
import pandas as pd

__all__ = ["alias_label", "collapse", "find_aliases"]

KEY = ["model", "stage", "metric", "image"]


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    """Finite where finite and within tolerance there; NaN where NaN and the same infinities."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return False
    x, y = a[fa], b[fb]
    return bool(np.all(np.abs(x - y) <= atol + rtol * np.maximum(np.abs(x), np.abs(y))))


def _wide(table: pd.DataFrame, key: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    value = table.pivot_table(index=list(key), columns="explainer", values="value", aggfunc="first", dropna=False)
    status = table.pivot_table(index=list(key), columns="explainer", values="status", aggfunc="first", dropna=False)
    return value, status


def find_aliases(
    scores: pd.DataFrame,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    extra: Iterable[pd.DataFrame | None] = (),
    maps: Mapping[tuple[str, str, str], np.ndarray] | None = None,
) -> dict[str, list[str]]:
    """``{representative: [aliases, ...]}`` for every group of two or more explainers whose scores
    agree everywhere (module docstring). ``scores``: the checked scores table; ``extra``: more
    tables with ``explainer, value, status`` and the ``KEY`` columns (plus e.g. ``substrate``);
    ``maps``: ``{(model, stage, explainer): array}`` of maps on the same images."""
    tables = [(scores, KEY)] + [
        (t, KEY + [c for c in ("substrate",) if c in t.columns]) for t in extra if t is not None and len(t)
    ]
    names = sorted(set(scores["explainer"].astype(str)))
    wides = []
    for table, key in tables:
        t = table.assign(
            explainer=table["explainer"].astype(str),
            status=table["status"].astype(str),
            value=pd.to_numeric(table["value"], errors="coerce"),
        )
        wides.append(_wide(t, key))
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if find(a) == find(b) or not _same(a, b, wides, rtol, atol, maps):
                continue
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return {rep: sorted(m for m in members if m != rep) for rep, members in sorted(groups.items()) if len(members) > 1}


def _same(
    a: str,
    b: str,
    wides: list[tuple[pd.DataFrame, pd.DataFrame]],
    rtol: float,
    atol: float,
    maps: Mapping[tuple[str, str, str], np.ndarray] | None,
) -> bool:
    seen_finite = False
    for value, status in wides:
        if (a in value.columns) != (b in value.columns):
            return False
        if a not in value.columns:
            continue
        sa, sb = status[a].to_numpy(dtype=object), status[b].to_numpy(dtype=object)
        if not all((x == y) or (pd.isna(x) and pd.isna(y)) for x, y in zip(sa, sb)):
            return False
        va, vb = value[a].to_numpy(dtype=np.float64), value[b].to_numpy(dtype=np.float64)
        if not _close(va, vb, rtol, atol):
            return False
        seen_finite |= bool(np.isfinite(va).any())
    if maps:
        for (model, stage, e), m in maps.items():
            if e != a or (model, stage, b) not in maps:
                continue
            if not _close(
                np.asarray(m, np.float64).ravel(), np.asarray(maps[(model, stage, b)], np.float64).ravel(), rtol, atol
            ):
                return False
    return seen_finite


@overload
def collapse(table: None, aliases: Mapping[str, Sequence[str]]) -> None: ...
@overload
def collapse(table: pd.DataFrame, aliases: Mapping[str, Sequence[str]]) -> pd.DataFrame: ...


def collapse(table: pd.DataFrame | None, aliases: Mapping[str, Sequence[str]]) -> pd.DataFrame | None:
    """``table`` without the rows of every alias (its representative's rows stay)."""
    if table is None or "explainer" not in table.columns:
        return table
    drop = {a for members in aliases.values() for a in members}
    return table[~table["explainer"].astype(str).isin(drop)].reset_index(drop=True) if drop else table


def alias_label(explainer: str, aliases: Mapping[str, Sequence[str]]) -> str:
    """``"shap.deep (= captum.deeplift_shap)"`` for a representative, the name itself otherwise."""
    members = aliases.get(explainer)
    return f"{explainer} (= {', '.join(members)})" if members else explainer
