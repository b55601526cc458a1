"""A generic name -> object registry, shared by models, datasets, explainers and metrics.

Everything with a name is registered; the CLI, the config validation and the tests enumerate
registries, never hand-written lists. Unknown names raise with the list of known names, and a
duplicate registration raises (a silent override would corrupt a leaderboard).

A registry made with ``variants=True`` (the explainers) also resolves ``base@label``: a run may name
one entry twice with different parameters (``captum.integrated_gradients@blur``). The variant is
not registered; :func:`split_variant` parses its name, and every lookup of it returns the base's
entry, so a variant has exactly its base's metadata and parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from bench.core.errors import BenchError, did_you_mean
from bench.core.params import check_constraints, check_params, tunable_params

T = TypeVar("T", bound=Callable[..., Any])  # every registry holds callables (adapters, metrics, factories)
VARIANT_LABEL = re.compile(r"[a-z0-9][a-z0-9_-]*")


class UnknownNameError(BenchError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicateNameError(BenchError, ValueError):
    """A second registration under a name already taken."""


def split_variant(kind: str, name: str) -> tuple[str, str | None]:
    """``"base@label"`` -> ``("base", "label")``; a name without ``@`` -> ``(name, None)``.

    The label is lower-case letters, digits, ``_`` and ``-``, starting with a letter or a digit
    (:data:`VARIANT_LABEL`), and a name has one ``@`` at most. Anything else raises a one-line
    :class:`UnknownNameError` naming the fix; whether ``base`` is registered is the caller's
    question (:meth:`Registry.get`).
    """
    base, at, label = name.partition("@")
    if not at:
        return name, None
    rule = "lower-case letters, digits, _ and -, starting with a letter or a digit"
    fixed = base + "@" + (re.sub(r"[^a-z0-9_-]+", "-", label.lower()).strip("_-") or "v2")  # a label that is valid
    if not base:
        raise UnknownNameError(f"{kind} variant {name!r} names no {kind} before '@'; write <{kind}>@<label>")
    if "@" in label:
        raise UnknownNameError(
            f"{kind} variant {name!r} has more than one '@'; write <{kind}>@<label> with one '@', e.g. {fixed!r}"
        )
    if not label:
        raise UnknownNameError(
            f"{kind} variant {name!r}: the label after '@' is empty; write <{kind}>@<label> ({rule}), e.g. {fixed!r}"
        )
    if not VARIANT_LABEL.fullmatch(label):
        raise UnknownNameError(f"{kind} variant {name!r}: the label {label!r} must be {rule}; write e.g. {fixed!r}")
    return base, label


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its metadata (e.g. ``additive=True``, ``higher_is_better``)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)

    def params(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """Tunable parameters: the keyword-only parameters that have defaults (``exclude``: protocol
        arguments such as a metric's ``context``).

        Required keyword-only parameters (e.g. an explainer's ``background``) are inputs of the
        protocol, not settings, so they are not listed.
        """
        return tunable_params(self.obj, exclude) if callable(self.obj) else {}

    def check_params(
        self,
        kind: str,
        given: dict[str, Any],
        *,
        exclude: tuple[str, ...] = (),
        where: str | None = None,
        noun: str = "parameter",
    ) -> None:
        """One-line BenchError unless ``given`` are parameters of this entry with the annotated types
        and the constraints declared at registration (:mod:`bench.core.params`)."""
        check_params(
            kind,
            self.name,
            self.obj,
            given,
            constraints=self.meta.get("constraints"),
            exclude=exclude,
            where=where,
            noun=noun,
        )


class Registry(Generic[T]):
    """Named objects of one kind.

    Args:
        kind: what is registered, used in error messages ("explainer", "metric", ...).
        entry_point_group: optional ``importlib.metadata`` entry-point group; its entry points
            are imported lazily on the first lookup so third-party packages can register.
        variants: look ``base@label`` up as ``base`` (:func:`split_variant`); names with ``@``
            cannot then be registered.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *, variants: bool = False) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.variants = variants
        self._entries: dict[str, Entry[T]] = {}
        self._entry_points_loaded = entry_point_group is None
        self._broken: list[str] = []  # one line per plug-in that failed to load

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@registry.register(name, **meta)``."""
        if obj is not None:
            self._add(name, obj, meta)
            return obj

        def decorator(o: T) -> T:
            self._add(name, o, meta)
            return o

        return decorator

    def _add(self, name: str, obj: T, meta: dict[str, Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if self.variants and "@" in name:
            raise ValueError(
                f"{self.kind} name {name!r} contains '@', which marks a variant (base@label) in a run; "
                f"register it under a name without '@'"
            )
        if "constraints" in meta:
            check_constraints(self.kind, name, obj, meta["constraints"])
        if name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is already registered (by {_where(self._entries[name].obj)}); "
                f"choose another name"
            )
        self._entries[name] = Entry(name, obj, dict(meta))

    def check_pass_rule(self, name: str, passes: Any) -> None:
        """``passes=`` of a registration: None, a ``(forward+backward, forward)`` pair of numbers, or
        a function of the parameters (read by ``bench.perf.floor``)."""
        pair = (
            isinstance(passes, tuple)
            and len(passes) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in passes)
        )
        if passes is not None and not callable(passes) and not pair:
            raise BenchError(
                f"{self.kind} {name!r}: passes must be a (forward+backward, forward) pair of numbers "
                f"or a function of the parameters, got {passes!r}"
            )

    def unregister(self, name: str) -> None:
        """Remove a registration (for tests and plug-in reloads)."""
        self._entries.pop(name, None)

    def load_entry_points(self) -> None:
        """Import every entry point of the group once.

        A plug-in that fails to import does not stop the others from loading; it is remembered,
        and every later lookup of a name that is not registered, and every listing, raises a
        :class:`BenchError` naming it (a broken plug-in must not look like a missing name).
        """
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            group = self.entry_point_group
            for ep in metadata.entry_points(group=group) if group is not None else ():
                try:
                    ep.load()
                except Exception as exc:
                    self._broken.append(
                        f"could not load {self.kind} plug-in {ep.name!r} ({ep.value}) from "
                        f"entry-point group {self.entry_point_group!r}: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}; fix or uninstall that package"
                    )
        if self._broken:
            raise BenchError(self._broken[0])

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; raises :class:`UnknownNameError` listing the known names.

        With ``variants``, ``base@label`` gets the entry of ``base`` (its ``name`` is the base's).
        """
        base, label = split_variant(self.kind, name) if self.variants else (name, None)
        if base not in self._entries:
            self.load_entry_points()
        if base not in self._entries:
            known = ", ".join(self.names()) or "(none)"
            of = f" in the variant {name!r}" if label is not None else ""
            raise UnknownNameError(
                f"unknown {self.kind} {base!r}{of}{did_you_mean(base, self.names())}; known {self.kind}s: {known}"
            )
        return self._entries[base]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        """Whether :meth:`get` finds ``name`` (with ``variants``, a well-formed variant of an entry)."""
        self.load_entry_points()
        if self.variants and isinstance(name, str):
            try:
                name = split_variant(self.kind, name)[0]
            except UnknownNameError:
                return False
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _where(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}.{qual}"
