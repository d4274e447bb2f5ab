"""The evaluation pass: fingerprints that follow exactly the settings that change a value, the
length guardrail between human and model text, and what each metric is handed."""

import numpy as np
import pytest
import torch

from beyondmle.api import (
    available_metrics,
    fingerprint,
    get_metric,
    load_corpus,
    register_featurizer,
)
from beyondmle.decoding import DecodingConfig
from beyondmle.evaluation import EvaluationConfig, Evaluator, sample_file_name
from beyondmle.model import GPT, ModelConfig


@pytest.fixture(scope="module")
def ptb():
    return load_corpus("ptb")


def evaluator(corpus, **settings) -> Evaluator:
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=corpus.tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16
        )
    )
    defaults = {
        "prompt_tokens": 8,
        "continuation_tokens": 8,
        "num_samples": 6,
        "self_bleu_samples": 6,
    }
    config = EvaluationConfig(**{**defaults, **settings})
    return Evaluator(model, corpus, config)


def test_fingerprint_is_stable_and_changes_with_every_input() -> None:
    base = fingerprint("mauve", "1", {"num_samples": 1000, "featurizer": "minilm"})
    assert base == fingerprint("mauve", "1", {"featurizer": "minilm", "num_samples": 1000})
    assert base != fingerprint("mauve", "2", {"num_samples": 1000, "featurizer": "minilm"})
    assert base != fingerprint("mauve", "1", {"num_samples": 999, "featurizer": "minilm"})
    assert base != fingerprint("fed", "1", {"num_samples": 1000, "featurizer": "minilm"})


@pytest.mark.parametrize(
    ("metric", "setting", "value", "changes"),
    [
        ("mauve", "num_samples", 500, True),
        ("mauve", "featurizer", "gpt2-large", True),
        ("mauve", "mauve_seeds", [3, 4, 5], True),
        ("mauve", "continuation_tokens", 9, True),
        ("mauve", "batch_size", 7, False),
        ("self_bleu", "self_bleu_samples", 5, True),
        ("self_bleu", "sample_seed", 1, True),
        ("self_bleu", "featurizer", "gpt2-large", False),
        ("distinct", "mauve_scaling", 2.0, False),
        ("perplexity", "eval_stride", 8, True),
        ("perplexity", "num_samples", 5, False),
        ("repetition", "rep_window", 4, True),
        ("continuation", "rep_window", 4, False),
        ("distinct", "bootstrap_replicates", 50, False),
    ],
)
def test_fingerprints_change_with_the_settings_that_change_the_value_and_no_others(
    ptb, metric, setting, value, changes
) -> None:
    before = evaluator(ptb).settings
    after = evaluator(ptb, **{setting: value}).settings
    m = get_metric(metric)
    assert (m.fingerprint(before) != m.fingerprint(after)) is changes


def test_every_fingerprint_names_the_tokenizer(ptb) -> None:
    settings = evaluator(ptb).settings
    for metric in available_metrics().values():
        assert "tokenizer" in metric.fingerprint_settings(settings), metric.name
    other = {**settings, "tokenizer": "something-else"}
    assert get_metric("distinct").fingerprint(settings) != get_metric("distinct").fingerprint(other)


def test_unknown_metric_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"metrics must be registered metrics \(continuation, "):
        EvaluationConfig(metrics=["perplexity", "bleurt"])


def test_perplexity_scores_only_the_splits_asked_for(ptb) -> None:
    values = {r.metric: r.value for r in evaluator(ptb).model_metrics()[0]}
    assert {"ppl_valid", "ppl_test"} <= set(values)
    only_test = evaluator(ptb, perplexity_splits=["test"], metrics=["perplexity", "repetition"])
    rows = {r.metric: r.value for r in only_test.model_metrics()[0]}
    assert "ppl_valid" not in rows and "bpb_valid" not in rows
    assert rows["ppl_test"] == pytest.approx(values["ppl_test"])
    assert rows["rep"] == pytest.approx(values["rep"])  # the shared pass, whichever runs first


