"""ROAD (Rong et al. 2022): remove pixels by noisy linear imputation, most or least relevant first.

Both metrics return their probability curves with the scores (``"road_morf"`` / ``"road_lerf"``).
"""

from __future__ import annotations

import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.params import Range
from bench.metrics.base import (
    Curve,
    MetricContext,
    MetricResult,
    check_chunk,
    out_dtype,
    register_metric,
    validate_call,
)
from bench.metrics.perturbation import DEFAULT_CHUNK, chunked_outputs, normalised_trapezoid, rank_pixels
from explainers.base import Attribution


def _fractions(values) -> str | None:
    """ROAD's percentages: a non-empty increasing list of fractions in (0, 1)."""
    v = [float(x) for x in values]
    if not v or v != sorted(set(v)) or not 0.0 < v[0] or not v[-1] < 1.0:
        return "must be a non-empty list of increasing fractions in (0, 1)"
    return None


def _road_passes(params, explainer_passes, n_layers):
    return 0.0, float(len(params["percentages"]))  # plus the CPU imputation, which is not a model pass


# ROAD's neighbourhood weights (Rong et al. 2022, tleemann/road_evaluation; Quantus 0.6.0).
_ROAD_OFFSETS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_CONSTRAINTS = {"percentages": _fractions, "noise": Range(0), "chunk_size": Range(1)}


def road_impute(
    image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01, rng: np.random.Generator | None = None
) -> np.ndarray:
    """ROAD's noisy linear imputation of one image ``(C, H, W)`` at flat pixel indices ``removed``.

    Each removed pixel equals the weighted mean of its in-image 8-neighbours (weights 1/6 for
    the 4-neighbours, 1/12 for the diagonals, renormalised at the border), removed neighbours
    being unknowns too: one sparse linear system ``A v = b`` per image with one column per
    channel, solved with scipy.sparse; then ``noise * N(0, 1)`` is added to the imputed pixels.
    """
    c = image.shape[0]
    removed = np.asarray(removed, dtype=np.int64)
    out = image.reshape(c, -1).astype(np.float64)  # a copy
    if removed.size == 0:
        return out.reshape(image.shape)
    sol = road_impute_many(image[None], [removed])[0]
    if noise:
        gen = rng if rng is not None else np.random.default_rng()
        sol = sol + noise * gen.standard_normal(sol.shape)
    out[:, removed] = sol.T
    return out.reshape(image.shape)


def _removed_count(fraction: float, n_pix: int) -> int:
    # floor(p * n); the guard keeps e.g. 0.29 * 100 = 28.999999999999996 at 29
    return int(math.floor(fraction * n_pix + 1e-9))


