"""One registry for every kind of plugin: objectives, metrics, corpora, featurizers.

Every plugin, built-in or third-party, arrives the same way: an entry point in its package's
`pyproject.toml` names it, and loading that entry point imports its module, whose decorator
registers it.

    [project.entry-points."beyondmle.objectives"]
    my_objective = "my_package.my_objective:MyObjective"

The registry loads a kind's entry points the first time that kind is looked up. A plugin that
fails to load (an import error, a broken contract, a name already taken) costs one
`PluginWarning` naming the plugin and its error; every other plugin keeps working.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Generic, TypeVar

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


class UnknownPluginError(LookupError):
    """A name that no plugin of the kind is registered under."""

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicatePluginError(ValueError):
    """Two different plugins of one kind under one name."""


class Registry(Generic[T]):
    """Named plugins of one kind.

    - `register(name)`: a decorator; `check(name, obj)` validates the contract first, and may
      return the object to store (e.g. a `Metric` built from a decorated function).
    - `get(name)`: the plugin, or `UnknownPluginError("unknown <kind> 'x'; known: ...")`.
    - entry points of `group` are loaded once, on the first lookup.
    """

    def __init__(
        self, kind: str, group: str, check: Callable[[str, object], T] | None = None
    ) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._items: dict[str, T] = {}
        self._origins: dict[str, object] = {}  # name -> the decorated object
        self._loaded = False
        self.load_errors: dict[str, str] = {}

    def register(self, name: str) -> Callable[[object], object]:
        """Class or function decorator: register the decorated object under `name`."""

        def decorate(obj: object) -> object:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: object) -> T:
        """Register `obj` under `name`; the same object twice is a no-op, another object under
        a taken name is a `DuplicatePluginError`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._origins:
            if _same(self._origins[name], obj):
                return self._items[name]
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is already registered by {_describe(self._origins[name])}; "
                f"{_describe(obj)} cannot take the name"
            )
        item = self._check(name, obj) if self._check else obj
        self._items[name] = item  # type: ignore[assignment]
        self._origins[name] = obj
        return item  # type: ignore[return-value]

    def remove(self, name: str) -> None:
        """Forget a plugin (for tests and interactive sessions that register throwaway ones)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(sorted(self._items))

    def items(self) -> dict[str, T]:
        """Every registered plugin, by name, sorted."""
        self.load()
        return dict(sorted(self._items.items()))

    def names(self) -> list[str]:
        return list(self)

    def load(self) -> None:
        """Load this kind's entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            self._load_entry_point(ep)

    def _load_entry_point(self, ep: EntryPoint) -> None:
        before = dict(self._origins)
        try:
            obj = ep.load()
            if isinstance(obj, ModuleType):
                if ep.name not in self._items:
                    raise LookupError(
                        f"module {obj.__name__} registers no {self.kind} named {ep.name!r}"
                    )
            elif ep.name in before and not _same(before[ep.name], obj):
                raise DuplicatePluginError(
                    f"the name is already taken by {_describe(before[ep.name])}"
                )
            elif other := [n for n, o in self._origins.items() if _same(o, obj) and n != ep.name]:
                raise LookupError(
                    f"{_describe(obj)} registers itself as {other[0]!r}, not as the entry "
                    f"point's name {ep.name!r}; make the two names the same"
                )
            elif ep.name not in self._items or not _same(self._origins[ep.name], obj):
                self.add(ep.name, obj)
        except Exception as e:  # one broken plugin must not break the others
            self.load_errors[ep.name] = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"{self.kind} plugin {ep.name!r} ({ep.value}) could not be loaded and is "
                f"skipped: {type(e).__name__}: {e}",
                PluginWarning,
                stacklevel=2,
            )


def _same(a: object, b: object) -> bool:
    """The same plugin, also when its module was imported twice (by path and by name)."""
    if a is b:
        return True
    name = getattr(a, "__qualname__", None)
    return (
        name is not None
        and name == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"
