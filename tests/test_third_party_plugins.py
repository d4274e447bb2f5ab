"""Third-party plugins of every kind, and the one generic `Registry` they all go through.

Fast tests drive fresh `Registry` instances with fake entry points (modules written to
tmp_path), and the contract checks of the real registries. The slow tests build one separate,
pip-installable package that declares an objective, a metric group, a corpus and a broken plugin
through entry points, install it into a target directory (nothing in site-packages changes),
and use it from `beyondmle list` and `beyondmle run` in subprocesses.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import beyondmle.api.registry as registry_module
from beyondmle.api import (
    CORPORA,
    METRICS,
    OBJECTIVES,
    CorpusSource,
    DuplicatePluginError,
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    PluginWarning,
    Registry,
    UnknownPluginError,
    register_corpus,
    register_metric,
    register_objective,
    setting,
)

GROUP = "beyondmle.test-things"


# --------------------------------------------------------------------------------------------
# The generic Registry, with fake entry points


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """Write `NAME.py` into an importable directory; the modules are forgotten afterwards."""
    root = tmp_path / "modules"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    names: list[str] = []

    def write(name: str, source: str) -> None:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: dict[str, str]) -> list[str]:
    """Make `Registry.load` see `eps` (name -> "module:attr") in GROUP; returns the list of
    groups it was asked for, to check that it asks once and for its own group."""
    asked: list[str] = []

    def entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        if group != GROUP:
            return []
        return [EntryPoint(name=name, value=value, group=group) for name, value in eps.items()]

    monkeypatch.setattr(registry_module, "entry_points", entry_points)
    return asked


def _load_recording_warnings(registry: Registry) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.load()
    return [w for w in caught if issubclass(w.category, PluginWarning)]


def test_decorator_registers_and_get_returns_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, {})
    things: Registry[type] = Registry("thing", GROUP)

    @things.register("a")
    class A:
        pass

    assert things.get("a") is A
    assert "a" in things
    assert things.names() == ["a"]
    assert things.items() == {"a": A}


def test_a_taken_name_refuses_another_object_and_accepts_the_same_one_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_entry_points(monkeypatch, {})
    things: Registry[type] = Registry("thing", GROUP)

    class A:
        pass

    class B:
        pass

    things.add("a", A)
    with pytest.raises(DuplicatePluginError, match="thing 'a' is already registered"):
        things.add("a", B)
    assert things.add("a", A) is A  # the same object twice: a no-op
    assert things.get("a") is A
    assert things.names() == ["a"]


def test_an_unknown_name_is_a_lookup_error_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_entry_points(monkeypatch, {})
    things: Registry[object] = Registry("thing", GROUP)
    things.add("b", object())
    things.add("a", object())
    with pytest.raises(UnknownPluginError) as raised:
        things.get("x")
    assert isinstance(raised.value, LookupError)
    assert str(raised.value) == "unknown thing 'x'; known: a, b"


def test_a_plugin_that_fails_to_import_costs_one_warning_and_the_others_load(
    monkeypatch: pytest.MonkeyPatch, write_module: Callable
) -> None:
    write_module("good_things", "class Good:\n    pass\n")
    write_module("more_things", "class Other:\n    pass\n")
    write_module(
        "broken_things",
        "raise ImportError('broken_things needs no_such_dependency')\nclass Thing:\n    pass\n",
    )
    asked = _fake_entry_points(
        monkeypatch,
        {
            "good": "good_things:Good",
            "broken": "broken_things:Thing",
            "other": "more_things:Other",
        },
    )
    things: Registry[type] = Registry("thing", GROUP)

    caught = _load_recording_warnings(things)

    assert asked == [GROUP]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "thing plugin 'broken' (broken_things:Thing)" in message
    assert "ImportError: broken_things needs no_such_dependency" in message
    assert things.names() == ["good", "other"]
    assert things.get("good") is sys.modules["good_things"].Good
    assert things.get("other") is sys.modules["more_things"].Other
    assert things.load_errors == {"broken": "ImportError: broken_things needs no_such_dependency"}
    with pytest.raises(UnknownPluginError, match="known: good, other"):
        things.get("broken")
    # Entry points load once: later lookups neither ask again nor warn again.
    assert _load_recording_warnings(things) == []
    assert asked == [GROUP]


def test_an_entry_point_under_a_taken_name_warns_and_the_first_plugin_stays(
    monkeypatch: pytest.MonkeyPatch, write_module: Callable
) -> None:
    write_module("impostor_things", "class A:\n    pass\n")
    write_module("same_things", "class Same:\n    pass\n")
    _fake_entry_points(monkeypatch, {"a": "impostor_things:A", "same": "same_things:Same"})
    things: Registry[type] = Registry("thing", GROUP)

    class A:
        pass

    things.add("a", A)
    # The name taken by the very object the entry point names (a built-in whose module was
    # imported, and so registered, before its entry point loaded): no warning.
    same = importlib.import_module("same_things").Same
    things.add("same", same)

    caught = _load_recording_warnings(things)

    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "thing plugin 'a' (impostor_things:A)" in message
    assert "DuplicatePluginError" in message
    assert f"already taken by {__name__}" in message
    assert things.get("a") is A
    assert things.get("same") is same
    assert set(things.load_errors) == {"a"}


def test_an_entry_point_named_apart_from_its_decorator_warns_and_registers_once(
    monkeypatch: pytest.MonkeyPatch, write_module: Callable
) -> None:
    things: Registry[type] = Registry("thing", GROUP)
    monkeypatch.setattr(registry_module, "_TEST_THINGS", things, raising=False)
    write_module(
        "renamed_things",
        "from beyondmle.api import registry\n"
        "@registry._TEST_THINGS.register('bar')\n"
        "class Bar:\n    pass\n",
    )
    _fake_entry_points(monkeypatch, {"foo": "renamed_things:Bar"})

    caught = _load_recording_warnings(things)

    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "registers itself as 'bar', not as the entry point's name 'foo'" in str(
        caught[0].message
    )
    assert things.names() == ["bar"]


# --------------------------------------------------------------------------------------------
# The contracts the real registries check


def test_register_objective_refuses_a_class_that_is_not_an_objective() -> None:
    try:
        with pytest.raises(TypeError, match="is not a subclass of Objective"):

            @register_objective("tp_not_an_objective")
            class NotAnObjective:
                def loss(self, model, batch, state):
                    return None

        assert "tp_not_an_objective" not in OBJECTIVES
    finally:
        OBJECTIVES.remove("tp_not_an_objective")


def test_register_objective_refuses_an_objective_without_loss() -> None:
    try:
        with pytest.raises(TypeError, match=r"objective 'tp_no_loss' must implement loss\(\)"):

            @register_objective("tp_no_loss")
            class NoLoss(Objective):
                pass

        with pytest.raises(TypeError, match=r"must implement manual_step\(\)"):

            @register_objective("tp_no_manual_step")
            class NoManualStep(Objective):
                manual_optimization = True

                def loss(self, model, batch, state):  # not what manual optimization calls
                    raise AssertionError

        assert "tp_no_loss" not in OBJECTIVES
        assert "tp_no_manual_step" not in OBJECTIVES
    finally:
        OBJECTIVES.remove("tp_no_loss")
        OBJECTIVES.remove("tp_no_manual_step")


def test_register_objective_accepts_a_complete_objective() -> None:
    """The counterpart of the refusals above: the checks do not refuse everything."""

    @dataclass(frozen=True)
    class HalfSettings(ObjectiveSettings):
        scale: float = setting(0.5, gt=0.0, le=1.0)

    try:

        @register_objective("tp_half_nll")
        class HalfNLL(Objective):
            Settings = HalfSettings

            def loss(self, model, batch, state):
                hidden = model.hidden_states(batch[:, :-1])
                loss = self.settings.scale * model.next_token_loss(hidden, batch[:, 1:])
                return ObjectiveOutput(loss=loss)

        assert OBJECTIVES.get("tp_half_nll") is HalfNLL
        assert HalfNLL.name == "tp_half_nll"
        assert "mle" in OBJECTIVES  # the built-ins still load beside it
    finally:
        OBJECTIVES.remove("tp_half_nll")
    assert "tp_half_nll" not in OBJECTIVES


def test_register_corpus_refuses_a_corpus_without_load() -> None:
    try:
        with pytest.raises(TypeError, match=r"corpus 'tp_no_load' must implement load\(\)"):

            @register_corpus("tp_no_load")
            class NoLoad(CorpusSource):
                pass

        assert "tp_no_load" not in CORPORA
    finally:
        CORPORA.remove("tp_no_load")


def test_register_metric_refuses_a_metric_without_outputs() -> None:
    try:
        with pytest.raises(ValueError, match="'tp_no_outputs' must declare at least one output"):

            @register_metric(
                "tp_no_outputs", version="1", needs={"samples"}, per_decoding=True, outputs=[]
            )
            def no_outputs(inputs):
                return []

        assert "tp_no_outputs" not in METRICS
    finally:
        METRICS.remove("tp_no_outputs")


# --------------------------------------------------------------------------------------------
# One separate package with a plugin of every kind, through pip and the CLI

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "beyondmle-tp-plugins"
version = "0.0.1"

[project.entry-points."beyondmle.objectives"]
token_dropout = "tp_plugins.objective:TokenDropout"

[project.entry-points."beyondmle.metrics"]
token_stats = "tp_plugins.metric:token_stats"
broken_metric = "tp_plugins.broken:broken_metric"

[project.entry-points."beyondmle.corpora"]
synthetic_words = "tp_plugins.corpus:SyntheticWords"

[tool.setuptools]
packages = ["tp_plugins"]
"""

