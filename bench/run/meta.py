"""Noise resilience and adversary reactivity of every metric (Hedström et al. 2023, MetaQuantus).

"The Meta-Evaluation Problem in Explainable AI: Identifying Reliable Estimators with MetaQuantus"
(TMLR 2023). A reliable metric's scores stay put under a *minor* perturbation that does not change
the model's predictions, and move under a *disruptive* one. Two tests, each a minor (NR) and a
disruptive (AR) perturbation, drawn ``K`` times (``[reliability.meta]`` of the run config):

* **input**: NR adds Gaussian noise to the images (std ``input_noise`` x each image's value range)
  and re-explains them; AR shuffles each explanation's pixels (the images stay).
* **model**: NR multiplies every weight by ``1 + N(0, weight_noise^2)`` and re-explains; AR
  re-explains with a randomised model (every layer re-initialised, seeded).

With ``q`` the scores of an explainer on the images and ``q'`` under a perturbation, over the
explainers and the K draws (NR on the images whose prediction the perturbation left unchanged):

* IAC_NR = mean Wilcoxon signed-rank p between ``q`` and ``q'`` (high: unchanged);
* IAC_AR = mean ``1 - p`` (high: changed);
* IEC_NR = share of (image, rank position) where the explainers' ranking is the same;
* IEC_AR = share of (explainer, image) whose score got worse (in the metric's own direction);
* MC = the mean of the four, in [0, 1] (MetaQuantus' meta-consistency).

Metrics that re-run the explainer themselves (``needs=("explain",)``) are left out: a draw would
cost a randomisation cascade per explainer. Perturbed scores are cached per (stage, perturbation,
draw, explainer) like the run's units, so an interrupted meta-evaluation resumes. Maps given to
``bench.evaluate`` (``attributions=``) are left out too: three of the four perturbations re-explain.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from bench import metrics as M
from bench.core.errors import one_line
from bench.perf.floor import floor_seconds, metric_passes_per_image, passes_per_image
from bench.run import cache
from bench.run.config import RunConfig
from bench.run.plan import Planned
from bench.run.unit import Unit, content_key, explainer_code_digest, package_digest, precision_key, tensor_digest
from bench.stats.metaquantus import RAW_COLUMNS, consistency
from explainers import EXPLAINERS, Attribution, run_explainer, with_output_space

META_COLUMNS = ["model", "stage", "metric", "test", "n_images", "iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc"]
PERTURBATIONS = (("input", "nr"), ("input", "ar"), ("model", "nr"), ("model", "ar"))


def meta_metrics(cfg: RunConfig) -> list[str]:
    return [m for m in cfg.metrics.names if "explain" not in M.METRICS.get(m).meta.get("needs", ())]


def select(units: list[Unit], n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(positions, images, targets) of ``n`` of a stage's explained images, evenly spread over them
    (the images are in index order; the confusion cells interleave)."""
    images = torch.cat([u.images for u in units])
    targets = torch.cat([u.targets for u in units])
    pos = torch.as_tensor(np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)))
    return pos, images[pos], targets[pos]


def estimate(
    cfg: RunConfig, plan: list[Planned], pass_seconds: dict[str, dict[str, float]]
) -> tuple[int, float | None]:
    """(explainer and metric runs, floor seconds) the meta-evaluation will cost."""
    m = cfg.reliability.meta
    runs = 0
    total: float | None = 0.0
    seen = set()
    for p in plan:
        key = (p.stage.model_name, p.stage.stage, p.explainer)
        if p.stage.stage not in m.stages or key in seen or p.unit.given is not None:
            continue
        seen.add(key)
        t = pass_seconds[p.stage.model_name]
        e = passes_per_image(
            p.explainer,
            p.unit.params,
            p.unit.background.shape[0],
            shape=tuple(p.unit.images.shape[1:]),
            model=p.stage.model,
        )
        n = m.n_images * m.perturbations
        runs += 3 * m.perturbations + 4 * m.perturbations * len(meta_metrics(cfg))
        f = floor_seconds(e, t["forward_backward"], t["forward"])
        fm = [
            floor_seconds(
                metric_passes_per_image(x, cfg.metrics.params.get(x, {})), t["forward_backward"], t["forward"]
            )
            for x in meta_metrics(cfg)
        ]
        if total is None or f is None or any(v is None for v in fm):
            total = None
        else:
            total += n * (3 * f + 4 * sum(v for v in fm if v is not None))
    return runs, total


