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
    alpha = 1.0        # (`corpora = ["ptb"]` runs a variant on those corpora only)
    [objective.sweep]  # optional: each key gets a list of values; every combination runs
    alpha = [0.5, 1.0]

    [decoding]         # the grid: greedy, and pure sampling at each temperature / top-p / top-k
    greedy = true
    temperature = [0.7, 1.0]
    top_p = [0.9]

    [evaluation]       # EvaluationConfig
    num_samples = 1000

    [[preferences]]    # RLHF: a preference source per corpus (`corpus` may be left out with
    corpus = "oracle"  # one corpus) and its settings; a reward model is trained from it
    source = "oracle"
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from beyondmle.api import (
    CORPORA,
    METRICS,
    OBJECTIVES,
    PREFERENCE_SOURCES,
    Problem,
    build_settings,
)
from beyondmle.decoding import DecodingConfig
from beyondmle.evaluation import EvaluationConfig
from beyondmle.model import ModelConfig
from beyondmle.settings import NOTHING, Settings, matches, setting, type_name
from beyondmle.training import TrainingConfig


@dataclass(frozen=True)
class SpecIssue:
    key: str
    expected: str
    got: object = NOTHING

    def render(self, path: str) -> str:
        got = "" if self.got is NOTHING else f", got {self.got!r}"
        return f"{path}: {self.key}: expected {self.expected}{got}"


class SpecError(ValueError):
    """Every problem of a spec file, one per line."""

    def __init__(self, path: str | Path, issues: list[SpecIssue]) -> None:
        self.path = str(path)
        self.issues = issues
        super().__init__("\n".join(issue.render(self.path) for issue in issues))


@dataclass(frozen=True)
class ObjectiveVariant:
    """One objective with all its settings resolved; `label` names it in results; `corpora`
    restricts it to those corpora of the spec (None: every corpus), so one spec can run, say,
    oracle-labelled RLHF on the oracle tier and SPIN on PTB without crossing them."""

    name: str
    settings: dict
    label: str
    corpora: tuple[str, ...] | None = None

    def runs_on(self, corpus: str) -> bool:
        return self.corpora is None or corpus in self.corpora


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    settings: dict


@dataclass(frozen=True)
class PreferenceSpec:
    """A `[[preferences]]` table: the corpus it serves (None: every corpus), its source and
    the source's settings."""

    corpus: str | None
    source: str
    settings: dict


REGIMES = ("from_scratch", "finetune")
BASES = ("trained", "pretrained")


@dataclass(frozen=True)
class Regime(Settings):
    """The spec's `[regime]` table. `from_scratch`: every objective trains a fresh model.
    `finetune`: a shared MLE base (its training in `[base]`) is trained once per corpus and
    model, or once per seed (`base_per_seed`), and every objective, MLE included as the
    control, fine-tunes from it under `[training]`. With one base (`base_seed`) the intervals
    cover the fine-tuning seeds only; with one per seed, the base's seed too.

    `base = "pretrained"`: the base is a pretrained `[model]` (`hf` or `gguf`) as it is loaded,
    trained no further (no `[base]` table). Its cell is evaluated like any other, which gives
    the "before fine-tuning" figures beside each objective's "after"."""

    kind: str = setting("from_scratch", choices=REGIMES)
    base: str = setting("trained", choices=BASES)
    base_per_seed: bool = False
    base_seed: int = 0


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
    regime: Regime = field(default_factory=Regime)
    base_training: TrainingConfig | None = None
    preferences: tuple[PreferenceSpec, ...] = ()
    launcher: dict = field(default_factory=dict)  # checked by the launcher chosen at run time

    def preferences_for(self, corpus: CorpusSpec) -> PreferenceSpec | None:
        """The preference table of a corpus: its own, else the one without a corpus."""
        own = [p for p in self.preferences if p.corpus == corpus.name]
        shared = [p for p in self.preferences if p.corpus is None]
        return (own or shared or [None])[0]


DECODING_KEYS = {
    "greedy": bool,
    "temperature": list[float],
    "top_p": list[float],
    "top_k": list[int],
}
TOP_LEVEL = {
    "benchmark",
    "corpus",
    "model",
    "training",
    "objective",
    "decoding",
    "evaluation",
    "regime",
    "base",
    "preferences",
    "launcher",
}


def _issues(where: str, problems: list[Problem]) -> list[SpecIssue]:
    """A settings checker's problems as spec issues, keyed by their place in the file."""
    return [SpecIssue(f"{where}.{p.key}", p.expected, p.got) for p in problems]


