"""The run configuration: TOML over defaults, ``--set`` overrides, validation against the registries.

Every key a config may have is in :data:`DEFAULTS`; tables whose keys come from a registry
(``[data.options]`` from the dataset's loader, ``[explain.params.NAME]`` from an adapter,
``[metrics.params.NAME]`` from a metric, ``[train]`` / ``[tune]`` from the recipes) are checked
against what is registered, so a new dataset, explainer or metric needs no edit here.
"""
from __future__ import annotations

import copy
import re
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import explainers
import models
from bench import metrics
from bench.core.device import DEVICES
from bench.core.errors import BenchError, did_you_mean
from bench.core.io import read_regular
from bench.core.params import SEED_RANGE, is_seed, type_problem
from bench.stats.settings import DEFAULT_MARGINS
from models.training import TrainConfig, TuneConfig, check_unfreeze
from models.user import UserModelSpec

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quick.toml"

# every key a run config may have, with its default; nested tables are dicts
DEFAULTS: dict[str, Any] = {
    "name": "quick",
    "seed": 0,
    "device": "auto",
    "results_dir": "results",
    "checkpoint_dir": "",         # "" = <results_dir>/checkpoints
    "data": {
        "dataset": "pneumoniamnist",
        "options": {},            # the dataset loader's keyword options, e.g. size, data_file (bench list datasets)
        "split": "test",
        "sample": "per_cell",     # per_cell | all
        "per_cell": 4,            # images per confusion cell (TP/FP/FN/TN) when sample = per_cell
        "background_size": 32,    # reference images drawn (seeded) from the train split
    },
    "models": {"names": ["resnet18"], "stages": ["pre", "post"],
               "seeds": [],           # training seeds, each its own checkpoints ([] = train.seed alone)
               "user": {}},           # {name: {factory, kwargs, checkpoint, convert}}: your own models (models/user.py)
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
    "report": {                   # how report.html shows the run (not what it computes: left out of the run's identity)
        "self_contained": True,   # true: one file, figures embedded; false: links figures/*.png and long tables' CSVs
    },
    "stats": {                    # how the tables decide (bench/stats; what they show, not what the run computes: left
                                  # out of the run's identity, so changing it re-uses the cache)
        "margins": {},            # TOST equivalence margin per metric or metric kind, e.g. {faithfulness = 0.02}
        "effects": {},            # smallest effect of interest per metric or kind, for `bench plan` (n before the run)
        "alias_rtol": 1e-6,       # two explainers are aliases when every score agrees within atol + rtol * |value|
        "alias_atol": 1e-12,
        "draws": 20000,           # Monte Carlo draws of the max-T null and of P(top stays)
        "seed": 0,
    },
    "truth": {                    # `bench truth`: the model-truth test on `marked` data (bench/run/truth.py); one
                                  # sub-run per (polarity, condition), so left out of each run's identity
        "conditions": ["none", "confound", "noise"],  # training conditions of the marked data (datasets/marked.py)
        "polarities": ["bright"],  # marker polarities, each with every condition
        "reliance_margin": 0.05,  # |p(class 1) with - without marker| below which a model does not use it
        "share_margin": 0.25,     # mask_share difference (area-relative units) inside which explainers "do not react"
        "bootstrap": 1000,        # image resamples of the AUROC, correlation and tau intervals
    },
    "reliability": {              # the reliability card (bench/report/reliability.py), next to every leaderboard
        "enabled": True,
        "controls": ["random", "edge"],
        "alpha": 0.05,            # family-wise error rate of every test family (bench.stats.settings.FAMILIES)
        "power": 0.8,             # for the smallest detectable difference and the n needed
        "splits": 100,            # random halves per split-half estimate
        "bootstrap": 1000,        # resamples of the alpha and split-half CIs
        "seed": 0,
        "substrates": ["zero", "mean", "blur", "noise"],  # substrate sensitivity (re-scores; [] = off)
        "imputation": True,       # and the metrics that impute for one (ROAD beside deletion)
        "meta": {                 # MetaQuantus noise resilience / adversary reactivity: re-explains
            "enabled": False,
            "n_images": 8,        # explained images it uses (spread over the confusion cells)
            "perturbations": 3,   # K draws of each perturbation
            "input_noise": 0.001, # std of Gaussian noise on inputs, x the image's value range (MetaQuantus)
            "weight_noise": 0.001,  # std of multiplicative Gaussian noise on weights (MetaQuantus)
            "stages": ["pre"],
        },
    },
}