PLUGIN_OBJECTIVE = '''
"""Token dropout: MLE on inputs with a share of the tokens replaced by <mask> (word dropout,
Bowman et al. 2016, "Generating Sentences from a Continuous Space", section 3.3); the targets
stay the true next tokens."""

from dataclasses import dataclass

import torch

from beyondmle.api import (
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    register_objective,
    setting,
)


@dataclass(frozen=True)
class TokenDropoutSettings(ObjectiveSettings):
    drop_prob: float = setting(0.1, ge=0.0, lt=1.0)


@register_objective("token_dropout")
class TokenDropout(Objective):
    """MLE with a share of the input tokens replaced by <mask>."""

    Settings = TokenDropoutSettings

    def loss(self, model, batch, state):
        inputs = batch[:, :-1]
        drop = torch.rand(inputs.shape, device=inputs.device) < self.settings.drop_prob
        inputs = inputs.masked_fill(drop, self.special.mask)
        loss = model.next_token_loss(model.hidden_states(inputs), batch[:, 1:])
        logs = {"nll": loss.detach(), "dropped": drop.float().mean()}
        return ObjectiveOutput(loss=loss, logs=logs)
'''

PLUGIN_METRIC = '''
"""Token statistics of the generated samples."""

from beyondmle.api import MetricValue, Output, register_metric


@register_metric(
    "token_stats",
    version="1",
    needs={"samples"},
    per_decoding=True,
    settings=("num_samples", "continuation_tokens"),
    outputs=[
        Output("sample_tokens", "mean sample length", higher_is_better=None, format=".1f"),
        Output("unique_token_share", "unique-token share", higher_is_better=True, format=".3f"),
    ],
)
def token_stats(inputs):
    tokens = [t for sample in inputs.samples for t in sample]
    return [
        MetricValue("sample_tokens", len(tokens) / len(inputs.samples)),
        MetricValue("unique_token_share", len(set(tokens)) / len(tokens)),
    ]
'''

