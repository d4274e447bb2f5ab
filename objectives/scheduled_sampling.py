"""Scheduled sampling for a Transformer, in the parallel multi-pass form.

Teacher forcing trains the model only on gold prefixes, while at generation time it conditions
on its own outputs: the mismatch Bengio et al. 2015 ("Scheduled Sampling for Sequence Prediction
with Recurrent Neural Networks", §2.4) address by feeding the model, with a probability that
grows during training, its own prediction instead of the gold previous token.

In an RNN that choice is made step by step. A Transformer computes every position at once, so
the prediction for position t is not available while position t's input is built. Mihaylova &
Martins 2019 ("Scheduled Sampling for Transformers", §3) and Duckworth et al. 2019 ("Parallel
Scheduled Sampling", §3) therefore split the step into passes:

1. pass 1 runs the model on the gold prefix, with no gradient (Mihaylova & Martins' default:
   the first pass only proposes tokens);
2. each input position t >= 1 is, with the replacement probability, swapped for the model's
   own pass-1 prediction of token t (made at position t - 1); position 0 has no prediction
   before it and always stays gold;
3. pass 2 runs the model on this mixed prefix and takes the usual cross-entropy against the
   gold next tokens `batch[:, 1:]`.

With `passes = k > 2`, pass j predicts from the mixed inputs of pass j - 1 and those
predictions, under the same replacement mask, build pass j + 1's inputs (Duckworth et al. 2019,
§3). Keeping the mask fixed across passes is what makes position t's input final after t
passes; with k = T passes, argmax mixing and no dropout the inputs are exactly those of
sequential (step-by-step) scheduled sampling, which the tests check against greedy decoding.

A replaced input is the model's prediction in one of three forms (`mixing`): a token sampled
from the softmax (Bengio et al. 2015, §2.4, sample from the model), the argmax token, or the
softmax-weighted average of the token embeddings (Mihaylova & Martins 2019, §3, "softmax
mix"), which keeps the input continuous and so, unlike a chosen token, can carry gradient
back into the earlier passes (`grad_through_passes`; Mihaylova & Martins 2019, §3, compare
training with and without backpropagation through the first pass).

The teacher-forcing probability eps(p) follows one of Bengio et al.'s §2.4 decay schedules,
written over the objective's training progress p in [0, 1] rather than over update steps so that
one spec works for any token budget; the replacement probability is 1 - eps(p), capped by
`max_replace_prob`.
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
    Problem,
    TrainingState,
    register_objective,
    setting,
)
from beyondmle.decoding import sample_categorical, uniform

SCHEDULES = ("constant", "linear", "exponential", "inverse_sigmoid")
MIXINGS = ("sample", "argmax", "soft")


@dataclass(frozen=True)
class ScheduledSamplingSettings(ObjectiveSettings):
    """Settings of scheduled sampling; p below is `TrainingState.progress` in [0, 1].

    - `schedule`: how the teacher-forcing probability eps(p) decays (Bengio et al. 2015, §2.4,
      rewritten over progress p instead of steps):
        - `"constant"`: the replacement probability is `replace_prob` throughout;
        - `"linear"`: eps = max(eps_min, eps_start - linear_slope * p);
        - `"exponential"`: eps = max(eps_min, eps_start * exponential_base ** p), Bengio's k^i
          with the step count folded into the base: eps(1) = eps_start * exponential_base;
        - `"inverse_sigmoid"`: eps = max(eps_min, eps_start * s((m - p) / w) / s(m / w)) with s
          the logistic function, m = `sigmoid_midpoint` and w = `sigmoid_width`. This is Bengio's
          k / (k + exp(i / k)) with k = exp(m / w) and i = p * k / w, multiplied by (k + 1) / k
          so that it starts at eps_start (Bengio's starts at k / (k + 1)); eps falls fastest
          around p = m, over a span of a few w.
    - `replace_prob`: the fixed replacement probability of the `"constant"` schedule.
    - `max_replace_prob`: cap on the replacement probability 1 - eps(p), for every schedule.
      Mihaylova & Martins 2019 (experiments, §4) found small replacement probabilities best
      for Transformers, so the default keeps at least three quarters of the inputs gold.
    - `eps_start`, `eps_min`: teacher-forcing probability at p = 0, and its floor.
    - `linear_slope`, `exponential_base`, `sigmoid_midpoint`, `sigmoid_width`: the decay
      rates of the schedules above.
    - `mixing`: what replaces a gold input: `"sample"` a token drawn from
      softmax(logits / temperature), `"argmax"` the most likely token, `"soft"` the embedding
      averaged under softmax(logits / temperature).
    - `temperature`: softmax temperature of `"sample"` and `"soft"` (unused by `"argmax"`).
    - `passes`: forward passes per step, >= 2; the loss is taken on the last one.
    - `grad_through_passes`: backpropagate through the passes before the last as well. Only
      `"soft"` mixing has a differentiable path from those passes to the loss, so other mixings
      reject it (it would only cost memory).
    """

    schedule: str = setting("linear", choices=SCHEDULES)
    replace_prob: float = setting(0.1, ge=0.0, le=1.0)
    max_replace_prob: float = setting(0.25, ge=0.0, le=1.0)
    eps_start: float = setting(1.0, ge=0.0, le=1.0)
    eps_min: float = setting(0.0, ge=0.0, le=1.0)
    linear_slope: float = setting(1.0, gt=0.0, lt=math.inf)
    exponential_base: float = setting(0.01, gt=0.0, lt=1.0)
    sigmoid_midpoint: float = setting(0.5, ge=0.0, lt=math.inf)
    sigmoid_width: float = setting(0.1, gt=0.0, lt=math.inf)
    mixing: str = setting("sample", choices=MIXINGS)
    temperature: float = setting(1.0, gt=0.0, lt=math.inf)
    passes: int = setting(2, ge=2)
    grad_through_passes: bool = False

    def cross_checks(self) -> list[Problem]:
        problems = []
        if self.eps_min > self.eps_start:
            problems.append(Problem("eps_min", f"at most eps_start={self.eps_start}", self.eps_min))
        if self.schedule == "constant" and self.replace_prob > self.max_replace_prob:
            problems.append(
                Problem(
                    "replace_prob",
                    f"at most max_replace_prob={self.max_replace_prob} (raise max_replace_prob "
                    "too)",
                    self.replace_prob,
                )
            )
        if self.grad_through_passes and self.mixing != "soft":
            problems.append(
                Problem(
                    "grad_through_passes",
                    "false unless mixing is 'soft' (sampled and argmax tokens carry no "
                    f"gradient; mixing is {self.mixing!r})",
                    self.grad_through_passes,
                )
            )
        return problems


def _logistic(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def teacher_forcing_prob(settings: ScheduledSamplingSettings, progress: float) -> float:
    """eps(p): the probability of keeping a gold input at progress p (clamped to [0, 1]),
    before the `max_replace_prob` cap; see `ScheduledSamplingSettings` for the formulas."""
    s = settings
    p = min(1.0, max(0.0, float(progress)))
    if s.schedule == "constant":
        return 1.0 - s.replace_prob
    if s.schedule == "linear":
        eps = s.eps_start - s.linear_slope * p
    elif s.schedule == "exponential":
        eps = s.eps_start * s.exponential_base**p
    else:  # inverse_sigmoid
        m, w = s.sigmoid_midpoint, s.sigmoid_width
        eps = s.eps_start * _logistic((m - p) / w) / _logistic(m / w)
    return max(s.eps_min, eps)


def replacement_prob(settings: ScheduledSamplingSettings, progress: float) -> float:
    """The probability of replacing an input t >= 1 at progress p: 1 - eps(p), capped by
    `max_replace_prob`."""
    if settings.schedule == "constant":  # exact, without 1 - (1 - r) rounding
        return min(settings.max_replace_prob, settings.replace_prob)
    return min(settings.max_replace_prob, max(0.0, 1.0 - teacher_forcing_prob(settings, progress)))


def replacement_mask(
    shape: tuple[int, int],
    prob: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bool (B, T): which inputs get replaced, each position t >= 1 independently with
    probability `prob`; position 0 never (nothing predicts it)."""
    mask = uniform(shape, generator, device) < prob
    mask[:, 0] = False
    return mask


def predicted_tokens(
    logits: torch.Tensor,
    gold: torch.Tensor,
    mixing: str,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Token ids (B, T) aligned with the inputs: position t >= 1 holds the token chosen from
    logits[:, t - 1] (the prediction for token t); position 0 holds gold[:, 0]."""
    prev = logits[:, :-1].detach().float()  # (B, T - 1, V): predictions for positions 1..T-1
    if mixing == "argmax":
        chosen = prev.argmax(dim=-1)
    elif mixing == "sample":
        probs = torch.softmax(prev / temperature, dim=-1)
        chosen = sample_categorical(probs.flatten(0, 1), generator).view(prev.shape[:-1])
    else:
        raise ValueError(f"mixing must be 'argmax' or 'sample' for tokens, got {mixing!r}")
    return torch.cat([gold[:, :1], chosen.to(gold.dtype)], dim=1)


def mix_token_ids(
    gold: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    mixing: str = "argmax",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inputs (B, T) of the next pass: gold ids, with the masked positions swapped for the
    model's predictions from `logits` (B, T, V) of the previous pass."""
    predicted = predicted_tokens(logits, gold, mixing, temperature, generator)
    return torch.where(mask, predicted, gold)


def mix_token_embeddings(
    model: CausalLM,
    gold: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Token embeddings (B, T, C) of the next pass under soft mixing (Mihaylova & Martins 2019,
    §3): gold embeddings, with each masked position t replaced by the embedding averaged under
    softmax(logits[:, t - 1] / temperature). Positions are added by `model.hidden_states`.

    The mixture weights carry gradient into `logits` when these do; the embedding matrix
    gets gradient through the mixture either way, as it does through a replaced token."""
    gold_emb = model.token_embeddings(gold)  # (B, T, C)
    probs = torch.softmax(logits[:, :-1].float() / temperature, dim=-1)  # (B, T - 1, V)
    soft = model.token_embeddings(probs).to(gold_emb.dtype)  # (B, T - 1, C)
    mixture = torch.cat([gold_emb[:, :1], soft], dim=1)
    return torch.where(mask.unsqueeze(-1), mixture, gold_emb)


def parallel_passes(
    model: CausalLM,
    gold: torch.Tensor,
    mask: torch.Tensor,
    passes: int,
    mixing: str,
    temperature: float = 1.0,
    grad_through_passes: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `passes` passes (Duckworth et al. 2019, §3): pass 1 on the gold inputs (B, T), each
    later pass on gold inputs mixed, under the one `mask`, with the previous pass's
    predictions. Returns the last pass's final hidden states (B, T, C), which the loss projects
    to the vocabulary fused with the cross-entropy, and its inputs: ids (B, T), or token
    embeddings (B, T, C) under soft mixing.

    Passes before the last run without gradient unless `grad_through_passes`."""
    grad = torch.is_grad_enabled()
    inputs: torch.Tensor = gold
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    for index in range(passes):
        with torch.set_grad_enabled(grad and (index == passes - 1 or grad_through_passes)):
            if logits is None:
                hidden = model.hidden_states(gold)
            elif mixing == "soft":
                inputs = mix_token_embeddings(model, gold, logits, mask, temperature)
                hidden = model.hidden_states(embeddings=inputs)
            else:
                inputs = mix_token_ids(gold, logits, mask, mixing, temperature, generator)
                hidden = model.hidden_states(inputs)
            if index < passes - 1:
                logits = model.logits(hidden)  # (B, T, V): this pass's predictions
    assert hidden is not None
    return hidden, inputs


@register_objective("scheduled_sampling")
class ScheduledSampling(Objective):
    """Scheduled sampling in the parallel multi-pass form for Transformers (Duckworth et al.
    2019, §3; Mihaylova & Martins 2019, §3) with Bengio et al. 2015's §2.4 decay schedules: the
    model learns to predict the gold next token from prefixes that hold some of its own
    predictions, so training sees inputs like those it meets when it generates."""

    Settings = ScheduledSamplingSettings

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        s: ScheduledSamplingSettings = self.settings
        gold, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        prob = replacement_prob(s, state.progress)
        mask = replacement_mask(tuple(gold.shape), prob, gold.device, self.generator)
        hidden, inputs = parallel_passes(
            model,
            gold,
            mask,
            s.passes,
            s.mixing,
            s.temperature,
            s.grad_through_passes,
            self.generator,
        )
        loss = model.next_token_loss(hidden, targets)
        logs: dict[str, float | torch.Tensor] = {"nll": loss.detach(), "replace_prob": prob}
        if gold.size(1) > 1:
            logs["replaced_share"] = mask[:, 1:].float().mean()
            if s.mixing != "soft":
                # Replaced inputs that differ from gold: what the model is actually exposed to.
                logs["changed_share"] = (inputs[:, 1:] != gold[:, 1:]).float().mean()
        return ObjectiveOutput(loss=loss, logs=logs)
