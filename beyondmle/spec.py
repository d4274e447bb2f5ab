"""Benchmark specs: one TOML file declares corpora, model, training budget, objectives (with
sweeps), seeds, the decoding grid and the evaluation. The whole file is checked before anything
runs, and every problem is reported at once with the file, the key and what was expected.

    [benchmark]
    name = "quick"
    seeds = [0, 1]

    [[corpus]]
    name = "ptb"

    [model]            # beyondmle.model.ModelConfig, without vocab_size (the tokenizer's)
    n_layer = 4

    [training]         # beyondmle.training.TrainingConfig
    budget_tokens = 2_000_000

    [[objective]]      # name, an optional label, and the objective's own Settings fields
    name = "unlikelihood"
    alpha = 1.0
    [objective.sweep]  # optional: each key gets a list of values; every combination runs
    alpha = [0.5, 1.0]

    [decoding]         # the grid: greedy, and pure sampling at each temperature / top-p / top-k
    greedy = true
    temperature = [0.7, 1.0]
    top_p = [0.9]

    [evaluation]       # EvaluationConfig
    num_samples = 1000
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from beyondmle.corpora import available_corpora
from beyondmle.decoding import DecodingConfig
from beyondmle.evaluation import EvaluationConfig
from beyondmle.model import ModelConfig
from beyondmle.training import TrainingConfig
from objectives import available_objectives


@dataclass(frozen=True)
class SpecIssue:
    key: str
    expected: str
    got: object = None

    def render(self, path: str) -> str:
        got = "" if self.got is None else f", got {self.got!r}"
        return f"{path}: {self.key}: expected {self.expected}{got}"


class SpecError(ValueError):
    """Every problem of a spec file, one per line."""

    def __init__(self, path: str | Path, issues: list[SpecIssue]) -> None:
        self.path = str(path)
        self.issues = issues
        super().__init__("\n".join(issue.render(self.path) for issue in issues))


@dataclass(frozen=True)
class ObjectiveVariant:
    """One objective with all its settings resolved; `label` names it in results."""

    name: str
    settings: dict
    label: str


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    settings: dict


@dataclass(frozen=True)
class Spec:
    path: str
    text: str
    name: str
    seeds: tuple[int, ...]
    corpora: tuple[CorpusSpec, ...]
    model: dict
    training: TrainingConfig
    objectives: tuple[ObjectiveVariant, ...]
    decodings: tuple[DecodingConfig, ...]
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


CORPUS_SETTINGS: dict[str, dict[str, type]] = {
    "ptb": {},
    "text": {
        "paths": list[str],
        "vocab_size": int,
        "valid_fraction": float,
        "test_fraction": float,
        "split_seed": int,
        "cache_dir": str,
    },
}
CORPUS_REQUIRED = {"text": {"paths"}}
DECODING_KEYS = {
    "greedy": bool,
    "temperature": list[float],
    "top_p": list[float],
    "top_k": list[int],
}
TOP_LEVEL = {"benchmark", "corpus", "model", "training", "objective", "decoding", "evaluation"}


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "nothing",
    }.get(tp, str(tp))


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def _check_keys(
    table: dict, allowed: dict[str, object], where: str, issues: list[SpecIssue]
) -> dict:
    """Keep the well-typed known keys of `table`; report unknown and ill-typed ones."""
    good = {}
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            issues.append(SpecIssue(f"{where}.{key}", f"a known key ({known})", key))
        elif not _matches(value, allowed[key]):
            issues.append(SpecIssue(f"{where}.{key}", _type_name(allowed[key]), value))
        else:
            good[key] = value
    return good


def _dataclass_types(cls, exclude: tuple[str, ...] = ()) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in exclude}


def _build(cls, kwargs: dict, where: str, issues: list[SpecIssue]):
    """Construct a config dataclass; its own range checks become spec issues."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        issues.append(SpecIssue(where, str(e)))
        return None


def _table(data: dict, key: str, issues: list[SpecIssue], required: bool = False) -> dict:
    value = data.get(key, {})
    if key not in data and required:
        issues.append(SpecIssue(f"[{key}]", "a table (it is required)"))
    if not isinstance(value, dict):
        issues.append(SpecIssue(key, "a table", value))
        return {}
    return value


def _tables(data: dict, key: str, issues: list[SpecIssue]) -> list[dict]:
    value = data.get(key, [])
    if key not in data:
        issues.append(SpecIssue(f"[[{key}]]", "at least one table (it is required)"))
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        issues.append(SpecIssue(key, f"an array of tables [[{key}]]", value))
        return []
    return value


def _benchmark(data: dict, issues: list[SpecIssue]) -> tuple[str, tuple[int, ...]]:
    table = _check_keys(
        _table(data, "benchmark", issues, required=True),
        {"name": str, "seeds": list[int]},
        "benchmark",
        issues,
    )
    seeds = table.get("seeds")
    if seeds is None and "benchmark" in data and "seeds" not in data["benchmark"]:
        issues.append(SpecIssue("benchmark.seeds", "a list of integer seeds (it is required)"))
    elif seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        issues.append(SpecIssue("benchmark.seeds", "a non-empty list of distinct seeds", seeds))
    return table.get("name", "benchmark"), tuple(seeds or ())


def _corpora(data: dict, issues: list[SpecIssue]) -> list[CorpusSpec]:
    out = []
    for i, table in enumerate(_tables(data, "corpus", issues)):
        where = f"corpus[{i}]"
        name = table.get("name")
        if name not in CORPUS_SETTINGS:
            expected = f"a corpus name, one of {', '.join(available_corpora())}"
            issues.append(SpecIssue(f"{where}.name", expected, name))
            continue
        settings = {k: v for k, v in table.items() if k != "name"}
        settings = _check_keys(settings, CORPUS_SETTINGS[name], where, issues)
        for key in sorted(CORPUS_REQUIRED.get(name, set()) - set(table)):
            issues.append(SpecIssue(f"{where}.{key}", f"a value (corpus {name!r} requires it)"))
        if name == "text":
            for p in settings.get("paths", []):
                if not Path(p).is_file():
                    issues.append(SpecIssue(f"{where}.paths", "paths of existing files", p))
        out.append(CorpusSpec(name, settings))
    return out


