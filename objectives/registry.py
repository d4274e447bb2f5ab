"""The objective registry: a decorator for this repository's objectives, and the entry-point
group `beyondmle.objectives` for objectives that live in other packages.

A separate package adds an objective without touching this repository by declaring, in its
`pyproject.toml`:

    [project.entry-points."beyondmle.objectives"]
    my_objective = "my_package.my_module:MyObjective"
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points

import objectives
from objectives.base import Objective, ObjectiveSettings

ENTRY_POINT_GROUP = "beyondmle.objectives"
_NOT_OBJECTIVES = {"base", "registry", "skeleton"}

_REGISTRY: dict[str, type[Objective]] = {}
_loaded = False


def register_objective(name: str):
    """Class decorator: register an `Objective` subclass under `name`."""

    def decorate(cls: type[Objective]) -> type[Objective]:
        _check_contract(name, cls)
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"objective {name!r} is already registered by {existing!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _check_contract(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r}: {cls!r} is not a subclass of Objective")
    settings = cls.Settings
    if not (dataclasses.is_dataclass(settings) and issubclass(settings, ObjectiveSettings)):
        raise TypeError(f"objective {name!r}: Settings must be a dataclass of ObjectiveSettings")
    method = "manual_step" if cls.manual_optimization else "loss"
    if getattr(cls, method) is getattr(Objective, method):
        raise TypeError(f"objective {name!r} must implement {method}()")


def _load_all() -> None:
    """Import every module of this package (each built-in objective is one) and every
    installed entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(objectives.__path__):
        if module.name not in _NOT_OBJECTIVES and not module.name.startswith("_"):
            importlib.import_module(f"objectives.{module.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if ep.name not in _REGISTRY or _REGISTRY[ep.name] is not cls:
            register_objective(ep.name)(cls)


def get_objective(name: str) -> type[Objective]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown objective {name!r}; registered: {known}") from None


def available_objectives() -> dict[str, type[Objective]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))
