"""The run configuration: TOML over defaults, ``--set`` overrides, validation against the registries.

Every key a config may have is in :data:`DEFAULTS`; tables whose keys come from a registry
(``[data.options]`` from the dataset's loader, ``[explain.params.NAME]`` from an adapter,
``[metrics.params.NAME]`` from a metric, ``[train]`` / ``[tune]`` from the recipes) are checked
against what is registered, so a new dataset, explainer or metric needs no edit here.
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import explainers
import models
from bench import metrics
from bench.core.device import DEVICES
from bench.core.errors import BenchError
from models.training import TrainConfig, TuneConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quick.toml"

# every key a run config may have, with its default; nested tables are dicts
DEFAULTS: dict[str, Any] = {
    "name": "quick",
    "seed": 0,
    "device": "auto",
    "results_dir": "results",
    "checkpoint_dir": "results/checkpoints",
    "data": {
        "dataset": "pneumoniamnist",
        "options": {},            # the dataset loader's keyword options, e.g. size, data_file (bench list datasets)
        "split": "test",
        "sample": "per_cell",     # per_cell | all
        "per_cell": 4,            # images per confusion cell (TP/FP/FN/TN) when sample = per_cell
        "background_size": 32,    # reference images drawn (seeded) from the train split
    },
    "models": {"names": ["resnet18"], "stages": ["pre", "post"]},
    "train": {},                  # TrainConfig fields (models.training)
    "tune": {},                   # TuneConfig fields
    "explain": {
        "names": ["shap.gradient", "shap.partition", "shap.deep", "captum.integrated_gradients", "random", "edge"],
        "output": "logit",        # logit | probability: the explained scalar's space
        "target": "predicted",    # predicted | label
        "shard_size": 8,          # images per cached unit of work
        "params": {},             # {explainer name: {param: value}}
    },
    "metrics": {
        "names": ["drop_rate", "increase_rate", "deletion_auc", "insertion_auc", "additivity_error"],
        "attribution": "signed",  # signed | abs | positive: one explicit preprocessing step before metrics
        "params": {},             # {metric name: {param: value}}
        "curves": True,           # store the curves of the curve metrics (deletion, insertion, ROAD)
    },
    "figures": {"enabled": True, "examples_per_cell": 1},
}

CHOICES = {
    ("data", "sample"): ("per_cell", "all"),
    ("explain", "output"): ("logit", "probability"),
    ("explain", "target"): ("predicted", "label"),
    ("metrics", "attribution"): ("signed", "abs", "positive"),
}
FREE_TABLES = {("data", "options"), ("train",), ("tune",), ("explain", "params"), ("metrics", "params")}


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (a nested dict with the DEFAULTS' shape) and where it came from."""

    values: dict[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (numbers, booleans, ["lists"], "strings"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply ``key.sub=value`` in place; unknown keys are caught by :func:`validate`."""
    if "=" not in assignment:
        raise BenchError(f"--set {assignment!r} is not KEY=VALUE; e.g. --set data.per_cell=2")
    key, text = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BenchError(f"--set {assignment!r} has an empty key; e.g. --set data.per_cell=2")
    node = values
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise BenchError(f"--set {key}: {p!r} is a value, not a table")
    node[parts[-1]] = parse_value(text.strip())


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML config over the DEFAULTS, apply ``--set`` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise BenchError(f"config file {path} not found; pass --config with an existing TOML file "
                         f"(shipped: {', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.toml')))})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from exc
    values = _merge(copy.deepcopy(DEFAULTS), raw, ())
    for o in overrides:
        apply_override(values, o)
    values = _merge(copy.deepcopy(DEFAULTS), values, ())
    validate(values)
    return RunConfig(values=values, source=str(path))


def _merge(base: dict[str, Any], new: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    """Overlay ``new`` on ``base``; keys must exist in ``base`` except inside FREE_TABLES."""
    for key, value in new.items():
        here = where + (key,)
        if here in FREE_TABLES:
            if not isinstance(value, dict):
                raise BenchError(f"config key {'.'.join(here)!r} must be a table, got {value!r}")
            base[key] = {**base.get(key, {}), **copy.deepcopy(value)}
            continue
        if key not in base:
            known = ", ".join(sorted(base))
            raise BenchError(f"unknown config key {'.'.join(here)!r}; known keys here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise BenchError(f"config key {'.'.join(here)!r} must be a table, got {value!r}")
            base[key] = _merge(base[key], value, here)
        else:
            base[key] = value
    return base


def _expect(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise BenchError(f"config value {key}: {message}")


def validate(v: dict[str, Any]) -> None:
    """Types, ranges, choices and registered names; every problem is a one-line BenchError."""
    for (table, key), choices in CHOICES.items():
        _expect(v[table][key] in choices, f"{table}.{key}", f"{v[table][key]!r} is not one of {', '.join(choices)}")
    _expect(isinstance(v["name"], str) and v["name"] and "/" not in v["name"], "name", "must be a plain non-empty name")
    _expect(isinstance(v["seed"], int), "seed", "must be an integer")
    _expect(v["device"] in DEVICES or str(v["device"]).startswith("cuda:"), "device",
            f"{v['device']!r} is not one of {', '.join(DEVICES)}")
    d = v["data"]
    for key in ("per_cell", "background_size"):
        _expect(isinstance(d[key], int) and d[key] >= 1, f"data.{key}", f"must be an integer >= 1, got {d[key]!r}")
    _expect(d["split"] in ("train", "val", "test"), "data.split", "must be train, val or test")
    e = v["explain"]
    _expect(isinstance(e["shard_size"], int) and e["shard_size"] >= 1, "explain.shard_size", "must be an integer >= 1")
    _expect(set(v["models"]["stages"]) <= {"pre", "post"} and len(v["models"]["stages"]) > 0 and
            v["models"]["stages"][0] == "pre", "models.stages", 'must be ["pre"] or ["pre", "post"]')
    for key in ("models.names", "explain.names", "metrics.names"):
        names = _get(v, key)
        _expect(isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names), key,
                "must be a non-empty list of names")
        _expect(len(set(names)) == len(names), key, "lists a name twice")
    _check_names(v)


def _get(v: dict[str, Any], dotted: str) -> Any:
    for p in dotted.split("."):
        v = v[p]
    return v


def _check_names(v: dict[str, Any]) -> None:
    """Names must be registered; options and parameters must exist (the registries are the source)."""
    d = v["data"]
    known = datasets.dataset_options(d["dataset"])  # unknown dataset names raise with the known ones
    for key in d["options"]:
        _expect(key in known, f"data.options.{key}",
                f"dataset {d['dataset']!r} has no option {key!r}; its options: {', '.join(known) or '(none)'}")
    for n in v["models"]["names"]:
        models.MODELS.get(n)
    for table, names, params, params_of in (("explain", v["explain"]["names"], v["explain"]["params"],
                                             explainers.explainer_params),
                                            ("metrics", v["metrics"]["names"], v["metrics"]["params"],
                                             metrics.metric_params)):
        for n in names:
            params_of(n)
        for n, p in params.items():
            valid = params_of(n)
            _expect(isinstance(p, dict), f"{table}.params.{n}", "must be a table of parameter = value")
            for key in p:
                _expect(key in valid, f"{table}.params.{n}.{key}",
                        f"{n} has no parameter {key!r}; its parameters: {', '.join(valid) or '(none)'}")
    for table, cls in (("train", TrainConfig), ("tune", TuneConfig)):
        names = {f.name for f in fields(cls)}
        for key in v[table]:
            _expect(key in names, f"{table}.{key}", f"unknown recipe field; known: {', '.join(sorted(names))}")
