"""Repetition metrics, at the level of whole continuations and of single next-token predictions.

Welleck et al. (2020), "Neural Text Generation with Unlikelihood Training" (ICLR), §6
("Evaluation") and the metrics of Table 2: likelihood training leaves models that repeat
themselves, both in what they generate (seq-rep-n) and in what they predict next while reading
human text (rep, wrep, uniq). These are the numbers an objective meant to fix degeneration
should move.

A sample is a sequence of hashable tokens (ints or strs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from beyondmle.metrics.diversity import Sample, _check_order, _ngrams


def _repeated_fraction(sample: Sample, n: int) -> float:
    grams = _ngrams(sample, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def seq_rep_values(samples: Sequence[Sample], n: int = 4) -> list[float]:
    """seq-rep-n of each continuation (see `seq_rep_n`), for resampling."""
    _check_order(n)
    return [_repeated_fraction(sample, n) for sample in samples]


def seq_rep_n(samples: Sequence[Sample], n: int = 4) -> float:
    """seq-rep-n: the fraction of a continuation's n-grams that repeat an earlier one, averaged.

    Welleck et al. (2020), §6, "seq-rep-n": for each continuation,
    1 - |unique n-grams| / |n-grams|, then the mean over continuations. A continuation shorter
    than n has no n-gram and so nothing repeated: it counts as 0.0 and stays in the mean
    (Welleck et al.'s code divides by the number of n-grams and has no value for it; skipping
    it instead would change the denominator of the mean depending on output lengths).
    """
    _check_order(n)
    if not samples:
        raise ValueError("seq_rep_n needs at least one continuation, got none")
    return sum(_repeated_fraction(sample, n) for sample in samples) / len(samples)


def _check_alignment(
    predictions: Sequence[Sample],
    targets: Sequence[Sample],
    contexts: Sequence[Sample],
    window: int,
) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not len(predictions) == len(targets) == len(contexts):
        raise ValueError(
            f"predictions, targets and contexts must hold the same number of sequences, got "
            f"{len(predictions)}, {len(targets)} and {len(contexts)}"
        )
    for i, (predicted, target, context) in enumerate(
        zip(predictions, targets, contexts, strict=True)
    ):
        if len(predicted) != len(target):
            raise ValueError(
                f"sequence {i}: {len(predicted)} predictions for {len(target)} target tokens"
            )
        offset = len(context) - len(target)
        if offset < 0 or list(context[offset:]) != list(target):
            raise ValueError(
                f"sequence {i}: the context (prompt + gold continuation, {len(context)} tokens) "
                f"must end with the {len(target)} target tokens"
            )


def _repeat_flags(predicted: Sample, context: Sample, window: int) -> list[bool]:
    """Whether each prediction occurs among the `window` gold tokens just before its position.

    The prediction at position t of the continuation was made after reading
    `context[:offset + t]`, with `offset = len(context) - len(predicted)`. A counter of the
    tokens in the window slides along the context, so the cost is linear in its length
    whatever the window.
    """
    offset = len(context) - len(predicted)
    in_window = Counter(context[max(0, offset - window) : offset])
    flags = []
    for t, token in enumerate(predicted):
        flags.append(in_window[token] > 0)
        position = offset + t
        in_window[context[position]] += 1
        if position >= window:
            in_window[context[position - window]] -= 1
    return flags


def repetition_counts(
    predictions: Sequence[Sample],
    targets: Sequence[Sample],
    contexts: Sequence[Sample],
    window: int,
) -> list[tuple[int, int, int]]:
    """(positions, repeats, wrong repeats) of each sequence (see `next_token_repetition`)."""
    _check_alignment(predictions, targets, contexts, window)
    out = []
    for predicted, target, context in zip(predictions, targets, contexts, strict=True):
        flags = _repeat_flags(predicted, context, window)
        repeats = sum(flags)
        wrong = sum(f and p != g for f, p, g in zip(flags, predicted, target, strict=True))
        out.append((len(predicted), repeats, wrong))
    return out


def next_token_repetition(
    predictions: Sequence[Sample],
    targets: Sequence[Sample],
    contexts: Sequence[Sample],
    window: int,
) -> dict[str, float | int]:
    """rep/l, wrep/l and uniq of next-token predictions under teacher forcing.

    Welleck et al. (2020), §6 and Table 2: a likelihood-trained model reading human text
    predicts, far more often than the text itself does, a token it has just seen.

    Arguments, for each sequence i:

    - `contexts[i]`: the gold tokens, a prompt followed by the gold continuation;
    - `targets[i]`: the gold continuation, the last `len(targets[i])` tokens of `contexts[i]`;
    - `predictions[i][t]`: the model's top-1 prediction for `targets[i][t]`, made after reading
      `contexts[i][:offset + t]` where `offset = len(contexts[i]) - len(targets[i])`.

    Returns a dict with

    - "rep": the fraction of predictions found among the `window` previous gold tokens,
      `contexts[i][max(0, offset + t - window) : offset + t]`;
    - "wrep": the fraction of positions whose prediction is wrong (prediction != target) and a
      repeat; the denominator is all positions, as in Welleck et al.'s code (fairseq
      `repeat_at_1`), so wrep <= rep and the values compare with their Table 2;
    - "uniq": the number of distinct predicted tokens over all sequences.
    """
    counts = repetition_counts(predictions, targets, contexts, window)
    positions = sum(c[0] for c in counts)
    repeats = sum(c[1] for c in counts)
    wrong_repeats = sum(c[2] for c in counts)
    predicted_tokens: set[Hashable] = {token for predicted in predictions for token in predicted}
    if positions == 0:
        raise ValueError("next_token_repetition needs at least one predicted position, got none")
    return {
        "rep": repeats / positions,
        "wrep": wrong_repeats / positions,
        "uniq": len(predicted_tokens),
    }