def _build(cls, table: dict, where: str, issues: list[SpecIssue], fixed: tuple[str, ...] = ()):
    """A settings dataclass from a spec table; every problem of the table becomes an issue."""
    obj, problems = build_settings(cls, table, fixed)
    issues += _issues(where, problems)
    return obj


def _check_keys(
    table: dict, allowed: dict[str, object], where: str, issues: list[SpecIssue]
) -> dict:
    """Keep the well-typed known keys of `table`; report unknown and ill-typed ones."""
    good = {}
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            issues.append(SpecIssue(f"{where}.{key}", f"a known key ({known})", key))
        elif not matches(value, allowed[key]):
            issues.append(SpecIssue(f"{where}.{key}", type_name(allowed[key]), value))
        else:
            good[key] = value
    return good


def _table(data: dict, key: str, issues: list[SpecIssue], required: bool = False) -> dict:
    value = data.get(key, {})
    if key not in data and required:
        issues.append(SpecIssue(f"[{key}]", "a table (it is required)"))
    if not isinstance(value, dict):
        issues.append(SpecIssue(key, "a table", value))
        return {}
    return value


def _tables(data: dict, key: str, issues: list[SpecIssue], required: bool = True) -> list[dict]:
    value = data.get(key, [])
    if required and key not in data:
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
        name = table.get("name", NOTHING)
        if name not in CORPORA:
            expected = f"a corpus name, one of {', '.join(CORPORA.names())}"
            issues.append(SpecIssue(f"{where}.name", expected, name))
            continue
        settings = {k: v for k, v in table.items() if k != "name"}
        if _build(CORPORA.get(name).Settings, settings, where, issues) is not None:
            out.append(CorpusSpec(name, settings))
    return out


def _model(data: dict, issues: list[SpecIssue]) -> dict:
    table = _table(data, "model", issues)
    _build(ModelConfig, table, "model", issues, fixed=("vocab_size",))  # the tokenizer's
    return table


def _regime(
    data: dict, model: dict, issues: list[SpecIssue]
) -> tuple[Regime, TrainingConfig | None]:
    regime = _build(Regime, _table(data, "regime", issues), "regime", issues) or Regime()
    base = None
    if regime.base == "pretrained":
        issues += _pretrained_base_issues(data, regime, model)
    elif regime.kind == "finetune":
        if "base" not in data:
            issues.append(
                SpecIssue("[base]", "a table: the MLE base's [training] (regime finetune)")
            )
        base = _build(TrainingConfig, _table(data, "base", issues), "base", issues)
    elif "base" in data:
        issues.append(SpecIssue("[base]", "no table unless [regime] kind = 'finetune'"))
    return regime, base


def _pretrained_base_issues(data: dict, regime: Regime, model: dict) -> list[SpecIssue]:
    """`base = "pretrained"` fine-tunes a loaded model: it needs one, and trains no base."""
    issues = []
    if regime.kind != "finetune":
        issues.append(SpecIssue("regime.base", "'trained' unless kind = 'finetune'", "pretrained"))
    if model.get("hf") is None and model.get("gguf") is None:
        expected = "a pretrained model (model.hf or model.gguf) for [regime] base = 'pretrained'"
        issues.append(SpecIssue("model.hf", expected))
    if "base" in data:
        issues.append(SpecIssue("[base]", "no table: [regime] base = 'pretrained' trains no base"))
    if regime.base_per_seed:
        issues.append(
            SpecIssue("regime.base_per_seed", "false: one pretrained model serves every seed", True)
        )
    return issues


def _objective_corpora(
    table: dict, where: str, corpus_names: list[str], issues: list[SpecIssue]
) -> tuple[str, ...] | None:
    """An objective table's `corpora`: None when absent, else corpora this spec declares."""
    if "corpora" not in table:
        return None
    given = table["corpora"]
    if (
        not isinstance(given, list)
        or not given
        or any(name not in corpus_names for name in given)
        or len(set(given)) != len(given)
    ):
        expected = f"a non-empty list of this spec's corpora ({', '.join(corpus_names)})"
        issues.append(SpecIssue(f"{where}.corpora", expected, given))
        return None
    return tuple(given)


