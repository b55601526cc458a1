"""Where expected gradients' error comes from, and how much of it any sampling design can remove (issue 18).

A measurement, not part of the package: the "variance budget" table in docs/benchmarks.md comes
from this script. Expected gradients (Erion et al. 2021) average the integrand

    h_r(a) = (x - bg_r) * df/dx(bg_r + a (x - bg_r)),     phi = 1/N sum_r int_0^1 h_r(a) da,

over background rows r and path points a. The script evaluates h on a grid (every row x ``G`` cell
midpoints; ``G * N`` gradient passes per image), whose mean ``T`` stands for phi, and splits one
uniform draw's variance ``E ||h_r(a) - T||^2`` (in units of ``||T||^2``) into

* ``between``: ``mean_r ||I_r - T||^2`` with ``I_r = mean_a h_r(a)``: which reference was drawn.
  Balanced row draws (pneumobench.expected_gradients) remove it;
* ``within``: ``mean_{r,a} ||h_r(a) - I_r||^2``: where on the path. Of it, ``shared`` is the part
  common to all references at the same ``a`` (``mean_a ||mean_r (h_r(a) - I_r)||^2``, less the
  independent part's ``within / N``), which stratifying ``a`` across references removes; the rest
  is idiosyncratic to one reference's path, and only points placed closer together than the
  integrand's correlation length along the path (``autocorr``: the within-path deviations'
  correlation at lags of 1, 2, 4, 8, 16 cells) can cancel it;
* ``IS gain``: the factor by which the best importance-sampling density over (row, point) would cut
  a single draw's variance if it were known exactly (``p ~ ||h_r(a)||``, so the factor is
  ``(E||h||^2 - ||T||^2) / ((E||h||)^2 - ||T||^2)``): the most that moving draws to where the
  integrand is large can buy per draw (combined with stratification the gain is not additive);
  ``Neyman``: the same over rows only (``n_r ~ sigma_r``, ``mean(sigma_r^2) / mean(sigma_r)^2``);
* ``iid`` / ``stratified`` / ``antithetic``: relative L2 of the samplers (eg_designs.design) when
  their points take the value of their cell (the grid's own expectation is ``T``), mean over 100
  seeds; iid and stratified check that the grid reproduces the frontier's measured errors
  (docs/benchmarks.md, runs 0007 and 0010); and the variance per pass left at 50 passes
  (``50 * mean(error^2)``), with the stratified sampler's part that is within-path (the same draws
  on ``h_r(a) - I_r + T``, where every reference integrates to T).

Usage (a few minutes per model on the 2-core CPU)::

    BENCH_DATA_FILE=... python docs/experiments/eg_budget.py [CHECKPOINT | random] [CELLS] [--reference]

``--reference`` adds the grid mean's relative L2 to the converged value of eg_designs.py (mean of
4 stratified runs at 1024 passes; 4096 more passes per image, ~2.5 min per image on resnet50).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.perf.frontier import rel_l2  # noqa: E402
from eg_designs import N_IMAGES, contributions, design, reference, setup  # noqa: E402

LAGS = (1, 2, 4, 8, 16)


def grid(model, x, target, bg, cells: int) -> np.ndarray:
    """``(N, cells, pixels)`` float64: ``h_r`` at the midpoints of ``cells`` equal cells of [0, 1]."""
    rows = np.repeat(np.arange(bg.shape[0]), cells)
    a = np.tile((np.arange(cells) + 0.5) / cells, bg.shape[0])
    return contributions(model, x, target, bg, rows, a).view(bg.shape[0], cells, -1).numpy()


def _autocorr(dev: np.ndarray, lag: int) -> float:
    """Correlation of the within-path deviations ``lag`` cells apart (nan without such pairs or spread)."""
    if lag >= dev.shape[1]:
        return float("nan")
    den = np.sqrt((dev[:, :-lag] ** 2).sum() * (dev[:, lag:] ** 2).sum())
    return float((dev[:, :-lag] * dev[:, lag:]).sum() / den) if den > 0 else float("nan")


def budget(h: np.ndarray, lags=LAGS) -> dict:
    """The variance budget of one image's grid ``h`` ``(N, G, P)``, in units of ``||T||^2`` (module doc)."""
    n_rows = h.shape[0]
    t = h.mean((0, 1))
    t2 = float((t**2).sum())
    per_row = h.mean(1)
    dev = h - per_row[:, None]
    within = float((dev**2).sum(2).mean()) / t2
    shared = float((dev.mean(0) ** 2).sum(1).mean()) / t2 - within / n_rows
    norms = np.sqrt((h**2).sum(2))  # ||h_r(a)||
    sigma = np.sqrt((dev**2).sum(2).mean(1))  # each row's within-path spread
    autocorr = [_autocorr(dev, k) for k in lags]
    return {
        "total": float(((h - t) ** 2).sum(2).mean()) / t2,
        "between": float(((per_row - t) ** 2).sum(1).mean()) / t2,
        "within": within,
        "shared": shared,
        "autocorr": autocorr,
        "is_gain": float(((norms**2).mean() - t2) / (norms.mean() ** 2 - t2)),
        "neyman_gain": float((sigma**2).mean() / sigma.mean() ** 2),
    }


