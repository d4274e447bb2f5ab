"""Decoding: greedy rollouts, the nucleus of top-p, top-k, temperature, labels and stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from beyondmle.decoding import (
    DecodingConfig,
    filter_logits,
    generate,
    next_token,
    sample_categorical,
    sort_rows_descending,
)
from beyondmle.model import GPT, ModelConfig

VOCAB = 19
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=24, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def kept(logits: torch.Tensor) -> list[set[int]]:
    """The tokens each row of filtered logits still allows."""
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in logits]


# Hand-made distribution, shuffled so that the nucleus is not a prefix of the vocabulary:
# token:  0     1     2     3     4     5
# prob:   0.10  0.50  0.04  0.20  0.01  0.15
PROBS = torch.tensor([0.10, 0.50, 0.04, 0.20, 0.01, 0.15])
LOGITS = PROBS.log()[None]  # (1, 6)


# -- greedy --------------------------------------------------------------------------------------


def test_greedy_decoding_is_deterministic_and_equals_the_argmax_rollout():
    model = tiny_model()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    config = DecodingConfig(greedy=True)
    first = generate(model, prompts, 10, config)
    assert generate(model, prompts, 10, config) == first
    # The reference: append the argmax of a full forward pass, one token at a time.
    with torch.no_grad():
        seq = prompts
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert first == seq[:, 3:].tolist()


def test_greedy_ignores_the_generator_and_the_sampling_knobs():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        config = DecodingConfig(greedy=True, temperature=5.0, top_k=3, top_p=0.5)
        assert next_token(logits, config, g).tolist() == [1]


# -- top-p ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_p", "nucleus"),
    [
        # Sorted masses 0.50, 0.20, 0.15, 0.10, 0.04, 0.01; cumulative 0.50, 0.70, 0.85, 0.95,
        # 0.99, 1.00. The nucleus is the smallest top set whose cumulative mass reaches p.
        (1e-6, {1}),
        (0.3, {1}),
        (0.6, {1, 3}),
        (0.8, {1, 3, 5}),
        (0.9, {1, 3, 5, 0}),
        (0.97, {1, 3, 5, 0, 2}),
        (0.995, {0, 1, 2, 3, 4, 5}),
        (1.0, {0, 1, 2, 3, 4, 5}),
    ],
)
def test_top_p_keeps_exactly_the_hand_computed_nucleus(top_p, nucleus):
    filtered = filter_logits(LOGITS, DecodingConfig(top_p=top_p))
    assert kept(filtered) == [nucleus]
    # The kept logits are unchanged (no temperature), so the renormalized nucleus keeps the
    # original ratios.
    idx = sorted(nucleus)
    torch.testing.assert_close(filtered[0, idx], LOGITS[0, idx])


@pytest.mark.parametrize(("top_p", "nucleus"), [(1e-6, {1}), (0.6, {1, 3}), (0.9, {0, 1, 3, 5})])
def test_top_p_samples_never_leave_the_nucleus(top_p, nucleus):
    n = 4000
    logits = LOGITS.expand(n, -1)
    g = torch.Generator().manual_seed(0)
    samples = next_token(logits, DecodingConfig(top_p=top_p), g)
    counts = torch.bincount(samples, minlength=6)
    assert set(torch.nonzero(counts).flatten().tolist()) == nucleus
    # Frequencies follow the renormalized nucleus (4 standard deviations of a binomial).
    mass = sum(PROBS[i].item() for i in nucleus)
    for token in nucleus:
        p = PROBS[token].item() / mass
        assert abs(counts[token].item() / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_top_p_keeps_only_the_most_likely_token_when_p_is_tiny():
    logits = torch.tensor([[0.3, -1.0, 2.5, 2.4, 0.0], [5.0, 4.9, 4.8, 4.7, 4.6]])
    filtered = filter_logits(logits, DecodingConfig(top_p=1e-9))
    assert kept(filtered) == [{2}, {0}]
    g = torch.Generator().manual_seed(1)
    samples = next_token(logits.repeat(500, 1), DecodingConfig(top_p=1e-9), g)
    assert set(samples[0::2].tolist()) == {2}
    assert set(samples[1::2].tolist()) == {0}


def test_top_p_with_tied_most_likely_tokens_keeps_one_of_them_when_p_is_tiny():
    logits = torch.tensor([[1.0, 3.0, 0.0, 3.0]])  # tokens 1 and 3 tie for the top
    (survivors,) = kept(filter_logits(logits, DecodingConfig(top_p=1e-9)))
    assert len(survivors) == 1
    assert survivors <= {1, 3}


def test_top_p_keeps_every_tied_token_the_mass_needs():
    # Masses 0.4, 0.4, 0.2: two tied tokens are needed to reach 0.6; the third is not.
    logits = torch.tensor([[0.4, 0.2, 0.4]]).log()
    assert kept(filter_logits(logits, DecodingConfig(top_p=0.6))) == [{0, 2}]


def test_top_p_treats_each_row_on_its_own():
    logits = torch.stack([LOGITS[0], LOGITS[0].flip(0)])  # the second row reverses the tokens
    assert kept(filter_logits(logits, DecodingConfig(top_p=0.6))) == [{1, 3}, {4, 2}]


def test_top_p_applies_after_temperature():
    # Probs 0.64, 0.25, 0.09, 0.02: the mass before token 2 is 0.89 >= 0.8, so it drops.
    logits = torch.tensor([[0.64, 0.25, 0.09, 0.02]]).log()
    assert kept(filter_logits(logits, DecodingConfig(top_p=0.8))) == [{0, 1}]
    # Temperature 2 turns p into p^(1/2) / Z: 0.8, 0.5, 0.3, 0.1414 over Z = 1.7414, i.e.
    # 0.459, 0.287, 0.172, 0.081. The mass before token 2 is now 0.746 < 0.8, so it stays;
    # before token 3 it is 0.919, so that one drops.
    hot = filter_logits(logits, DecodingConfig(top_p=0.8, temperature=2.0))
    assert kept(hot) == [{0, 1, 2}]


# -- top-k and temperature -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = torch.tensor([[0.5, -2.0, 3.0, 1.0, 0.0, 2.0], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    order = [[2, 5, 3, 0, 4, 1], [0, 1, 2, 3, 4, 5]]
    filtered = filter_logits(logits, DecodingConfig(top_k=k))
    assert kept(filtered) == [set(row[:k]) for row in order]
    g = torch.Generator().manual_seed(0)
    samples = next_token(logits.repeat(300, 1), DecodingConfig(top_k=k), g)
    assert set(samples[0::2].tolist()) <= set(order[0][:k])


def test_top_k_at_least_the_vocabulary_keeps_everything():
    logits = torch.tensor([[0.5, -2.0, 3.0]])
    for k in (3, 4, 100):
        assert torch.equal(filter_logits(logits, DecodingConfig(top_k=k)), logits)


def test_top_k_then_top_p_compose():
    # top_k=3 keeps tokens 1, 3, 5 (0.50, 0.20, 0.15 -> renormalized 0.588, 0.235, 0.176);
    # top_p=0.8 then drops token 5, whose renormalized mass before it is 0.824 >= 0.8. On the
    # unfiltered distribution the mass before token 5 is only 0.70, so order matters.
    filtered = filter_logits(LOGITS, DecodingConfig(top_k=3, top_p=0.8))
    assert kept(filtered) == [{1, 3}]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 7.0])
def test_temperature_divides_the_logits(temperature):
    logits = torch.tensor([[0.5, -2.0, 3.0, 1.0]])
    torch.testing.assert_close(
        filter_logits(logits, DecodingConfig(temperature=temperature)), logits / temperature
    )


def test_low_temperature_sampling_concentrates_on_the_argmax():
    logits = torch.tensor([[1.0, 2.0, 1.5]]).repeat(1000, 1)
    g = torch.Generator().manual_seed(0)
    cold = next_token(logits, DecodingConfig(temperature=0.01), g)
    assert set(cold.tolist()) == {1}
    warm = next_token(logits, DecodingConfig(temperature=1.0), g)
    assert set(warm.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("max_keys", [1 << 20, 10], ids=["radix", "per-row"])
@pytest.mark.parametrize("seed", range(5))
def test_the_row_sort_equals_a_stable_descending_sort(seed, max_keys, monkeypatch):
    monkeypatch.setattr("beyondmle.decoding.RADIX_SORT_MAX_KEYS", max_keys)
    g = torch.Generator().manual_seed(seed)
    probs = torch.randint(0, 6, (7, 50), generator=g).float() / 5  # many ties, zeros and ones
    probs[0] = 0.0
    values, order = sort_rows_descending(probs)
    expected = torch.sort(probs, dim=-1, descending=True, stable=True)
    assert torch.equal(values, expected.values)
    assert torch.equal(order, expected.indices)


# -- the sampler -------------------------------------------------------------------------------


def test_sampled_frequencies_follow_the_temperature_scaled_distribution():
    n = 20000
    temperature = 1.5
    g = torch.Generator().manual_seed(3)
    samples = next_token(LOGITS.expand(n, -1), DecodingConfig(temperature=temperature), g)
    counts = torch.bincount(samples, minlength=6)
    expected = (LOGITS[0] / temperature).softmax(dim=-1)
    for token, p in enumerate(expected.tolist()):
        assert abs(counts[token].item() / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_the_sampler_never_draws_a_token_of_probability_zero():
    # Zero-mass tokens first, last and between: each has an empty interval of the CDF.
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.7, 0.0]]).expand(5000, -1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_categorical(probs, g).tolist()) == {1, 4}


@pytest.mark.parametrize("vocab", [1, 2, 7, 36, 37])
def test_sampled_frequencies_match_across_blocks_and_a_ragged_last_block(vocab):
    # Blocks are ceil(sqrt(V)) tokens wide: 37 leaves a ragged last block. Zero-mass tokens sit
    # at block edges and fill the whole first block, which must be skipped.
    g = torch.Generator().manual_seed(vocab)
    probs = torch.rand(vocab, generator=g) + 0.05
    width = math.isqrt(vocab - 1) + 1
    probs[: min(width, vocab - 1)] = 0.0
    probs[width::width] = 0.0
    if vocab > 1:
        probs[-1] = 0.0 if probs[:-1].sum() > 0 else probs[-1]
    probs /= probs.sum()
    n = 100_000
    counts = torch.bincount(sample_categorical(probs.expand(n, -1), g), minlength=vocab)
    for token, p in enumerate(probs.tolist()):
        if p == 0.0:
            assert counts[token] == 0, token
        else:
            assert abs(counts[token].item() / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_the_sampler_takes_unnormalised_rows():
    probs = torch.tensor([[2.0, 0.0, 6.0]]).expand(20000, -1)
    g = torch.Generator().manual_seed(1)
    share = (sample_categorical(probs, g) == 2).float().mean().item()
    assert abs(share - 0.75) <= 4 * math.sqrt(0.75 * 0.25 / 20000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_sampler_refuses_non_finite_probabilities_like_multinomial(bad):
    with pytest.raises(RuntimeError, match="finite"):
        sample_categorical(torch.tensor([[0.5, bad, 0.5]]))


def test_the_sampler_is_reproducible_under_a_seeded_generator():
    probs = LOGITS.softmax(dim=-1).expand(64, -1)
    first = sample_categorical(probs, torch.Generator().manual_seed(7))
    second = sample_categorical(probs, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, r"temperature must be a number > 0, got 0.0"),
        ({"temperature": -1.0}, r"temperature must be a number > 0, got -1.0"),
        ({"top_k": 0}, r"top_k must be an integer >= 1 or nothing, got 0"),
        ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\] or nothing, got 0.0"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\] or nothing, got 1.5"),
        ({"top_p": -0.1}, r"top_p must be a number in \(0, 1\] or nothing, got -0.1"),
    ],
)
def test_decoding_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"greedy": True}, "greedy"),
        ({"greedy": True, "temperature": 0.7, "top_p": 0.9}, "greedy"),
        ({"top_p": 0.9}, "top_p=0.9"),
        ({"temperature": 0.7}, "temperature=0.7"),
        ({"top_k": 40}, "top_k=40"),
        ({}, "temperature=1"),
        ({"top_k": 40, "top_p": 0.95}, "top_k=40,top_p=0.95"),
        ({"top_p": 0.9, "temperature": 0.7}, "top_p=0.9,temperature=0.7"),
    ],
)
def test_decoding_labels(kwargs, label):
    assert DecodingConfig(**kwargs).label == label


# -- stopping ------------------------------------------------------------------------------------


class Counter(nn.Module):
    """A stand-in model whose next token is always (last token + 1) mod V, counting its calls."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def new_cache(self, batch_size: int, max_len: int):
        return None  # the rule needs only the last token

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return idx  # the "hidden state" of a position is its token

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        nxt = (hidden + 1) % self.vocab
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * 10.0

    def step(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        return self.logits(self.hidden_states(idx))


@pytest.mark.parametrize("use_cache", [True, False])
def test_rows_stop_at_eos_which_is_kept(use_cache):
    model = Counter()
    prompts = torch.tensor([[4, 5], [0, 1], [7, 8]])
    out = generate(model, prompts, 20, DecodingConfig(greedy=True), eos_id=8, use_cache=use_cache)
    # Row 0 reaches 8 after three tokens, row 1 after seven; row 2 counts 9, 10, 11, 0, ... 8.
    assert out == [[6, 7, 8], [2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7, 8]]


def test_generation_ends_early_once_every_row_has_stopped():
    model = Counter()
    prompts = torch.tensor([[4, 5], [0, 1]])
    out = generate(model, prompts, 20, DecodingConfig(greedy=True), eos_id=8)
    assert out == [[6, 7, 8], [2, 3, 4, 5, 6, 7, 8]]
    # One call for the prompt, then one per new token except the last: 7 tokens, 7 calls.
    assert model.calls == 7


def test_without_eos_id_rows_run_to_max_new_tokens():
    model = Counter()
    out = generate(model, torch.tensor([[4, 5]]), 6, DecodingConfig(greedy=True))
    assert out == [[6, 7, 8, 9, 10, 11]]
    assert model.calls == 6


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7])
def test_max_new_tokens_is_respected(max_new_tokens):
    model = tiny_model()
    prompts = torch.tensor([[1, 2], [3, 4]])
    g = torch.Generator().manual_seed(0)
    for config in (DecodingConfig(greedy=True), DecodingConfig(top_k=5)):
        out = generate(model, prompts, max_new_tokens, config, generator=g)
        assert [len(row) for row in out] == [max_new_tokens] * 2
    # With an eos that comes later than the limit, the limit still holds.
    out = generate(Counter(), prompts, max_new_tokens, DecodingConfig(greedy=True), eos_id=11)
    assert out == [[3 + i for i in range(max_new_tokens)], [5 + i for i in range(max_new_tokens)]]


