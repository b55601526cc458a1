"""What tuning changed in the maps, on the scale of what retraining and the method's own noise change.

Per image and explainer, two attribution maps of the same image and target class are compared by
the Spearman rank correlation of their values and by the overlap of their top ``TOP`` pixels
(``|top(a) ∩ top(b)| / k``, k = round(TOP x H x W), pixels ranked as the metrics rank them, after
the run's attribution preprocessing). Three comparisons:

* ``pre vs <post stage>``: one model before and after tuning (each tuning variant);
* ``seed<a> vs seed<b>``: two independently trained seeds' pre models (what retraining changes);
* ``explainer seed``: a stochastic explainer run twice on the first pre model with two seeds
  (the method's own noise); a deterministic explainer reproduces its map exactly (similarity 1).

``similarity.csv`` holds one row per comparison and image; :mod:`bench.report.stability` turns it
into tables with CIs and the test "did tuning change the maps beyond noise?".
"""

from __future__ import annotations

import io
import math
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from bench import metrics as M
from bench.core.errors import BenchError
from bench.core.io import atomic_write_bytes, read_regular
from bench.core.schema import SIMILARITY_COLUMNS, stage_key
from bench.run.config import RunConfig
from bench.run.plan import Planned

TOP = 0.15  # the share of pixels whose overlap is measured (the metrics' drop-rate fraction)


def map_similarity(a: Tensor, b: Tensor, top: float = TOP) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman, top-``top`` overlap) per image of two map batches ``(B, C, H, W)``."""
    rho = M.spearman(a, b).cpu().numpy()
    k = max(1, int(math.floor(top * a.shape[2] * a.shape[3] + 0.5)))
    ta, tb = M.rank_pixels(a)[:, :k], M.rank_pixels(b)[:, :k]
    hit = torch.zeros(a.shape[0], a.shape[2] * a.shape[3], dtype=torch.bool)
    hit.scatter_(1, ta.cpu(), True)
    overlap = hit.gather(1, tb.cpu()).float().mean(1).numpy()
    return rho.astype(np.float64), overlap.astype(np.float64)


def similarity_table(cfg: RunConfig, plan: list[Planned], results: list[dict[str, Any]]) -> pd.DataFrame:
    """Every comparison of the run (module docstring), one row per image."""
    mode = cfg.metrics.attribution
    maps: dict[tuple[str, str, str, bool], list[Any]] = {}  # (label, stage, explainer, reference) -> shards
    facts: dict[tuple[str, str, str], list[tuple[np.ndarray, list[str]]]] = {}  # -> (image indices, cells)
    arch_of: dict[str, str] = {}
    seed_of: dict[str, int] = {}
    for p, r in zip(plan, results):
        label = p.stage.model_name
        maps.setdefault((label, p.stage.stage, p.explainer, p.reference), []).append(r.get("values"))
        arch_of[label], seed_of[label] = p.stage.arch or label, p.stage.seed
        if not p.reference:
            facts.setdefault((label, p.stage.stage, p.explainer), []).append((p.index.numpy(), list(p.cells)))

    def full(key: tuple[str, str, str, bool]) -> Tensor | None:
        parts = maps.get(key)
        if not parts or any(v is None for v in parts):
            return None
        return M.preprocess_attributions(torch.cat(parts), mode)

    def info(label: str, stage: str, explainer: str) -> tuple[np.ndarray, list[str]]:
        chunks = facts[(label, stage, explainer)]
        return np.concatenate([c[0] for c in chunks]), sum((c[1] for c in chunks), [])

    rows: list[list[Any]] = []

    def add(
        model: str,
        explainer: str,
        comparison: str,
        a_key: tuple[str, str, str, bool],
        b_key: tuple[str, str, str, bool],
        a_info: tuple[np.ndarray, list[str]],
        b_info: tuple[np.ndarray, list[str]],
    ) -> None:
        a, b = full(a_key), full(b_key)
        if a is None or b is None:
            return
        (ia, cells_a), (ib, cells_b) = a_info, b_info
        common, pa, pb = np.intersect1d(ia, ib, return_indices=True)  # the same images, in image order
        rho, overlap = map_similarity(a[torch.as_tensor(pa)], b[torch.as_tensor(pb)])
        rows.extend(
            [model, explainer, comparison, int(i), cells_a[x], cells_b[y], float(s), float(o)]
            for i, x, y, s, o in zip(common, pa, pb, rho, overlap)
        )

    labels = list(dict.fromkeys(p.stage.model_name for p in plan))
    explainers = list(dict.fromkeys(p.explainer for p in plan if not p.reference))
    for label in labels:
        stages = sorted({p.stage.stage for p in plan if p.stage.model_name == label}, key=stage_key)
        for post in stages[1:]:
            for e in explainers:
                add(
                    label,
                    e,
                    f"pre vs {post}",
                    (label, "pre", e, False),
                    (label, post, e, False),
                    info(label, "pre", e),
                    info(label, post, e),
                )
        for e in explainers:
            if (label, "pre", e, True) in maps:
                add(
                    label,
                    e,
                    "explainer seed",
                    (label, "pre", e, False),
                    (label, "pre", e, True),
                    info(label, "pre", e),
                    info(label, "pre", e),
                )
    by_arch: dict[str, list[str]] = {}
    for label in labels:
        by_arch.setdefault(arch_of[label], []).append(label)
    for arch, members in by_arch.items():
        for la, lb in combinations(members, 2):
            for e in explainers:
                add(
                    arch,
                    e,
                    f"seed{seed_of[la]} vs seed{seed_of[lb]}",
                    (la, "pre", e, False),
                    (lb, "pre", e, False),
                    info(la, "pre", e),
                    info(lb, "pre", e),
                )
    table = pd.DataFrame(rows, columns=list(SIMILARITY_COLUMNS))
    return table.sort_values(["model", "explainer", "comparison", "image"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- maps.npz: the pre maps of a run
# With ``report.maps = true`` a run writes every pre-stage map of its images (raw, float32) as
# ``maps.npz``: ``index|<model>|<explainer>`` (N,) image indices in order, ``maps|<model>|<explainer>``
# (N, C, H, W). Combining the parts of a study (bench/run/parts.py) reads them for the seed-vs-seed
# comparison of models that were explained in different parts.

MAPS = "maps.npz"
Maps = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (model, explainer) -> (index, maps)


def pre_maps(plan: list[Planned], results: list[dict[str, Any]]) -> Maps:
    """Every complete pre-stage map set of a run's scored units: {(model, explainer): (index, maps)}."""
    shards: dict[tuple[str, str], list[tuple[np.ndarray, Any]]] = {}
    for p, r in zip(plan, results):
        if p.stage.stage == "pre" and not p.reference:
            shards.setdefault((p.stage.model_name, p.explainer), []).append((p.index.numpy(), r.get("values")))
    out: Maps = {}
    for key, parts in shards.items():
        if all(v is not None for _, v in parts):
            out[key] = (
                np.concatenate([i for i, _ in parts]).astype(np.int64),
                torch.cat([v for _, v in parts]).detach().float().cpu().numpy(),
            )
    return out


