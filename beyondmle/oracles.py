"""Oracles: language models whose probabilities are known exactly, to measure against.

On real text, quality can only be estimated. On text sampled from an oracle, everything is
exact: the oracle's log-probability of a model's sample is its quality (NLL-oracle, as in
SeqGAN, LeakGAN and Texygen), the oracle's next-token distribution along any prefix is the truth
a model's should match (exposure bias, Arora et al. 2022), and for a mixture of oracles each
sample's posterior over the components says which modes a model covers.

An oracle gives, for token ids (B, T), the exact log-probabilities of every next token
(`next_log_probs`, (B, T, V)), and samples sequences from a start token. Kinds:

- `LMOracle`: a language model (a trained teacher, or a random Transformer) at a temperature:
  p(x_t | x_<t) = softmax(logits / temperature);
- `MixtureOracle`: K oracles with weights w; p(x) = sum_k w_k p_k(x), whose next-token law along
  a prefix is the posterior-weighted mixture of the components' (exact, in log space);
- `BigramOracle`: a table, for tests with closed-form answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from beyondmle.decoding import DecodingConfig, generate
from beyondmle.model import GPT


class Oracle:
    """Base class; see the module docstring."""

    vocab_size: int
    context_length: int

    def next_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, length: int, bos: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def token_log_probs(self, ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """log p(x_t | x_<t) of every token but the first (B, T - 1)."""
        out = []
        for i in range(0, ids.size(0), batch_size):
            part = ids[i : i + batch_size]
            lp = self.next_log_probs(part[:, :-1])
            out.append(lp.gather(-1, part[:, 1:, None]).squeeze(-1))
        return torch.cat(out)


class LMOracle(Oracle):
    """A language model at a temperature (a trained teacher; a random Transformer, whose
    sharpness is 1 / temperature, as Texygen's random LSTM oracle)."""

    def __init__(self, model: GPT, temperature: float = 1.0) -> None:
        self.model = model.eval()
        self.temperature = temperature
        self.vocab_size = model.config.vocab_size
        self.context_length = model.config.block_size

    @torch.no_grad()
    def next_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids).float() / self.temperature
        return F.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def sample(self, n: int, length: int, bos: int, generator: torch.Generator) -> torch.Tensor:
        """n sequences (n, length): bos, then length - 1 tokens of pure sampling."""
        prompts = torch.full((n, 1), bos, dtype=torch.long)
        decoding = DecodingConfig(temperature=self.temperature)
        rows = generate(self.model, prompts, length - 1, decoding, generator=generator)
        return torch.cat([prompts, torch.tensor(rows, dtype=torch.long)], dim=1)


class BigramOracle(Oracle):
    """p(x_t | x_<t) = table[x_{t-1}]: a Markov chain with a known closed form."""

    def __init__(self, probs: torch.Tensor, context_length: int = 10**6) -> None:
        if probs.dim() != 2 or probs.size(0) != probs.size(1):
            raise ValueError(f"a bigram table is (V, V), got {tuple(probs.shape)}")
        self.log_table = probs.double().clamp_min(0).log()
        self.log_table = self.log_table - torch.logsumexp(self.log_table, dim=-1, keepdim=True)
        self.vocab_size = probs.size(0)
        self.context_length = context_length

    def next_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        return self.log_table[ids].float()

    def sample(self, n: int, length: int, bos: int, generator: torch.Generator) -> torch.Tensor:
        out = torch.full((n, length), bos, dtype=torch.long)
        table = self.log_table.exp()
        for t in range(1, length):
            out[:, t] = torch.multinomial(table[out[:, t - 1]], 1, generator=generator)[:, 0]
        return out


class MixtureOracle(Oracle):
    """p(x) = sum_k w_k p_k(x) over component oracles sharing one vocabulary.

    Along a prefix x_<t the next-token law is sum_k pi_k(t) p_k(. | x_<t) with the posterior
    pi_k(t) proportional to w_k p_k(x_<t): exact, computed in log space."""

    def __init__(self, components: Sequence[Oracle], weights: Sequence[float]) -> None:
        if len(components) != len(weights) or not components:
            raise ValueError("a mixture needs one weight per component")
        if abs(sum(weights) - 1.0) > 1e-6 or min(weights) <= 0:
            raise ValueError(f"mixture weights must be positive and sum to 1, got {weights}")
        vocabularies = {c.vocab_size for c in components}
        if len(vocabularies) != 1:
            raise ValueError(f"mixture components differ in vocabulary size: {vocabularies}")
        self.components = list(components)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.vocab_size = vocabularies.pop()
        self.context_length = min(c.context_length for c in components)

    def _prefix_log_likelihoods(self, ids: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Each component's next-token log-probs (B, T, V), float32, and log p_k(x_<=t)
        (K, B, T), summed in float64 (the sums run over whole sequences)."""
        per = [c.next_log_probs(ids).float() for c in self.components]
        cums = []
        for lp in per:
            taken = lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1).double()  # (B, T - 1)
            cums.append(F.pad(taken.cumsum(dim=1), (1, 0)))  # log p_k(x_1..x_t | x_0)
        return per, torch.stack(cums)

    def next_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """The mixture's law (B, T, V), accumulated one component at a time in float32 (a
        stacked float64 (K, B, T, V) tensor made the mixture oracle's evaluation several times
        slower than its components' forward passes)."""
        per, cums = self._prefix_log_likelihoods(ids)
        log_post = self.weights.log()[:, None, None] + cums  # (K, B, T)
        log_post = (log_post - torch.logsumexp(log_post, dim=0, keepdim=True)).float()
        out = per[0] + log_post[0][..., None]
        for lp, post in zip(per[1:], log_post[1:], strict=True):
            torch.logaddexp(out, lp + post[..., None], out=out)
        return out

    def posteriors(self, ids: torch.Tensor) -> torch.Tensor:
        """p(k | x) (B, K) of whole sequences (the first token is the shared start)."""
        _, cums = self._prefix_log_likelihoods(ids)
        log_post = self.weights.log()[:, None] + cums[:, :, -1]  # (K, B)
        return torch.softmax(log_post, dim=0).T

    def sample(self, n: int, length: int, bos: int, generator: torch.Generator) -> torch.Tensor:
        """Ancestral sampling: a component by its weight, then a sequence from it."""
        which = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        out = torch.empty((n, length), dtype=torch.long)
        for k, component in enumerate(self.components):
            rows = (which == k).nonzero().flatten()
            if rows.numel():
                out[rows] = component.sample(rows.numel(), length, bos, generator)
        return out


def entropy_per_token(oracle: Oracle, samples: torch.Tensor) -> tuple[float, float]:
    """The oracle's entropy rate estimated on its own samples (mean -log p per token, after
    the start token) and the standard error of that mean over sequences."""
    nll = -oracle.token_log_probs(samples).double()  # (N, T - 1)
    per_sequence = nll.mean(dim=1)
    se = float(per_sequence.std(unbiased=True) / math.sqrt(len(per_sequence)))
    return float(per_sequence.mean()), se