def test_perplexity_splits_name_held_out_splits_once_each() -> None:
    with pytest.raises(ValueError, match="perplexity_splits must be distinct splits among valid"):
        EvaluationConfig(perplexity_splits=["train"])
    with pytest.raises(ValueError, match="perplexity_splits"):
        EvaluationConfig(perplexity_splits=["test", "test"])


def test_the_default_splits_leave_earlier_fingerprints_valid() -> None:
    default = EvaluationConfig()
    assert (
        default.fingerprint() == EvaluationConfig(perplexity_splits=["valid", "test"]).fingerprint()
    )
    assert default.fingerprint() != EvaluationConfig(perplexity_splits=["test"]).fingerprint()


class LengthRecorder:
    """A featurizer that records what it was asked to embed."""

    name = "length-recorder"
    version = "1"
    dim = 2
    output_options: dict = {}
    seen: list[list[str]] = []

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        LengthRecorder.seen.append(list(texts))
        return np.array([[len(t.split()), i % 3] for i, t in enumerate(texts)], dtype=np.float32)


register_featurizer("length-recorder")(LengthRecorder)


def test_human_continuations_are_cut_to_the_generation_length(ptb, tmp_path) -> None:
    ev = evaluator(ptb, featurizer="length-recorder", metrics=["fed"], feature_cache=str(tmp_path))
    the = ptb.tokenizer.token_id("the")
    lengths = [8, 5, 3, 7, 1, 6]
    samples = [[the] * n for n in lengths]
    LengthRecorder.seen.clear()
    rows, _ = ev.sample_metrics(DecodingConfig(greedy=True), samples)
    human = LengthRecorder.seen[0]  # the human side is embedded first
    assert [len(ptb.tokenizer.encode(t)) for t in human] == lengths
    assert [r.metric for r in rows] == ["fed"]


def test_generations_have_exactly_the_continuation_length_and_are_seeded(ptb) -> None:
    ev = evaluator(ptb, metrics=["distinct"])
    sampling = DecodingConfig(top_p=0.9)
    first = ev.generate(sampling, seed=0)
    assert [len(s) for s in first] == [8] * 6
    assert first == ev.generate(sampling, seed=0)
    assert first != ev.generate(sampling, seed=1)


def test_mauve_below_1000_samples_is_stored_with_its_warning(ptb, tmp_path) -> None:
    ev = evaluator(
        ptb,
        featurizer="length-recorder",
        metrics=["mauve"],
        feature_cache=str(tmp_path),
        num_samples=40,
    )
    samples = ev.generate(DecodingConfig(greedy=True), seed=0)
    rows, _ = ev.sample_metrics(DecodingConfig(greedy=True), samples)
    by_name = {r.metric: r for r in rows}
    assert set(by_name) == {"mauve", "mauve_std"}
    assert "1,000" in by_name["mauve"].warning or "1000" in by_name["mauve"].warning


def test_sample_file_names_are_safe() -> None:
    assert sample_file_name("top_p=0.9,temperature=0.8") == "top_p-0.9_temperature-0.8.jsonl"
    assert sample_file_name("greedy") == "greedy.jsonl"


def test_every_metric_the_evaluation_writes_is_declared_with_its_meaning(ptb, tmp_path) -> None:
    from beyondmle.evaluation import metric_info

    config_metrics = EvaluationConfig().metrics
    ev = evaluator(ptb, featurizer="length-recorder", feature_cache=str(tmp_path), num_samples=40)
    rows, _ = ev.model_metrics()
    decoding = DecodingConfig(top_p=0.9)
    sample_rows, _ = ev.sample_metrics(decoding, ev.generate(decoding, seed=0))
    written = {r.metric for r in rows + sample_rows}
    info = {r.metric: r for r in metric_info(config_metrics)}
    assert written <= set(info)
    # Directions as the papers define them, checked independently of the declarations.
    assert info["mauve"].higher_is_better is True and info["fed"].higher_is_better is False
    assert info["ppl_test"].higher_is_better is False and info["bpb_test"].per_decoding is False
    assert info["self_bleu_4"].higher_is_better is False
    assert info["distinct_4"].higher_is_better is True and info["distinct_4"].per_decoding
    assert info["zipf"].higher_is_better is None