def run_meta(
    cfg: RunConfig, plan: list[Planned], results: list[dict[str, Any]], say: Callable[[str], None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The MetaQuantus table of the run (see the module docstring): one row per (model, stage, metric,
    test); and the per-draw scores it comes from (``meta_scores.csv``,
    :data:`bench.stats.metaquantus.RAW_COLUMNS`), from which ``bench report`` gives MC its interval."""
    m = cfg.reliability.meta
    rows = []
    raw_parts = []
    stages = sorted({(p.stage.model_name, p.stage.stage) for p in plan if p.stage.stage in m.stages})
    for model_name, stage in stages:
        members = [(p, r) for p, r in zip(plan, results) if (p.stage.model_name, p.stage.stage) == (model_name, stage)]
        # a map computed elsewhere cannot be re-explained under a perturbation: left out, like its given-map metrics
        explainers = sorted({p.explainer for p, _ in members if p.unit.given is None})
        if not explainers:
            say(f"  MetaQuantus {model_name} {stage}: skipped (only given maps, which cannot be re-explained)")
            continue
        units = {e: [p.unit for p, _ in members if p.explainer == e] for e in explainers}
        pos, images, targets = select(units[explainers[0]], m.n_images)
        q = _unperturbed(members, explainers, pos)
        if q is None:
            say(f"  MetaQuantus {model_name} {stage}: skipped (an explainer or metric failed on its images)")
            continue
        perturbed = {}
        for test, kind in PERTURBATIONS:
            for k in range(m.perturbations):
                for e in explainers:
                    perturbed[(test, kind, k, e)] = _perturbed(cfg, units[e][0], e, images, targets, test, kind, k, say)
        for metric in meta_metrics(cfg):
            hib = bool(M.METRICS.get(metric).meta["higher_is_better"])
            for test in ("input", "model"):
                raw = raw_scores(q, perturbed, explainers, metric, test, m.perturbations)
                raw.insert(0, "stage", stage)
                raw.insert(0, "model", model_name)
                raw_parts.append(raw)
                rows.append(
                    {
                        "model": model_name,
                        "stage": stage,
                        "metric": metric,
                        "test": test,
                        "n_images": len(pos),
                        **consistency(raw, hib),
                    }
                )
    raw = pd.concat(raw_parts, ignore_index=True) if raw_parts else pd.DataFrame(columns=RAW_COLUMNS)
    return pd.DataFrame(rows, columns=META_COLUMNS), raw[RAW_COLUMNS]


def _unperturbed(
    members: list[tuple[Planned, dict[str, Any]]], explainers: list[str], pos: Tensor
) -> dict[str, dict[str, np.ndarray]] | None:
    """{explainer: {metric: scores at the selected images}} from the run's own results."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for e in explainers:
        recs = [r for p, r in members if p.explainer == e]
        if any(r["status"] != "ok" for r in recs):
            return None
        out[e] = {
            metric: np.concatenate([np.asarray(r["metrics"][metric], dtype=np.float64) for r in recs])[pos.numpy()]
            for metric in recs[0]["metrics"]
        }
    return out


def _perturbed(
    cfg: RunConfig,
    unit: Unit,
    explainer: str,
    images: Tensor,
    targets: Tensor,
    test: str,
    kind: str,
    k: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Scores of every meta metric under one draw of one perturbation (cached)."""
    m = cfg.reliability.meta
    key = content_key(
        {
            "meta": 1,
            "ckpt": unit.stage.sha256,
            "explainer": explainer,
            "params": unit.params,
            "code": explainer_code_digest(EXPLAINERS.get(explainer).obj),
            "metrics_code": package_digest(M),
            "images": tensor_digest(images),
            "targets": targets.tolist(),
            "background": tensor_digest(unit.background),
            "test": test,
            "kind": kind,
            "k": k,
            "settings": {"input_noise": m.input_noise, "weight_noise": m.weight_noise},
            "seed": cfg.seed,
            "metrics": meta_metrics(cfg),
            "metric_params": cfg.metrics.params,
            "attribution": cfg.metrics.attribution,
            "output": cfg.explain.output,
            "device": unit.device.type,
            **precision_key(unit.precision),
        }
    )
    path = unit.attr_path.parent.parent / "meta" / f"{key}.json"
    cached = cache.load_record(path, lambda r: None, say)
    if cached is not None:
        return _floats(cached)
    record = _compute(cfg, unit, explainer, images, targets, test, kind, k)
    if record["status"] == "ok":  # failures are not cached
        cache.store_record(path, record)
    return _floats(record)


def _floats(record: dict[str, Any]) -> dict[str, Any]:
    record["scores"] = {
        k: np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        for k, vals in record["scores"].items()
    }
    return record


def _compute(
    cfg: RunConfig, unit: Unit, explainer: str, images: Tensor, targets: Tensor, test: str, kind: str, k: int
) -> dict[str, Any]:
    m = cfg.reliability.meta
    device = unit.device
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 10 * k + PERTURBATIONS.index((test, kind)))
    model = unit.stage.model
    x = images.to(device)
    y = targets.to(device)
    try:
        if test == "model":
            model = _perturbed_model(model, kind, m.weight_noise, gen)
        elif kind == "nr":
            lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
            hi = x.flatten(1).amax(1).view(-1, 1, 1, 1)
            x = x + m.input_noise * (hi - lo) * torch.randn(x.shape, generator=gen).to(device, x.dtype)
        with torch.no_grad():
            kept = (model(x).argmax(1) == unit.stage.model(images.to(device)).argmax(1)).cpu()
        torch.manual_seed(cfg.seed)
        explained = with_output_space(model, cfg.explain.output).eval()
        attr = run_explainer(explainer, explained, x, y, background=unit.background.to(device), **unit.params)
        if test == "input" and kind == "ar":  # the same images, each explanation's pixels shuffled
            attr = _shuffled(attr, gen)
        values = M.preprocess_attributions(attr.values, cfg.metrics.attribution)
        given = {"raw": attr, "preprocessed": Attribution(values, attr.outputs, attr.base_values)}
        context = M.MetricContext(additive=bool(EXPLAINERS.get(explainer).meta.get("additive", False)))
        scores = {}
        with torch.no_grad():
            for metric in meta_metrics(cfg):
                entry = M.METRICS.get(metric)
                if "masks" in entry.meta.get("needs", ()):
                    scores[metric] = [math.nan] * len(x)
                    continue
                res = M.compute_metric(
                    metric,
                    model,
                    x,
                    y,
                    given[entry.meta.get("reads", "preprocessed")],
                    context=context,
                    precision=unit.precision,
                    **cfg.metrics.params.get(metric, {}),
                )
                scores[metric] = [float(v) for v in res.scores.detach().float().cpu()]
        return {"status": "ok", "message": "", "kept": kept.tolist(), "scores": scores}
    except Exception as exc:  # recorded in the card as missing, the run goes on
        return {
            "status": "error",
            "message": one_line(f"{type(exc).__name__}: {exc}", 300),
            "kept": [],
            "scores": {metric: [math.nan] * len(images) for metric in meta_metrics(cfg)},
        }


def _perturbed_model(model: nn.Module, kind: str, noise: float, gen: torch.Generator) -> nn.Module:
    """NR: every parameter times 1 + N(0, noise^2); AR: every layer re-initialised. A copy, in eval mode."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        if kind == "nr":
            for p in out.parameters():
                p.mul_(1 + noise * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                for module in out.modules():
                    reset = getattr(module, "reset_parameters", None)
                    if callable(reset):
                        reset()
    return out


def _shuffled(attr: Attribution, gen: torch.Generator) -> Attribution:
    v = attr.values
    flat = v.flatten(1)
    perm = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(flat.shape[0])]).to(v.device)
    return Attribution(flat.gather(1, perm).view_as(v), attr.outputs, attr.base_values, attr.meta)


def raw_scores(
    q: dict[str, dict[str, np.ndarray]], perturbed: dict, explainers: list[str], metric: str, test: str, draws: int
) -> pd.DataFrame:
    """The long table of one metric and test: per kind, draw, explainer and image, the unperturbed and
    the perturbed score, whether the prediction was kept, and the draw's status."""
    rows = []
    for kind in ("nr", "ar"):
        for k in range(draws):
            for e in explainers:
                r = perturbed[(test, kind, k, e)]
                base = q[e][metric]
                new = r["scores"][metric]
                kept = r["kept"] if len(r["kept"]) == len(base) else [False] * len(base)
                rows += [
                    {
                        "metric": metric,
                        "test": test,
                        "kind": kind,
                        "draw": k,
                        "explainer": e,
                        "image": i,
                        "base": float(base[i]),
                        "new": float(new[i]),
                        "kept": bool(kept[i]),
                        "status": r["status"],
                    }
                    for i in range(len(base))
                ]
    return pd.DataFrame(rows, columns=RAW_COLUMNS[2:])
