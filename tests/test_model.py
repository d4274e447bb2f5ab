"""The shared GPT: KV-cached decoding matches full recomputation, the context limit, tied
embeddings and the parameter count."""

from __future__ import annotations

import pytest
import torch

from beyondmle.decoding import DecodingConfig, generate
from beyondmle.model import GPT, ModelConfig

VOCAB = 23
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(**{**CONFIG.to_dict(), **overrides})
    return GPT(config).eval()


def random_tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- KV cache ------------------------------------------------------------------------------------


@torch.no_grad()
def test_cached_decoding_matches_full_recomputation_token_by_token():
    model = tiny_model()
    seq = random_tokens(3, CONFIG.block_size)
    prompt_len = 5
    cache = model.new_cache(3, CONFIG.block_size)
    cached = model.step(seq[:, :prompt_len], cache)
    assert cache.length == prompt_len
    # The prompt's own logits, computed in one cached call, already match.
    torch.testing.assert_close(cached, model(seq[:, :prompt_len]), rtol=1e-5, atol=1e-5)
    for t in range(prompt_len, CONFIG.block_size):
        step = model.step(seq[:, t : t + 1], cache)[:, -1]
        full = model(seq[:, : t + 1])[:, -1]
        torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    assert cache.length == CONFIG.block_size


@torch.no_grad()
@pytest.mark.parametrize("chunks", [(1, 15), (4, 4, 4, 4), (3, 1, 7, 5), (16,)])
def test_cached_decoding_matches_full_recomputation_with_prompt_in_chunks(chunks):
    model = tiny_model(seed=2)
    seq = random_tokens(2, CONFIG.block_size, seed=3)
    cache = model.new_cache(2, CONFIG.block_size)
    start = 0
    for size in chunks:
        logits = model.step(seq[:, start : start + size], cache)  # (B, size, V)
        # Every position of the chunk must see exactly the keys before it, no more, no less.
        full = model(seq[:, : start + size])[:, start:]
        torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)
        start += size
    assert cache.length == CONFIG.block_size


@torch.no_grad()
def test_cache_in_another_dtype_gives_the_same_logits_in_the_model_dtype():
    # new_cache(dtype=...) may store keys in another dtype; logits stay in the model's dtype.
    model = tiny_model()
    seq = random_tokens(1, 6)
    cache = model.new_cache(1, 6, dtype=torch.float64)
    out = torch.cat([model.step(seq[:, i : i + 1], cache) for i in range(6)], dim=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(seq), rtol=1e-5, atol=1e-5)


# -- context limit -------------------------------------------------------------------------------


def test_input_longer_than_block_size_raises_a_clear_value_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds block_size=16"):
        model(random_tokens(1, CONFIG.block_size + 1))


def test_cached_positions_past_block_size_raise_a_clear_value_error():
    model = tiny_model()
    cache = model.new_cache(1, CONFIG.block_size)
    model.step(random_tokens(1, CONFIG.block_size - 1), cache)
    model.step(random_tokens(1, 1), cache)  # exactly block_size tokens: fine
    with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds block_size=16"):
        model.step(random_tokens(1, 1), cache)


def test_cache_longer_than_block_size_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(17\) exceed the model's context block_size=16"):
        model.new_cache(1, CONFIG.block_size + 1)


def test_feeding_past_the_cache_length_raises_a_clear_value_error():
    model = tiny_model()
    cache = model.new_cache(1, 4)
    model.step(random_tokens(1, 4), cache)
    with pytest.raises(ValueError, match="cache"):
        model.step(random_tokens(1, 1), cache)


def test_generate_past_block_size_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size=16"):
        generate(model, random_tokens(1, 10), 7, DecodingConfig(greedy=True))


def test_a_full_block_is_accepted():
    model = tiny_model()
    assert model(random_tokens(2, CONFIG.block_size)).shape == (2, CONFIG.block_size, VOCAB)


def test_n_embd_not_divisible_by_n_head_is_refused():
    with pytest.raises(ValueError, match="n_embd must be divisible by n_head=3, got 16"):
        ModelConfig(n_embd=16, n_head=3)


# -- parameters ----------------------------------------------------------------------------------


def test_input_and_output_embeddings_are_tied():
    model = tiny_model()
    assert model.lm_head.weight is model.wte.weight
    # One tensor, so an update through either name is seen by the other.
    with torch.no_grad():
        model.wte.weight[3, 0] = 42.0
    assert model.lm_head.weight[3, 0].item() == 42.0


def test_num_params_counts_tied_weights_once_and_excludes_positions():
    model = tiny_model()
    V, T, L, C = VOCAB, CONFIG.block_size, CONFIG.n_layer, CONFIG.n_embd
    # Per block: ln_1 2C, qkv 3C^2 + 3C, proj C^2 + C, ln_2 2C, fc 4C^2 + 4C, proj 4C^2 + C.
    per_block = 12 * C * C + 13 * C
    expected = V * C + L * per_block + 2 * C  # wte (= lm_head) + blocks + ln_f
    assert model.num_params() == expected
    assert model.num_params(exclude_positions=False) == expected + T * C


