"""The fused projection + cross-entropy must be the plain cross-entropy, value and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from beyondmle.fused_loss import linear_cross_entropy
from beyondmle.model import GPT, ModelConfig


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_fused_loss_and_gradients_equal_plain_cross_entropy(chunk_size: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(50, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    targets[[3, 17, 18]] = -100
    plain = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets, chunk_size)
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    assert torch.allclose(fused, plain, atol=1e-6)
    for ours, theirs in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_model_next_token_loss_equals_cross_entropy_on_logits_with_tied_weights() -> None:
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    )
    batch = torch.randint(0, 40, (3, 17))
    plain = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    fused = model.next_token_loss(model.hidden_states(batch[:, :-1]), batch[:, 1:])
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    assert torch.allclose(fused, plain, atol=1e-6)
    for ours, theirs in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_model_next_token_loss_skips_a_custom_ignore_index() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    batch = torch.randint(0, 40, (2, 9))
    targets = batch[:, 1:].clone()
    targets[:, :4] = -7
    hidden = model.hidden_states(batch[:, :-1])
    expected = F.cross_entropy(model.logits(hidden)[:, 4:].flatten(0, 1), targets[:, 4:].flatten())
    assert torch.allclose(model.next_token_loss(hidden, targets, ignore_index=-7), expected)


def test_fused_loss_under_bf16_autocast_is_close_to_the_plain_one() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(64, 16)
    weight = torch.randn(50, 16) * 0.1
    targets = torch.randint(0, 50, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(hidden @ weight.T, targets)
        fused = linear_cross_entropy(hidden, weight, targets, 16)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - plain.item()) < 1e-2


def test_without_gradients_only_the_loss_is_computed() -> None:
    # A parameter requires grad even under no_grad (evaluation): one matmul, not three.
    N, C, V = 10, 4, 6
    hidden, weight = torch.randn(N, C), torch.randn(V, C, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss = linear_cross_entropy(hidden, weight, targets)
    assert counter.get_total_flops() == 2 * N * C * V
    assert torch.allclose(loss, F.cross_entropy(hidden @ weight.T, targets), atol=1e-6)


def test_ignored_targets_never_reach_the_output_projection() -> None:
    N, C, V = 12, 4, 6
    hidden, weight = torch.randn(N, C), torch.randn(V, C)
    targets = torch.randint(0, V, (N,))
    targets[:8] = -100
    with FlopCounterMode(display=False) as counter:
        loss = linear_cross_entropy(hidden, weight, targets)
    assert counter.get_total_flops() == 2 * 4 * C * V
    plain = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)
    assert torch.allclose(loss, plain, atol=1e-6)


def test_all_targets_ignored_gives_zero_loss() -> None:
    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(5, 3, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert not hidden.grad.any()