def _objectives(
    data: dict,
    issues: list[SpecIssue],
    finetune: bool = False,
    corpus_names: list[str] | None = None,
) -> list[ObjectiveVariant]:
    out = []
    for i, table in enumerate(_tables(data, "objective", issues)):
        where = f"objective[{i}]"
        name = table.get("name", NOTHING)
        if name not in OBJECTIVES:
            expected = f"an objective name, one of {', '.join(OBJECTIVES.names())}"
            issues.append(SpecIssue(f"{where}.name", expected, name))
            continue
        cls = OBJECTIVES.get(name)
        types_ = {f.name: f.type for f in dataclasses.fields(cls.Settings)}
        base = {k: v for k, v in table.items() if k not in ("name", "sweep", "label", "corpora")}
        corpora = _objective_corpora(table, where, corpus_names or [], issues)
        given_label = table.get("label", name)
        if not isinstance(given_label, str) or not given_label:
            issues.append(SpecIssue(f"{where}.label", "a non-empty string", given_label))
            given_label = name
        sweep = table.get("sweep", {})
        if not isinstance(sweep, dict):
            issues.append(SpecIssue(f"{where}.sweep", "a table of lists", sweep))
            sweep = {}
        for key, values in list(sweep.items()):
            if key not in types_:
                known = ", ".join(sorted(types_))
                issues.append(SpecIssue(f"{where}.sweep.{key}", f"a known key ({known})", key))
                sweep.pop(key)
            elif not isinstance(values, list) or not values:
                issues.append(SpecIssue(f"{where}.sweep.{key}", "a non-empty list", values))
                sweep.pop(key)
        keys = sorted(sweep)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            chosen = dict(zip(keys, combo, strict=True))
            settings, problems = build_settings(cls.Settings, {**base, **chosen})
            for p in problems:  # a swept value is named where the sweep gives it
                key = f"{where}.sweep.{p.key}" if p.key in chosen else f"{where}.{p.key}"
                issue = SpecIssue(key, p.expected, p.got)
                if issue not in issues:
                    issues.append(issue)
            if settings is None:
                continue
            if (
                cls.warm_start
                and not finetune
                and not (settings.warm_start_fraction > 0 or settings.warm_start_checkpoint)
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
            out.append(ObjectiveVariant(name, dataclasses.asdict(settings), label, corpora))
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


def _preferences(
    data: dict, corpora: list[CorpusSpec], issues: list[SpecIssue]
) -> list[PreferenceSpec]:
    out = []
    names = [c.name for c in corpora]
    for i, table in enumerate(_tables(data, "preferences", issues, required=False)):
        where = f"preferences[{i}]"
        corpus = table.get("corpus")
        if corpus is not None and corpus not in names:
            issues.append(
                SpecIssue(f"{where}.corpus", f"a corpus of this spec ({', '.join(names)})", corpus)
            )
        source = table.get("source", NOTHING)
        if source not in PREFERENCE_SOURCES:
            known = ", ".join(PREFERENCE_SOURCES.names())
            issues.append(SpecIssue(f"{where}.source", f"a preference source ({known})", source))
            continue
        cls = PREFERENCE_SOURCES.get(source)
        settings = {k: v for k, v in table.items() if k not in ("corpus", "source")}
        if _build(cls.Settings, settings, where, issues) is None:
            continue
        served = [c for c in corpora if corpus is None or c.name == corpus]
        for c in served:
            has_oracle = getattr(CORPORA.get(c.name), "has_oracle", False)
            issues += _issues(where, cls.check_corpus(has_oracle))
        out.append(PreferenceSpec(corpus, source, settings))
    for key in sorted(
        {p.corpus for p in out if [q.corpus for q in out].count(p.corpus) > 1}, key=str
    ):
        issues.append(SpecIssue("preferences", "one table per corpus", key or "(every corpus)"))
    return out


def _resources_issues(
    objectives: list[ObjectiveVariant],
    corpora: list[CorpusSpec],
    preferences: list[PreferenceSpec],
    finetune: bool,
    model: dict,
) -> list[SpecIssue]:
    """Objectives whose resources (`Objective.uses`) this spec cannot give, and settings that
    do not fit the model."""
    issues = []
    covered = {p.corpus for p in preferences}
    for i, variant in enumerate(objectives):
        cls = OBJECTIVES.get(variant.name)
        where = f"objective[{i}]"
        settings, _ = build_settings(cls.Settings, variant.settings)
        if settings is not None:
            issues += _issues(where, cls.check_with(settings, model))
        if (
            "reference" in cls.uses
            and not finetune
            and not variant.settings.get("warm_start_checkpoint")
        ):
            issues.append(
                SpecIssue(
                    f"{where}.name",
                    f"a reference policy for {variant.name!r}: [regime] kind = 'finetune' (its "
                    "MLE base) or a warm_start_checkpoint",
                    variant.name,
                )
            )
        if cls.uses & {"reward_model", "preference_pairs"} and not finetune:
            issues.append(
                SpecIssue(
                    f"{where}.name",
                    f"[regime] kind = 'finetune' for {variant.name!r}: its preferences are drawn "
                    "from the MLE base, the reference",
                    variant.name,
                )
            )
        if cls.uses & {"reward_model", "preference_pairs"}:
            for c in corpora:
                if variant.runs_on(c.name) and None not in covered and c.name not in covered:
                    issues.append(
                        SpecIssue(
                            "preferences",
                            f"a [[preferences]] table for corpus {c.name!r}: objective "
                            f"{variant.label!r} learns from preferences",
                        )
                    )
    return list(dict.fromkeys(issues))


def _decodings(data: dict, issues: list[SpecIssue]) -> list[DecodingConfig]:
    table = _check_keys(_table(data, "decoding", issues), DECODING_KEYS, "decoding", issues)
    grid: list[DecodingConfig] = []
    candidates = [({"greedy": True}, "decoding")] if table.get("greedy", False) else []
    for key in ("temperature", "top_p", "top_k"):
        candidates += [({key: v}, "decoding") for v in table.get(key, [])]
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
    model = _model(data, issues)
    training = _build(TrainingConfig, _table(data, "training", issues), "training", issues)
    evaluation = _build(EvaluationConfig, _table(data, "evaluation", issues), "evaluation", issues)
    regime, base_training = _regime(data, model, issues)
    objectives = _objectives(
        data, issues, finetune=regime.kind == "finetune", corpus_names=[c.name for c in corpora]
    )
    preferences = _preferences(data, corpora, issues)
    issues += _resources_issues(objectives, corpora, preferences, regime.kind == "finetune", model)
    if preferences and regime.kind != "finetune":
        issues.append(
            SpecIssue(
                "preferences",
                "[regime] kind = 'finetune' with [[preferences]]: the pairs and the reward model "
                "start from the MLE base",
            )
        )
    decodings = _decodings(data, issues)
    if evaluation is not None and model.get("block_size", ModelConfig.block_size) < (
        evaluation.prompt_tokens + evaluation.continuation_tokens
    ):
        issues.append(
            SpecIssue(
                "evaluation.continuation_tokens",
                "prompt_tokens + continuation_tokens <= model.block_size",
                evaluation.prompt_tokens + evaluation.continuation_tokens,
            )
        )
    if evaluation is not None:
        any_oracle = any(getattr(CORPORA.get(c.name), "has_oracle", False) for c in corpora)
        for i, corpus in enumerate(corpora):
            cls = CORPORA.get(corpus.name)
            settings, _ = build_settings(cls.Settings, corpus.settings)
            if settings is not None:
                issues += _issues(f"corpus[{i}]", cls.check_with(settings, evaluation, model))
            for metric in evaluation.metrics:
                needs = METRICS.get(metric).needs if metric in METRICS else frozenset()
                if "reward" in needs and spec_preferences_missing(preferences, corpus):
                    issues.append(
                        SpecIssue(
                            "evaluation.metrics",
                            f"metrics this spec can give: {metric!r} needs a reward model "
                            f"(a [[preferences]] table for corpus {corpus.name!r})",
                            metric,
                        )
                    )
                if "reference" in needs and regime.kind != "finetune":
                    issues.append(
                        SpecIssue(
                            "evaluation.metrics",
                            f"metrics this spec can give: {metric!r} needs a reference policy "
                            "([regime] kind = 'finetune')",
                            metric,
                        )
                    )
            # In a spec mixing corpora, oracle metrics are scored where there is an oracle and
            # left out elsewhere; a spec with no oracle corpus at all cannot give them.
            if not any_oracle:
                for metric in evaluation.metrics:
                    if "oracle" in METRICS.get(metric).needs:
                        issues.append(
                            SpecIssue(
                                "evaluation.metrics",
                                f"metrics a corpus can give: {metric!r} needs an oracle corpus "
                                f"(corpus[{i}] is {corpus.name!r})",
                                metric,
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
        model=model,
        training=training,
        objectives=tuple(objectives),
        decodings=tuple(decodings),
        evaluation=evaluation,
        regime=regime,
        base_training=base_training,
        preferences=tuple(preferences),
        launcher=_table(data, "launcher", issues),
    )


def spec_preferences_missing(preferences: list[PreferenceSpec], corpus: CorpusSpec) -> bool:
    return not any(p.corpus in (None, corpus.name) for p in preferences)