CHOICES = {
    ("data", "sample"): ("per_cell", "all"),
    ("explain", "output"): ("logit", "probability"),
    ("explain", "target"): ("predicted", "label"),
    ("metrics", "attribution"): ("signed", "abs", "positive"),
}
FREE_TABLES = {("data", "options"), ("train",), ("tune",), ("explain", "params"), ("metrics", "params"),
               ("stats", "margins"), ("stats", "effects"),
               ("models", "user")}


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


def parse_value(text: str, what: str = "value") -> Any:
    """A TOML value (numbers, booleans, "strings", [lists], {inline = "tables"}); anything else
    is a one-line error saying so (a bare word is not silently taken for a string)."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{what} {text!r} is not a TOML value ({exc}); strings need quotes, e.g. "
                         f"\"name\" or '\"shap.deep\"' in the shell") from None
    if set(parsed) != {"v"}:  # "1\nname = 'x'": a second assignment on another line
        raise BenchError(f"{what} {text!r} holds more than one value (a line break and another KEY=VALUE); give "
                         f"each value its own --set")
    return parsed["v"]


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply ``--set KEY=VALUE`` in place: KEY is a TOML key (dotted; quote a name that has dots,
    ``explain.params."shap.partition".max_evals``), VALUE a TOML value. Unknown keys are caught by
    :func:`validate`."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise BenchError(f"--set {assignment!r} is not KEY=VALUE; e.g. --set data.per_cell=2")
    try:
        path = _key_path(tomllib.loads(f"{key.strip()} = 0"))
    except tomllib.TOMLDecodeError:
        raise BenchError(f"--set {assignment!r}: {key.strip()!r} is not a TOML key; quote a name that has dots, "
                         f"e.g. --set 'explain.params.\"shap.partition\".max_evals=100'") from None
    value = parse_value(text.strip(), f"--set {key.strip()}:")
    node = values
    for p in path[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise BenchError(f"--set {key.strip()}: {p!r} is a value, not a table")
    node[path[-1]] = value


def _key_path(parsed: dict[str, Any]) -> list[str]:
    """The keys of ``{a: {b: {c: 0}}}``: ``["a", "b", "c"]``."""
    path: list[str] = []
    node: Any = parsed
    while isinstance(node, dict):
        (k, node), = node.items()
        path.append(k)
    return path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML config over the DEFAULTS, apply ``--set`` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise BenchError(f"config file {path} not found; pass --config with an existing TOML file "
                         f"(shipped: {', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.toml')))})")
    try:
        text = read_regular(path, follow=True).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                         f"(TOML files are UTF-8)") from None
    try:
        raw = tomllib.loads(text)
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
            raise BenchError(f"unknown config key {'.'.join(here)!r}{did_you_mean(key, base)}; known keys here: {known}")
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # a TOML true is not the number 1


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_NAME = 100  # characters: a folder name, and part of the names of the files made from it


def is_plain_name(name: Any) -> bool:
    """One plain folder name: letters, digits, ``._+-``, not starting with a dot, at most
    :data:`MAX_NAME` characters (so never ``.``, ``..``, a path, a line break or empty)."""
    return isinstance(name, str) and len(name) <= MAX_NAME and NAME.fullmatch(name) is not None


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, a long string cut to its start and its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit // 2]!r}… ({len(value)} characters)"
    return repr(value)


def check_name(name: Any, key: str = "name") -> None:
    """A run name is one plain folder name (:func:`is_plain_name`)."""
    _expect(is_plain_name(name), key,
            f"{shown(name)} is not a plain folder name (letters, digits and ._+- , not starting with a dot, at most "
            f"{MAX_NAME} characters; no path separators); choose e.g. --name my-run")


def validate(v: dict[str, Any]) -> None:
    """Types, ranges, choices and registered names; every problem is a one-line BenchError."""
    for (table, key), choices in CHOICES.items():
        _expect(v[table][key] in choices, f"{table}.{key}", f"{v[table][key]!r} is not one of {', '.join(choices)}")
    check_name(v["name"])
    _expect(is_seed(v["seed"]), "seed", f"must be an integer {SEED_RANGE}, got {v['seed']!r}")
    _expect(v["device"] in DEVICES or str(v["device"]).startswith("cuda:"), "device",
            f"{v['device']!r} is not one of {', '.join(DEVICES)}")
    for key in ("results_dir", "checkpoint_dir"):
        _expect(isinstance(v[key], str) and (key == "checkpoint_dir" or v[key]), key,
                "must be a folder path (a string)" + ("" if key == "results_dir" else
                                                      '; "" = <results_dir>/checkpoints'))
    d = v["data"]
    for key in ("per_cell", "background_size"):
        _expect(_is_int(d[key]) and d[key] >= 1, f"data.{key}", f"must be an integer >= 1, got {d[key]!r}")
    _expect(d["split"] in ("train", "val", "test"), "data.split", "must be train, val or test")
    e = v["explain"]
    _expect(_is_int(e["shard_size"]) and e["shard_size"] >= 1, "explain.shard_size",
            f"must be an integer >= 1, got {e['shard_size']!r}")
    f = v["figures"]
    _expect(isinstance(f["enabled"], bool), "figures.enabled", f"must be true or false, got {f['enabled']!r}")
    _expect(_is_int(f["examples_per_cell"]) and f["examples_per_cell"] >= 0, "figures.examples_per_cell",
            f"must be an integer >= 0, got {f['examples_per_cell']!r}")
    _expect(isinstance(v["report"]["self_contained"], bool), "report.self_contained",
            f"must be true or false, got {v['report']['self_contained']!r}")
    _check_reliability(v["reliability"])
    _check_stats(v["stats"])
    _check_truth(v["truth"])
    _expect(isinstance(v["metrics"]["curves"], bool), "metrics.curves",
            f"must be true or false, got {v['metrics']['curves']!r}")
    stages = v["models"]["stages"]
    _expect(isinstance(stages, list) and stages in (["pre"], ["pre", "post"]), "models.stages",
            f'must be ["pre"] or ["pre", "post"], got {stages!r}')
    seeds = v["models"]["seeds"]
    _expect(isinstance(seeds, list) and all(is_seed(s) for s in seeds) and len(set(seeds)) == len(seeds),
            "models.seeds", f"must be a list of distinct integers {SEED_RANGE}, got {seeds!r}")
    for key in ("models.names", "explain.names", "metrics.names"):
        names = _get(v, key)
        _expect(isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names), key,
                "must be a non-empty list of names")
        _expect(len(set(names)) == len(names), key, "lists a name twice")
    users = [n for n in v["models"]["names"] if n in v["models"]["user"]]
    user = users[0] if users else ""
    _expect(not users or "post" not in stages, "models.stages",
            f'{user!r} is a user model ([models.user.{user}]); tuning (the "post" stage) applies only to models '
            f'pneumobench trains: set models.stages = ["pre"]')
    _check_names(v)


def _check_reliability(r: dict[str, Any]) -> None:
    for key in ("enabled", "imputation"):
        _expect(isinstance(r[key], bool), f"reliability.{key}", f"must be true or false, got {r[key]!r}")
    _expect(isinstance(r["controls"], list) and all(isinstance(c, str) for c in r["controls"]), "reliability.controls",
            "must be a list of explainer names")
    for key in ("alpha", "power"):
        _expect(isinstance(r[key], float) and 0 < r[key] < 1, f"reliability.{key}", f"must be in (0, 1), got {r[key]!r}")
    for key in ("splits", "bootstrap"):
        _expect(_is_int(r[key]) and r[key] >= 10, f"reliability.{key}", f"must be an integer >= 10, got {r[key]!r}")
    _expect(is_seed(r["seed"]), "reliability.seed", f"must be an integer {SEED_RANGE}, got {r['seed']!r}")
    _expect(isinstance(r["substrates"], list) and set(r["substrates"]) <= set(metrics.SUBSTRATES)
            and len(set(r["substrates"])) == len(r["substrates"]), "reliability.substrates",
            f"must be a list of distinct substrates out of {', '.join(metrics.SUBSTRATES)}, got {r['substrates']!r}")
    m = r["meta"]
    _expect(isinstance(m["enabled"], bool), "reliability.meta.enabled", f"must be true or false, got {m['enabled']!r}")
    for key in ("n_images", "perturbations"):
        _expect(_is_int(m[key]) and m[key] >= 2, f"reliability.meta.{key}", f"must be an integer >= 2, got {m[key]!r}")
    for key in ("input_noise", "weight_noise"):
        _expect(isinstance(m[key], (int, float)) and not isinstance(m[key], bool) and m[key] > 0,
                f"reliability.meta.{key}", f"must be a number > 0, got {m[key]!r}")
    _expect(isinstance(m["stages"], list) and set(m["stages"]) <= {"pre", "post"} and m["stages"],
            "reliability.meta.stages", f'must be a non-empty list out of "pre", "post", got {m["stages"]!r}')


def _check_stats(st: dict[str, Any]) -> None:
    known = set(DEFAULT_MARGINS) | set(metrics.METRICS.names())
    for key in ("margins", "effects"):
        for name, value in st[key].items():
            _expect(name in known, f"stats.{key}.{name}", f"is neither a metric nor a metric kind"
                    f"{did_you_mean(name, known)}; kinds: {', '.join(sorted(DEFAULT_MARGINS))}")
            _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                    f"stats.{key}.{name}", f"must be a number > 0, got {value!r}")
    for key in ("alias_rtol", "alias_atol"):
        _expect(isinstance(st[key], (int, float)) and not isinstance(st[key], bool) and st[key] >= 0,
                f"stats.{key}", f"must be a number >= 0, got {st[key]!r}")
    _expect(_is_int(st["draws"]) and st["draws"] >= 1000, "stats.draws", f"must be an integer >= 1000, got {st['draws']!r}")
    _expect(is_seed(st["seed"]), "stats.seed", f"must be an integer {SEED_RANGE}, got {st['seed']!r}")


TRUTH_CONDITIONS = ("none", "confound", "noise")
TRUTH_POLARITIES = ("bright", "dark")


def _check_truth(t: dict[str, Any]) -> None:
    for key, choices in (("conditions", TRUTH_CONDITIONS), ("polarities", TRUTH_POLARITIES)):
        _expect(isinstance(t[key], list) and t[key] and all(x in choices for x in t[key])
                and len(set(t[key])) == len(t[key]), f"truth.{key}",
                f"must be a non-empty list of distinct values from {', '.join(choices)}, got {t[key]!r}")
    for key in ("reliance_margin", "share_margin"):
        _expect(isinstance(t[key], (int, float)) and not isinstance(t[key], bool) and t[key] > 0, f"truth.{key}",
                f"must be a number > 0, got {t[key]!r}")
    _expect(_is_int(t["bootstrap"]) and t["bootstrap"] >= 100, "truth.bootstrap",
            f"must be an integer >= 100, got {t['bootstrap']!r}")


def derive(cfg: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """``cfg`` with dotted keys set (``{"data.options.condition": "noise", "name": "x"}``), validated again."""
    values = copy.deepcopy(cfg.values)
    for dotted, value in changes.items():
        node = values
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    values = _merge(copy.deepcopy(DEFAULTS), values, ())
    validate(values)
    return RunConfig(values=values, source=cfg.source)


def _get(v: dict[str, Any], dotted: str) -> Any:
    for p in dotted.split("."):
        v = v[p]
    return v


def _check_names(v: dict[str, Any]) -> None:
    """Names must be registered; options and parameters must exist, with their types and declared
    constraints (the registries are the source)."""
    d = v["data"]
    datasets.DATASETS.get(d["dataset"]).check_params("dataset", d["options"], where="data.options", noun="option")
    for name, table in v["models"]["user"].items():
        _expect(name not in models.MODELS, f"models.user.{name}", "has the name of a registered model; rename it")
        try:
            UserModelSpec.from_table(name, table)
        except BenchError as exc:
            raise BenchError(f"config value {exc}") from None
    for n in v["models"]["names"]:
        if n not in v["models"]["user"]:
            models.MODELS.get(n)
    for c in v["reliability"]["controls"]:
        _expect(c in explainers.EXPLAINERS, "reliability.controls",
                f"{c!r} is not a registered explainer{did_you_mean(c, explainers.EXPLAINERS.names())}")
    for table, kind, names, params, registry, exclude in (
            ("explain", "explainer", v["explain"]["names"], v["explain"]["params"], explainers.EXPLAINERS, ()),
            ("metrics", "metric", v["metrics"]["names"], v["metrics"]["params"], metrics.METRICS, metrics.PROTOCOL)):
        for n in names:
            registry.get(n)
        for n, p in params.items():
            where = f"{table}.params.{_toml_key(n)}"
            _expect(isinstance(p, dict), where, "must be a table of parameter = value")
            registry.get(n).check_params(kind, p, exclude=exclude, where=where)
    variants = v["tune"].get("variants", {})
    _expect(isinstance(variants, dict) and all(isinstance(x, dict) for x in variants.values()), "tune.variants",
            "must be a table of variant = {recipe fields}")
    for name in variants:
        _expect(bool(re.fullmatch(r"[A-Za-z0-9_-]+", name)), f"tune.variants.{name}",
                "a variant name is letters, digits, _ and -")
    tune = {k: x for k, x in v["tune"].items() if k != "variants"}
    recipes = [("train", TrainConfig, v["train"]), ("tune", TuneConfig, tune)]
    recipes += [(f"tune.variants.{name}", TuneConfig, {**tune, **fields_}) for name, fields_ in variants.items()]
    # the train recipe is checked against a model it would train (any registered one when all are user models)
    trained = [n for n in v["models"]["names"] if n not in v["models"]["user"]] or ["resnet18"]
    for table, cls, given in recipes:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in fields(cls) if not f.metadata.get("from_data")} - {"model"}
        for key, value in given.items():
            _expect(key != "model", f"{table}.model", "the models are models.names; remove train.model")
            _expect(key in names, f"{table}.{key}",
                    f"unknown recipe field{did_you_mean(key, names)}; known: {', '.join(sorted(names))}")
            problem = type_problem(value, hints[key])
            _expect(problem is None, f"{table}.{key}", f"{value!r} {problem}")
        try:
            recipe = cls(**recipe_fields(given, model=trained[0] if cls is TrainConfig else None))
            recipe.validate()
            # the recipes a run tunes with (with variants, only theirs), before training, not after it
            if cls is TuneConfig and "post" in v["models"]["stages"] and (table != "tune" or not variants):
                for name in trained:
                    check_unfreeze(name, recipe.unfreeze)
        except BenchError as exc:
            raise BenchError(f"config value {table}: {exc}") from None


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def checkpoint_dir(cfg: RunConfig) -> Path:
    """Where the run's checkpoints live: ``checkpoint_dir``, or ``<results_dir>/checkpoints``."""
    return Path(cfg["checkpoint_dir"] or Path(cfg["results_dir"]) / "checkpoints")


def recipe_fields(table: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A [train] / [tune] table as recipe keyword arguments (lists as tuples; ``model`` added)."""
    out = {k: tuple(x) if isinstance(x, list) else x for k, x in table.items() if k != "variants"}
    return {**out, "model": model} if model is not None else out


def tune_variants(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The post stages and their tuning recipes: ``{"post": [tune]}`` without ``[tune.variants]``,
    else ``{"post:<variant>": [tune] overlaid with the variant}``."""
    variants = cfg["tune"].get("variants", {})
    if not variants:
        return {"post": recipe_fields(cfg["tune"])}
    return {f"post:{name}": recipe_fields({**cfg["tune"], **fields_}) for name, fields_ in sorted(variants.items())}


def training_seeds(cfg: RunConfig) -> list[int]:
    """``models.seeds``, or ``[train.seed]`` (the recipe's default 0) when it is empty."""
    return list(cfg["models"]["seeds"]) or [int(cfg["train"].get("seed", TrainConfig().seed))]


def model_label(cfg: RunConfig, name: str, seed: int) -> str:
    """The model column of the tables: the registered name, ``name@seed<k>`` with several seeds."""
    return name if len(training_seeds(cfg)) == 1 else f"{name}@seed{seed}"