def road_impute_many(images: np.ndarray, removed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """:func:`road_impute` without noise for many systems at once: ``images (S, C, H, W)``,
    ``removed[s]`` the flat pixel indices removed from image ``s``; returns the imputed values
    ``(k_s, C)`` per system.

    The systems are assembled with array operations into one block-diagonal sparse matrix and
    solved by one ``spsolve`` call (one LU factorisation of independent blocks), instead of
    one Python-level assembly and solve per system; :func:`road_impute` is the one-system case.
    tests/test_metrics.py checks the equations by hand and that systems solved together equal
    each solved alone; tests/test_metrics_reference.py checks ROAD against Quantus.
    """
    n_sys, c, h, w = images.shape
    flat = images.reshape(n_sys, c, h * w).astype(np.float64)
    sizes = np.array([len(r) for r in removed], dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return [np.zeros((0, c)) for _ in removed]
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sys_of = np.repeat(np.arange(n_sys), sizes)  # system of each unknown
    pix = np.concatenate([np.asarray(r, dtype=np.int64) for r in removed])
    var_id = np.full((n_sys, h * w), -1, dtype=np.int64)
    var_id[sys_of, pix] = np.arange(total)
    rows, cols = pix // w, pix % w
    diag = np.ones(total)
    b = np.zeros((total, c))
    a_rows, a_cols, a_vals = [np.arange(total)], [np.arange(total)], []
    for (dr, dc), weight in _ROAD_OFFSETS:
        nr, nc = rows + dr, cols + dc
        valid = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        diag[~valid] -= weight
        ids = np.nonzero(valid)[0]
        nidx = nr[ids] * w + nc[ids]
        neighbour_var = var_id[sys_of[ids], nidx]
        unknown = neighbour_var >= 0
        known = ids[~unknown]
        b[known] -= weight * flat[sys_of[known], :, nidx[~unknown]]
        a_rows.append(ids[unknown])
        a_cols.append(neighbour_var[unknown])
        a_vals.append(np.full(int(unknown.sum()), weight))
    a_vals.insert(0, -diag)
    a = coo_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(total, total)
    ).tocsc()
    sol = np.asarray(spsolve(a, b)).reshape(total, c)
    return [sol[o : o + k] for o, k in zip(start, sizes)]


def road_perturbed_inputs(
    inputs: Tensor, order: Tensor, percentages: Sequence[float], *, noise: float = 0.01, seed: int = 0
) -> Tensor:
    """Images ``(B, P, C, H, W)`` with the first ``floor(p * H * W)`` pixels of ``order`` imputed.

    The ``P`` imputations of an image are solved together (:func:`road_impute_many`) on the
    CPU, images in parallel threads; Quantus solves them on the CPU one by one. The noise of image ``b`` comes from
    ``np.random.default_rng([seed, crc32(image bytes)])``, drawn per percentage in order:
    deterministic under a seed, different between images, and the same whether an image is
    scored alone or in a batch.
    """
    b, c, h, w = inputs.shape
    x_np = inputs.detach().to("cpu", torch.float64).numpy()
    order_np = order.detach().cpu().numpy()
    counts = [_removed_count(p, h * w) for p in percentages]
    removed = [order_np[i, :k] for i in range(b) for k in counts]
    images = np.repeat(x_np, len(counts), axis=0)

    def one_image(i: int) -> list[np.ndarray]:  # the P systems of image i: one solve
        part = slice(i * len(counts), (i + 1) * len(counts))
        return road_impute_many(images[part], removed[part])

    # SuperLU releases the GIL: images are solved on torch's intra-op thread count (the CPU
    # budget the model passes use; they are idle meanwhile). One solve per image whatever the
    # thread count, so the values do not depend on it.
    workers = max(1, min(b, torch.get_num_threads()))
    if workers == 1:
        per_image = [one_image(i) for i in range(b)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            per_image = list(pool.map(one_image, range(b)))
    solutions = [sol for group in per_image for sol in group]
    out = images.reshape(b, len(counts), c, h * w).copy()
    for i in range(b):
        crc = zlib.crc32(np.ascontiguousarray(inputs[i].detach().to("cpu", torch.float32).numpy()).tobytes())
        rng = np.random.default_rng([int(seed), crc])
        for j, k in enumerate(counts):
            if k == 0:
                continue
            sol = solutions[i * len(counts) + j]
            if noise:
                sol = sol + noise * rng.standard_normal(sol.shape)
            out[i, j][:, removed[i * len(counts) + j]] = sol.T
    return torch.from_numpy(out.reshape(b, len(counts), c, h, w)).to(device=inputs.device, dtype=inputs.dtype)


@torch.no_grad()
def road_curve(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    order: Tensor,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    *,
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Target-class probability (softmax over logits) after ROAD removal: ``(B, P)``, batched forwards."""
    check_chunk(chunk_size)  # before the imputation, which takes a while
    x = road_perturbed_inputs(inputs, order, percentages, noise=noise, seed=seed)
    b, p = x.shape[:2]
    flat = x.flatten(0, 1)
    return chunked_outputs(
        model, inputs, targets, b * p, lambda ids: (flat[ids], ids // p), chunk_size=chunk_size
    ).view(b, p)


def _road(metric, model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf):
    validate_call(metric, model, inputs, targets, attribution)
    percentages = tuple(float(p) for p in percentages)
    if not percentages or any(not 0.0 < p < 1.0 for p in percentages) or list(percentages) != sorted(percentages):
        raise BenchError(f"metric {metric!r}: percentages must be increasing fractions in (0, 1), got {percentages!r}")
    order = rank_pixels(attribution.values)
    if lerf:
        order = order.flip(1)
    curve = road_curve(model, inputs, targets, order, percentages, noise=noise, seed=seed, chunk_size=chunk_size)
    scores = (1.0 - normalised_trapezoid(curve, percentages)).to(out_dtype(inputs))
    return MetricResult(scores, {metric: Curve(percentages, curve)})


@register_metric(
    "road_morf",
    higher_is_better=True,
    kind="faithfulness",
    passes=_road_passes,
    control_role="baseline",
    imputes_for=("deletion_auc",),  # most relevant first, imputed instead of a substrate
    constraints=ROAD_CONSTRAINTS,
    paper="Rong et al. 2022, ROAD (ICML)",
)
def road_morf(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> MetricResult:
    """Area over the probability curve when the most relevant pixels are removed first (MoRF).

    Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ICML; ROAD: RemOve And Debias). At each fraction ``p`` the top ``floor(p H W)`` pixels are
    replaced by noisy linear imputation (:func:`road_impute`, noise std ``noise`` = 0.01 in input
    units, seeded); ``q_p = softmax(f(x_p))[target]``. Score = area *over* the curve,
    ``1 - AUC_norm(q)``, with the trapezoid AUC over the percentages divided by their span.
    In ROAD a steeply falling MoRF curve is good, so higher is better. The paper (and Quantus)
    plot accuracy over a data set; per image we use the probability, which is finer.
    """
    return _road("road_morf", model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf=False)


@register_metric(
    "road_lerf",
    higher_is_better=False,
    kind="faithfulness",
    passes=_road_passes,
    control_role="baseline",
    constraints=ROAD_CONSTRAINTS,
    paper="Rong et al. 2022, ROAD (ICML)",
)
def road_lerf(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attribution: Attribution,
    *,
    context: MetricContext | None = None,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> MetricResult:
    """Area over the probability curve when the least relevant pixels are removed first (LeRF).

    Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ICML). As :func:`road_morf` with the ranking reversed (stable order flipped): score =
    ``1 - AUC_norm(q)`` of the target-class softmax probability. Removing unimportant pixels
    should keep the prediction, so a flat LeRF curve (small area over it) is good: lower is
    better.
    """
    return _road("road_lerf", model, inputs, targets, attribution, percentages, noise, seed, chunk_size, lerf=True)
