"""Likelihood metrics: sliding-window perplexity scores every token once with the most context
the window allows; per-token, per-word and per-byte figures on hand examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from beyondmle.api import Corpus
from beyondmle.metrics.likelihood import Likelihood, continuation_scores, perplexity
from beyondmle.tokenization import WordTokenizer


class Uniform(nn.Module):
    """p(token | anything) = 1 / V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab)


class Unigram(nn.Module):
    """p(token) = softmax(u)[token], whatever the context."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.u = nn.Parameter(logits.clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.u.expand(*idx.shape, -1)

    def nll(self, tokens: list[int]) -> float:
        log_p = self.u.detach().double().log_softmax(-1)
        return -sum(log_p[t].item() for t in tokens)


class ContextLength(nn.Module):
    """Token 0 gets logit t at input position t, every other token logit 0: the NLL of a
    target other than 0 is ln(V - 1 + e^t), a direct readout of how much context (t + 1 tokens)
    the window gave it."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        logits[:, :, 0] = torch.arange(T, dtype=torch.float)
        return logits


def expected_context(i: int, block_size: int, stride: int) -> int:
    """Context of token i (>= 1) when windows of block_size start at 0, stride, 2 * stride, ...
    and each token is scored by the first window that covers it, the one giving most context."""
    first_start = max(0, math.ceil((i - block_size) / stride) * stride)
    return i - first_start


def random_stream(n: int, vocab: int, low: int = 0, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (n,), generator=g).tolist()


# -- perplexity ----------------------------------------------------------------------------------

BLOCK = 8


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [2, 9, 10, 37])
def test_uniform_model_perplexity_is_the_vocabulary_size(stride, n):
    vocab = 16
    result = perplexity(Uniform(vocab), random_stream(n, vocab), BLOCK, stride=stride)
    assert result.tokens == n - 1
    assert result.nll == pytest.approx((n - 1) * math.log(vocab), rel=1e-5)
    assert result.perplexity == pytest.approx(vocab, rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("stride", range(1, BLOCK + 1))
def test_every_token_but_the_first_is_scored_exactly_once(stride, batch_size):
    # A unigram model with distinct probabilities: the summed NLL equals the hand sum over
    # tokens 1..n-1 only if each is scored once (a skipped or doubled token changes the sum).
    vocab, n = 11, 45
    model = Unigram(torch.linspace(-2.0, 3.0, vocab))
    tokens = random_stream(n, vocab, seed=stride)
    result = perplexity(model, tokens, BLOCK, stride=stride, batch_size=batch_size)
    assert result.tokens == n - 1
    assert result.nll == pytest.approx(model.nll(tokens[1:]), rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4, 32])
