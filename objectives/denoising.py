"""BART-style denoising on the shared decoder-only model (Lewis et al. 2020, "BART: Denoising
Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and
Comprehension", ACL, §2.2 for the noise functions, §5 for the best configuration).

BART corrupts a document and trains an encoder-decoder to reconstruct it. The benchmark has one
decoder-only model, so an example is the concatenation `[noised source] <sep> [original]` and
the next-token loss is taken on the original part only: the prediction of the first original
token at `<sep>` and every later original token. The source, `<sep>` and the right padding
(`<pad>`) get target -100 and cost nothing.

Noise functions
---------------
Each is a pure function of a 1-D LongTensor and an explicit `torch.Generator`:

- `text_infilling`: span lengths ~ Poisson(`poisson_lambda`); each span becomes ONE `<mask>`, a
  0-length span inserts a `<mask>`. The budget follows fairseq's `add_whole_word_mask` (BART's
  reference code): ceil(n * ratio) tokens; lengths are sampled until they cover the budget and
  the last one is trimmed to it, so the positive lengths sum to exactly the budget; the 0-length
  spans are inserted afterwards (fairseq's `add_insertion_noise`). One deliberate difference:
  fairseq starts spans at random distinct positions, so spans may overlap and the masked share
  falls below the ratio; here spans are laid out without overlap (a uniform arrangement of the
  spans among the unmasked tokens), so exactly ceil(n * ratio) tokens are masked and ratio 1.0
  leaves no original token. fairseq's `mask_random` (replacing some masks with random tokens) is
  not used (BART §2.2 does not describe it).
- `token_masking`: each token independently becomes `<mask>` with probability p.
- `token_deletion`: each token independently deleted with probability p.
- `sentence_permutation`: split after every `<eos>` (a trailing piece without `<eos>` is one
  more sentence), shuffle, rejoin. In this benchmark `<eos>` ends a document, so the "sentences"
  are the `<eos>`-delimited pieces of the block, as the brief for this objective asks.
- `document_rotation`: rotate so that a uniformly chosen token starts the sequence.

Per example (`noise_source`): sentence permutation, then the token-level noise at a per-example
noise level l ~ U[0, `max_noise`], split among infilling, masking and deletion by their shares
(`infilling` + `token_masking` + `token_deletion` = 1, or all 0): infilling masks
ceil(l * infilling * L) tokens of the original; masking and deletion then act only on tokens
that are still original (never on a `<mask>`), with probabilities rescaled to the survivors, so
that in expectation a share l of the original tokens is masked or deleted; then rotation. The
realised share (1 - surviving original tokens / L) is logged as `noise_share`.

How a batch row (T + 1 tokens, T next-token predictions under MLE) becomes examples
-----------------------------------------------------------------------------------
With probability `full_mask_prob` the row is FULLY MASKED. A fully masked source carries no
information about the original, so it is represented as no source at all: the example is the
plain row exactly as MLE sees it, inputs `row[:-1]`, targets `row[1:]`, at the same positions.

Otherwise the row gives two examples, one per half: with L = T // 2, the originals are
`row[:L]` and `row[L:2L]`; each example is `[noised half] <sep> [half]`, right-padded with
`<pad>` to T + 1 tokens. A noised half of length S needs S + 1 + L <= T + 1; infilling and
deletion only shorten a half, but the `<mask>` insertions of 0-length spans can lengthen it, so
a source longer than T - L tokens is cut to its first T - L tokens (rare: it needs more
0-length than multi-token spans). Leftover tokens: the last token of the row (the last two if T
is odd) belongs to neither half. `TokenBlocks` makes a row's last token the first token of the
next row, so for even T every token of the stream is still an original in some example; for odd
T one token per row is unused by noised rows. Both halves are used, so a noised row carries
2L = T target tokens (T - 1 for odd T), like an MLE row. Full and noised examples go through one
forward pass (B_full + 2 * B_noised rows of T tokens) and the loss is the mean over all target
tokens, as in MLE.

Why the model is still an unconditional language model, and its perplexity comparable
-------------------------------------------------------------------------------------
Every objective is evaluated on plain text: the held-out perplexity is the next-token NLL of
plain blocks from position 0, and generation continues plain prompts; neither contains `<sep>`
or `<mask>`. The full-mask rows are exactly that task, token for token (same inputs, same
positions, same targets, same loss as MLE), so the distribution that evaluation measures,
p(x_t | x_<t) on plain text, is trained directly and not only through transfer from the
conditional task. The noised rows train p(original | noised source, `<sep>`), an auxiliary
conditional task sharing the same parameters; at evaluation the model is never given a source,
so perplexity and generations are computed by the same code on the same data as for every
other objective, and differ only through what training did to the parameters. With
`full_mask_prob` = 1 the loss is the MLE loss exactly (tested).

Why `full_mask_prob` defaults to 0.5: a noise level drawn only from [0, `max_noise`] never
reaches full masking, and a model trained only on `[source] <sep> [original]` would be
evaluated on a task it never saw (plain text at position 0, with no `<sep>`), so its
perplexity would measure transfer, not training. Full masking is the noise level's endpoint
(level 1: the source is empty and denoising becomes plain language modelling), given a point
mass. 0.5 splits the rows and, since a noised row carries about T targets like a plain one,
the target tokens about evenly between the evaluated task and the denoising task: the largest
denoising share that still gives plain language modelling half the token budget. It is the
same split as the fill-in-the-middle rate 0.5 of Bavarian et al. 2022 ("Efficient Training of
Language Models to Fill in the Middle"), who report that transforming half of the training
documents leaves left-to-right perplexity unharmed. It is a setting, to be varied.

`max_noise` defaults to 0.6, so the mean noise level of the noised examples is 0.3, BART's
masking rate (§5: 30% of tokens, spans of Poisson(3), sentences permuted).

Randomness: all noise of a batch is drawn from the objective's own generator
(`Objective.generator`, seeded from the cell's seed), never from torch's global one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beyondmle.api import (
    IGNORE_INDEX,
    CausalLM,
    ModelInfo,
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    Problem,
    SpecialTokens,
    TrainingState,
    register_objective,
    setting,
)

IGNORE = IGNORE_INDEX


# --------------------------------------------------------------------------- noise functions


def _check_rate(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def sample_span_lengths(
    num_to_mask: int, poisson_lambda: float, generator: torch.Generator
) -> torch.Tensor:
    """Span lengths ~ Poisson(lambda) covering a budget of `num_to_mask` tokens, as fairseq's
    `add_whole_word_mask`: draw until the running sum reaches the budget, trim the last span to
    it, drop the rest. 0-length spans are kept (they become insertions). The positive lengths
    sum to exactly `num_to_mask`."""
    if num_to_mask <= 0:
        return torch.zeros(0, dtype=torch.long)
    rate = torch.full((max(1, num_to_mask),), float(poisson_lambda))
    lengths = torch.poisson(rate, generator=generator).long()
    while int(lengths.sum()) < num_to_mask:
        more = torch.poisson(rate, generator=generator).long()
        lengths = torch.cat([lengths, more])
    cum = lengths.cumsum(0)
    last = int(torch.searchsorted(cum, torch.tensor(num_to_mask)))  # first cum >= budget
    lengths = lengths[: last + 1].clone()
    lengths[last] = num_to_mask - (int(cum[last - 1]) if last > 0 else 0)
    return lengths


def _insert_masks(
    tokens: torch.Tensor, n: int, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Insert `n` mask tokens at uniformly random positions (fairseq `add_insertion_noise`)."""
    if n <= 0:
        return tokens
    total = tokens.numel() + n
    is_noise = torch.zeros(total, dtype=torch.bool)
    is_noise[torch.randperm(total, generator=generator)[:n]] = True
    out = torch.full((total,), mask_id, dtype=tokens.dtype)
    out[~is_noise] = tokens
    return out