def test_a_value_its_metric_does_not_declare_is_refused(ptb) -> None:
    from beyondmle.api import METRICS, MetricValue, Output, register_metric

    @register_metric(
        "test_undeclared",
        version="1",
        needs={"samples"},
        per_decoding=True,
        outputs=[Output("declared", "declared", higher_is_better=True)],
    )
    def undeclared(inputs):
        return [MetricValue("something_else", 1.0)]

    try:
        ev = evaluator(ptb, metrics=["test_undeclared"])
        with pytest.raises(KeyError, match="does not declare"):
            ev.sample_metrics(DecodingConfig(greedy=True), [[1, 2]] * 6)
    finally:
        METRICS.remove("test_undeclared")


class FitRecorder(LengthRecorder):
    """A featurizer that learns from data: records what it was fitted on."""

    fitted: list[list[str]] = []

    def fit(self, texts) -> None:
        FitRecorder.fitted.append(list(texts))


register_featurizer("fit-recorder")(FitRecorder)


def test_a_fitted_featurizer_learns_from_validation_text_not_the_compared_sides(
    ptb, tmp_path
) -> None:
    ev = evaluator(ptb, featurizer="fit-recorder", metrics=["fed"], feature_cache=str(tmp_path))
    samples = ev.generate(DecodingConfig(greedy=True), seed=0)
    FitRecorder.fitted.clear()
    ev.sample_metrics(DecodingConfig(greedy=True), samples)
    (fitted,) = FitRecorder.fitted
    valid = ptb.stream("valid")[8:16]  # the first validation window's continuation
    assert fitted[0] == ptb.tokenizer.decode(valid)
    test_side = {ptb.tokenizer.decode(r) for r in ev.references}
    assert len(fitted) == 6 and not test_side & set(fitted)


def chinese_corpus(language: str):
    from beyondmle.api import Corpus
    from beyondmle.tokenization import WordTokenizer

    words = ["今天", "天气", "很好", "明天", "很冷"]
    docs = [" ".join(words[i % 5] for i in range(j, j + 12)) for j in range(20)]
    split = {"train": docs, "valid": docs[:5], "test": docs[5:]}
    return Corpus("zh-words", WordTokenizer(words), split, word_level=True, language=language)


@pytest.mark.parametrize(
    "language, expected",
    [("zh", [5 / 8, 5 / 6]),  # characters 今天天气 / 很好很好: 5 of 8 unigrams, 5 of 6 bigrams
     ("en", [3 / 4, 2 / 2])],  # words 今天 天气 / 很好 很好: 3 of 4 unigrams, 2 of 2 bigrams
)  # fmt: skip
def test_diversity_counts_characters_where_the_corpus_language_is_written_without_spaces(
    language, expected
) -> None:
    corpus = chinese_corpus(language)
    ev = evaluator(corpus, metrics=["distinct"], num_samples=2, self_bleu_samples=2)
    ids = corpus.tokenizer.token_id
    samples = [[ids("今天"), ids("天气")], [ids("很好"), ids("很好")]]
    rows, fingerprints = ev.sample_metrics(DecodingConfig(greedy=True), samples)
    got = {r.metric: r.value for r in rows}
    assert [got["distinct_1"], got["distinct_2"]] == pytest.approx(expected)
    units = "characters" if language == "zh" else "tokens"
    assert fingerprints[0].settings["diversity_units"] == units