def write_maps(path: Path, maps: Maps) -> Path:
    """``maps.npz`` (atomically; the layout above)."""
    arrays: dict[str, np.ndarray] = {}
    for (model, explainer), (index, values) in sorted(maps.items()):
        arrays[f"index|{model}|{explainer}"] = index
        arrays[f"maps|{model}|{explainer}"] = values
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())


def read_maps(path: Path) -> Maps:
    """The maps of :func:`write_maps`; a damaged file is a one-line error naming it."""
    try:
        with np.load(io.BytesIO(read_regular(path)), allow_pickle=False) as z:
            keys = list(z.keys())
            out: Maps = {}
            for k in keys:
                kind, _, rest = k.partition("|")
                if kind == "maps":
                    model, _, explainer = rest.partition("|")
                    out[(model, explainer)] = (z[f"index|{rest}"].astype(np.int64), z[k].astype(np.float32))
            return out
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); re-run that part to write it again"
        ) from None


def seed_similarity(
    maps: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    arch_seed: Mapping[str, tuple[str, int]],
    cells: Mapping[str, Mapping[int, str]],
    mode: str,
) -> pd.DataFrame:
    """The ``seed<a> vs seed<b>`` rows of :func:`similarity_table` from saved pre maps of several
    runs: ``maps`` {(model, explainer): (index, maps)}, ``arch_seed`` {model: (arch, seed)}, ``cells``
    {model: {image: cell}} (each model's pre cell of an image), ``mode`` the attribution preprocessing."""
    rows: list[list[Any]] = []
    labels = sorted({m for m, _ in maps}, key=lambda m: (arch_seed[m][0], arch_seed[m][1]))
    for la, lb in combinations(labels, 2):
        (arch, sa), (arch_b, sb) = arch_seed[la], arch_seed[lb]
        if arch != arch_b:
            continue
        for e in sorted({e for m, e in maps if m == la} & {e for m, e in maps if m == lb}):
            (ia, a), (ib, b) = maps[(la, e)], maps[(lb, e)]
            common, pa, pb = np.intersect1d(ia, ib, return_indices=True)
            if not len(common):
                continue
            ta = M.preprocess_attributions(torch.as_tensor(a[pa]), mode)
            tb = M.preprocess_attributions(torch.as_tensor(b[pb]), mode)
            rho, overlap = map_similarity(ta, tb)
            rows.extend(
                [
                    arch,
                    e,
                    f"seed{sa} vs seed{sb}",
                    int(i),
                    cells[la].get(int(i), ""),
                    cells[lb].get(int(i), ""),
                    float(s),
                    float(o),
                ]
                for i, s, o in zip(common, rho, overlap)
            )
    return pd.DataFrame(rows, columns=list(SIMILARITY_COLUMNS))
