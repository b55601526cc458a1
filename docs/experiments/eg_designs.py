"""Which sampling designs reduce expected gradients' error at a fixed pass count (issue 18).

A measurement, not part of the package: the numbers in docs/benchmarks.md ("What else was
tried") come from this script. Expected gradients (Erion et al. 2021)::

    phi(x) = 1/N sum_r (x - bg_r) * int_0^1 df/dx(bg_r + a (x - bg_r)) da

estimated from ``n`` gradient passes per image, each at a draw ``(r_k, a_k)`` with weight ``w_k``:
``phi_hat = sum_k w_k (x - bg[r_k]) * df/dx(bg[r_k] + a_k (x - bg[r_k]))``. Designs (all unbiased):

* ``iid``: ``r_k``, ``a_k`` iid uniform, ``w_k = 1/n`` (shap's and Captum's sampler);
* ``stratified``: pneumobench.expected_gradients (explainers/stratified_eg.py): ``r_k = P[k mod N]``
  for a random permutation ``P``, ``a_k = (k + u_k)/n``;
* ``balanced``: every row weighted exactly 1/N (``w_k = 1/(N q_r)``, ``q_r`` in {floor, ceil}(n/N)
  points per row), a row's q points one in each ``[j/q, (j+1)/q)``, stratified across the rows of
  its group with an independent permutation per j;
* ``lattice``: rows as ``stratified``, ``a_k = frac(k/n + U)``, one U per image (a randomly shifted grid);
* ``systematic``: rows as ``stratified``, ``a_k = (k + u_{k mod N})/n`` (one jitter per row);
* ``antithetic`` (``N <= n <= 2N``; eg_budget.py): rows and points as ``stratified``, except that a
  row's second point mirrors its first, ``a_{k+N} = 1 - a_k`` (the strata still partition [0, 1]);
* ``strata_shuffled``: rows as ``stratified``, the n strata dealt to draws by another random
  permutation (rows and strata decoupled);
* ``sliced<G>_<key>``: rows as ``stratified``, but the permutation ``P`` puts references that are
  similar by ``key`` (``f``: the model's target output f(bg_r); ``mean``: mean intensity; ``dist``:
  ||x - bg_r||) into groups of G whose positions, and so strata, are spread over the path; each
  row's position is still uniform, so it stays unbiased (``--sliced``: these columns only);
* ``+cv`` (on ``iid``, ``stratified``, ``balanced``): a control variate from the exact per-row
  completeness ``sum_p int h_r = f(x) - f(bg_r)``: ``s_k = sum_p g_k - (f(x) - f(bg[r_k]))`` has mean
  0 per row; ``phi_cv = phi_hat - beta * sum_k w_k s_k`` with ``beta`` per pixel regressed on the
  draws (``O(1/n)`` bias from estimating ``beta``).

Error: relative L2 to the converged value (mean of 4 stratified runs at 1024 passes, seeds 10000+),
mean over 3 test images x 6 seeds. Usage (one thread; ~15 min per model on the 2-core CPU)::

    BENCH_DATA_FILE=... python docs/experiments/eg_designs.py [CHECKPOINT | random] [--sliced]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.perf.frontier import rel_l2  # noqa: E402
from explainers.stratified_eg import draws as stratified_draws  # noqa: E402
from tests.benchmarks.test_frontier import _data  # noqa: E402

N_IMAGES, N_BACKGROUND, SEEDS = 3, 32, 6
KINDS_WITH_CV = ("iid", "stratified", "balanced")  # the designs measured with the control variate too


def balanced(rng: np.random.Generator, n: int, big_n: int):
    if n < big_n:
        return rng.permutation(big_n)[:n], (rng.permutation(n) + rng.random(n)) / n, np.full(n, 1.0 / n)
    q, extra = divmod(n, big_n)
    perm = rng.permutation(big_n)
    rows, a, w = [], [], []
    for qq, grp in ((q + 1, perm[:extra]), (q, perm[extra:])):
        m = len(grp)
        if m == 0 or qq == 0:
            continue
        for j in range(qq):
            sub = rng.permutation(m)
            rows.append(grp)
            a.append((j + (sub + rng.random(m)) / m) / qq)
            w.append(np.full(m, 1.0 / (big_n * qq)))
    return np.concatenate(rows), np.concatenate(a), np.concatenate(w)


def sliced(seed: int, n: int, big_n: int, key: np.ndarray, group: int):
    """Stratified draws whose row permutation spreads each group of ``group`` rows similar by ``key``."""
    rng = np.random.default_rng(seed)
    order = np.argsort(key, kind="stable")  # similar rows adjacent
    c = big_n // group
    groups = order.reshape(c, group)  # c groups of `group` similar rows
    pi = rng.permutation(c)
    pos = np.empty(big_n, dtype=np.int64)
    for j in range(c):
        pos[groups[j]] = rng.permutation(group) * c + pi[j]
    perm = np.empty(big_n, dtype=np.int64)
    perm[pos] = np.arange(big_n)  # perm[position] = row
    k = np.arange(n)
    return perm[k % big_n], (k + rng.random(n)) / n


def design(kind: str, seed: int, n: int, big_n: int, key: np.ndarray | None = None):
    """``(rows, a, weights)`` of one image's draws (``key``: the similarity of the ``sliced`` designs)."""
    if kind in ("iid", "stratified"):
        rows, a = stratified_draws(seed, n, big_n, kind)
        return rows, a, np.full(n, 1.0 / n)
    if kind.startswith("sliced"):  # sliced<G>_<key>
        rows, a = sliced(seed, n, big_n, key, int(kind[6:].split("_")[0]))
        return rows, a, np.full(n, 1.0 / n)
    rng = np.random.default_rng(seed)
    if kind == "balanced":
        return balanced(rng, n, big_n)
    perm, k = rng.permutation(big_n), np.arange(n)
    rows = perm[k % big_n]
    if kind == "lattice":
        a = (k / n + rng.random()) % 1.0
    elif kind == "systematic":
        a = (k + rng.random(big_n)[k % big_n]) / n
    elif kind == "antithetic":
        if not big_n <= n <= 2 * big_n:
            raise ValueError(f"antithetic draws need N <= n <= 2N, got n={n}, N={big_n}")
        a = (k + rng.random(n)) / n
        a[big_n:] = 1.0 - a[: n - big_n]
    elif kind == "strata_shuffled":
        a = (rng.permutation(n) + rng.random(n)) / n
    else:
        raise ValueError(kind)
    return rows, a, np.full(n, 1.0 / n)