def _objectives(data: dict, issues: list[SpecIssue]) -> list[ObjectiveVariant]:
    registry = available_objectives()
    out = []
    for i, table in enumerate(_tables(data, "objective", issues)):
        where = f"objective[{i}]"
        name = table.get("name")
        if name not in registry:
            expected = f"an objective name, one of {', '.join(registry)}"
            issues.append(SpecIssue(f"{where}.name", expected, name))
            continue
        cls = registry[name]
        types_ = _dataclass_types(cls.Settings)
        base = {k: v for k, v in table.items() if k not in ("name", "sweep", "label")}
        given_label = table.get("label", name)
        if not isinstance(given_label, str) or not given_label:
            issues.append(SpecIssue(f"{where}.label", "a non-empty string", given_label))
            given_label = name
        base = _check_keys(base, types_, where, issues)
        sweep = table.get("sweep", {})
        if not isinstance(sweep, dict):
            issues.append(SpecIssue(f"{where}.sweep", "a table of lists", sweep))
            sweep = {}
        list_types = {k: list[tp] for k, tp in types_.items()}
        sweep = _check_keys(sweep, list_types, f"{where}.sweep", issues)
        for key, values in sweep.items():
            if not values:
                issues.append(SpecIssue(f"{where}.sweep.{key}", "a non-empty list", values))
        keys = sorted(sweep)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            chosen = dict(zip(keys, combo, strict=True))
            settings = _build(cls.Settings, {**base, **chosen}, where, issues)
            if settings is None:
                break
            if cls.warm_start and not (
                settings.warm_start_fraction > 0 or settings.warm_start_checkpoint
            ):
                issues.append(
                    SpecIssue(
                        f"{where}.warm_start_fraction",
                        f"a value in (0, 1) or a warm_start_checkpoint: objective {name!r} starts "
                        "from an MLE-trained model",
                        settings.warm_start_fraction,
                    )
                )
            label = given_label + (
                "[" + ",".join(f"{k}={v}" for k, v in chosen.items()) + "]" if chosen else ""
            )
            out.append(ObjectiveVariant(name, dataclasses.asdict(settings), label))
    labels = [v.label for v in out]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        issues.append(
            SpecIssue(
                "objective",
                "distinct labels: give each variant of an objective its own `label`",
                label,
            )
        )
    return out


def _decodings(data: dict, issues: list[SpecIssue]) -> list[DecodingConfig]:
    table = _check_keys(_table(data, "decoding", issues), DECODING_KEYS, "decoding", issues)
    grid: list[DecodingConfig] = []
    candidates = [({"greedy": True}, "decoding.greedy")] if table.get("greedy", False) else []
    for key in ("temperature", "top_p", "top_k"):
        candidates += [({key: v}, f"decoding.{key}") for v in table.get(key, [])]
    for kwargs, where in candidates:
        decoding = _build(DecodingConfig, kwargs, where, issues)
        if decoding is not None and decoding not in grid:
            grid.append(decoding)
    if not grid and "decoding" in data:
        issues.append(
            SpecIssue("decoding", "at least one setting (greedy, temperature, top_p or top_k)")
        )
    return grid or [DecodingConfig(greedy=True)]


def parse_spec(path: str | Path) -> Spec:
    """Read and check a spec file; raise SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        issue = SpecIssue("(file)", f"a readable TOML file ({e.strerror})")
        raise SpecError(path, [issue]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(path, [SpecIssue("(file)", f"valid TOML ({e})")]) from None
    issues: list[SpecIssue] = []
    for key in sorted(set(data) - TOP_LEVEL):
        issues.append(SpecIssue(key, f"a known section ({', '.join(sorted(TOP_LEVEL))})", key))
    name, seeds = _benchmark(data, issues)
    corpora = _corpora(data, issues)
    model_kwargs = _check_keys(
        _table(data, "model", issues),
        _dataclass_types(ModelConfig, ("vocab_size",)),
        "model",
        issues,
    )
    _build(ModelConfig, model_kwargs, "model", issues)
    training = _build(
        TrainingConfig,
        _check_keys(
            _table(data, "training", issues), _dataclass_types(TrainingConfig), "training", issues
        ),
        "training",
        issues,
    )
    evaluation = _build(
        EvaluationConfig,
        _check_keys(
            _table(data, "evaluation", issues),
            _dataclass_types(EvaluationConfig),
            "evaluation",
            issues,
        ),
        "evaluation",
        issues,
    )
    objectives = _objectives(data, issues)
    decodings = _decodings(data, issues)
    if evaluation is not None and model_kwargs.get("block_size", ModelConfig.block_size) < (
        evaluation.prompt_tokens + evaluation.continuation_tokens
    ):
        issues.append(
            SpecIssue(
                "evaluation.continuation_tokens",
                "prompt_tokens + continuation_tokens <= model.block_size",
                evaluation.prompt_tokens + evaluation.continuation_tokens,
            )
        )
    if issues:
        raise SpecError(path, issues)
    return Spec(
        path=str(path),
        text=text,
        name=name,
        seeds=seeds,
        corpora=tuple(corpora),
        model=model_kwargs,
        training=training,
        objectives=tuple(objectives),
        decodings=tuple(decodings),
        evaluation=evaluation,
    )