def snapped_estimate(h: np.ndarray, rows: np.ndarray, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A design's estimate ``(P,)`` of the grid mean, each draw taking the value of its row's cell of ``a``."""
    cells = h.shape[1]
    return (h[rows, np.minimum((a * cells).astype(np.int64), cells - 1)] * w[:, None]).sum(0)


def _rel_l2(est: np.ndarray, ref: np.ndarray) -> float:
    """The frontier's relative L2 (bench.perf.frontier.rel_l2) of one image's values."""
    return float(rel_l2(torch.from_numpy(est)[None], torch.from_numpy(ref)[None])[0])


def simulated_errors(h: np.ndarray, kind: str, n: int, seeds, image: int = 0) -> np.ndarray:
    """Relative L2 to the grid mean, one per seed, of design ``kind`` (eg_designs.design), points snapped to cells."""
    t = h.mean((0, 1))
    return np.array([_rel_l2(snapped_estimate(h, *design(kind, 1000 * s + image, n, h.shape[0])), t) for s in seeds])


def main(which: str, cells: int = 64, with_reference: bool = False) -> None:
    model, x, bg, target = setup(which, threads=2)
    cols = [
        "image",
        "total",
        "between",
        "within",
        "shared",
        "autocorr at " + "/".join(map(str, LAGS)) + " cells",
        "IS gain",
        "Neyman",
        "iid 50",
        "iid 100",
        "stratified 50",
        "stratified 100",
        "antithetic 50",
        "variance per pass at 50: iid / stratified / its within-path part",
    ] + ["grid vs reference"] * with_reference
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for i in range(N_IMAGES):
        h = grid(model, x[i : i + 1], target[i], bg, cells)
        b = budget(h)
        errs = {(k, n): simulated_errors(h, k, n, range(100), i) for k in ("iid", "stratified") for n in (50, 100)}
        within_only = h - h.mean(1, keepdims=True) + h.mean((0, 1))  # every reference integrates to T
        errs["within", 50] = simulated_errors(within_only, "stratified", 50, range(100), i)
        errs["antithetic", 50] = simulated_errors(h, "antithetic", 50, range(100), i)
        sims = [
            errs[k, n].mean()
            for k, n in (("iid", 50), ("iid", 100), ("stratified", 50), ("stratified", 100), ("antithetic", 50))
        ]
        per_pass = [50 * (errs[k, 50] ** 2).mean() for k in ("iid", "stratified", "within")]
        row = [
            str(i),
            f"{b['total']:.1f}",
            f"{b['between']:.1f}",
            f"{b['within']:.1f}",
            f"{b['shared']:.2f}",
            ", ".join(f"{c:.2f}" for c in b["autocorr"]),
            f"{b['is_gain']:.3f}",
            f"{b['neyman_gain']:.3f}",
            *(f"{e:.3f}" for e in sims),
            " / ".join(f"{v:.1f}" for v in per_pass),
        ]
        if with_reference:
            row.append(f"{_rel_l2(h.mean((0, 1)), reference(model, x[i : i + 1], target[i], bg).numpy()):.3f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--reference"]
    main(args[0], int(args[1]) if len(args) > 1 else 64, "--reference" in sys.argv)
