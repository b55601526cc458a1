"""The model-truth tables: does an explainer find what the model uses, does a metric reward it?

Inputs (from ``bench truth``, bench/run/truth.py): the scores of one ordinary run per training
condition (``none``, ``confound``, ``noise``) and marker polarity on the same test images, and the
models' reliance on the planted marker measured by intervention (the target score with the marker
minus without it, everything else equal). The design follows Clark, Oliveira, Wilming & Haufe 2026
(arXiv 2602.09238) and Zhou et al. 2022 (AAAI): a model trained with a class-dependent marker
(``confound``) uses it; one trained with the marker at the same rate independent of the label
(``noise``) has no reason to. An explainer that reports what the model uses puts more attribution
on the marker under the confound model than under the noise model, on the same images.

Tables (all intervals at ``1 - alpha``, the images resampled jointly over seeds where a bootstrap):

- ``truth_models.csv``: per model: accuracy on the whole test split with the marker on every image
  and on none, the mean reliance ``p(class 1 | with) - p(class 1 | without)`` over those images
  with its t interval, the same on class-0 images, and a verdict (``uses`` when the interval is
  above 0 and the mean at least ``reliance_margin``; ``does not use`` when the interval lies inside
  ``+-reliance_margin``; else ``cannot tell``). The planting took when every confound model uses
  the marker and no noise model does; otherwise ``bench truth`` fails after writing this table.
- ``truth.csv``: per explainer and polarity: the mean ``mask_share`` (attribution mass on the marker
  relative to its area; 1 = no more than its area) on marked images under each condition with t
  intervals (crossed image x seed model where there are several seeds); *discrimination*: the
  paired difference confound - noise on the same images and seeds (one Bonferroni family over the
  explainers, TOST equivalence within ``share_margin``), the same for ``mask_share_signed``, and
  the AUROC of confound vs noise shares (image bootstrap); *salience*: whether the share is above
  1 under the ``none`` model that never saw the marker; and Spearman's correlation, per image,
  between the share and the measured reliance (score with minus without) across all models.
- ``truth_agreement.csv``: per faithfulness metric and polarity: Kendall's tau-b between the
  metric's ranking of the explainers on the confound models (marked images) and the truth ranking
  (discrimination), with an image-bootstrap interval and a verdict; and tau with the ranking by
  marker share on the same models (does the metric reward attending to the marker?).
- ``truth.md`` and ``report.html``: the tables with what they say.

Each sub-run's reliability card then gains a ``truth`` column: its polarity's rows of
``truth_agreement.csv``, handed to the sub-run's rebuild (:func:`bench.report.rebuild.rebuild` with
``truth=``), so the card, its ``reliability.md`` and the sub-run's ``report.html`` show per metric
whether it agrees with the truth ("n/a" for a metric the table does not grade).
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from bench.core.errors import BenchError
from bench.core.io import atomic_write_text, read_regular
from bench.metrics import METRICS
from bench.core.text import fmt_number
from bench.report.format import ci_text
from bench.report.leaderboard import read_scores
from bench.report.rebuild import rebuild
from bench.stats.agreement import image_interval, kendall_tau
from bench.stats.aliases import collapse, find_aliases
from bench.stats.compare import family_tests
from bench.stats.estimate import mean_estimate, t_interval
from bench.stats.settings import StatsSettings

RELIANCE_COLUMNS = (
    "condition",
    "polarity",
    "model",
    "seed",
    "image",
    "label",
    "planted",
    "score_with",
    "score_without",
    "p1_with",
    "p1_without",
)
MODEL_COLUMNS = (
    "condition",
    "polarity",
    "model",
    "seed",
    "checkpoint_sha256",
    "n_test",
    "acc_without",
    "acc_with",
    "reliance",
    "reliance_low",
    "reliance_high",
    "reliance_normal",
    "verdict",
)
SHARE = "mask_share"
SIGNED = "mask_share_signed"


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float, float]:
    est = mean_estimate(values)
    low, high = t_interval(est, 1 - alpha)
    return est.mean, low, high


def model_table(models: pd.DataFrame, *, alpha: float, margin: float) -> pd.DataFrame:
    """``truth_models.csv`` from the per-model records of :func:`bench.run.truth.reliance_rows`."""
    rows = []
    for _, m in models.iterrows():
        d, labels = np.asarray(m["_reliance"], dtype=np.float64), np.asarray(m["_labels"])
        mean, low, high = _interval(d, alpha)
        if low > 0 and mean >= margin:
            verdict = "uses"
        elif low >= -margin and high <= margin:
            verdict = "does not use"
        else:
            verdict = "cannot tell"
        rows.append(
            [
                m["condition"],
                m["polarity"],
                m["model"],
                int(m["seed"]),
                m["checkpoint_sha256"],
                int(m["n_test"]),
                m["acc_without"],
                m["acc_with"],
                mean,
                low,
                high,
                float(d[labels == 0].mean()) if (labels == 0).any() else float("nan"),
                verdict,
            ]
        )
    return pd.DataFrame(rows, columns=list(MODEL_COLUMNS))


def planting_problems(table: pd.DataFrame) -> list[str]:
    """Why the planting did not take: a confound model that does not use the marker, a noise model that does."""
    out = []
    for _, r in table.iterrows():
        if r["condition"] == "confound" and r["verdict"] != "uses":
            out.append(
                f"{r['model']} ({r['polarity']}, confound) reliance {r['reliance']:+.3f} "
                f"[{r['reliance_low']:+.3f}, {r['reliance_high']:+.3f}]: {r['verdict']}"
            )
        if r["condition"] == "noise" and r["verdict"] == "uses":
            out.append(f"{r['model']} ({r['polarity']}, noise) reliance {r['reliance']:+.3f}: uses the marker")
    return out


def _matrix(frame: pd.DataFrame, value: str) -> tuple[np.ndarray, list[int], list[int]]:
    """(seeds x images) of ``value`` from long rows with ``seed``, ``image``."""
    wide = frame.pivot_table(index="seed", columns="image", values=value, aggfunc="first")
    return wide.to_numpy(dtype=np.float64), list(wide.index), list(wide.columns)


def _auroc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").statistic / (len(a) * len(b)))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(sps.spearmanr(a[ok], b[ok]).statistic)


def explainer_table(
    scores: pd.DataFrame, reliance: pd.DataFrame, *, alpha: float, margin: float, bootstrap: int, seed: int = 0
) -> pd.DataFrame:
    """``truth.csv``: ``scores`` with ``condition``, ``polarity`` columns (the sub-runs' scores, pre stage)."""
    rel = reliance.assign(reliance=reliance["score_with"] - reliance["score_without"])
    rows = []
    for polarity in sorted(scores["polarity"].unique()):
        sp = scores[scores["polarity"] == polarity]
        explainers = sorted(sp["explainer"].unique())
        diffs, signed_diffs, extra = [], [], []
        for e in explainers:
            se = sp[sp["explainer"] == e]
            row: dict[str, Any] = {"polarity": polarity, "explainer": e}
            shares = {}
            for cond in ("none", "confound", "noise"):
                part = se[(se["condition"] == cond) & (se["metric"] == SHARE)]
                if part.empty:
                    row.update({f"share_{cond}": np.nan, f"share_{cond}_low": np.nan, f"share_{cond}_high": np.nan})
                    continue
                mat, seeds, images = _matrix(part, "value")
                shares[cond] = (mat, seeds, images)
                row.update(
                    dict(zip((f"share_{cond}", f"share_{cond}_low", f"share_{cond}_high"), _interval(mat, alpha)))
                )
            row["salience"] = (
                "elevated"
                if row.get("share_none_low", np.nan) > 1
                else "not elevated"
                if row.get("share_none_high", np.nan) <= 1
                else "n/a"
                if not np.isfinite(row.get("share_none", np.nan))
                else "cannot tell"
            )
            d = _paired(se, SHARE)
            diffs.append(d)
            signed_diffs.append(_paired(se, SIGNED))
            if "confound" in shares and "noise" in shares:
                (mc, _, ic), (mn, _, in_) = shares["confound"], shares["noise"]
                common = sorted(set(ic) & set(in_))
                c = mc[:, [ic.index(i) for i in common]]
                n = mn[:, [in_.index(i) for i in common]]
                row["auroc"] = _auroc(c.ravel(), n.ravel())

                def auroc_of(idx: np.ndarray, c: np.ndarray = c, n: np.ndarray = n) -> float:
                    return _auroc(c[:, idx].ravel(), n[:, idx].ravel())

                row["auroc_low"], row["auroc_high"] = image_interval(
                    auroc_of, len(common), n_resamples=bootstrap, seed=seed, confidence=1 - alpha
                )
            else:
                row["auroc"] = row["auroc_low"] = row["auroc_high"] = np.nan
            # per image: the share against the reliance the model showed on that image, over every model
            j = se[se["metric"] == SHARE].merge(
                rel[rel["polarity"] == polarity], on=["condition", "polarity", "model", "image"], how="inner"
            )
            j = j[np.isfinite(j["value"].astype(float))]
            a, b = j["value"].to_numpy(float), j["reliance"].to_numpy(float)
            img = j["image"].to_numpy()
            uniq = np.unique(img)
            row["rho_reliance"] = _spearman(a, b)
            pos = {u: np.flatnonzero(img == u) for u in uniq}

            def rho_of(
                idx: np.ndarray,
                a: np.ndarray = a,
                b: np.ndarray = b,
                uniq: np.ndarray = uniq,
                pos: dict[Any, np.ndarray] = pos,
            ) -> float:
                return _spearman(*(np.concatenate([x[pos[uniq[i]]] for i in idx]) for x in (a, b)))

            row["rho_low"], row["rho_high"] = image_interval(
                rho_of, len(uniq), n_resamples=bootstrap, seed=seed, confidence=1 - alpha
            )
            extra.append(row)
        fam = family_tests(diffs, margin, alpha)
        fam_s = family_tests(signed_diffs, margin, alpha)
        for row, (_, f), (_, fs) in zip(extra, fam.iterrows(), fam_s.iterrows()):
            row.update(
                {
                    "discrimination": f["diff"],
                    "disc_low": f["ci_low"],
                    "disc_high": f["ci_high"],
                    "p_adj": f["p_adj"],
                    "p_equiv": f["p_equiv"],
                    "n_images": f["n_images"],
                    "n_seeds": f["n_seeds"],
                    "family_size": f["family_size"],
                    "verdict": (
                        "follows the model"
                        if f["separated"] and f["diff"] > 0
                        else "reversed"
                        if f["separated"]
                        else "does not react (equivalent)"
                        if f["equivalent"]
                        else f"cannot tell at n = {int(f['n_images'])}"
                        if np.isfinite(f["diff"])
                        else "n/a"
                    ),
                    "disc_signed": fs["diff"],
                    "disc_signed_low": fs["ci_low"],
                    "disc_signed_high": fs["ci_high"],
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _paired(se: pd.DataFrame, metric: str) -> np.ndarray:
    """(seeds x images) confound - noise of ``metric`` for one explainer, seeds and images matched."""
    c = se[(se["condition"] == "confound") & (se["metric"] == metric)]
    n = se[(se["condition"] == "noise") & (se["metric"] == metric)]
    if c.empty or n.empty:
        return np.full((1, 0), np.nan)
    wc = c.pivot_table(index="seed", columns="image", values="value", aggfunc="first")
    wn = n.pivot_table(index="seed", columns="image", values="value", aggfunc="first")
    seeds = sorted(set(wc.index) & set(wn.index))
    images = sorted(set(wc.columns) & set(wn.columns))
    return (wc.loc[seeds, images] - wn.loc[seeds, images]).to_numpy(dtype=np.float64)


def agreement_table(
    scores: pd.DataFrame, truth: pd.DataFrame, *, alpha: float, bootstrap: int, seed: int = 0
) -> pd.DataFrame:
    """``truth_agreement.csv``: per faithfulness metric, tau between its explainer ranking on the
    confound models and the truth ranking (and the marker-share ranking), image-bootstrap CI."""
    rows = []
    for polarity in sorted(scores["polarity"].unique()):
        t = truth[(truth["polarity"] == polarity) & np.isfinite(truth["discrimination"].astype(float))]
        explainers = list(t["explainer"])
        conf = scores[
            (scores["polarity"] == polarity)
            & (scores["condition"] == "confound")
            & scores["explainer"].isin(explainers)
        ]
        noise = scores[
            (scores["polarity"] == polarity) & (scores["condition"] == "noise") & scores["explainer"].isin(explainers)
        ]
        if len(explainers) < 3:
            continue
        share_c = _cube(conf, SHARE, explainers)
        share_n = _cube(noise, SHARE, explainers)
        images = sorted(set(share_c[1]) & set(share_n[1]))
        sc = _align(share_c, images)
        sn = _align(share_n, images)
        metrics = [m for m in sorted(conf["metric"].unique()) if METRICS.get(m).meta.get("kind") == "faithfulness"]
        for metric in metrics:
            hib = bool(METRICS.get(metric).meta.get("higher_is_better", True))
            g = _align(_cube(conf, metric, explainers), images) * (1.0 if hib else -1.0)

            def stats_of(
                idx: np.ndarray, g: np.ndarray = g, sc: np.ndarray = sc, sn: np.ndarray = sn
            ) -> tuple[float, float]:
                truth_vec = np.nanmean((sc - sn)[:, :, idx], axis=(1, 2))
                metric_vec = np.nanmean(g[:, :, idx], axis=(1, 2))
                share_vec = np.nanmean(sc[:, :, idx], axis=(1, 2))
                return (float(kendall_tau(metric_vec, truth_vec)), float(kendall_tau(metric_vec, share_vec)))

            all_idx = np.arange(len(images))
            with np.errstate(all="ignore"):
                tau, tau_share = stats_of(all_idx)
                low, high = image_interval(
                    lambda idx: stats_of(np.asarray(idx))[0],
                    len(images),
                    n_resamples=bootstrap,
                    seed=seed,
                    confidence=1 - alpha,
                )
                s_low, s_high = image_interval(
                    lambda idx: stats_of(np.asarray(idx))[1],
                    len(images),
                    n_resamples=bootstrap,
                    seed=seed,
                    confidence=1 - alpha,
                )
            verdict = "agrees" if low > 0 else "disagrees" if high < 0 else "cannot tell" if np.isfinite(tau) else "n/a"
            rows.append(
                {
                    "polarity": polarity,
                    "metric": metric,
                    "n_explainers": len(explainers),
                    "n_images": len(images),
                    "tau_truth": tau,
                    "tau_low": low,
                    "tau_high": high,
                    "verdict": verdict,
                    "tau_share": tau_share,
                    "tau_share_low": s_low,
                    "tau_share_high": s_high,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "polarity",
            "metric",
            "n_explainers",
            "n_images",
            "tau_truth",
            "tau_low",
            "tau_high",
            "verdict",
            "tau_share",
            "tau_share_low",
            "tau_share_high",
        ],
    )


def _cube(frame: pd.DataFrame, metric: str, explainers: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
    """(explainers x seeds x images) of one metric, with its seeds and images."""
    part = frame[frame["metric"] == metric]
    seeds = sorted(part["seed"].unique())
    images = sorted(part["image"].unique())
    out = np.full((len(explainers), len(seeds), len(images)), np.nan)
    ei = {e: k for k, e in enumerate(explainers)}
    si = {s: k for k, s in enumerate(seeds)}
    ii = {i: k for k, i in enumerate(images)}
    for e, s, i, v in part[["explainer", "seed", "image", "value"]].itertuples(index=False):
        out[ei[e], si[s], ii[i]] = v
    return out, images, seeds


def _align(cube: tuple[np.ndarray, list[int], list[int]], images: list[int]) -> np.ndarray:
    arr, have, _ = cube
    pos = {i: k for k, i in enumerate(have)}
    return arr[:, :, [pos[i] for i in images]]


def load_scores(
    parent: Path, runs: pd.DataFrame, reliance: pd.DataFrame, *, rtol: float, atol: float
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The sub-runs' pre-stage scores with condition, polarity and training seed; exact aliases
    (one method under two names, :func:`bench.stats.aliases.find_aliases`) counted once."""
    parts = []
    seeds = reliance[["condition", "polarity", "model", "seed"]].drop_duplicates()
    for _, r in runs.iterrows():
        s = read_scores(parent / r["run"] / "scores.csv")
        s = s[(s["stage"] == "pre") & (s["status"] == "ok")].copy()
        s["condition"], s["polarity"] = r["condition"], r["polarity"]
        parts.append(s.merge(seeds, on=["condition", "polarity", "model"], how="left"))
    scores = pd.concat(parts, ignore_index=True)
    scores["value"] = pd.to_numeric(scores["value"], errors="coerce")
    aliases = find_aliases(
        scores.assign(model=scores["condition"] + "/" + scores["polarity"] + "/" + scores["model"].astype(str)),
        rtol=rtol,
        atol=atol,
    )
    return collapse(scores, aliases), aliases


def write_truth(
    parent: Path,
    runs: pd.DataFrame,
    reliance: pd.DataFrame,
    models: pd.DataFrame,
    *,
    name: str,
    options: Mapping[str, Any],
    stats: StatsSettings,
    reliance_margin: float,
    share_margin: float,
    bootstrap: int,
) -> list[Path]:
    """Write the truth tables into ``parent`` (module docstring) and rebuild every sub-run with the
    ``truth`` column of its card; one-line BenchError, after writing ``truth_models.csv``, when the
    planting did not take. ``name`` and ``options`` (the marked data's ``[data.options]``) head
    truth.md; ``stats`` gives alpha (the run's ``reliability.alpha``), the alias tolerances and the
    seed; the margins and ``bootstrap`` are ``[truth]``'s. Returns the paths written after the model table."""
    alpha = float(stats.alpha)
    mt = model_table(models, alpha=alpha, margin=float(reliance_margin))
    atomic_write_text(parent / "truth_models.csv", mt.to_csv(index=False))
    atomic_write_text(parent / "reliance.csv", reliance.to_csv(index=False))
    atomic_write_text(parent / "truth_runs.csv", runs.to_csv(index=False))
    problems = planting_problems(mt) if {"confound", "noise"} <= set(mt["condition"]) else []
    if problems:
        raise BenchError(
            f"the planting did not take ({'; '.join(problems[:3])}); the marker must be used by "
            f"confound models and not by noise models: train longer, raise rate_positive or the "
            f"marker's size or contrast (see {parent / 'truth_models.csv'})"
        )
    return _explainer_tables(
        parent,
        runs,
        reliance,
        mt,
        name=name,
        options=options,
        stats=stats,
        share_margin=share_margin,
        bootstrap=bootstrap,
    )


def rebuild_truth(
    parent: Path, *, name: str, options: Mapping[str, Any], stats: StatsSettings, share_margin: float, bootstrap: int
) -> list[Path]:
    """``bench report`` of a truth run: ``truth.csv``, ``truth_agreement.csv``, every sub-run
    (:func:`bench.report.rebuild.rebuild`, its card with the ``truth`` column), ``truth.md`` and
    ``report.html`` again from what the run recorded: the model truth (``truth_models.csv``, the
    measured reliance per model; ``reliance.csv``, per explained image), the sub-runs
    (``truth_runs.csv``) and their ``scores.csv`` (the caller checks the sub-run folders first)."""
    tables = {}
    for file in ("truth_models.csv", "reliance.csv", "truth_runs.csv"):
        try:
            tables[file] = pd.read_csv(io.BytesIO(read_regular(parent / file)))
        except FileNotFoundError:
            raise BenchError(
                f"{parent / file} not found: {parent} is not a finished truth run (python -m bench truth writes it)"
            ) from None
    return _explainer_tables(
        parent,
        tables["truth_runs.csv"],
        tables["reliance.csv"],
        tables["truth_models.csv"],
        name=name,
        options=options,
        stats=stats,
        share_margin=share_margin,
        bootstrap=bootstrap,
    )


def card_truth(agree: pd.DataFrame, polarity: str) -> pd.DataFrame:
    """The rows of ``truth_agreement.csv`` that a sub-run of marker polarity ``polarity`` shows in its
    reliability card (:func:`bench.report.reliability.truth_cells`): its polarity's, of the pre stage
    (the truth tables read the pre-stage scores only)."""
    return agree[agree["polarity"] == polarity].assign(stage="pre").reset_index(drop=True)


def _explainer_tables(
    parent: Path,
    runs: pd.DataFrame,
    reliance: pd.DataFrame,
    mt: pd.DataFrame,
    *,
    name: str,
    options: Mapping[str, Any],
    stats: StatsSettings,
    share_margin: float,
    bootstrap: int,
) -> list[Path]:
    """The explainers' and the metrics' tables, every sub-run with its card's ``truth`` column, then
    truth.md and report.html (it links the sub-runs' reports), from the model table ``mt``."""
    for run in runs["run"]:
        if Path(str(run)).is_absolute() or ".." in Path(str(run)).parts:
            raise BenchError(
                f"{parent / 'truth_runs.csv'} names the sub-run {run!r} outside {parent}; re-run python -m bench truth"
            )
    alpha = float(stats.alpha)
    scores, aliases = load_scores(parent, runs, reliance, rtol=float(stats.alias_rtol), atol=float(stats.alias_atol))
    truth = explainer_table(
        scores, reliance, alpha=alpha, margin=float(share_margin), bootstrap=int(bootstrap), seed=int(stats.seed)
    )
    agree = agreement_table(scores, truth, alpha=alpha, bootstrap=int(bootstrap), seed=int(stats.seed))
    truth["aliases"] = truth["explainer"].map(lambda e: ", ".join(aliases.get(e, [])))
    atomic_write_text(parent / "truth.csv", truth.to_csv(index=False))
    atomic_write_text(parent / "truth_agreement.csv", agree.to_csv(index=False))
    written = [parent / "truth.csv", parent / "truth_agreement.csv"]
    for _, r in runs.iterrows():
        written += rebuild(parent / str(r["run"]), truth=card_truth(agree, str(r["polarity"])))
    md = truth_markdown(mt, truth, agree, name=name, options=options, alpha=alpha)
    written += [atomic_write_text(parent / "truth.md", md), atomic_write_text(parent / "report.html", _html(md, runs))]
    return written


def _fmt(x: float, digits: int = 2) -> str:
    return fmt_number(x, f".{digits}f")


def _ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    return ci_text(mean, low, high, f".{digits}f")


def truth_markdown(
    models: pd.DataFrame,
    truth: pd.DataFrame,
    agree: pd.DataFrame,
    *,
    name: str,
    options: Mapping[str, Any],
    alpha: float,
) -> str:
    """``truth.md``: what the model uses, which explainers follow it, which metrics agree."""
    alpha = float(alpha)
    level = f"{100 * (1 - alpha):.0f} %"
    o = options
    follows = truth[truth["verdict"] == "follows the model"]
    elevated = truth[truth["salience"] == "elevated"]
    lines = [
        f"# Model truth: {name}",
        "",
        f"Marker: {o.get('marker', 'patch')} {o.get('marker_size', 3)} px, position {o.get('position', 'fixed')}, "
        f"rates {o.get('rate_positive', 0.9)} / {o.get('rate_negative', 0.1)} (class 1 / class 0) under "
        f"`confound`, the same overall rate under `noise`; {level} intervals.",
        "",
        "## Summary",
        "",
        f"- {len(follows)} of {len(truth)} explainer rows follow the model (discriminate confound from noise): "
        f"{', '.join(sorted(set(follows['explainer']))) or 'none'}.",
        f"- {len(elevated)} of {len(truth)} put elevated attribution on the marker under a model that never saw "
        f"it (salience, Clark et al. 2026): {', '.join(sorted(set(elevated['explainer']))) or 'none'}.",
        f"- Metrics agreeing with the truth ranking: "
        f"{', '.join(sorted(set(agree.loc[agree['verdict'] == 'agrees', 'metric']))) or 'none'}; "
        f"disagreeing: {', '.join(sorted(set(agree.loc[agree['verdict'] == 'disagrees', 'metric']))) or 'none'}; "
        f"cannot tell: "
        f"{', '.join(sorted(set(agree.loc[agree['verdict'] == 'cannot tell', 'metric']))) or 'none'}.",
        "",
        "## What the models use (by intervention)",
        "",
        "Reliance: p(class 1) with the marker minus without it on every test image, all else equal.",
        "",
        "| polarity | condition | model | acc. without | acc. with | reliance | on class 0 | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in models.iterrows():
        lines.append(
            f"| {r['polarity']} | {r['condition']} | {r['model']} | {_fmt(r['acc_without'], 3)} | "
            f"{_fmt(r['acc_with'], 3)} | {_ci(r['reliance'], r['reliance_low'], r['reliance_high'], 3)} | "
            f"{_fmt(r['reliance_normal'], 3)} | {r['verdict']} |"
        )
    lines += [
        "",
        "## Does an explainer find what the model uses?",
        "",
        "Share: attribution mass on the marker relative to its area (1 = no more than its area), on marked "
        "images. Discrimination: confound minus noise on the same images and seeds (Bonferroni over the "
        'explainers; "does not react" = TOST-equivalent within the share margin). Salience: share above 1 '
        "under the model that never saw the marker. rho: per image, share vs the model's measured reliance.",
        "",
        "| polarity | explainer | share none | share confound | share noise | discrimination | AUROC | "
        "salience | rho | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in truth.sort_values(["polarity", "discrimination"], ascending=[True, False]).iterrows():
        name = r["explainer"] + (f" (= {r['aliases']})" if r.get("aliases") else "")
        lines.append(
            f"| {r['polarity']} | {name} | "
            f"{_ci(r['share_none'], r['share_none_low'], r['share_none_high'])} | "
            f"{_ci(r['share_confound'], r['share_confound_low'], r['share_confound_high'])} | "
            f"{_ci(r['share_noise'], r['share_noise_low'], r['share_noise_high'])} | "
            f"{_ci(r['discrimination'], r['disc_low'], r['disc_high'])} | "
            f"{_ci(r['auroc'], r['auroc_low'], r['auroc_high'])} | {r['salience']} | "
            f"{_ci(r['rho_reliance'], r['rho_low'], r['rho_high'])} | {r['verdict']} |"
        )
    lines += [
        "",
        "## Do the faithfulness metrics agree with the truth?",
        "",
        "Kendall's tau-b between a metric's ranking of the explainers on the confound models (marked images) "
        "and the ranking by discrimination; tau with the ranking by marker share beside it. Each sub-run's "
        "reliability card (runs/<condition>-<polarity>/reliability.md) shows its polarity's tau with truth "
        "and verdict in its `truth` column.",
        "",
        "| polarity | metric | tau with truth | verdict | tau with marker share | explainers | images |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in agree.iterrows():
        lines.append(
            f"| {r['polarity']} | {r['metric']} | {_ci(r['tau_truth'], r['tau_low'], r['tau_high'])} | "
            f"{r['verdict']} | {_ci(r['tau_share'], r['tau_share_low'], r['tau_share_high'])} | "
            f"{r['n_explainers']} | {r['n_images']} |"
        )
    lines.append("")
    return "\n".join(lines)


def _html(md: str, runs: pd.DataFrame) -> str:
    """A plain page of ``truth.md`` (tables as HTML tables) with links to the sub-runs' reports."""
    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if not set(line) <= set("|-")]
            head, *rest = rows
            body.append(
                "<div class='box'><table><thead><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr></thead>"
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
                + "</tbody></table></div>"
            )
            table.clear()

    items: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if not line.startswith("- ") and items:
            body.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            items.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    if items:
        body.append("<ul>" + "".join(items) + "</ul>")
    links = "".join(
        f'<li><a href="{html.escape(r["run"])}/report.html">{html.escape(r["condition"])} · '
        f"{html.escape(r['polarity'])}</a></li>"
        for _, r in runs.iterrows()
    )
    # the run report's look (bench/report/html.py): a dark header bar, tables scroll inside their box
    style = (
        "body{font-family:system-ui,sans-serif;box-sizing:border-box;max-width:1240px;margin:0 auto;"
        "padding:0 1em 2em;color:#222}"
        "h1{background:#0b3a5d;color:#fff;margin:0 -1em;padding:.6em 1em;font-size:22px}"
        "h2{border-bottom:2px solid #0b6fa4;padding-bottom:.2em;margin-top:1.6em}"
        ".box{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ddd;padding:4px 8px;white-space:nowrap}th{background:#f3f6f9;text-align:left}"
        "li{margin:.3em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pneumobench model truth</title>"
        f"<style>{style}</style></head><body>{''.join(body)}<h2>Runs</h2><ul>{links}</ul></body></html>"
    )
