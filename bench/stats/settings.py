"""The choices that change a verdict (``[stats]`` of the run config) and the declared test families.

Every p-value and every interval of the tables belongs to exactly one *family*: the set of
comparisons a multiplicity correction runs over. :data:`FAMILIES` declares them all, once; every
table names its family in a ``family`` column (and the Markdown says it in words). The family-wise
error rate is controlled at ``alpha`` within a family and **not** across families: two metrics,
two model-stages or two runs are separate families, so a reader comparing many tables should
expect some false positives among them (one in twenty tables at the default alpha).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

__all__ = ["DEFAULT_MARGINS", "FAMILIES", "StatsSettings", "family_label"]

# Equivalence margins (TOST) per metric kind, on each kind's own scale. A pair of explainers is
# "equivalent" only when the whole family-adjusted interval of their paired difference lies inside
# +-margin. The defaults are the smallest difference a user would act on:
DEFAULT_MARGINS: dict[str, float] = {
    "faithfulness": 0.02,  # AUCs and rates in [0, 1]: 2 points of deletion/insertion AUC
    "localisation": 0.02,  # shares in [0, 1]
    "randomisation": 0.05,  # a Spearman similarity in [-1, 1]
    "axiomatic": 0.01,  # additivity error in logits (exact methods ~1e-7, IG at 50 steps ~0.04)
    "complexity": 0.02,  # Gini / normalised entropy in [0, 1]
    "robustness": 0.02,  # relative sensitivity
    "similarity": 0.05,  # a Spearman similarity of two maps in [-1, 1] (the map-similarity tests)
    "default": 0.02,  # a metric registered without a kind
}

FAMILIES: dict[str, str] = {
    "table": "every pair of distinct explainers on one (model, stage, metric): leaderboard ranks and letters, "
    "comparisons.csv, the card's control separation",
    "pooled": "every pair of distinct explainers on one (architecture, stage, metric), pooled over training seeds "
    "(crossed image x seed estimator): leaderboard_pooled.csv, comparisons_pooled.csv",
    "substrate": "every pair of distinct explainers on one (model, stage, metric, substrate): the card's substrate "
    "control separation",
    "prepost": "every explainer x metric row of one model's pre-vs-post table (over all its post stages)",
    "prepost_by_cell": "every explainer x metric x cell row of one model's per-cell pre-vs-post table",
    "variants": "every row of one model's tuning-policy table (pairs of post stages x explainer x metric)",
    "similarity": "every row of one model's map-similarity tests (post stage x explainer x reference); the pooled "
    "rows of an architecture form their own family",
    "baseline_substrate": "every row of one model's baseline x substrate interaction table (stage x explainer pair x "
    "metric): baseline_substrate.csv",
}


def family_label(kind: str, *parts: str, size: int) -> str:
    """The ``family`` column: ``"table: resnet18 · pre · deletion_auc (m = 28)"``."""
    if kind not in FAMILIES:
        raise KeyError(f"unknown test family {kind!r}; declared: {sorted(FAMILIES)}")
    where = " · ".join(str(p) for p in parts)
    return f"{kind}: {where} (m = {size})" if where else f"{kind} (m = {size})"


@dataclass(frozen=True)
class StatsSettings:
    """``[stats]`` of the run config; every field is recorded in the manifest.

    * ``alpha``: family-wise error rate of every family (two-sided tests).
    * ``margins``: TOST equivalence margin per metric kind or per metric name (a name wins over
      its kind); unlisted kinds fall back to :data:`DEFAULT_MARGINS`.
    * ``effects``: the smallest effect of interest per metric or kind, declared before a run
      (``bench plan`` sizes n from it); unlisted ones fall back to the margin.
    * ``alias_rtol`` / ``alias_atol``: two explainers are aliases when every score of every image
      agrees within ``atol + rtol * max(|a|, |b|)`` (:mod:`bench.stats.aliases`).
    * ``draws``: Monte Carlo draws for P(top stays); ``bootstrap``: resamples of the descriptive
      and agreement intervals; ``seed``: every random draw of this package.
    """

    alpha: float = 0.05
    margins: Mapping[str, float] = field(default_factory=dict)
    effects: Mapping[str, float] = field(default_factory=dict)
    alias_rtol: float = 1e-6
    alias_atol: float = 1e-12
    draws: int = 20000
    bootstrap: int = 2000
    seed: int = 0

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> "StatsSettings":
        values = dict(values or {})
        keep = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("margins", "effects"):
            if key in keep:
                keep[key] = {str(k): float(v) for k, v in dict(keep[key]).items()}
        return cls(**keep)

    def margin(self, metric: str, kind: str | None) -> float:
        """The equivalence margin of ``metric`` (of registered ``kind``)."""
        if metric in self.margins:
            return float(self.margins[metric])
        key = kind if kind is not None else "default"
        if key in self.margins:
            return float(self.margins[key])
        return DEFAULT_MARGINS.get(key, DEFAULT_MARGINS["default"])

    def effect(self, metric: str, kind: str | None) -> float:
        """The smallest effect of interest of ``metric`` (declared, else its equivalence margin)."""
        for key in (metric, kind if kind is not None else "default"):
            if key in self.effects:
                return float(self.effects[key])
        return self.margin(metric, kind)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "margins": {**DEFAULT_MARGINS, **dict(self.margins)}}
