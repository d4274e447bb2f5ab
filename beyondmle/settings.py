"""One validation style for every settings dataclass: ranges and choices declared on the
fields, one checker that reports every problem at once.

    @dataclass(frozen=True)
    class MySettings(Settings):
        weight: float = setting(0.5, ge=0.0)
        mode: str = setting("fast", choices=("fast", "exact"))
        steps: int = setting(1, ge=1)

        def cross_checks(self) -> list[Problem]:      # relations between fields, if any
            return [] if self.steps < 100 or self.mode == "fast" else [
                Problem("steps", "< 100 with mode 'exact'", self.steps)
            ]

Constructing `MySettings(weight=-1, mode="slow")` raises one `SettingsError` that lists both
problems; `build_settings(MySettings, table)` does the same for a spec table and also reports
unknown keys, so a spec with several mistakes in one table hears of all of them. Types come
from the annotations (`int`, `float`, `bool`, `str`, `X | None`, `list[X]`); a TOML integer is
accepted where a number is expected, as TOML writers expect.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

_META_KEY = "beyondmle.check"


class _Nothing:
    """No value given (distinct from a given `None`)."""

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()


@dataclass(frozen=True)
class Problem:
    """One invalid setting: the key, what was expected, and what was given."""

    key: str
    expected: str
    got: object = NOTHING

    def render(self) -> str:
        got = "" if self.got is NOTHING else f", got {self.got!r}"
        return f"{self.key} must be {self.expected}{got}"


class SettingsError(ValueError):
    """Every problem of one settings object, one per line."""

    def __init__(self, owner: str, problems: list[Problem]) -> None:
        self.owner = owner
        self.problems = problems
        super().__init__("; ".join(p.render() for p in problems))


@dataclass(frozen=True)
class Check:
    """The constraint of one field, beyond its type. Bounds apply to numbers, `choices` to any
    value, `min_len` to lists; `None` passes a field typed `X | None`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    min_len: int | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lower = (
            f"[{_num(self.ge)}"
            if self.ge is not None
            else (f"({_num(self.gt)}" if self.gt is not None else None)
        )
        upper = (
            f"{_num(self.le)}]"
            if self.le is not None
            else (f"{_num(self.lt)})" if self.lt is not None else None)
        )
        if lower and upper:
            return f"in {lower}, {upper}"
        if lower:
            return f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}"
        if upper:
            return f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}"
        if self.min_len is not None:
            return f"with at least {self.min_len} item{'s' if self.min_len > 1 else ''}"
        return ""

    def holds(self, value: object) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.min_len is not None and len(value) < self.min_len:  # type: ignore[arg-type]
            return False
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isnan(value):
                return False
            if self.ge is not None and not value >= self.ge:
                return False
            if self.gt is not None and not value > self.gt:
                return False
            if self.le is not None and not value <= self.le:
                return False
            if self.lt is not None and not value < self.lt:
                return False
        return True


def _num(x: float) -> str:
    return "inf" if x == math.inf else f"{x:g}"


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | list | None = None,
    min_len: int | None = None,
) -> Any:
    """A dataclass field with a declared constraint (see `Check`)."""
    check = Check(ge, gt, le, lt, None if choices is None else tuple(choices), min_len)
    metadata = {_META_KEY: check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_HINTS: dict[type, dict[str, object]] = {}


def field_types(cls: type) -> dict[str, object]:
    """The annotated type of each init field of a dataclass, cached per class."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS[cls]


def type_name(tp: object) -> str:
    """Words for a type, as a spec's author reads them."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        inner = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(inner, type_name(inner))}"
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "nothing",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))  # type: ignore[arg-type]


def matches(value: object, tp: object) -> bool:
    """Whether a value (as TOML gives it) fits an annotated type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return any(matches(value, a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        return isinstance(value, list | tuple) and all(matches(v, inner) for v in value)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    if tp is Any or tp is object:
        return True
    return isinstance(value, tp)  # type: ignore[arg-type]


def field_problems(obj: object) -> list[Problem]:
    """Type and range problems of every field of a settings dataclass instance."""
    problems = []
    types_ = field_types(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        tp = types_[f.name]
        check: Check | None = f.metadata.get(_META_KEY)
        in_range = check is None or value is None or check.holds(value)
        if not (matches(value, tp) and in_range):
            problems.append(Problem(f.name, _expected(tp, check), value))
    return problems


def _expected(tp: object, check: Check | None) -> str:
    """What a field takes, in words: 'a number in [0, 1)', 'an integer >= 1 or nothing'."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (types.UnionType, typing.Union) else ()
    optional = type(None) in args
    base = [a for a in args if a is not type(None)] if args else [tp]
    rule = check.describe() if check is not None else ""
    if check is not None and check.choices is not None:
        words = rule
    else:
        words = f"{' or '.join(type_name(b) for b in base)} {rule}".strip()
    return f"{words} or nothing" if optional else words


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass (objectives, corpora, the model, training, evaluation,
    decoding). Subclasses declare fields with `setting(...)` and may override `cross_checks`
    for relations between fields; `__post_init__` runs both and raises one `SettingsError`."""

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if not problems:
            problems = self.cross_checks()
        if problems:
            raise SettingsError(type(self).__name__, problems)

    def cross_checks(self) -> list[Problem]:
        """Problems that involve several fields; run only once every field is valid alone."""
        return []


S = TypeVar("S")


def build_settings(
    cls: type[S], table: Mapping[str, object], fixed: tuple[str, ...] = ()
) -> tuple[S | None, list[Problem]]:
    """Construct `cls` from a spec table: unknown keys, types, ranges and cross-field checks
    all become problems (keys named as in the table); the object is None when any was found.
    `fixed` fields are not the table's to set (e.g. the model's vocabulary size)."""
    types_ = {k: v for k, v in field_types(cls).items() if k not in fixed}
    problems = []
    known = ", ".join(sorted(types_)) or "none"
    for key in table:
        if key not in types_:
            problems.append(Problem(key, f"a known key ({known})", key))
    kwargs = {k: v for k, v in table.items() if k in types_}
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and f.default is MISSING and f.default_factory is MISSING and f.name not in kwargs
    ]
    problems += [Problem(name, "a value (it is required)") for name in missing]
    if missing:
        return None, problems
    try:
        obj = cls(**kwargs)
    except SettingsError as e:
        return None, problems + e.problems
    return (None if problems else obj), problems