# -- nucleus sampling by rejection ---------------------------------------------------------------


def test_nucleus_draws_follow_the_renormalised_nucleus_by_hand():
    from beyondmle.decoding import sample_nucleus

    # Mass before token 1 is 0.5 < 0.7 (kept); before token 2 it is 0.8 (dropped):
    # the nucleus is {0, 1}, renormalised to 0.5 / 0.8 and 0.3 / 0.8.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).expand(100_000, 4)
    draws = sample_nucleus(probs, 0.7, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert counts[2] == 0 and counts[3] == 0
    sigma = (0.625 * 0.375 / draws.numel()) ** 0.5
    assert abs(counts[0].item() - 0.625) < 5 * sigma


def test_nucleus_ties_keep_the_lower_token_ids_first():
    from beyondmle.decoding import in_nucleus

    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    inside = [bool(in_nucleus(probs, torch.tensor([t]), 0.5)) for t in range(4)]
    assert inside == [True, True, False, False]  # masses before: 0, 0.25, 0.5, 0.75


def test_a_nucleus_too_small_to_hit_by_drawing_falls_back_to_sorting():
    from beyondmle.decoding import NUCLEUS_ROUNDS, sample_nucleus

    probs = torch.full((3, 2000), 1 / 2000)  # the nucleus of top_p = 1e-4 is token 0 alone
    assert (1 - 1 / 2000) ** NUCLEUS_ROUNDS > 0.99  # so rejection almost surely never hits
    draws = sample_nucleus(probs, 1e-4, torch.Generator().manual_seed(0))
    assert draws.tolist() == [0, 0, 0]
