"""The run configuration: TOML over defaults, ``--set`` overrides, validation against the registries.

Every key a config may have is in :data:`DEFAULTS`; tables whose keys come from a registry
(``[data.options]`` from the dataset's loader, ``[explain.params.NAME]`` from an adapter,
``[metrics.params.NAME]`` from a metric, ``[train]`` / ``[tune]`` from the recipes) are checked
against what is registered, so a new dataset, explainer or metric needs no edit here.

A validated config is a :class:`RunConfig`: a tree of frozen dataclasses, one per table, read by
attribute (``cfg.data.per_cell``, ``cfg.reliability.meta.n_images``), so the type checker knows
every field. A new key is one line in DEFAULTS and one field in its section (a test holds the two
to each other). ``RunConfig.to_dict()`` is the validated dict, key order included: what the
manifest records and the run identity and cache keys are made from.
"""

from __future__ import annotations

import copy
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, NoReturn, Self

import torch

import datasets
import explainers
import models
from bench import metrics
from bench.core.device import DEVICES
from bench.core.errors import BenchError, did_you_mean
from bench.core.io import read_regular
from bench.core.precision import CUDA_ONLY, PRECISIONS
from bench.core.registry import UnknownNameError
from bench.core.params import SEED_RANGE, is_seed, type_problem
from bench.stats.settings import DEFAULT_MARGINS, StatsSettings
from models.recipes import TrainConfig, TuneConfig, check_unfreeze
from models.user import UserModelSpec

# the shipped profiles are package data (bench/configs/*.toml; a repository checkout links configs/ to them)
CONFIG_DIR = Path(str(resources.files("bench") / "configs"))
DEFAULT_CONFIG = CONFIG_DIR / "quick.toml"

# every key a run config may have, with its default; nested tables are dicts
DEFAULTS: dict[str, Any] = {
    "name": "quick",
    "seed": 0,
    "device": "auto",
    "results_dir": "results",
    "checkpoint_dir": "",  # "" = <results_dir>/checkpoints
    "data": {
        "dataset": "pneumoniamnist",
        "options": {},  # the dataset loader's keyword options, e.g. size, data_file (bench list datasets)
        "split": "test",
        "sample": "per_cell",  # per_cell | all
        "per_cell": 4,  # images per confusion cell (TP/FP/FN/TN) when sample = per_cell
        # > 0: explain a seeded subset of that many per cell of the per_cell sample (the
        # same images as a run at per_cell, fewer of them); 0 = all of the sample
        "nested_per_cell": 0,
        "background_size": 32,  # reference images drawn (seeded) from the train split
    },
    "models": {
        "names": ["resnet18"],
        "stages": ["pre", "post"],
        "seeds": [],  # training seeds, each its own checkpoints ([] = train.seed alone)
        # whose pre model picks the images and the predicted targets (-1 = the first
        # of seeds; another seed's model is trained if needed, used, not explained)
        "select_seed": -1,
        "user": {},  # {name: {factory, kwargs, checkpoint, convert}}: your own models (models/user.py)
    },
    "train": {},  # TrainConfig fields (models.recipes)
    "tune": {},  # TuneConfig fields
    "explain": {
        "names": ["shap.gradient", "shap.partition", "shap.deep", "captum.integrated_gradients", "random", "edge"],
        "output": "logit",  # logit | probability: the explained scalar's space
        "target": "predicted",  # predicted | label
        "shard_size": 8,  # images per cached unit of work
        "params": {},  # {explainer name: {param: value}}
    },
    "metrics": {
        "names": ["drop_rate", "increase_rate", "deletion_auc", "insertion_auc", "additivity_error"],
        "attribution": "signed",  # signed | abs | positive: one explicit preprocessing step before metrics
        "params": {},  # {metric name: {param: value}}
        "curves": True,  # store the curves of the curve metrics (deletion, insertion, ROAD)
        # float32 | bfloat16 | float16 (CUDA only): the metrics' own model passes, under
        # autocast; explainers (also those a metric re-runs) run in their own `precision`
        # parameter where they have one (the gradient explainers), float32 by default
        "precision": "float32",
    },
    "figures": {"enabled": True, "examples_per_cell": 1},
    "report": {  # how report.html shows the run (not what it computes: left out of the run's identity)
        "self_contained": True,  # true: one file, figures embedded; false: links figures/*.png and long tables' CSVs
        # true: also maps.npz, every pre-stage map of the explained images (what combining
        # the parts of a study needs for its seed-vs-seed map similarity)
        "maps": False,
    },
    # how the tables decide (bench/stats; what they show, not what the run computes: left
    # out of the run's identity, so changing it re-uses the cache)
    "stats": {
        "margins": {},  # TOST equivalence margin per metric or metric kind, e.g. {faithfulness = 0.02}
        "effects": {},  # smallest effect of interest per metric or kind, for `bench plan` (n before the run)
        "alias_rtol": 1e-6,  # two explainers are aliases when every score agrees within atol + rtol * |value|
        "alias_atol": 1e-12,
        "draws": 20000,  # Monte Carlo draws of the max-T null and of P(top stays)
        "seed": 0,
    },
    # `bench truth`: the model-truth test on `marked` data (bench/run/truth.py); one
    # sub-run per (polarity, condition), so left out of each run's identity
    "truth": {
        "conditions": ["none", "confound", "noise"],  # training conditions of the marked data (datasets/marked.py)
        "polarities": ["bright"],  # marker polarities, each with every condition
        "reliance_margin": 0.05,  # |p(class 1) with - without marker| below which a model does not use it
        "share_margin": 0.25,  # mask_share difference (area-relative units) inside which explainers "do not react"
        "bootstrap": 1000,  # image resamples of the AUROC, correlation and tau intervals
    },
    "reliability": {  # the reliability card (bench/report/reliability.py), next to every leaderboard
        "enabled": True,
        "controls": ["random", "edge"],
        "alpha": 0.05,  # family-wise error rate of every test family (bench.stats.settings.FAMILIES)
        "power": 0.8,  # for the smallest detectable difference and the n needed
        "splits": 100,  # random halves per split-half estimate
        "bootstrap": 1000,  # resamples of the alpha and split-half CIs
        "seed": 0,
        "substrates": ["zero", "mean", "blur", "noise"],  # substrate sensitivity (re-scores; [] = off)
        "imputation": True,  # and the metrics that impute for one (ROAD beside deletion)
        "meta": {  # MetaQuantus noise resilience / adversary reactivity: re-explains
            "enabled": False,
            "n_images": 8,  # explained images it uses (spread over the confusion cells)
            "perturbations": 3,  # K draws of each perturbation
            "input_noise": 0.001,  # std of Gaussian noise on inputs, x the image's value range (MetaQuantus)
            "weight_noise": 0.001,  # std of multiplicative Gaussian noise on weights (MetaQuantus)
            "stages": ["pre"],
        },
    },
    # {part: {table overrides}}: a run too long for one sitting, as ordinary runs in
    # <results_dir>/<name>/parts/<part>, combined into <results_dir>/<name>
    # (bench/run/parts.py)
    "parts": {},
}