PLUGIN_CORPUS = '''
"""A synthetic word corpus: sentences of a tiny grammar, drawn with a seed."""

import random
from dataclasses import dataclass

from beyondmle.api import Corpus, CorpusSettings, CorpusSource, register_corpus, setting
from beyondmle.tokenization import WordTokenizer

DETERMINERS = ["the", "a", "every", "no"]
ADJECTIVES = ["red", "small", "quick", "old", "happy"]
NOUNS = ["cat", "dog", "bird", "fish", "child", "robot", "farmer"]
VERBS = ["sees", "likes", "chases", "hears", "finds", "paints"]


def _noun_phrase(rng):
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


@dataclass(frozen=True)
class SyntheticSettings(CorpusSettings):
    sentences: int = setting(400, ge=50)
    seed: int = 0


@register_corpus("synthetic_words")
class SyntheticWords(CorpusSource):
    """Sentences of a tiny subject-verb-object grammar; a tenth each for valid and test."""

    Settings = SyntheticSettings

    def load(self):
        rng = random.Random(self.settings.seed)
        docs = [
            " ".join(_noun_phrase(rng) + [rng.choice(VERBS)] + _noun_phrase(rng))
            for _ in range(self.settings.sentences)
        ]
        tenth = len(docs) // 10
        documents = {
            "valid": docs[:tenth],
            "test": docs[tenth : 2 * tenth],
            "train": docs[2 * tenth :],
        }
        words = sorted({w for doc in documents["train"] for w in doc.split()})
        return Corpus("synthetic_words", WordTokenizer(words), documents, word_level=True)
'''

