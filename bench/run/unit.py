"""One unit of work: a checkpoint, an explainer with its parameters, a shard of images.

A unit explains its images (the attribution record) and then scores them with every configured
metric (the score record). :meth:`Unit.compute` does both without touching a file, so it can run
in another process (the Ray executor); :mod:`bench.run.cache` stores the two records under the
unit's content keys, :attr:`Unit.attr_key` and :attr:`Unit.score_key`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

import explainers
import models
from bench import metrics as M
from bench.core.errors import BenchError, one_line
from bench.core.io import json_digest, source_digest
from bench.core.precision import DEFAULT_PRECISION
from bench.perf.profiling import measure_peak_memory
from bench.run.config import RunConfig
from explainers import EXPLAINERS, Attribution, run_explainer, with_output_space

CACHE_VERSION = 1
# why a metric that re-runs the explainer (needs=("explain",)) has no score for a map computed elsewhere
FIXED_MAP = "a given map cannot be re-explained (this metric re-runs the explainer on other models or inputs)"


@dataclass
class Stage:
    """One checkpoint to explain: a model at a stage (pre = trained, post or post:<variant> = tuned).

    ``model_name`` is the label of the tables (``arch``, or ``arch@seed<k>`` with several training
    seeds); ``arch`` the registered model, ``seed`` its training seed.
    """

    model_name: str
    stage: str
    path: Path
    sha256: str
    sidecar: dict[str, Any]
    model: nn.Module = field(repr=False)
    arch: str = ""
    seed: int = 0


def content_key(obj: Any) -> str:
    return json_digest(obj)[:24]


def package_digest(*packages: ModuleType, extra: str = "") -> str:
    """Hash of every module file of the given in-repo packages (and their subpackages) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for package in packages:
        root = Path(typing.cast(str, package.__file__)).parent  # a package, not a namespace: it has a file
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def explainer_code_digest(obj: Any) -> str:
    """:func:`source_digest` of an adapter plus every module of the in-repo ``explainers`` and
    ``models`` packages: an adapter's values also depend on the helpers it calls (the batched
    engines in explainers/rescale.py and explainers/expected_gradients.py, explainers/base.py,
    models/safety.py), so a change there invalidates cached attributions too."""
    return package_digest(explainers, models, extra=source_digest(obj))


def _scored(cfg: RunConfig) -> dict[str, Any] | None:
    """What of ``[reliability]`` changes a unit's score record (the substrate sensitivity)."""
    r = cfg.reliability
    return {"substrates": r.substrates, "imputation": r.imputation} if r.enabled else None


def precision_key(precision: str) -> dict[str, str]:
    """The scoring precision's part of a content key: nothing for the default float32, so the score
    records of runs from before the setting existed keep their keys."""
    return {} if precision == DEFAULT_PRECISION else {"precision": precision}


def tensor_digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def failed_attribution(message: str) -> dict[str, Any]:
    """The attribution record of an explainer that raised: its one-line message, no values and no
    timing (the time to a failure says nothing about a method's cost, and a re-run of a
    deterministic failure then rewrites identical tables)."""
    return {
        "status": "error",
        "message": one_line(message, 240),
        "seconds": math.nan,
        "peak_mem_mb": math.nan,
        "values": None,
        "outputs": None,
        "base_values": None,
        "meta": "{}",
    }


