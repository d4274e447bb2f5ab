"""BART denoising: each noise function on seeded examples, the example layout, the exact MLE
limit at full masking, and a few optimisation steps on a tiny model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from beyondmle.api import SpecialTokens, TrainingState, token_nll
from beyondmle.model import GPT, ModelConfig
from beyondmle.objectives.denoising import (
    Denoising,
    DenoisingSettings,
    document_rotation,
    noise_source,
    sample_span_lengths,
    sentence_permutation,
    text_infilling,
    token_deletion,
    token_masking,
)
from beyondmle.objectives.mle import MLE, MLESettings

SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)
MASK = SPECIAL.mask
VOCAB = 50


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct(n: int) -> torch.Tensor:
    """n distinct ordinary token ids (never a special id), so survivors are identifiable."""
    return torch.arange(10, 10 + n)


def is_subsequence(out: torch.Tensor, tokens: torch.Tensor) -> bool:
    # tokens are increasing and distinct: a subsequence is a strictly increasing subset
    values = out.tolist()
    return set(values) <= set(tokens.tolist()) and values == sorted(set(values))


# --------------------------------------------------------------------------- token masking


def test_token_masking_keeps_unmasked_tokens_in_place() -> None:
    tokens = distinct(200)
    out = token_masking(tokens, 0.3, MASK, gen(1))
    assert out.shape == tokens.shape
    kept = out != MASK
    assert torch.equal(out[kept], tokens[kept])
    assert 20 < int((~kept).sum()) < 100  # about 60 of 200 masked


def test_token_masking_extremes() -> None:
    tokens = distinct(30)
    assert torch.equal(token_masking(tokens, 0.0, MASK, gen()), tokens)
    assert (token_masking(tokens, 1.0, MASK, gen()) == MASK).all()


# --------------------------------------------------------------------------- token deletion


def test_token_deletion_keeps_order_of_survivors() -> None:
    tokens = distinct(200)
    out = token_deletion(tokens, 0.3, gen(2))
    assert is_subsequence(out, tokens)
    assert 100 < out.numel() < 180
    assert torch.equal(token_deletion(tokens, 0.0, gen()), tokens)
    assert token_deletion(tokens, 1.0, gen()).numel() == 0


def test_token_deletion_never_deletes_protected_tokens() -> None:
    tokens = torch.tensor([MASK, 11, MASK, 12, 13, MASK])
    out = token_deletion(tokens, 1.0, gen(), protect_id=MASK)
    assert out.tolist() == [MASK, MASK, MASK]


# --------------------------------------------------------------------------- text infilling


def test_text_infilling_masks_exactly_the_budget_and_keeps_survivors_in_order() -> None:
    tokens = distinct(100)
    out = text_infilling(tokens, 0.3, MASK, gen(3))
    survivors = out[out != MASK]
    assert is_subsequence(survivors, tokens)
    assert tokens.numel() - survivors.numel() == 30  # ceil(100 * 0.3)
    # every run of masked originals is replaced by (at least) one mask in the same gap
    pos = {t: i for i, t in enumerate(out.tolist())}
    kept = set(survivors.tolist())
    prev_out = -1
    gap_has_missing = False
    for t in [*tokens.tolist(), None]:
        if t is not None and t not in kept:
            gap_has_missing = True
            continue
        here = pos[t] if t is not None else out.numel()
        if gap_has_missing:
            assert (out[prev_out + 1 : here] == MASK).any()
        prev_out, gap_has_missing = here, False
    # one mask per span: far fewer masks than masked tokens (spans average 3 tokens)
    assert int((out == MASK).sum()) < 30


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    ratio=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    lam=st.sampled_from([0.5, 3.0, 8.0]),
)
def test_text_infilling_invariants(n: int, ratio: float, seed: int, lam: float) -> None:
    tokens = distinct(n)
    out = text_infilling(tokens, ratio, MASK, gen(seed), poisson_lambda=lam)
    survivors = out[out != MASK]
    assert is_subsequence(survivors, tokens)
    assert n - survivors.numel() == min(n, math.ceil(n * ratio))


def test_text_infilling_at_ratio_one_leaves_no_original_token() -> None:
    for seed in range(20):
        tokens = distinct(64)
        out = text_infilling(tokens, 1.0, MASK, gen(seed))
        assert out.numel() >= 1
        assert (out == MASK).all()
        assert not (set(out.tolist()) & set(tokens.tolist()))


def test_text_infilling_zero_ratio_is_identity() -> None:
    tokens = distinct(20)
    assert torch.equal(text_infilling(tokens, 0.0, MASK, gen()), tokens)


def test_span_lengths_cover_the_budget_exactly() -> None:
    g = gen(4)
    for budget in (1, 2, 7, 30, 100):
        lengths = sample_span_lengths(budget, 3.0, g)
        assert int(lengths.sum()) == budget
        assert (lengths >= 0).all()
        assert lengths[-1] > 0  # the span that reaches the budget is the last one kept


def test_span_lengths_follow_the_poisson_mean() -> None:
    # Seeded, so deterministic; the tolerance (0.15) is ~4 standard errors of a 2000-span mean
    # (sd sqrt(3) / sqrt(2000) = 0.039), so no seed choice makes it borderline. The last span of
    # each draw is trimmed to the budget and is left out.
    g = gen(5)
    spans: list[int] = []
    while len(spans) < 2000:
        spans += sample_span_lengths(300, 3.0, g)[:-1].tolist()
    mean = sum(spans) / len(spans)
    assert abs(mean - 3.0) < 0.15
    zero_share = spans.count(0) / len(spans)  # P(0) = e^-3 = 0.0498
    assert abs(zero_share - math.exp(-3)) < 0.02


# --------------------------------------------------------------------------- sentence permutation


def sentences(tokens: torch.Tensor, eos: int = SPECIAL.eos) -> list[tuple[int, ...]]:
    out, cur = [], []
    for t in tokens.tolist():
        cur.append(t)
        if t == eos:
            out.append(tuple(cur))
            cur = []
    if cur:
        out.append(tuple(cur))
    return out


def test_sentence_permutation_keeps_the_multiset_of_sentences() -> None:
    eos = SPECIAL.eos
    tokens = torch.tensor([11, 12, eos, 13, eos, 14, 15, 16, eos, 17, eos, 18, 19, eos])
    changed = 0
    for seed in range(10):
        out = sentence_permutation(tokens, eos, gen(seed))
        assert sorted(sentences(out)) == sorted(sentences(tokens))
        changed += not torch.equal(out, tokens)
    assert changed >= 5  # 5 sentences: the identity has probability 1/120


def test_sentence_permutation_trailing_piece_is_a_sentence() -> None:
    eos = SPECIAL.eos
    tokens = torch.tensor([11, eos, 12, 13, eos, 14, eos, 15, 16])  # 15 16: no eos, still one
    pieces = [(11, eos), (12, 13, eos), (14, eos), (15, 16)]
    seen = set()
    for seed in range(40):
        out = tuple(sentence_permutation(tokens, eos, gen(seed)).tolist())
        matches = [p for p in itertools.permutations(pieces) if sum(p, ()) == out]
        assert matches, f"{out} is not a concatenation of a permutation of the sentences"
        seen.add(out)
    assert len(seen) > 5


def test_sentence_permutation_without_eos_is_identity() -> None:
    tokens = distinct(7)
    assert torch.equal(sentence_permutation(tokens, SPECIAL.eos, gen()), tokens)


# --------------------------------------------------------------------------- document rotation


def test_document_rotation_is_a_rotation_and_reaches_every_offset() -> None:
    tokens = distinct(5)
    offsets = set()
    for seed in range(100):
        out = document_rotation(tokens, gen(seed))
        k = [i for i in range(5) if torch.equal(out, torch.roll(tokens, -i))]
        assert len(k) == 1
        offsets.add(k[0])
    assert offsets == set(range(5))


# --------------------------------------------------------------------------- noise_source


def test_noise_source_default_realises_the_level_exactly() -> None:
    original = distinct(40)
    s = DenoisingSettings()
    for seed, level in enumerate((0.0, 0.1, 0.3, 0.6)):
        src = noise_source(original, level, s, SPECIAL, gen(seed))
        alive = int((src != MASK).sum())
        assert original.numel() - alive == math.ceil(40 * level)
        assert sorted(src[src != MASK].tolist()) == sorted(set(src[src != MASK].tolist()))


def test_noise_source_mixture_realises_the_level_on_average() -> None:
    s = DenoisingSettings(infilling=0.4, token_masking=0.3, token_deletion=0.3)
    original = distinct(200)
    g = gen(6)
    shares = []
    for _ in range(50):
        src = noise_source(original, 0.5, s, SPECIAL, g)
        shares.append(1 - int((src != MASK).sum()) / 200)
    assert abs(sum(shares) / len(shares) - 0.5) < 0.03


# --------------------------------------------------------------------------- settings


def test_defaults_are_barts_best_configuration() -> None:
    s = DenoisingSettings()
    assert (s.infilling, s.token_masking, s.token_deletion) == (1.0, 0.0, 0.0)
    assert s.sentence_permutation and not s.document_rotation
    assert s.poisson_lambda == 3.0 and s.full_mask_prob == 0.5 and s.max_noise == 0.6
    assert Denoising.name == "denoising" and Denoising.Settings is DenoisingSettings


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"full_mask_prob": 1.5}, "full_mask_prob"),
        ({"max_noise": -0.1}, "max_noise"),
        ({"infilling": 0.5}, "infilling"),
        ({"infilling": 0.7, "token_masking": 0.7}, "token_masking"),
        ({"poisson_lambda": 0.0}, "poisson_lambda"),
        ({"sentence_permutation": 1}, "sentence_permutation"),
        ({"warm_start_fraction": 1.0}, "warm_start_fraction"),
    ],
)
def test_settings_are_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DenoisingSettings(**kwargs)


def test_no_token_level_noise_is_allowed() -> None:
    DenoisingSettings(infilling=0.0, sentence_permutation=True)


# --------------------------------------------------------------------------- examples and loss

T = 16
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=T, n_layer=1, n_head=2, n_embd=32, dropout=0.0)


def make_batch(B: int = 3, seed: int = 0) -> torch.Tensor:
    # ordinary tokens 4..49 with a few <eos> sprinkled in
    g = gen(seed)
    batch = torch.randint(4, VOCAB, (B, T + 1), generator=g)
    batch[torch.rand(B, T + 1, generator=g) < 0.1] = SPECIAL.eos
    return batch


def objective(**kwargs) -> Denoising:
    return Denoising(DenoisingSettings(**kwargs), CONFIG.info, SPECIAL)


def test_full_mask_example_is_the_plain_block() -> None:
    batch = make_batch()
    ex = objective(full_mask_prob=1.0).build_examples(batch, gen())
    assert torch.equal(ex.inputs, batch[:, :-1])
    assert torch.equal(ex.targets, batch[:, 1:])
    assert ex.plain.all()


def test_noised_examples_take_the_loss_only_on_the_original() -> None:
    batch = make_batch(B=2)
    L = T // 2
    ex = objective(full_mask_prob=0.0).build_examples(batch, gen(7))
    assert ex.inputs.shape == ex.targets.shape == (4, T)  # two halves per row
    assert not ex.plain.any()
    halves = [batch[0, :L], batch[0, L : 2 * L], batch[1, :L], batch[1, L : 2 * L]]
    for inp, tgt, original in zip(ex.inputs, ex.targets, halves, strict=True):
        S = int((inp == SPECIAL.sep).nonzero()[0])  # the one <sep>
        assert (inp[:S] != SPECIAL.sep).all() and S <= T - L
        assert (tgt[:S] == -100).all()  # no loss on the source
        assert torch.equal(tgt[S : S + L], original)  # first original token predicted at <sep>
        assert (tgt[S + L :] == -100).all()  # nor on padding
        fed = inp[S + 1 : S + 1 + L]  # the original as input (its last token may fall off)
        assert torch.equal(fed, original[: fed.numel()]) and fed.numel() >= L - 1
        assert (inp[S + 1 + L :] == SPECIAL.pad).all()
        assert int((tgt != -100).sum()) == L


def test_noised_source_never_exceeds_its_room() -> None:
    # many 0-length spans (lambda small) insert masks and would lengthen the source
    obj = objective(full_mask_prob=0.0, poisson_lambda=0.3, max_noise=0.2)
    ex = obj.build_examples(make_batch(B=8, seed=1), gen(8))
    L = T // 2
    seps = (ex.inputs == SPECIAL.sep).nonzero()[:, 1]
    assert seps.numel() == 16 and (seps <= T - L).all()
    assert ((ex.targets != -100).sum(1) == L).all()


def test_full_mask_prob_one_gives_exactly_the_mle_loss() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    batch = make_batch(B=4, seed=3)
    state = TrainingState(step=0, progress=0.0)
    denoise = objective(full_mask_prob=1.0).loss(model, batch, state)
    mle = MLE(MLESettings(), CONFIG.info, SPECIAL).loss(model, batch, state)
    assert torch.equal(denoise.loss, mle.loss)
    assert denoise.logs["full_mask_share"] == 1.0


def test_loss_and_its_parts_equal_cross_entropy_on_the_examples_logits() -> None:
    # The fused loss skips source and padding positions; it must score exactly the targets.
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    batch = make_batch(B=8, seed=5)
    obj = objective(full_mask_prob=0.5)
    state = TrainingState(step=0, progress=0.0)
    obj.generator.manual_seed(11)
    out = obj.loss(model, batch, state)
    ex = obj.build_examples(batch, torch.Generator().manual_seed(11))
    assert 0 < int(ex.plain.sum()) < ex.plain.numel()  # both kinds of example in the batch
    with torch.no_grad():
        logits = model(ex.inputs)
    torch.testing.assert_close(out.loss, token_nll(logits, ex.targets))
    plain = token_nll(logits[ex.plain], ex.targets[ex.plain])
    denoise = token_nll(logits[~ex.plain], ex.targets[~ex.plain])
    torch.testing.assert_close(out.logs["nll_plain"], plain)
    torch.testing.assert_close(out.logs["nll_denoise"], denoise)


def test_a_few_optimisation_steps_give_finite_losses() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = objective()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = make_batch(B=4, seed=4)
    losses = []
    for step in range(5):
        out = obj.loss(model, batch, TrainingState(step=step, progress=step / 5))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        assert 0.0 <= out.logs["full_mask_share"] <= 1.0
        if "noise_share" in out.logs:
            assert 0.0 <= out.logs["noise_share"] <= 1.0
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