def text_infilling(
    tokens: torch.Tensor,
    ratio: float,
    mask_id: int,
    generator: torch.Generator,
    poisson_lambda: float = 3.0,
) -> torch.Tensor:
    """Mask ceil(n * ratio) tokens in non-overlapping spans of Poisson(lambda) length, each span
    replaced by ONE mask; 0-length spans insert a mask. Unmasked tokens keep their order."""
    _check_rate("ratio", ratio)
    n = tokens.numel()
    if n == 0 or ratio == 0.0:
        return tokens.clone()
    budget = min(n, math.ceil(n * ratio))
    lengths = sample_span_lengths(budget, poisson_lambda, generator)
    num_inserts = int((lengths == 0).sum())
    spans = lengths[lengths > 0]
    # The budget-trimmed span is the last drawn; shuffle so it lands anywhere.
    spans = spans[torch.randperm(spans.numel(), generator=generator)]
    k, kept = spans.numel(), n - budget
    # A uniform arrangement of k spans and `kept` single kept tokens: choose the span slots.
    is_span = torch.zeros(k + kept, dtype=torch.bool)
    is_span[torch.randperm(k + kept, generator=generator)[:k]] = True
    item_len = torch.ones(k + kept, dtype=torch.long)
    item_len[is_span] = spans
    starts = item_len.cumsum(0) - item_len  # position of each item in the original
    out = torch.full((k + kept,), mask_id, dtype=tokens.dtype)
    out[~is_span] = tokens[starts[~is_span]]
    return _insert_masks(out, num_inserts, mask_id, generator)