PLUGIN_BROKEN = """
raise ImportError("tp_plugins.broken needs no_such_dependency_for_tests")
"""

SPEC = """
[benchmark]
name = "third-party"
seeds = [0]
[[corpus]]
name = "synthetic_words"
sentences = 400
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
[training]
budget_tokens = 1024
batch_size = 4
precision = "32-true"
[[objective]]
name = "mle"
[[objective]]
name = "token_dropout"
drop_prob = 0.2
[decoding]
greedy = true
[evaluation]
prompt_tokens = 8
continuation_tokens = 8
num_samples = 8
self_bleu_samples = 8
metrics = ["perplexity", "token_stats"]
"""

BUILTIN = {
    "objectives": {
        "mle",
        "scheduled_sampling",
        "adversarial",
        "denoising",
        "unlikelihood",
        "rloo",
        "ppo",
        "dpo",
    },
    "corpora": {"oracle", "peoples_daily", "ptb", "text"},
    "metrics": {
        "perplexity",
        "continuation",
        "distinct",
        "self_bleu",
        "seq_rep",
        "entropy",
        "zipf",
        "mauve",
        "fed",
        "repetition",
        "oracle_quality",
        "oracle_coverage",
        "exposure_bias",
        "modes",
        "reward",
        "policy_kl",
        "reward_model",
    },
}


