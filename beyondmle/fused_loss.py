"""Next-token cross-entropy fused with the output projection, computed in chunks of tokens.

The plain path materialises logits (B·T, V) — 41M floats at batch 32, context 128 and PTB's
10k vocabulary — then a float32 copy, the log-softmax and its gradient, each as large: on a CPU
that memory traffic costs as much as the projection's matrix multiply. Here each chunk's logits
are formed, reduced to its loss and turned straight into the gradients of the hidden states and
of the projection weight (softmax − one-hot), so no (B·T, V) tensor ever exists; backward only
scales the stored gradients. The same idea as Liger Kernel's fused linear cross-entropy (Hsu et
al. 2024, "Liger Kernel", §3.3). Values equal `F.cross_entropy(h @ W.T, targets)` up to float
rounding, with targets of -100 ignored.
"""

from __future__ import annotations

import torch

IGNORE = -100


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, grad_enabled):  # noqa: ANN001
        dtype = _compute_dtype(hidden)
        h = hidden.to(dtype)
        w = weight.to(dtype)
        # Ignored positions never reach the output projection: scoring only the second half of
        # each sliding window (perplexity's default stride) halves the largest matmul.
        valid = targets != IGNORE
        count = int(valid.sum())
        kept = None if count == targets.numel() else valid.nonzero().squeeze(1)
        if kept is not None:
            h, targets = h.index_select(0, kept), targets.index_select(0, kept)
        # Under no_grad a parameter still "needs" a gradient, so ask the caller's grad mode:
        # evaluation then runs one matmul per chunk instead of three.
        need_grads = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        grad_h = torch.zeros_like(h, dtype=torch.float32) if need_grads else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if need_grads
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scale = 1.0 / max(count, 1)
        for start in range(0, h.size(0), chunk_size):
            stop = min(start + chunk_size, h.size(0))
            hc = h[start:stop]
            logits = (hc @ w.T).float()  # (n, V)
            t = targets[start:stop]
            picked = logits.gather(1, t[:, None]).squeeze(1)
            # One pass of exp serves the log-sum-exp and the softmax: e = exp(x - max).
            peak = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(peak).exp_()
            norm = e.sum(dim=-1)
            lse = peak.squeeze(1) + norm.log()
            total += (lse - picked).sum()
            if not need_grads:
                continue
            grad = e.div_(norm[:, None])  # softmax, in place
            grad[torch.arange(stop - start, device=grad.device), t] -= 1.0
            grad.mul_(scale)
            grad = grad.to(dtype)
            grad_h[start:stop] = (grad @ w).float()
            grad_w += (grad.T @ hc).float()
        if need_grads and kept is not None:
            grad_h = torch.zeros_like(hidden, dtype=torch.float32).index_copy_(0, kept, grad_h)
        if need_grads:
            ctx.save_for_backward(grad_h.to(hidden.dtype), grad_w.to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_output, grad_w * grad_output, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Mean cross-entropy of `targets` (N,) under logits `hidden (N, C) @ weight.T (C, V)`."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C) and targets (N,), got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, torch.is_grad_enabled())
