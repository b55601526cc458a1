"""Checking the parameters of a registered function (an explainer, a metric, a dataset loader).

A function's tunable parameters are its keyword-only parameters with defaults; their types come
from its annotations, and a registration may add constraints by name (``constraints=`` of
``register_explainer``, ``register_metric``, ``register_dataset``)::

    constraints={"n_steps": Range(1), "frac": Range(0, 1, low_open=True), "engine": ("auto", "batched")}

A :class:`Range` bounds a number (or each number of a list), a tuple lists the allowed values, a
function ``value -> problem or None`` checks anything else. :func:`check_params` raises a one-line
:class:`~bench.core.errors.BenchError` naming the parameter, what is wrong and what is allowed,
so a run config is refused before any work starts. A parameter named ``seed`` is a seed
wherever it appears: an integer in :data:`SEED_RANGE` unless its registration says otherwise.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bench.core.errors import BenchError, did_you_mean


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]`` (either end may be open or absent)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, v: float) -> str | None:
        if not math.isfinite(v):
            return "must be finite"
        too_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        too_high = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        return f"must be {self}" if too_low or too_high else None

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"


Constraint = Range | tuple | Callable[[Any], "str | None"]

# every seed (the run's, a recipe's, an explainer's, a data set's): what numpy's and torch's
# generators take, with room for the offsets derived seeds add (seed + 1, seed * 1000 + k)
SEED_RANGE = Range(0, 2**32 - 1)


def is_seed(v: Any) -> bool:
    """An integer (not a boolean) in :data:`SEED_RANGE`."""
    return isinstance(v, int) and not isinstance(v, bool) and SEED_RANGE.problem(v) is None


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else str(v)


def tunable_params(fn: Callable, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword-only parameters with defaults, in signature order (``exclude``: protocol arguments)."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.default is not inspect.Parameter.empty
        and p.name not in exclude
    }


def check_params(
    kind: str,
    name: str,
    fn: Callable,
    given: Mapping[str, Any],
    *,
    constraints: Mapping[str, Constraint] | None = None,
    exclude: tuple[str, ...] = (),
    where: str | None = None,
    noun: str = "parameter",
) -> None:
    """Raise a one-line BenchError unless every ``given`` parameter exists, has its annotated type
    and meets its declared constraint. ``where`` names the config table in messages (e.g.
    ``explain.params."shap.partition"``)."""
    known = tunable_params(fn, exclude)
    unknown = sorted(set(given) - set(known))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "(none)"
        raise BenchError(
            f"{where + ': ' if where else ''}{kind} {name!r} has no {noun} "
            f"{', '.join(map(repr, unknown))}{did_you_mean(unknown[0], known)}; its {noun}s: {listed}"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations (a plug-in's forward references): types unchecked
        hints = {}
    constraints = {"seed": SEED_RANGE, **(constraints or {})}
    for key, value in given.items():
        problem = type_problem(value, hints.get(key, Any))
        if problem is None and key in constraints:
            problem = constraint_problem(value, constraints[key])
        if problem is not None:
            at = f"{where}.{key}" if where else f"{kind} {name!r}: {key}"
            raise BenchError(f"{at} = {value!r} {problem} (python -m bench list {kind}s shows the {noun}s)")


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit ``annotation`` (int, float, bool, str, X | None, tuple[X, ...],
    list[X], Literal[...]), or None. Unknown annotations accept anything."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if annotation is type(None):
        return None if value is None else "must be absent"
    if origin is typing.Literal:
        return None if value in args else f"is not one of {', '.join(map(repr, args))}"
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        item = args[0] if args else Any
        for v in value:
            p = type_problem(v, item)
            if p:
                return f"has an element {v!r} that {p}"
        return None
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if annotation is str:
        return None if isinstance(value, str) else "must be a string (quoted in TOML)"
    return None


def constraint_problem(value: Any, constraint: Constraint) -> str | None:
    if value is None:  # an optional parameter left unset
        return None
    if isinstance(constraint, Range):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            p = constraint.problem(float(v))
            if p:
                return p if not isinstance(value, (list, tuple)) else f"has an element {v!r} that {p}"
        return None
    if isinstance(constraint, tuple):
        return None if value in constraint else f"is not one of {', '.join(map(repr, constraint))}"
    return constraint(value)


def check_constraints(kind: str, name: str, fn: Callable, constraints: Mapping[str, Constraint] | None) -> None:
    """At registration: every constrained name must be a tunable parameter of ``fn``."""
    bad = sorted(set(constraints or {}) - set(tunable_params(fn)))
    if bad:
        raise BenchError(
            f"{kind} {name!r}: constraints name {', '.join(map(repr, bad))}, which are not keyword "
            f"parameters with defaults of {getattr(fn, '__qualname__', fn)!r}"
        )