def contributions(model, x, target, bg, rows, a, batch: int = 64) -> torch.Tensor:
    """``(n, pixels)`` float64: ``(x - bg[r_k]) * df/dx(bg[r_k] + a_k (x - bg[r_k]))``."""
    out = []
    for s in range(0, len(rows), batch):
        r = bg[rows[s : s + batch]]
        aa = torch.tensor(a[s : s + batch], dtype=torch.float32).view(-1, 1, 1, 1)
        z = (r + aa * (x - r)).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(model(z)[:, target].sum(), z)
        out.append((g.double() * (x - r).double()).flatten(1))
    return torch.cat(out)


def reference(model, x, target, bg) -> torch.Tensor:
    """The converged value ``(pixels,)``: mean of 4 stratified runs of 1024 passes (seeds 10000-10003)."""
    runs = [
        contributions(model, x, target, bg, *stratified_draws(10_000 + s, 1024, bg.shape[0])).mean(0) for s in range(4)
    ]
    return torch.stack(runs).mean(0)


def setup(which: str, threads: int = 1):
    """``(model, x, bg, target)``: a checkpoint (or ``random``: a calibrated random resnet18), the
    frontier's test images and background, and each image's predicted class."""
    torch.set_num_threads(threads)
    if which == "random":
        from tests.conftest import calibrated

        model = calibrated("resnet18")
    else:
        from models.checkpoints import load_checkpoint

        model, _ = load_checkpoint(which, device="cpu")
    model.eval()
    data = _data(N_IMAGES, N_BACKGROUND, "cpu")
    if data is None:
        raise SystemExit("error: no PneumoniaMNIST file; set BENCH_DATA_FILE")
    x, bg, _ = data
    with torch.no_grad():
        return model, x, bg, model(x).argmax(1)


def main(which: str, sliced_only: bool = False) -> None:
    model, x, bg, t = setup(which)
    with torch.no_grad():
        fx, fbg = model(x).gather(1, t.view(-1, 1)).squeeze(1).double(), model(bg).double()
    refs = [reference(model, x[i : i + 1], t[i], bg) for i in range(N_IMAGES)]
    if sliced_only:
        kinds, with_cv, sizes = ("stratified", "sliced4_f", "sliced8_f", "sliced4_mean", "sliced4_dist"), (), (50, 100)
    else:
        kinds, with_cv = ("iid", "stratified", "balanced", "lattice", "systematic", "strata_shuffled"), KINDS_WITH_CV
        sizes = (32, 50, 64, 100)
    cols = [c for k in kinds for c in ((k, k + "+cv") if k in with_cv else (k,))]
    print("| n | " + " | ".join(cols) + " |")
    for n in sizes:
        err: dict[str, list[float]] = {}
        for kind in kinds:
            for s in range(SEEDS):
                for i in range(N_IMAGES):
                    key = None
                    if kind.startswith("sliced"):
                        key = {
                            "f": fbg[:, t[i]].numpy(),
                            "mean": bg.flatten(1).mean(1).numpy(),
                            "dist": (bg - x[i : i + 1]).flatten(1).norm(dim=1).numpy(),
                        }[kind.split("_")[1]]
                    rows, a, w = design(kind, 1000 * s + i, n, N_BACKGROUND, key)
                    g = contributions(model, x[i : i + 1], t[i], bg, rows, a)
                    wt = torch.tensor(w)
                    phi = (g * wt.view(-1, 1)).sum(0)
                    est = {kind: phi}
                    if kind in with_cv:
                        resid = g.sum(1) - (fx[i] - fbg[rows, t[i]])
                        rc, gc = resid - resid.mean(), g - g.mean(0)
                        beta = (gc * rc.view(-1, 1)).sum(0) / (rc * rc).sum().clamp_min(1e-30)
                        est[kind + "+cv"] = phi - beta * (resid * wt).sum()
                    for k, v in est.items():
                        err.setdefault(k, []).append(float(rel_l2(v[None], refs[i][None])[0]))
        print(f"| {n} | " + " | ".join(f"{np.mean(err[c]):.3f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--sliced"]
    main(args[0] if args else "results/published/checkpoints/resnet18-28px-seed0-01219700a5.pt", "--sliced" in sys.argv)