@pytest.mark.parametrize("stride", range(1, BLOCK + 1))
def test_each_token_gets_the_most_context_the_windows_allow(stride, batch_size):
    vocab, n = 7, 40
    tokens = random_stream(n, vocab, low=1)  # never token 0
    result = perplexity(ContextLength(vocab), tokens, BLOCK, stride=stride, batch_size=batch_size)
    contexts = [expected_context(i, BLOCK, stride) for i in range(1, n)]
    assert all(1 <= c <= BLOCK for c in contexts)
    if stride < BLOCK:  # overlapping windows: past the first window, at least block - stride + 1
        assert min(contexts[BLOCK:]) == BLOCK - stride + 1
    expected = sum(math.log(vocab - 1 + math.exp(c - 1)) for c in contexts)
    assert result.tokens == n - 1
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_stride_one_gives_every_token_past_the_first_window_a_full_window():
    vocab, n = 7, 30
    tokens = random_stream(n, vocab, low=1)
    result = perplexity(ContextLength(vocab), tokens, BLOCK, stride=1)
    contexts = list(range(1, BLOCK + 1)) + [BLOCK] * (n - 1 - BLOCK)
    expected = sum(math.log(vocab - 1 + math.exp(c - 1)) for c in contexts)
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_default_stride_is_half_the_block():
    vocab, n = 7, 50
    tokens = random_stream(n, vocab, low=1)
    default = perplexity(ContextLength(vocab), tokens, BLOCK)
    half = perplexity(ContextLength(vocab), tokens, BLOCK, stride=BLOCK // 2)
    disjoint = perplexity(ContextLength(vocab), tokens, BLOCK, stride=BLOCK)
    assert default.nll == pytest.approx(half.nll, rel=1e-9)
    assert default.nll != pytest.approx(disjoint.nll, rel=1e-3)


def test_perplexity_accepts_a_tensor_and_restores_training_mode():
    model = Uniform(16).train()
    result = perplexity(model, torch.tensor(random_stream(20, 16)), BLOCK)
    assert result.tokens == 19
    assert model.training


def test_perplexity_needs_two_tokens():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(Uniform(16), [3], BLOCK)


@pytest.mark.parametrize(
    "stride",
    [
        -1,
        BLOCK + 1,
        0,
    ],
)
def test_stride_outside_one_to_block_size_is_rejected(stride):
    with pytest.raises(ValueError, match=rf"stride must be in \(0, block_size=8\], got {stride}"):
        perplexity(Uniform(16), random_stream(20, 16), BLOCK, stride=stride)


# -- per word and per byte -----------------------------------------------------------------------


def word_corpus(documents: list[str]) -> Corpus:
    words = sorted({w for doc in documents for w in doc.split()})
    split = {"train": documents, "valid": documents, "test": documents}
    return Corpus("hand", WordTokenizer(words), split, word_level=True)


def test_bits_per_byte_of_a_uniform_model_on_a_hand_example():
    # Documents "ab cd" and "é": the model sees "ab cd\né\n", 5 + 1 + 2 + 1 = 9 UTF-8 bytes
    # ("é" is two bytes), and 5 tokens: ab cd <eos> é <eos>. A uniform model over V = 16 spends
    # ln 16 nats = 4 bits on each of the 4 scored tokens: 16 bits over 9 bytes.
    corpus = word_corpus(["ab cd", "é"])
    assert corpus.num_bytes("test") == 9
    tokens = corpus.stream("test")
    assert len(tokens) == 5
    result = perplexity(Uniform(16), tokens, BLOCK, num_bytes=corpus.num_bytes("test"))
    assert result.bits_per_byte == pytest.approx(16 / 9, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(4 * math.log(16) / (math.log(2) * 9), rel=1e-5)


def test_bits_per_byte_formula():
    n, vocab, num_bytes = 41, 16, 123
    result = perplexity(Uniform(vocab), random_stream(n, vocab), BLOCK, num_bytes=num_bytes)
    expected = (n - 1) * math.log(vocab) / (math.log(2) * num_bytes)
    assert result.bits_per_byte == pytest.approx(expected, rel=1e-5)


def test_per_word_perplexity_on_a_hand_example():
    # 11 tokens spelling 5 words: a uniform model over 16 tokens spends 10 ln 16 nats, i.e.
    # 2 ln 16 per word, so the per-word perplexity is 16^2 = 256 while per token it is 16.
    result = perplexity(Uniform(16), random_stream(11, 16), BLOCK, words=5)
    assert result.perplexity == pytest.approx(16, rel=1e-5)
    assert result.perplexity_per_word == pytest.approx(256, rel=1e-5)


def test_per_word_count_follows_mikolovs_convention():
    # Words "a b", "c d e f", "g": 2 + 4 + 1 whitespace words plus one <eos> each = 10.
    corpus = word_corpus(["a b", "c d e f", "g"])
    assert corpus.num_words("test") == 10
    tokens = corpus.stream("test")
    result = perplexity(Uniform(16), tokens, BLOCK, words=corpus.num_words("test"))
    # 9 scored tokens at ln 16 each, over 10 words.
    assert result.perplexity_per_word == pytest.approx(16 ** (9 / 10), rel=1e-5)


def test_likelihood_without_words_or_bytes_has_no_such_figures():
    result = Likelihood(nll=10.0, tokens=5)
    assert result.perplexity == pytest.approx(math.exp(2.0))
    assert result.perplexity_per_word is None
    assert result.bits_per_byte is None


# -- continuations -------------------------------------------------------------------------------


class NextIsPlusOne(nn.Module):
    """Puts logit 10 on (input token + 1) mod V, 0 elsewhere."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float() * 10.0


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_continuation_scores_score_only_the_continuations_given_their_prompts(batch_size):
    vocab = 12
    prompts = torch.tensor([[1, 2, 3], [5, 6, 7]])
    continuations = torch.tensor([[4, 5, 6, 9], [8, 9, 3, 4]])
    scored = continuation_scores(NextIsPlusOne(vocab), prompts, continuations, batch_size)
    result, predictions = scored.likelihood, scored.predictions
    # Predictions at the continuation positions are (previous token + 1).
    assert predictions.tolist() == [[4, 5, 6, 7], [8, 9, 10, 4]]
    hit = -math.log(math.exp(10) / (math.exp(10) + vocab - 1))
    miss = -math.log(1 / (math.exp(10) + vocab - 1))
    # Row 0: 4, 5, 6 predicted, 9 not. Row 1: 8, 9 predicted, 3 not, 4 predicted (after 3).
    assert result.tokens == 8
    assert result.nll == pytest.approx(6 * hit + 2 * miss, rel=1e-5)
    assert scored.row_nll.tolist() == pytest.approx([3 * hit + miss, 3 * hit + miss], rel=1e-5)


class ArgmaxIsPosition(nn.Module):
    """Puts logit 10 on token t at window position t (capped at V - 1): its argmax prediction
    reads out the context a scored token was predicted with."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        position = torch.arange(T).clamp(max=self.vocab - 1)
        return nn.functional.one_hot(position, self.vocab).float().expand(B, T, -1) * 10.0


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_stream_predictions_are_made_with_the_context_each_token_was_scored_with(batch_size):
    from beyondmle.metrics.likelihood import score_stream

    # 11 tokens, windows of 4 advancing by 2: the first window predicts tokens 1-4 from
    # positions 0-3; every later window scores its last two tokens, from positions 2 and 3.
    tokens = list(range(11))
    scored = score_stream(
        ArgmaxIsPosition(12), tokens, 4, stride=2, batch_size=batch_size, predictions=True
    )
    assert scored.predictions.tolist() == [0, 1, 2, 3, 2, 3, 2, 3, 2, 3]
    assert scored.likelihood.tokens == 10


@pytest.mark.parametrize("stride", [1, BLOCK // 2, BLOCK])
def test_asking_for_predictions_leaves_the_likelihood_as_it_was(stride):
    from beyondmle.metrics.likelihood import score_stream
    from beyondmle.model import GPT, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=37, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config).eval()  # no dropout in the hand-made expectation either
    tokens = random_stream(40, 37)
    plain = perplexity(model, tokens, BLOCK, stride=stride)
    both = score_stream(model, tokens, BLOCK, stride=stride, predictions=True)
    assert both.likelihood.nll == pytest.approx(plain.nll, rel=1e-5)
    assert both.likelihood.tokens == plain.tokens == 39
    # The argmax of the GPT's own logits at every scored position, window by window.
    expected = []
    for start, end, first in _windows_of(40, BLOCK, stride):
        logits = model(torch.tensor(tokens[start : end - 1])[None])[0]
        expected += logits[first - start - 1 :].argmax(-1).tolist()
    assert both.predictions.tolist() == expected


def _windows_of(n: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows by hand: each scores the tokens after the previous one's end."""
    out, scored_to, start = [], 1, 0
    while scored_to < n:
        end = min(start + block + 1, n)
        out.append((start, end, scored_to))
        scored_to, start = end, start + stride
    return out


class LogitsOf(nn.Module):
    """The GPT seen only through its logits: perplexity's generic path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)


@pytest.mark.parametrize("stride", [1, BLOCK // 2, BLOCK])
def test_the_gpt_fused_path_scores_exactly_what_its_logits_do(stride):
    from beyondmle.model import GPT, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=37, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    tokens = random_stream(60, 37)
    fused = perplexity(model, tokens, BLOCK, stride=stride, batch_size=3)
    plain = perplexity(LogitsOf(model), tokens, BLOCK, stride=stride, batch_size=3)
    assert fused.tokens == plain.tokens == 59
    assert fused.nll == pytest.approx(plain.nll, rel=1e-5)