def token_masking(
    tokens: torch.Tensor,
    p: float,
    mask_id: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Replace each token independently by the mask with probability p; length is kept."""
    _check_rate("p", p)
    hit = torch.rand(tokens.numel(), generator=generator) < p
    out = tokens.clone()
    out[hit] = mask_id
    return out


def token_deletion(
    tokens: torch.Tensor,
    p: float,
    generator: torch.Generator,
    protect_id: int | None = None,
) -> torch.Tensor:
    """Delete each token independently with probability p; survivors keep their order. Tokens
    equal to `protect_id` (if given) are never deleted."""
    _check_rate("p", p)
    drop = torch.rand(tokens.numel(), generator=generator) < p
    if protect_id is not None:
        drop &= tokens != protect_id
    return tokens[~drop]


def sentence_permutation(
    tokens: torch.Tensor, eos_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Split after every eos (a trailing piece without eos is one more sentence), shuffle the
    sentences uniformly and rejoin them."""
    n = tokens.numel()
    ends = ((tokens == eos_id).nonzero().flatten() + 1).tolist()
    if not ends or ends[-1] != n:
        ends.append(n)
    bounds = [0, *ends]
    sentences = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if len(sentences) < 2:
        return tokens.clone()
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return torch.cat([sentences[i] for i in order])


def document_rotation(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate so that a uniformly chosen token starts the sequence."""
    n = tokens.numel()
    if n == 0:
        return tokens.clone()
    offset = int(torch.randint(n, (1,), generator=generator))
    return torch.cat([tokens[offset:], tokens[:offset]])


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DenoisingSettings(ObjectiveSettings):
    """Which BART noise functions corrupt the source, and how much.

    - `infilling`, `token_masking`, `token_deletion`: shares of the per-example noise level
      done by text infilling, token masking and token deletion; each in [0, 1], summing to 1
      (or all 0: no token-level noise). Default: infilling only (BART §5).
    - `sentence_permutation`, `document_rotation`: apply these to every noised source.
      Default: permutation on, rotation off (BART §5).
    - `poisson_lambda`: mean infilling span length, > 0 (BART: 3).
    - `full_mask_prob`: probability, in [0, 1], that a row is fully masked, i.e. trained as the
      plain MLE block (see the module docstring for the default 0.5).
    - `max_noise`: the noise level of a noised example is uniform in [0, max_noise], in [0, 1]
      (default 0.6: mean 0.3, BART's 30%).
    """

    infilling: float = setting(1.0, ge=0.0, le=1.0)
    token_masking: float = setting(0.0, ge=0.0, le=1.0)
    token_deletion: float = setting(0.0, ge=0.0, le=1.0)
    sentence_permutation: bool = True
    document_rotation: bool = False
    poisson_lambda: float = setting(3.0, gt=0.0, lt=math.inf)
    full_mask_prob: float = setting(0.5, ge=0.0, le=1.0)
    max_noise: float = setting(0.6, ge=0.0, le=1.0)

    def cross_checks(self) -> list[Problem]:
        total = self.infilling + self.token_masking + self.token_deletion
        if total != 0.0 and abs(total - 1.0) > 1e-6:
            return [
                Problem(
                    "infilling + token_masking + token_deletion",
                    "1 (they are shares of the noise level), or all 0",
                    total,
                )
            ]
        return []


def noise_source(
    original: torch.Tensor,
    level: float,
    settings: DenoisingSettings,
    special: SpecialTokens,
    generator: torch.Generator,
) -> torch.Tensor:
    """The noised source of one original at noise level `level` (see the module docstring)."""
    mask = special.mask
    n = original.numel()
    src = original
    if settings.sentence_permutation:
        src = sentence_permutation(src, special.eos, generator)
    if settings.infilling > 0.0:
        ratio = min(1.0, level * settings.infilling)
        src = text_infilling(src, ratio, mask, generator, settings.poisson_lambda)
    # Masking and deletion act only on still-original tokens, at rates rescaled to them, so that
    # the expected masked-or-deleted share of the original is `level`.
    if settings.token_masking > 0.0:
        alive = int((src != mask).sum())
        p = min(1.0, level * settings.token_masking * n / alive) if alive else 0.0
        src = token_masking(src, p, mask, generator)
    if settings.token_deletion > 0.0:
        alive = int((src != mask).sum())
        p = min(1.0, level * settings.token_deletion * n / alive) if alive else 0.0
        src = token_deletion(src, p, generator, protect_id=mask)
    if settings.document_rotation:
        src = document_rotation(src, generator)
    return src


# --------------------------------------------------------------------------- objective


@dataclass
class Examples:
    """A batch of training examples: `inputs` (N, T) and `targets` (N, T), -100 where no loss;
    `plain` (N,) marks full-mask (plain MLE) rows; the logs of how they were built."""

    inputs: torch.Tensor
    targets: torch.Tensor
    plain: torch.Tensor
    noise_share: list[float]
    noise_level: list[float]


@register_objective("denoising")
class Denoising(Objective):
    """BART denoising (text infilling + sentence permutation by default) as `[noised] <sep>
    [original]` on the shared decoder-only model, mixed with plain rows (full masking)."""

    Settings = DenoisingSettings

    def __init__(
        self, settings: DenoisingSettings, model: ModelInfo, special: SpecialTokens
    ) -> None:
        super().__init__(settings, model, special)
        for name in ("eos", "mask", "sep", "pad"):
            i = getattr(special, name)
            if not 0 <= i < model.vocab_size:
                raise ValueError(
                    f"special token {name}={i} is outside the vocabulary [0, {model.vocab_size})"
                )

    def build_examples(self, batch: torch.Tensor, generator: torch.Generator) -> Examples:
        """Turn rows (B, T + 1) into examples; see the module docstring."""
        s: DenoisingSettings = self.settings
        rows = batch.detach().cpu()
        B, T1 = rows.shape
        T = T1 - 1
        L = T // 2
        if L < 1:
            raise ValueError(f"denoising needs blocks of at least 2 tokens, got T={T}")
        full = torch.rand(B, generator=generator) < s.full_mask_prob
        n_examples = int(full.sum()) + 2 * int((~full).sum())
        seqs = torch.full((n_examples, T1), self.special.pad, dtype=torch.long)
        targets = torch.full((n_examples, T), IGNORE, dtype=torch.long)
        plain = torch.zeros(n_examples, dtype=torch.bool)
        shares: list[float] = []
        levels: list[float] = []
        j = 0
        for b in range(B):
            row = rows[b]
            if full[b]:
                seqs[j] = row
                targets[j] = row[1:]
                plain[j] = True
                j += 1
                continue
            for original in (row[:L], row[L : 2 * L]):
                level = float(torch.rand((), generator=generator)) * s.max_noise
                src = noise_source(original, level, s, self.special, generator)[: T - L]
                S = src.numel()
                seqs[j, :S] = src
                seqs[j, S] = self.special.sep
                seqs[j, S + 1 : S + 1 + L] = original
                targets[j, S : S + L] = original
                shares.append(1.0 - int((src != self.special.mask).sum()) / L)
                levels.append(level)
                j += 1
        device = batch.device
        return Examples(
            inputs=seqs[:, :-1].to(device),
            targets=targets.to(device),
            plain=plain.to(device),
            noise_share=shares,
            noise_level=levels,
        )

    def loss(self, model: CausalLM, batch: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        ex = self.build_examples(batch, self.generator)
        # The fused projection + cross-entropy skips the source and padding positions (target
        # -100) and never materialises (N, T, V) logits: half of a noised example's positions.
        hidden = model.hidden_states(ex.inputs)  # (N, T, C)
        n_full = int(ex.plain.sum())
        logs: dict[str, float | torch.Tensor] = {}
        if 0 < n_full < ex.plain.numel():
            # Each kind of example gets its own fused call, so the parts for the logs cost no
            # second projection; the loss is their token-weighted mean, as one call would give.
            total, count = 0.0, 0
            for name, rows in (("nll_plain", ex.plain), ("nll_denoise", ~ex.plain)):
                targets = ex.targets.masked_fill(~rows[:, None], IGNORE)
                part = model.next_token_loss(hidden, targets)
                tokens = int((targets != IGNORE).sum())
                total, count = total + part * tokens, count + tokens
                logs[name] = part.detach()
            loss = total / count
        else:
            loss = model.next_token_loss(hidden, ex.targets)
        logs["nll"] = loss.detach()
        logs["full_mask_share"] = n_full / max(1, batch.size(0))  # share of rows
        if ex.noise_share:
            logs["noise_share"] = sum(ex.noise_share) / len(ex.noise_share)
            logs["noise_level"] = sum(ex.noise_level) / len(ex.noise_level)
        return ObjectiveOutput(loss=loss, logs=logs)