CHOICES = {
    ("data", "sample"): ("per_cell", "all"),
    ("explain", "output"): ("logit", "probability"),
    ("explain", "target"): ("predicted", "label"),
    ("metrics", "attribution"): ("signed", "abs", "positive"),
}
FREE_TABLES = {
    ("data", "options"),
    ("train",),
    ("tune",),
    ("explain", "params"),
    ("metrics", "params"),
    ("stats", "margins"),
    ("stats", "effects"),
    ("models", "user"),
    ("parts",),
}


# ----------------------------------------------------------------------------- the typed config
# A validated config is a tree of frozen dataclasses, one per table of DEFAULTS, in DEFAULTS' key order
# (tests/test_config_types.py holds them to it). ``to_dict`` gives back the dict it was built from,
# key order included: the manifest, the run identity and every cache key are made from that dict.


class FrozenDict(dict[str, Any]):
    """A read-only dict: a table whose keys come from a registry (``[data.options]``,
    ``[explain.params.NAME]``, ``[metrics.params.NAME]``, ``[models.user.NAME]``, the recipes).

    A dict subclass, so ``json``, ``==`` and ``**`` see the dict it was (content keys and the
    manifest do not change); every method that would change it raises."""

    def _frozen(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a run config is read-only; build a changed one with dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _frozen

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy rebuild it whole, not key by key
        return FrozenDict, (dict(self),)


def freeze(value: Any) -> Any:
    """``value`` with every dict a :class:`FrozenDict` and every list a tuple, all the way down."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists (TOML and JSON have no tuples)."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Section:
    """A table of the run config: its fields are DEFAULTS' keys of that table, in their order."""

    def __post_init__(self) -> None:
        for f in fields(self):  # a changed copy (dataclasses.replace) may be given plain dicts and lists
            value = getattr(self, f.name)
            if not isinstance(value, Section):
                object.__setattr__(self, f.name, freeze(value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> Self:
        """The section of a table with exactly its fields (a validated config's, or a manifest's)."""
        names = [f.name for f in fields(cls)]
        _expect_keys(values, names, where)
        hints = typing.get_type_hints(cls)
        return cls(**{n: _section_of(hints[n], values[n], f"{where}{n}.") for n in names})

    def to_dict(self) -> dict[str, Any]:
        """The table as plain dicts and lists, in DEFAULTS' key order (what the manifest records)."""
        return {f.name: _dict_of(getattr(self, f.name)) for f in fields(self)}


def _section_of(hint: Any, value: Any, where: str) -> Any:
    return hint.from_dict(value, where) if isinstance(hint, type) and issubclass(hint, Section) else value


def _dict_of(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Section) else thaw(value)


def _expect_keys(values: Any, names: list[str], where: str) -> None:
    if not isinstance(values, Mapping):
        raise BenchError(f"config value {where.rstrip('.') or 'config'}: must be a table, got {shown(values)}")
    missing, unknown = [n for n in names if n not in values], [k for k in values if k not in names]
    if missing or unknown:
        raise BenchError(
            f"config table {where.rstrip('.') or '(top level)'}: "
            + "; ".join(
                ([f"no key {', '.join(missing)}"] if missing else [])
                + ([f"unknown key {', '.join(map(str, unknown))}"] if unknown else [])
            )
            + "; a run config has the keys of bench.run.config.DEFAULTS"
        )


@dataclass(frozen=True)
class DataSection(Section):
    """``[data]``: what is explained."""

    dataset: str
    options: Mapping[str, Any]  # the dataset loader's keyword options (its registry)
    split: str
    sample: str  # per_cell | all
    per_cell: int
    nested_per_cell: int  # > 0: a seeded subset of the per_cell sample, that many per cell
    background_size: int
    # not a config key: what bench.evaluate records about the images it was given (n_images, their
    # sha256, ...), written after the keys above
    described: Mapping[str, Any] = field(default_factory=FrozenDict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "data.") -> Self:
        names = [f.name for f in fields(cls) if f.name != "described"]
        _expect_keys({k: v for k, v in values.items() if k in names}, names, where)
        return cls(**{n: values[n] for n in names}, described={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        described = out.pop("described")
        return {**out, **described}


@dataclass(frozen=True)
class ModelsSection(Section):
    """``[models]``: the architectures, their stages and training seeds, the user's own models."""

    names: tuple[str, ...]
    stages: tuple[str, ...]  # ("pre",) | ("pre", "post")
    seeds: tuple[int, ...]  # () = train.seed alone
    select_seed: int  # whose pre model picks the images (-1 = the first of seeds)
    user: Mapping[str, Mapping[str, Any]]  # {name: {factory, kwargs, checkpoint, convert}} (models/user.py)


@dataclass(frozen=True)
class RecipeSection(Section):
    """A recipe table (``[train]``, ``[tune]``): the fields the config sets, kept as written (the
    manifest and the run identity record the table); the recipe's defaults are the rest."""

    table: Mapping[str, Any]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> Self:
        return cls(table=values)

    def to_dict(self) -> dict[str, Any]:
        return thaw(self.table)


@dataclass(frozen=True)
class TrainSection(RecipeSection):
    """``[train]``: :class:`~models.training.TrainConfig` fields."""

    @property
    def seed(self) -> int:
        return int(self.table.get("seed", TrainConfig().seed))

    def recipe(self, model: str, **data: Any) -> TrainConfig:
        """The training recipe of ``model`` (``data``: further fields, e.g. seed, dataset, size)."""
        return TrainConfig(**{**recipe_fields(self.table, model=model), **data})


@dataclass(frozen=True)
class TuneSection(RecipeSection):
    """``[tune]``: :class:`~models.training.TuneConfig` fields and ``[tune.variants]`` (each a
    table of fields over them)."""

    @property
    def variants(self) -> Mapping[str, Mapping[str, Any]]:
        return typing.cast(Mapping[str, Mapping[str, Any]], self.table.get("variants", FrozenDict()))

    def recipes(self) -> dict[str, TuneConfig]:
        """The post stages and their recipes: ``{"post": recipe}`` without ``[tune.variants]``, else
        ``{"post:<variant>": recipe with the variant's fields}``."""
        if not self.variants:
            return {"post": TuneConfig(**recipe_fields(self.table))}
        return {
            f"post:{name}": TuneConfig(**recipe_fields({**self.table, **fields_}))
            for name, fields_ in sorted(self.variants.items())
        }


@dataclass(frozen=True)
class ExplainSection(Section):
    """``[explain]``: the explainers, the explained scalar and its class, the shard size."""

    names: tuple[str, ...]
    output: str  # logit | probability
    target: str  # predicted | label (bench.evaluate: given)
    shard_size: int
    params: Mapping[str, Mapping[str, Any]]  # {explainer: {param: value}} (the adapters' registry)
    # not a config key: the maps bench.evaluate was given ({name: {sha256, shape, not_scored}}), recorded
    # after the keys above and only when there are some (a run without them records what it always did)
    given: Mapping[str, Any] = field(default_factory=FrozenDict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "explain.") -> Self:
        names = [f.name for f in fields(cls) if f.name != "given"]
        _expect_keys({k: v for k, v in values.items() if k != "given"}, names, where)
        return cls(**{n: values[n] for n in names}, given=values.get("given", {}))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        given = out.pop("given")
        return {**out, "given": given} if given else out


@dataclass(frozen=True)
class MetricsSection(Section):
    """``[metrics]``: the metrics, the one attribution preprocessing step, their parameters."""

    names: tuple[str, ...]
    attribution: str  # signed | abs | positive
    params: Mapping[str, Mapping[str, Any]]  # {metric: {param: value}} (the metrics' registry)
    curves: bool
    precision: str  # float32 | bfloat16 | float16 (CUDA only): the metrics' own passes


@dataclass(frozen=True)
class FiguresSection(Section):
    """``[figures]``."""

    enabled: bool
    examples_per_cell: int


@dataclass(frozen=True)
class ReportSection(Section):
    """``[report]``: how report.html shows the run."""

    self_contained: bool
    maps: bool


@dataclass(frozen=True)
class StatsSection(Section):
    """``[stats]``: how the tables decide (bench/stats)."""

    margins: Mapping[str, float]
    effects: Mapping[str, float]
    alias_rtol: float
    alias_atol: float
    draws: int
    seed: int


@dataclass(frozen=True)
class TruthSection(Section):
    """``[truth]``: the model-truth test (``bench truth``)."""

    conditions: tuple[str, ...]
    polarities: tuple[str, ...]
    reliance_margin: float
    share_margin: float
    bootstrap: int


@dataclass(frozen=True)
class MetaSection(Section):
    """``[reliability.meta]``: MetaQuantus noise resilience and adversary reactivity."""

    enabled: bool
    n_images: int
    perturbations: int
    input_noise: float
    weight_noise: float
    stages: tuple[str, ...]


@dataclass(frozen=True)
class ReliabilitySection(Section):
    """``[reliability]``: the reliability card."""

    enabled: bool
    controls: tuple[str, ...]
    alpha: float
    power: float
    splits: int
    bootstrap: int
    seed: int
    substrates: tuple[str, ...]
    imputation: bool
    meta: MetaSection


@dataclass(frozen=True)
class RunConfig(Section):
    """A validated run configuration and where it came from (``source``, not part of the config)."""

    name: str
    seed: int
    device: str
    results_dir: str
    checkpoint_dir: str  # "" = <results_dir>/checkpoints
    data: DataSection
    models: ModelsSection
    train: TrainSection
    tune: TuneSection
    explain: ExplainSection
    metrics: MetricsSection
    figures: FiguresSection
    report: ReportSection
    stats: StatsSection
    truth: TruthSection
    reliability: ReliabilitySection
    parts: Mapping[str, Mapping[str, Any]]  # {part: {table overrides}} (bench/run/parts.py)
    source: str = field(default="", compare=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "", source: str = "") -> Self:
        """The config of a dict with DEFAULTS' keys (a validated config's, or a manifest's ``config``)."""
        names = [f.name for f in fields(cls) if f.name != "source"]
        _expect_keys(values, names, where)
        hints = typing.get_type_hints(cls)
        return cls(**{n: _section_of(hints[n], values[n], f"{n}.") for n in names}, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The config as the manifest records it: plain dicts and lists, DEFAULTS' key order."""
        out = super().to_dict()
        del out["source"]
        return out


def parse_value(text: str, what: str = "value") -> Any:
    """A TOML value (numbers, booleans, "strings", [lists], {inline = "tables"}); anything else
    is a one-line error saying so (a bare word is not silently taken for a string)."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(
            f"{what} {text!r} is not a TOML value ({exc}); strings need quotes, e.g. "
            f'"name" or \'"shap.deep"\' in the shell'
        ) from None
    if set(parsed) != {"v"}:  # "1\nname = 'x'": a second assignment on another line
        raise BenchError(
            f"{what} {text!r} holds more than one value (a line break and another KEY=VALUE); give "
            f"each value its own --set"
        )
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
        raise BenchError(
            f"--set {assignment!r}: {key.strip()!r} is not a TOML key; quote a name that has dots, "
            f"e.g. --set 'explain.params.\"shap.partition\".max_evals=100'"
        ) from None
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
        ((k, node),) = node.items()
        path.append(k)
    return path


def config_path(path: str | Path | None) -> Path:
    """The config file of ``--config``: a TOML file, or a shipped profile's name (``quick``, ``study``, ...)."""
    if not path:
        return DEFAULT_CONFIG
    path = Path(path)
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    if not path.is_file() and str(path) in shipped:  # a bare profile name, from any folder
        return CONFIG_DIR / f"{path}.toml"
    if not path.is_file():
        raise BenchError(
            f"config file {path} not found; pass --config with an existing TOML file or a shipped "
            f"profile's name ({', '.join(shipped)})"
        )
    return path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML config over the DEFAULTS, apply ``--set`` overrides, validate, build the typed tree."""
    path = config_path(path)
    return RunConfig.from_dict(load_values(path, overrides), source=str(path))


def load_values(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The validated config of :func:`load_config` as a dict (the DEFAULTS' shape and key order)."""
    path = config_path(path)
    try:
        text = read_regular(path, follow=True).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(
            f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
            f"(TOML files are UTF-8)"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from exc
    values = _merge(copy.deepcopy(DEFAULTS), raw, ())
    for o in overrides:
        apply_override(values, o)
    values = _merge(copy.deepcopy(DEFAULTS), values, ())
    validate(values)
    return values


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
            raise BenchError(
                f"unknown config key {'.'.join(here)!r}{did_you_mean(key, base)}; known keys here: {known}"
            )
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
        return f"{value[: limit // 2]!r}… ({len(value)} characters)"
    return repr(value)


def check_name(name: Any, key: str = "name") -> None:
    """A run name is one plain folder name (:func:`is_plain_name`)."""
    _expect(
        is_plain_name(name),
        key,
        f"{shown(name)} is not a plain folder name (letters, digits and ._+- , not starting with a dot, at most "
        f"{MAX_NAME} characters; no path separators); choose e.g. --name my-run",
    )


def validate(v: dict[str, Any]) -> None:
    """Types, ranges, choices and registered names; every problem is a one-line BenchError."""
    for (table, key), choices in CHOICES.items():
        _expect(v[table][key] in choices, f"{table}.{key}", f"{v[table][key]!r} is not one of {', '.join(choices)}")
    check_name(v["name"])
    _expect(is_seed(v["seed"]), "seed", f"must be an integer {SEED_RANGE}, got {v['seed']!r}")
    _expect(
        v["device"] in DEVICES or str(v["device"]).startswith("cuda:"),
        "device",
        f"{v['device']!r} is not one of {', '.join(DEVICES)}",
    )
    for key in ("results_dir", "checkpoint_dir"):
        _expect(
            isinstance(v[key], str) and (key == "checkpoint_dir" or v[key]),
            key,
            "must be a folder path (a string)" + ("" if key == "results_dir" else '; "" = <results_dir>/checkpoints'),
        )
    d = v["data"]
    for key in ("per_cell", "background_size"):
        _expect(_is_int(d[key]) and d[key] >= 1, f"data.{key}", f"must be an integer >= 1, got {d[key]!r}")
    _expect(d["split"] in ("train", "val", "test"), "data.split", "must be train, val or test")
    _expect(
        _is_int(d["nested_per_cell"]) and 0 <= d["nested_per_cell"],
        "data.nested_per_cell",
        f"must be an integer >= 0 (0 = the whole sample), got {d['nested_per_cell']!r}",
    )
    _expect(
        d["nested_per_cell"] == 0 or d["sample"] == "per_cell" and d["nested_per_cell"] <= d["per_cell"],
        "data.nested_per_cell",
        f'a subset of the per_cell sample: needs data.sample = "per_cell" and at most '
        f"data.per_cell ({d['per_cell']}), got {d['nested_per_cell']!r}",
    )
    e = v["explain"]
    _expect(
        _is_int(e["shard_size"]) and e["shard_size"] >= 1,
        "explain.shard_size",
        f"must be an integer >= 1, got {e['shard_size']!r}",
    )
    f = v["figures"]
    _expect(isinstance(f["enabled"], bool), "figures.enabled", f"must be true or false, got {f['enabled']!r}")
    _expect(
        _is_int(f["examples_per_cell"]) and f["examples_per_cell"] >= 0,
        "figures.examples_per_cell",
        f"must be an integer >= 0, got {f['examples_per_cell']!r}",
    )
    for key in ("self_contained", "maps"):
        _expect(isinstance(v["report"][key], bool), f"report.{key}", f"must be true or false, got {v['report'][key]!r}")
    _check_reliability(v["reliability"])
    _check_stats(v["stats"])
    _check_truth(v["truth"])
    _expect(
        isinstance(v["metrics"]["curves"], bool),
        "metrics.curves",
        f"must be true or false, got {v['metrics']['curves']!r}",
    )
    _check_precision(v["metrics"]["precision"], v["device"])
    stages = v["models"]["stages"]
    _expect(
        isinstance(stages, list) and stages in (["pre"], ["pre", "post"]),
        "models.stages",
        f'must be ["pre"] or ["pre", "post"], got {stages!r}',
    )
    seeds = v["models"]["seeds"]
    _expect(
        isinstance(seeds, list) and all(is_seed(s) for s in seeds) and len(set(seeds)) == len(seeds),
        "models.seeds",
        f"must be a list of distinct integers {SEED_RANGE}, got {seeds!r}",
    )
    select = v["models"]["select_seed"]
    _expect(
        select == -1 or is_seed(select),
        "models.select_seed",
        f"must be -1 (the first of models.seeds) or a training seed {SEED_RANGE}, got {select!r}",
    )
    _check_parts(v)
    for key in ("models.names", "explain.names", "metrics.names"):
        names = _get(v, key)
        _expect(
            isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names),
            key,
            "must be a non-empty list of names",
        )
        _expect(len(set(names)) == len(names), key, "lists a name twice")
    users = [n for n in v["models"]["names"] if n in v["models"]["user"]]
    user = users[0] if users else ""
    _expect(
        not users or "post" not in stages,
        "models.stages",
        f'{user!r} is a user model ([models.user.{user}]); tuning (the "post" stage) applies only to models '
        f'pneumobench trains: set models.stages = ["pre"]',
    )
    _check_names(v)


PART_FIXED = ("name", "results_dir", "checkpoint_dir", "seed", "parts")  # one per study, never per part


def _check_parts(v: dict[str, Any]) -> None:
    """``[parts.<name>]``: plain names, tables over the config's own keys, none of :data:`PART_FIXED`
    (each part's whole config is validated when it is made, :func:`part_values`)."""
    for name, table in v["parts"].items():
        check_name(name, f"parts.{name}")
        _expect(
            isinstance(table, dict),
            f"parts.{name}",
            "must be a table of config overrides, e.g. { models = { seeds = [1] } }",
        )
        fixed = [k for k in table if k in PART_FIXED]
        _expect(
            not fixed,
            f"parts.{name}.{fixed[0] if fixed else ''}",
            f"is the same for every part of a run ({', '.join(PART_FIXED)}); set it at the top level",
        )


def part_values(values: Mapping[str, Any], part: str) -> dict[str, Any]:
    """The validated config of one part of a run with ``[parts]``: the run's config without
    ``parts``, its ``[parts.<part>]`` tables merged over it, named ``part``, in
    ``<results_dir>/<name>/parts``, with the run's checkpoint folder (every part trains and reads
    the same checkpoints)."""
    parts = values.get("parts") or {}
    if part not in parts:
        raise BenchError(
            f"--part {part!r}: the config has no [parts.{part}]{did_you_mean(part, parts)}; its parts: "
            f"{', '.join(parts) or 'none'}"
        )
    out = copy.deepcopy({k: v for k, v in values.items() if k != "parts"})
    out = _merge(out, copy.deepcopy(dict(parts[part])), ())
    out["parts"] = {}
    out["name"] = part
    out["results_dir"] = str(Path(values["results_dir"]) / values["name"] / "parts")
    out["checkpoint_dir"] = values["checkpoint_dir"] or str(Path(values["results_dir"]) / "checkpoints")
    out = _merge(copy.deepcopy(DEFAULTS), out, ())
    try:
        validate(out)
    except BenchError as exc:
        raise BenchError(f"[parts.{part}]: {exc}") from None
    return out


def part_config(cfg: RunConfig, part: str) -> RunConfig:
    """:func:`part_values` as a :class:`RunConfig` (its source: the run's config file, ``#part``)."""
    return RunConfig.from_dict(part_values(cfg.to_dict(), part), source=f"{cfg.source}#{part}")


def _check_reliability(r: dict[str, Any]) -> None:
    for key in ("enabled", "imputation"):
        _expect(isinstance(r[key], bool), f"reliability.{key}", f"must be true or false, got {r[key]!r}")
    _expect(
        isinstance(r["controls"], list) and all(isinstance(c, str) for c in r["controls"]),
        "reliability.controls",
        "must be a list of explainer names",
    )
    for key in ("alpha", "power"):
        _expect(
            isinstance(r[key], float) and 0 < r[key] < 1, f"reliability.{key}", f"must be in (0, 1), got {r[key]!r}"
        )
    for key in ("splits", "bootstrap"):
        _expect(_is_int(r[key]) and r[key] >= 10, f"reliability.{key}", f"must be an integer >= 10, got {r[key]!r}")
    _expect(is_seed(r["seed"]), "reliability.seed", f"must be an integer {SEED_RANGE}, got {r['seed']!r}")
    _expect(
        isinstance(r["substrates"], list)
        and set(r["substrates"]) <= set(metrics.SUBSTRATES)
        and len(set(r["substrates"])) == len(r["substrates"]),
        "reliability.substrates",
        f"must be a list of distinct substrates out of {', '.join(metrics.SUBSTRATES)}, got {r['substrates']!r}",
    )
    m = r["meta"]
    _expect(isinstance(m["enabled"], bool), "reliability.meta.enabled", f"must be true or false, got {m['enabled']!r}")
    for key in ("n_images", "perturbations"):
        _expect(_is_int(m[key]) and m[key] >= 2, f"reliability.meta.{key}", f"must be an integer >= 2, got {m[key]!r}")
    for key in ("input_noise", "weight_noise"):
        _expect(
            isinstance(m[key], (int, float)) and not isinstance(m[key], bool) and m[key] > 0,
            f"reliability.meta.{key}",
            f"must be a number > 0, got {m[key]!r}",
        )
    _expect(
        isinstance(m["stages"], list) and set(m["stages"]) <= {"pre", "post"} and bool(m["stages"]),
        "reliability.meta.stages",
        f'must be a non-empty list out of "pre", "post", got {m["stages"]!r}',
    )


def _check_precision(precision: Any, device: Any, where: str = "metrics.precision") -> None:
    """A known precision; float16 only on a CUDA device (``auto``: when CUDA is available)."""
    _expect(
        isinstance(precision, str) and precision in PRECISIONS,
        where,
        f"{precision!r} is not one of {', '.join(PRECISIONS)}",
    )
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    _expect(
        cuda or precision not in CUDA_ONLY,
        where,
        f"{precision} runs on CUDA only and device = {device!r}{' finds no CUDA' if device == 'auto' else ''}; "
        f'use "bfloat16" on the CPU',
    )


def _check_stats(st: dict[str, Any]) -> None:
    known = set(DEFAULT_MARGINS) | set(metrics.METRICS.names())
    for key in ("margins", "effects"):
        for name, value in st[key].items():
            _expect(
                name in known,
                f"stats.{key}.{name}",
                f"is neither a metric nor a metric kind"
                f"{did_you_mean(name, known)}; kinds: {', '.join(sorted(DEFAULT_MARGINS))}",
            )
            _expect(
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                f"stats.{key}.{name}",
                f"must be a number > 0, got {value!r}",
            )
    for key in ("alias_rtol", "alias_atol"):
        _expect(
            isinstance(st[key], (int, float)) and not isinstance(st[key], bool) and st[key] >= 0,
            f"stats.{key}",
            f"must be a number >= 0, got {st[key]!r}",
        )
    _expect(
        _is_int(st["draws"]) and st["draws"] >= 1000, "stats.draws", f"must be an integer >= 1000, got {st['draws']!r}"
    )
    _expect(is_seed(st["seed"]), "stats.seed", f"must be an integer {SEED_RANGE}, got {st['seed']!r}")


TRUTH_CONDITIONS = ("none", "confound", "noise")
TRUTH_POLARITIES = ("bright", "dark")


def _check_truth(t: dict[str, Any]) -> None:
    for key, choices in (("conditions", TRUTH_CONDITIONS), ("polarities", TRUTH_POLARITIES)):
        _expect(
            isinstance(t[key], list)
            and t[key]
            and all(x in choices for x in t[key])
            and len(set(t[key])) == len(t[key]),
            f"truth.{key}",
            f"must be a non-empty list of distinct values from {', '.join(choices)}, got {t[key]!r}",
        )
    for key in ("reliance_margin", "share_margin"):
        _expect(
            isinstance(t[key], (int, float)) and not isinstance(t[key], bool) and t[key] > 0,
            f"truth.{key}",
            f"must be a number > 0, got {t[key]!r}",
        )
    _expect(
        _is_int(t["bootstrap"]) and t["bootstrap"] >= 100,
        "truth.bootstrap",
        f"must be an integer >= 100, got {t['bootstrap']!r}",
    )


def revalidated(cfg: RunConfig) -> RunConfig:
    """``cfg`` after checking its dict again: a config changed with ``dataclasses.replace`` (the
    sub-runs of ``bench truth``) passes the checks a loaded one does. Returns ``cfg``."""
    validate(_merge(copy.deepcopy(DEFAULTS), cfg.to_dict(), ()))
    return cfg


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
        try:  # a control may be a variant (base@label) too: the one lookup resolves it or says why not
            explainers.EXPLAINERS.get(c)
        except UnknownNameError as exc:
            raise BenchError(f"config value reliability.controls: {exc}") from None
    for table, kind, names, params, registry, exclude in (
        ("explain", "explainer", v["explain"]["names"], v["explain"]["params"], explainers.EXPLAINERS, ()),
        ("metrics", "metric", v["metrics"]["names"], v["metrics"]["params"], metrics.METRICS, metrics.PROTOCOL),
    ):
        for n in names:
            registry.get(n)
        for n, p in params.items():
            where = f"{table}.params.{_toml_key(n)}"
            _expect(isinstance(p, dict), where, "must be a table of parameter = value")
            registry.get(n).check_params(kind, p, exclude=exclude, where=where)
            if table == "explain" and "precision" in p:  # a gradient explainer's own passes (float16: CUDA only)
                _check_precision(p["precision"], v["device"], f"{where}.precision")
    variants = v["tune"].get("variants", {})
    _expect(
        isinstance(variants, dict) and all(isinstance(x, dict) for x in variants.values()),
        "tune.variants",
        "must be a table of variant = {recipe fields}",
    )
    for name in variants:
        _expect(
            bool(re.fullmatch(r"[A-Za-z0-9_-]+", name)),
            f"tune.variants.{name}",
            "a variant name is letters, digits, _ and -",
        )
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
            _expect(
                key in names,
                f"{table}.{key}",
                f"unknown recipe field{did_you_mean(key, names)}; known: {', '.join(sorted(names))}",
            )
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
    return Path(cfg.checkpoint_dir or Path(cfg.results_dir) / "checkpoints")


def recipe_fields(table: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
    """A [train] / [tune] table as recipe keyword arguments (lists as tuples; ``model`` added)."""
    out = {k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in table.items() if k != "variants"}
    return {**out, "model": model} if model is not None else out


def tune_variants(cfg: RunConfig) -> dict[str, TuneConfig]:
    """The post stages and their tuning recipes (:meth:`TuneSection.recipes`)."""
    return cfg.tune.recipes()


def training_seeds(cfg: RunConfig) -> list[int]:
    """``models.seeds``, or ``[train.seed]`` (the recipe's default 0) when it is empty."""
    return list(cfg.models.seeds) or [cfg.train.seed]


def selection_seed(cfg: RunConfig) -> int:
    """The training seed whose pre model picks a run's images: ``models.select_seed``, or the first
    of :func:`training_seeds` when it is -1."""
    return training_seeds(cfg)[0] if cfg.models.select_seed == -1 else cfg.models.select_seed


def stats_settings(cfg: RunConfig) -> StatsSettings:
    """The tables' statistical settings of ``cfg``: ``[stats]``, with ``reliability.alpha`` as alpha."""
    return StatsSettings.from_config({"alpha": cfg.reliability.alpha, **cfg.stats.to_dict()})


def model_label(cfg: RunConfig, name: str, seed: int) -> str:
    """The model column of the tables: the registered name, ``name@seed<k>`` with several seeds."""
    return name if len(training_seeds(cfg)) == 1 else f"{name}@seed{seed}"
