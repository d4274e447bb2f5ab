"""Unlikelihood training: push probability away from tokens that make text repetitive.

Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training" (ICLR). Next to the
likelihood of the data, the model is trained to make a set of *negative candidates* unlikely,
with the unlikelihood loss -log(1 - p(c | x_<t)) of each candidate c (§3, Eq. 4):

- token level (§5.1): the candidates at step t are the previous context tokens,
  C_t = {x_1, ..., x_{t-1}} \\ {x_t}, added to the MLE loss with weight `alpha` (Eq. 5);
- sequence level (§5.2): the model greedily continues prefixes of the data, and each token of
  its continuation that belongs to an n-gram already produced earlier in that continuation
  (C_t^{repeat-n}, Eq. 7) is a candidate. The paper fine-tunes a trained model with this loss
  for 1,500 updates, choosing per update between the sequence-level loss (rate 0.5) and the
  token-level one. Here that fine-tuning is its own phase, the last `sequence_fraction` of the
  objective's budget (all of it when the spec fine-tunes a shared MLE base), with its own
  schedule: `sequence_lr`, decayed linearly to 0 without warmup, as the authors' GPT-2 script
  (AdamW 6.25e-5, `warmup_linear`, no warmup; their fairseq runs used NAG, whose rates do not
  carry over to AdamW). The number of sequence-level updates is logged (`sequence_updates`).

Losses are normalised as in the authors' code (facebookresearch/unlikelihood_training,
`custom/candidate_penalty_ce_loss.py` and `custom/sequence_penalty_loss.py`); where this module
departs from that code it says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beyondmle.api import (
    CausalLM,
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    TrainingState,
    register_objective,
    setting,
    token_nll,
)
from beyondmle.decoding import DecodingConfig, generate

# Floors of 1 - p before the log, as in the authors' code: 1e-5 at token level
# (candidate_penalty_ce_loss.py), 1e-20 at sequence level (sequence_penalty_loss.py). They keep
# the loss finite when p(candidate) -> 1 (where 1 - p rounds to 0).
TOKEN_MIN_ONE_MINUS_P = 1e-5
SEQUENCE_MIN_ONE_MINUS_P = 1e-20

# Salt of the per-step generator that picks sequence- or token-level updates.
_SCHEDULE_SALT = 0x554C_5345  # "ULSE"


@dataclass(frozen=True)
class UnlikelihoodSettings(ObjectiveSettings):
    """Settings of unlikelihood training (Welleck et al. 2020).

    - `alpha`: weight of the token-level unlikelihood term (§5.1, Eq. 5; the paper uses 1.0).
      0 gives plain MLE for the token-level updates.
    - `sequence_fraction`: share of the objective's budget, at its end, that is the
      sequence-level fine-tuning phase (§5.2); 0 disables it, 1 makes the whole run that phase
      (for fine-tuning a trained model, as the paper does).
    - `sequence_prob`: in that phase, probability that an update is sequence-level rather than
      token-level (§6.2 and the authors' `--sequence-level-train-rate`: 0.5).
    - `sequence_lr`: the phase's learning rate, decayed linearly to 0 over it, no warmup (the
      authors' GPT-2 fine-tuning: AdamW 6.25e-5).
    - `prefix_len`: length of the data prefixes that the model continues (§6.2: 50).
    - `continuation_len`: greedy continuation length (§6.2: 100). When prefix plus continuation
      exceed the model's context, both are scaled down in the same ratio to fit it.
    - `ngram`: n of the repeated n-grams whose tokens are sequence-level candidates (§5.2:
      n = 4).
    """

    alpha: float = setting(1.0, ge=0.0, lt=math.inf)
    sequence_fraction: float = setting(0.25, ge=0.0, le=1.0)
    sequence_prob: float = setting(0.5, ge=0.0, le=1.0)
    sequence_lr: float = setting(1e-4, gt=0.0)
    prefix_len: int = setting(50, ge=1)
    continuation_len: int = setting(100, ge=1)
    ngram: int = setting(4, ge=1)


def token_candidates(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level negative candidates (§5.1), sparse: ids (B, T, T) and which count (B, T, T).

    Position t may penalise the earlier targets `ids[b, t, j] = targets[b, j]`; `keep[b, t, j]`
    holds when j < t, that target differs from `targets[b, t]`, and j is its first occurrence
    in the row, so each candidate counts once however often it occurred. As in the authors'
    code this is "the triangle" over the targets (their strictly lower-triangular matrix, then
    removing the current target), so the block's first input token, which is never a target,
    is not a candidate. Unlike that code the padding column is never marked: their triangle
    fills its upper part with the padding id and so penalises p(pad) at every position, which
    here would be a real token. A (B, T, V) mask would hold the same sets at V / T times the
    memory; it made this objective the slowest to train.
    """
    B, T = targets.shape
    ids = targets[:, None, :].expand(B, T, T)  # ids[b, t, j] = targets[b, j]
    earlier = torch.ones(T, T, dtype=torch.bool, device=targets.device).tril(-1)  # j < t
    same = targets[:, :, None] == targets[:, None, :]  # (B, T, T): targets j and j' are equal
    first = ~(same & earlier).any(-1)  # (B, T): no earlier equal target
    keep = earlier & first[:, None, :] & (ids != targets[:, :, None])
    return ids, keep


def repeated_ngram_starts(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Booleans (B, length - n + 1): whether the n-gram starting at j of a row equals an n-gram
    starting earlier in that row. Empty (B, 0) when rows are shorter than n.
    """
    B, length = tokens.shape
    if length < n:
        return torch.zeros(B, 0, dtype=torch.bool, device=tokens.device)
    grams = tokens.unfold(1, n, 1)  # (B, G, n)
    same = (grams[:, :, None, :] == grams[:, None, :, :]).all(-1)  # (B, G, G): gram i == gram j
    G = grams.size(1)
    earlier = torch.ones(G, G, dtype=torch.bool, device=tokens.device).triu(1)  # i < j
    return (same & earlier).any(1)


def repeat_ngram_candidates(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Sequence-level candidates C^{repeat-n} (§5.2, Eq. 7) as a boolean mask (B, L).

    A token is a candidate when it lies inside an n-gram that equals an n-gram starting earlier
    in the same continuation; all n tokens of such an n-gram are marked, as in the authors'
    `ngram_repeat_mask`. That function loops `range(len(x) - n)` and so never checks the last
    n-gram; here every n-gram is checked, as Eq. 7 defines.
    """
    repeated = repeated_ngram_starts(tokens, n)  # (B, G)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    G = repeated.size(1)
    for k in range(n if G else 0):  # token j + k belongs to the n-gram starting at j
        mask[:, k : k + G] |= repeated
    return mask


def seq_rep(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """seq-rep-n (§6) of each row: share of its n-grams that repeat an earlier one (0 if none).

    Equals 1 - |unique n-grams| / |n-grams|, the paper's definition.
    """
    repeated = repeated_ngram_starts(tokens, n)
    if repeated.size(1) == 0:
        return torch.zeros(tokens.size(0), device=tokens.device)
    return repeated.float().mean(1)


def one_minus_p_nll(log_probs: torch.Tensor, floor: float) -> torch.Tensor:
    """-log(1 - p), with 1 - p clamped from below at `floor` as in the authors' code."""
    return -torch.log(torch.clamp(1.0 - log_probs.exp(), min=floor))


@register_objective("unlikelihood")
class Unlikelihood(Objective):
    """Token-level unlikelihood (§5.1) throughout, mixed with sequence-level unlikelihood
    (§5.2) in the last `sequence_fraction` of the budget. See the module docstring."""

    Settings = UnlikelihoodSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("sequence_updates", torch.zeros((), dtype=torch.long))

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        if self.is_sequence_step(state):
            self.sequence_updates += 1
            out = self.sequence_loss(model, batch)
        else:
            out = self.token_loss(model, batch)
        out.logs["sequence_updates"] = float(self.sequence_updates)
        return out

    def in_sequence_phase(self, state: TrainingState) -> bool:
        s = self.settings
        return s.sequence_fraction > 0.0 and state.progress >= 1.0 - s.sequence_fraction

    def learning_rate(self, state: TrainingState) -> float | None:
        """In the sequence-level phase: `sequence_lr`, linearly to 0 over the phase."""
        if not self.in_sequence_phase(state):
            return None
        s = self.settings
        start = 1.0 - s.sequence_fraction
        phase = (state.progress - start) / s.sequence_fraction
        return s.sequence_lr * max(0.0, 1.0 - phase)

    def is_sequence_step(self, state: TrainingState) -> bool:
        """Whether this step is a sequence-level update: in the sequence-level phase, with
        probability `sequence_prob` drawn from a generator seeded by the step, so a run (and
        every device of a distributed one) makes the same choices."""
        s = self.settings
        if not self.in_sequence_phase(state):
            return False
        generator = torch.Generator().manual_seed(_SCHEDULE_SALT + state.step)
        return bool(torch.rand((), generator=generator) < s.sequence_prob)

    def token_loss(self, model: CausalLM, batch: torch.Tensor) -> ObjectiveOutput:
        """MLE + alpha * token-level unlikelihood (§5.1, Eq. 5).

        As in the authors' `candidate_penalty_ce_loss`, both terms are sums over the tokens
        divided by the number of target tokens: the MLE mean plus alpha times the summed
        -log(1 - p(c)) over all candidates of all positions, divided by B * T.
        """
        targets = batch[:, 1:]
        logits = model.logits(model.hidden_states(batch[:, :-1]))  # (B, T, V)
        if self.settings.alpha == 0.0:
            nll = token_nll(logits, targets)
            logs = {"nll": nll.detach(), "alpha_term": 0.0, "sequence_update": 0.0}
            return ObjectiveOutput(loss=nll, logs=logs)
        log_probs = logits.float().log_softmax(-1)  # (B, T, V)
        nll = -log_probs.gather(-1, targets[..., None]).mean()
        ids, keep = token_candidates(targets)
        penalty = one_minus_p_nll(log_probs.gather(-1, ids), TOKEN_MIN_ONE_MINUS_P)  # (B, T, T)
        ul = torch.where(keep, penalty, 0.0).sum() / targets.numel()
        alpha_term = self.settings.alpha * ul
        logs: dict[str, float | torch.Tensor] = {
            "nll": nll.detach(),
            "ul_token": ul.detach(),
            "alpha_term": alpha_term.detach(),
            "candidates_per_token": keep.sum() / targets.numel(),
            "sequence_update": 0.0,
        }
        return ObjectiveOutput(loss=nll + alpha_term, logs=logs)

    def lengths(self, batch_width: int) -> tuple[int, int]:
        """Prefix and continuation lengths: the settings, scaled down in the same ratio when
        they exceed the model's context, and the prefix no longer than a batch row."""
        s = self.settings
        prefix, continuation = s.prefix_len, s.continuation_len
        context = self.model_info.context_length
        if prefix + continuation > context:
            if context < 2:
                raise ValueError(f"block_size={context} leaves no room for a continuation")
            prefix = min(context - 1, max(1, round(context * prefix / (prefix + continuation))))
            continuation = context - prefix
        return min(prefix, batch_width), continuation

    def prefixes(self, batch: torch.Tensor, prefix: int, continuation: int) -> torch.Tensor:
        """Prefixes (N, prefix) cut from the batch rows, as the authors'
        `batch_input_sequence_by_prefix_length`: consecutive non-overlapping chunks of each row.

        The authors (one 1536-token row per GPU) keep `seq_len // (prefix + continuation)`
        chunks so that an update sees as many tokens as a token-level one; here likewise
        N = B * T // (prefix + continuation) (at least 1), taking the first chunk of every row
        before any row's second chunk.
        """
        B, width = batch.shape
        per_row = width // prefix
        chunks = batch[:, : per_row * prefix].reshape(B, per_row, prefix)
        chunks = chunks.transpose(0, 1).reshape(-1, prefix)  # chunk 0 of every row first
        n = max(1, B * (width - 1) // (prefix + continuation))
        return chunks[:n]

    def sequence_loss(self, model: CausalLM, batch: torch.Tensor) -> ObjectiveOutput:
        """Sequence-level unlikelihood (§5.2, Eq. 6 with C^{repeat-n}, Eq. 7).

        The model greedily continues prefixes of the batch (without gradients, with the KV
        cache), then is run on prefix + continuation with gradients; the loss is the summed
        -log(1 - p(x_t | x_<t)) over the candidate continuation tokens divided by the number of
        continuation tokens, as in the authors' `sequence_penalty_loss`. The authors take these
        probabilities from the greedy decoding itself, in eval mode; the gradient pass here also
        runs in eval mode (no dropout), so it sees the very distributions that chose the tokens.
        """
        s = self.settings
        prefix_len, continuation_len = self.lengths(batch.size(1))
        prefix = self.prefixes(batch, prefix_len, continuation_len).long()
        continuation = torch.tensor(
            generate(model, prefix, continuation_len, DecodingConfig(greedy=True)),
            dtype=torch.long,
            device=batch.device,
        )  # (N, continuation_len)
        sequence = torch.cat([prefix, continuation], dim=1)
        was_training = model.training
        model.eval()
        try:
            hidden = model.hidden_states(sequence[:, :-1])[:, prefix_len - 1 :]
            logits = model.logits(hidden)  # predicts the continuation
        finally:
            model.train(was_training)
        log_probs = logits.float().log_softmax(-1).gather(-1, continuation[..., None])[..., 0]
        candidates = repeat_ngram_candidates(continuation, s.ngram)
        penalty = one_minus_p_nll(log_probs, SEQUENCE_MIN_ONE_MINUS_P)
        loss = torch.where(candidates, penalty, 0.0).sum() / continuation.numel()
        logs: dict[str, float | torch.Tensor] = {
            "seq_ul": loss.detach(),
            "seq_candidates_per_token": candidates.sum() / continuation.numel(),
            "seq_rep_n": seq_rep(continuation, s.ngram).mean(),
            "sequence_update": 1.0,
        }
        return ObjectiveOutput(loss=loss, logs=logs)