def test_num_params_without_bias():
    model = tiny_model(bias=False)
    V, L, C = VOCAB, CONFIG.n_layer, CONFIG.n_embd
    # Without biases: each LayerNorm keeps its C weights, each Linear only its matrix.
    per_block = 12 * C * C + 2 * C
    assert model.num_params() == V * C + L * per_block + C


# -- generate: cache vs recomputation ------------------------------------------------------------


def test_generate_with_and_without_cache_give_identical_greedy_outputs():
    model = tiny_model(seed=4)
    prompts = random_tokens(4, 5, seed=5)
    config = DecodingConfig(greedy=True)
    cached = generate(model, prompts, 11, config, use_cache=True)
    recomputed = generate(model, prompts, 11, config, use_cache=False)
    assert cached == recomputed
    assert all(len(row) == 11 for row in cached)


def test_generate_with_and_without_cache_give_identical_seeded_samples():
    model = tiny_model(seed=6)
    prompts = random_tokens(4, 3, seed=7)
    config = DecodingConfig(top_p=0.9)
    outs = [
        generate(
            model, prompts, 12, config, generator=torch.Generator().manual_seed(0), use_cache=c
        )
        for c in (True, False)
    ]
    assert outs[0] == outs[1]


def test_generate_runs_in_eval_mode_and_restores_training_mode():
    model = tiny_model(dropout=0.5).train()
    prompts = random_tokens(2, 4)
    config = DecodingConfig(greedy=True)
    first = generate(model, prompts, 8, config)
    assert model.training
    # Dropout at 0.5 would make two rollouts differ if generate left the model in train mode.
    assert generate(model, prompts, 8, config) == first
    model.eval()
    assert generate(model, prompts, 8, config) == first
    assert not model.training


# -- dropout ---------------------------------------------------------------------------------------


def test_random_keep_keeps_each_entry_with_probability_one_minus_p() -> None:
    from beyondmle.model import random_keep

    torch.manual_seed(0)
    n, p = 300_000, 0.2
    keep = random_keep(torch.Size([n]), p, torch.device("cpu"))
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sigma
    # Each of the three 16-bit lanes of a draw is uniform on its own (the fourth, whose top bit
    # is always 0, is not used): every third entry keeps at the same rate.
    for lane in range(3):
        rate = keep[lane::3].float().mean().item()
        assert abs(rate - (1 - p)) < 5 * (3**0.5) * sigma
    # Neighbouring entries are independent: the rate of both kept is (1 - p)^2.
    both = (keep[:-1] & keep[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * sigma


def test_dropout_zeroes_the_dropped_entries_and_scales_the_rest_in_both_passes() -> None:
    from beyondmle.model import dropout

    torch.manual_seed(0)
    x = torch.randn(64, 50, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(grad, kept.float() / 0.75)
    assert dropout(x, 0.25, training=False) is x


def test_attention_with_dropout_near_zero_equals_the_fused_kernel() -> None:
    """The CPU training path writes attention out to use the cheaper mask; with nothing
    dropped it must give the math kernel's outputs."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=1e-9)
    model = GPT(config)
    idx = random_tokens(3, 16)
    model.train()  # the written-out attention (p rounds to 0 in 1/65536: nothing is dropped)
    ours = model(idx)
    model.eval()  # scaled_dot_product_attention
    assert torch.allclose(ours, model(idx), atol=1e-5)


# -- compute accounting ----------------------------------------------------------------------------


def _torch_flops(fn) -> int:
    """FLOPs as PyTorch's own dispatch-level counter sees them: the independent reference."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def counted_model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    model.compute.reset()
    return model


def test_counted_flops_of_a_training_pass_equal_pytorchs_count(counted_model) -> None:
    model, x = counted_model, random_tokens(4, 33) % 100

    def step():
        model.next_token_loss(model.hidden_states(x[:, :-1]), x[:, 1:]).backward()

    expected = _torch_flops(step)
    assert model.compute.flops == expected
    assert model.compute.forward_tokens == 4 * 32


def test_counted_flops_of_cached_generation_equal_pytorchs_count(counted_model) -> None:
    from beyondmle.decoding import DecodingConfig, generate

    model = counted_model
    prompts = random_tokens(3, 5) % 100
    counted_by_torch = _torch_flops(
        lambda: generate(model, prompts, 10, DecodingConfig(greedy=True))
    )
    # PyTorch's counter does not see attention with an explicit mask (the cached path): by
    # hand, 4·B·T·keys·d per layer, for the 5-token prompt and then 9 fed-back tokens.
    B, d, layers = 3, 32, 2
    attention = 4 * B * d * layers * (5 * 5 + sum(keys for keys in range(6, 15)))
    assert model.compute.flops == counted_by_torch + attention
    assert model.compute.generated_tokens == 3 * 9  # the last token is never fed back


def test_a_frozen_model_with_input_gradients_counts_one_backward(counted_model) -> None:
    """A discriminator as a fixed critic: gradients flow through it to its inputs only."""
    model = counted_model
    for p in model.parameters():
        p.requires_grad_(False)
    probs = torch.softmax(torch.randn(2, 8, 100, requires_grad=True), dim=-1)

    def critic():
        model.hidden_states(embeddings=model.token_embeddings(probs)).sum().backward()

    expected = _torch_flops(critic)
    assert model.compute.flops == pytest.approx(expected, rel=0.02)
