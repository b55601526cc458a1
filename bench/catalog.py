"""Text listings of the registries for ``python -m bench list``."""
from __future__ import annotations


def _registry(kind: str):
    if kind == "models":
        import models

        return models.MODELS
    if kind == "datasets":
        import datasets

        return datasets.DATASETS
    if kind == "explainers":
        import explainers

        return explainers.EXPLAINERS
    if kind == "metrics":
        from bench import metrics

        return metrics.METRICS
    raise ValueError(kind)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def describe(kind: str) -> str:
    """One block per registry: name, metadata flags and parameters with their defaults."""
    reg = _registry(kind)
    lines = [f"{kind} ({len(reg)}):"]
    for e in reg.entries():
        meta = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(e.meta.items()))
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in e.params().items())
        doc = (getattr(e.obj, "__doc__", None) or "").strip().splitlines()
        lines.append(f"  {e.name:<30} {doc[0] if doc else ''}")
        if meta:
            lines.append(f"  {'':<30} [{meta}]")
        if params:
            lines.append(f"  {'':<30} params: {params}")
    return "\n".join(lines)