class Unit:
    """(checkpoint, explainer + params, shard): attributions, then metric scores."""

    def __init__(
        self,
        cfg: RunConfig,
        stage: Stage,
        explainer: str,
        params: dict,
        fingerprint: str,
        index: Tensor,
        images: Tensor,
        labels: Tensor,
        targets: Tensor,
        masks: Tensor | None,
        background: Tensor,
        device: torch.device,
        run_dir: Path,
        *,
        scored: bool = True,
        given: Tensor | None = None,
    ) -> None:
        self.cfg, self.stage, self.explainer, self.params, self.scored = cfg, stage, explainer, params, scored
        self.given = given  # (B, C, H, W): a map computed elsewhere (bench.evaluate's attributions), not explained
        self.metric_names = list(cfg.metrics.names) if scored else []  # a reference unit only explains
        self.index, self.labels, self.targets, self.masks = index, labels, targets, masks
        self.images, self.background, self.device = images, background, device
        self.attr_key = content_key(
            {
                "v": CACHE_VERSION,
                "ckpt": stage.sha256,
                "explainer": explainer,
                "params": params,
                "code": explainer_code_digest(EXPLAINERS.get(explainer).obj)
                if given is None
                else {"given map": tensor_digest(given)},
                "output": cfg.explain.output,
                "data": fingerprint,
                "index": index.tolist(),
                "targets": targets.tolist(),
                "background": tensor_digest(background),
                "seed": cfg.seed,
                "device": device.type,
            }
        )
        metric_code = {n: source_digest(M.METRICS.get(n).obj) for n in self.metric_names}  # plug-ins too
        self.precision = cfg.metrics.precision
        self.score_key = content_key(
            {
                "attr": self.attr_key,
                "metrics": self.metric_names,
                "code": package_digest(M, extra=json.dumps(metric_code, sort_keys=True)),
                "params": cfg.metrics.params,
                "attribution": cfg.metrics.attribution,
                "curves": cfg.metrics.curves,
                "reliability": _scored(cfg) if scored else None,
                **precision_key(self.precision),
            }
        )
        self.attr_path = run_dir / "cache" / "attributions" / f"{self.attr_key}.pt"
        self.score_path = run_dir / "cache" / "scores" / f"{self.score_key}.json"

    def __len__(self) -> int:
        return len(self.index)

    def compute(self, attr: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(attribution record, score record): explains unless ``attr`` is given, then scores.
        No file I/O, so it can run in another process (the Ray executor)."""
        if attr is None:
            attr = self.explain()
        return attr, self.score(attr)

    def explain(self) -> dict[str, Any]:
        """The attribution record: values, outputs and base values on the CPU, seconds, peak memory
        (a given map: its values, no model call, no time)."""
        if self.given is not None:
            return {
                "status": "ok",
                "message": "",
                "seconds": 0.0,
                "peak_mem_mb": 0.0,
                "values": self.given.float(),
                "outputs": None,
                "base_values": None,
                "meta": json.dumps({"given": True}),
            }
        model = with_output_space(self.stage.model, self.cfg.explain.output).eval()
        x, y = self.images.to(self.device), self.targets.to(self.device)
        bg = self.background.to(self.device)
        torch.manual_seed(self.cfg.seed)
        t0 = time.perf_counter()
        try:
            with measure_peak_memory(self.device) as mem:
                t0 = time.perf_counter()  # after the memory baseline is taken (gc, malloc_trim)
                attr = run_explainer(self.explainer, model, x, y, background=bg, **self.params)
                seconds = time.perf_counter() - t0
        except Exception as exc:  # recorded in one short line, the run goes on
            return failed_attribution(models.hook_failure(exc) or f"{type(exc).__name__}: {exc}")
        return {
            "status": "ok",
            "message": "",
            "seconds": seconds,
            "peak_mem_mb": mem.peak_mb,
            "values": attr.values.detach().float().cpu(),
            "outputs": None if attr.outputs is None else attr.outputs.detach().float().cpu(),
            "base_values": None if attr.base_values is None else attr.base_values.detach().float().cpu(),
            "meta": json.dumps(attr.meta, default=str),
        }

    def score(self, attr: dict[str, Any]) -> dict[str, Any]:
        """The score record: per metric one value and status per image, and the metrics' curves."""
        t0 = time.perf_counter()
        n = len(self.index)
        out = {
            "status": attr["status"],
            "message": attr["message"],
            "seconds_per_image": attr["seconds"] / n,
            "peak_mem_mb": attr["peak_mem_mb"],
            "metrics": {},
            "metric_status": {},
            "curves": {},
            "metric_seconds": {},
        }
        if attr["status"] != "ok":  # every metric of a failed explainer carries its error
            for name in self.metric_names:
                out["metrics"][name] = [math.nan] * n
                out["metric_status"][name] = ["error: " + attr["message"]] * n
            out["score_seconds"] = time.perf_counter() - t0
            return out
        outputs = None if attr["outputs"] is None else attr["outputs"].to(self.device)
        base_values = None if attr["base_values"] is None else attr["base_values"].to(self.device)
        raw_values = attr["values"].to(self.device)
        given = {
            "raw": Attribution(raw_values, outputs, base_values),
            "preprocessed": Attribution(
                M.preprocess_attributions(raw_values, self.cfg.metrics.attribution), outputs, base_values
            ),
        }
        fixed = self.given is not None
        additive = not fixed and bool(EXPLAINERS.get(self.explainer).meta.get("additive", False))
        context = M.MetricContext(
            masks=None if self.masks is None else self.masks.to(self.device),
            explain=None if fixed else self.explain_on,
            additive=additive,
        )
        results: dict[str, M.MetricResult] = {}
        for name in self.metric_names:
            t_metric = time.perf_counter()
            if fixed and "explain" in M.METRICS.get(name).meta.get("needs", ()):
                out["metrics"][name] = [math.nan] * n
                out["metric_status"][name] = [f"n/a: {FIXED_MAP}"] * n
                out["metric_seconds"][name] = 0.0
                continue
            try:
                res = results[name] = self._metric(name, {}, given, context)
                vals = [float(f) for f in res.scores.detach().float().cpu()]
                out["metrics"][name] = vals
                out["metric_status"][name] = ["ok" if math.isfinite(f) else "n/a" for f in vals]
                if self.cfg.metrics.curves:
                    for curve, c in sorted(res.curves.items()):
                        if curve in out["curves"]:
                            raise BenchError(
                                f"two metrics return a curve named {curve!r}; a curve name must be "
                                f"unique among the run's metrics"
                            )
                        out["curves"][curve] = {
                            "fractions": [float(f) for f in c.x],
                            "probs": c.y.detach().float().cpu().tolist(),
                        }
            except Exception as exc:
                out["metrics"][name] = [math.nan] * n
                out["metric_status"][name] = ["error: " + one_line(f"{type(exc).__name__}: {exc}", 300)] * n
            out["metric_seconds"][name] = time.perf_counter() - t_metric
        if self.cfg.reliability.enabled and self.scored:
            t_sub = time.perf_counter()
            try:
                out["substrates"], out["substrate_curves"] = self._substrates(results, given, context)
            except Exception as exc:  # recorded (and not cached: retried), the run goes on
                out["substrates"], out["substrate_curves"] = {}, {}
                out["substrates_error"] = one_line(f"{type(exc).__name__}: {exc}", 300)
            out["metric_seconds"]["(substrates)"] = time.perf_counter() - t_sub
        out["score_seconds"] = time.perf_counter() - t0
        return out

    def _metric(
        self, name: str, extra: dict[str, Any], given: dict[str, Attribution], context: M.MetricContext
    ) -> M.MetricResult:
        """One metric with the run's parameters (and ``extra`` over them) on this unit's images."""
        entry = M.METRICS.get(name)
        params = {**self.cfg.metrics.params.get(name, {}), **extra}
        # metrics that re-run the explainer need gradients; the others never do
        with contextlib.nullcontext() if "explain" in entry.meta.get("needs", ()) else torch.no_grad():
            return M.compute_metric(
                name,
                self.stage.model,
                self.images.to(self.device),
                self.targets.to(self.device),
                given[entry.meta.get("reads", "preprocessed")],
                context=context,
                precision=self.precision,
                **params,
            )

    def _substrates(
        self, results: dict[str, M.MetricResult], given: dict[str, Attribution], context: M.MetricContext
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Substrate sensitivity (the reliability card): every metric of the run that has a
        ``substrate`` parameter, scored with each substrate of ``reliability.substrates`` (the
        run's own substrate reuses its scores) and, with ``reliability.imputation``, by the metrics
        registered with ``imputes_for`` it (ROAD's noisy linear imputation beside deletion), their
        values oriented like the metric's. Returns ({metric: {substrate: {values, status}}},
        {curve: {"fractions": {substrate: [...]}, "probs": {substrate: (n, T)}}})."""
        rel = self.cfg.reliability
        scores: dict[str, Any] = {"(computed)": []}  # the extra metric runs, for the cost floor
        curves: dict[str, Any] = {}

        def run(metric: str, extra: dict[str, Any]) -> M.MetricResult:
            scores["(computed)"].append(metric)
            return self._metric(metric, extra, given, context)

        def keep(metric: str, substrate: str, res: M.MetricResult, sign: float = 1.0) -> None:
            vals = [sign * float(f) for f in res.scores.detach().float().cpu()]
            scores.setdefault(metric, {})[substrate] = {
                "values": vals,
                "status": ["ok" if math.isfinite(f) else "n/a" for f in vals],
            }
            main = sorted(results[metric].curves)
            for c in res.curves.values():  # one curve per metric: filed under the metric's own curve name
                if len(main) == 1:
                    entry = curves.setdefault(main[0], {"fractions": {}, "probs": {}})
                    entry["fractions"][substrate] = [float(f) for f in c.x]
                    entry["probs"][substrate] = c.y.detach().float().cpu().tolist()

        for metric, res in results.items():
            params = M.metric_params(metric)
            if "substrate" not in params:
                continue
            own = self.cfg.metrics.params.get(metric, {}).get("substrate", params["substrate"])
            for sub in rel.substrates:
                keep(metric, sub, res if sub == own else run(metric, {"substrate": sub}))
            if rel.imputation:
                hib = M.METRICS.get(metric).meta["higher_is_better"]
                for other in M.METRICS.entries():
                    if metric in other.meta.get("imputes_for", ()):
                        r = results.get(other.name) or run(other.name, {})
                        keep(metric, "imputation", r, 1.0 if other.meta["higher_is_better"] == hib else -1.0)
        return scores, curves

    def explain_on(self, other: nn.Module, inputs: Tensor | None = None) -> Tensor:
        """Re-run this unit's explainer on another model (randomisation metrics) and/or on other
        inputs in place of the unit's images (robustness metrics: perturbed images), with the same
        targets, background, parameters and seed."""
        model = with_output_space(other, self.cfg.explain.output).eval()
        x = self.images.to(self.device) if inputs is None else inputs
        torch.manual_seed(self.cfg.seed)
        return run_explainer(
            self.explainer,
            model,
            x,
            self.targets.to(self.device),
            background=self.background.to(self.device),
            **self.params,
        ).values