@dataclass(frozen=True)
class Installed:
    site: Path  # the package's install target, put on PYTHONPATH
    workdir: Path

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(self.site)}
        return subprocess.run(
            [*_beyondmle(), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _beyondmle() -> list[str]:
    """The `beyondmle` console script of this interpreter (what a user types)."""
    script = Path(sys.executable).parent / "beyondmle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "beyondmle.cli"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("third_party")
    package = root / "package"
    source = package / "tp_plugins"
    source.mkdir(parents=True)
    (package / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (source / "__init__.py").write_text("")
    (source / "objective.py").write_text(PLUGIN_OBJECTIVE)
    (source / "metric.py").write_text(PLUGIN_METRIC)
    (source / "corpus.py").write_text(PLUGIN_CORPUS)
    (source / "broken.py").write_text(PLUGIN_BROKEN)
    site = root / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    workdir = root / "work"
    workdir.mkdir()
    return Installed(site, workdir)


def _listed(stdout: str) -> dict[str, set[str]]:
    """`beyondmle list` output as {section: {names}}."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = set()
        elif line.startswith("  ") and current is not None:
            sections[current].add(line.split()[0])
    return sections


@pytest.mark.slow
def test_list_shows_third_party_plugins_beside_the_builtins_and_warns_once(
    installed: Installed,
) -> None:
    listed = installed.run("list", timeout=300)

    assert listed.returncode == 0, listed.stderr
    sections = _listed(listed.stdout)
    assert sections["objectives"] == BUILTIN["objectives"] | {"token_dropout"}
    assert sections["corpora"] == BUILTIN["corpora"] | {"synthetic_words"}
    assert sections["metrics"] == BUILTIN["metrics"] | {"token_stats"}
    assert "minilm" in sections["featurizers"]
    assert "sample_tokens, unique_token_share" in listed.stdout
    assert listed.stderr.count("PluginWarning") == 1, listed.stderr
    warning = next(line for line in listed.stderr.splitlines() if "PluginWarning" in line)
    assert "metric plugin 'broken_metric' (tp_plugins.broken:broken_metric)" in warning
    assert "ImportError: tp_plugins.broken needs no_such_dependency_for_tests" in warning


@pytest.mark.slow
def test_a_spec_out_of_the_plugins_declared_ranges_is_refused_before_training(
    installed: Installed, tmp_path: Path
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        SPEC.replace("drop_prob = 0.2", "drop_prob = 1.5").replace(
            "sentences = 400", "sentences = 3"
        )
    )
    run = installed.run("run", str(spec), "--out", str(tmp_path / "out"), timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "drop_prob" in run.stderr and "1.5" in run.stderr, run.stderr
    assert "sentences" in run.stderr, run.stderr
    assert not (tmp_path / "out" / "results.sqlite").exists()


@pytest.mark.slow
def test_third_party_objective_metric_and_corpus_run_in_a_matrix(
    installed: Installed, tmp_path: Path
) -> None:
    spec = tmp_path / "third-party.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    run = installed.run("run", str(spec), "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    with sqlite3.connect(out / "results.sqlite") as db:
        cells = set(db.execute("SELECT corpus, objective, status FROM cells"))
        stats = db.execute(
            "SELECT objective, decoding, metric, value FROM metrics "
            "WHERE metric IN ('sample_tokens', 'unique_token_share')"
        ).fetchall()
        ppl = dict(db.execute("SELECT objective, value FROM metrics WHERE metric = 'ppl_test'"))
        info = set(
            db.execute(
                "SELECT metric, metric_group, display, higher_is_better, per_decoding, format "
                "FROM metric_info WHERE metric_group = 'token_stats'"
            )
        )
        fingerprints = db.execute(
            "SELECT version FROM fingerprints WHERE metric = 'token_stats'"
        ).fetchall()

    assert cells == {
        ("synthetic_words", "mle", "done"),
        ("synthetic_words", "token_dropout", "done"),
    }
    assert set(ppl) == {"mle", "token_dropout"}
    assert all(torch.isfinite(torch.tensor(v)) and v > 1 for v in ppl.values()), ppl
    # One greedy decoding per cell, two values each; every sample is continuation_tokens long.
    assert len(stats) == 4, stats
    values = {(objective, metric): value for objective, _, metric, value in stats}
    assert {decoding for _, decoding, _, _ in stats} != {""}  # stored per decoding
    for objective in ("mle", "token_dropout"):
        assert values[objective, "sample_tokens"] == 8.0
        assert 0 < values[objective, "unique_token_share"] <= 1
    assert info == {
        ("sample_tokens", "token_stats", "mean sample length", None, 1, ".1f"),
        ("unique_token_share", "token_stats", "unique-token share", 1, 1, ".3f"),
    }
    assert fingerprints == [("1",)]
    # The report names and ranks the third-party metric from metric_info, without report code.
    report = (out / "report" / "report.md").read_text()
    assert "| unique-token share ↑ |" in report
    assert "| mean sample length |" in report  # no direction, no arrow
