"""Repetition metrics: hand-checked values, and the sliding window against a direct count."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beyondmle.metrics.repetition import next_token_repetition, seq_rep_n

Batch = list[list[int]]


def test_seq_rep_4_hand_checked() -> None:
    samples = [
        # 4-grams: 1234 2341 3412 4123 1234 -> 5 in all, 4 unique: 1 - 4/5 = 0.2
        [1, 2, 3, 4, 1, 2, 3, 4],
        # shorter than 4: no 4-gram, counts as 0.0
        [1, 2, 3],
        # 4-grams: 5555 5555 -> 2 in all, 1 unique: 1 - 1/2 = 0.5
        [5, 5, 5, 5, 5],
    ]
    # mean over the three continuations: (0.2 + 0.0 + 0.5) / 3
    assert seq_rep_n(samples) == pytest.approx(0.7 / 3)


def test_seq_rep_1_is_the_repeated_token_fraction() -> None:
    # tokens a b a c: 4 in all, 3 unique: 1 - 3/4
    assert seq_rep_n([["a", "b", "a", "c"]], n=1) == pytest.approx(0.25)


def test_seq_rep_n_needs_continuations() -> None:
    with pytest.raises(ValueError, match="at least one continuation"):
        seq_rep_n([])


def test_seq_rep_n_rejects_order_below_one() -> None:
    with pytest.raises(ValueError, match="n-gram order"):
        seq_rep_n([[1, 2]], n=0)


# Sequence 0: prompt 7 8 9, gold continuation 7 8 10 (offset 3), predictions 8 9 9.
#   t=0: window of 2 = context[1:3] = 8 9;  prediction 8 is in it; gold 7, wrong.
#   t=1: window of 2 = context[2:4] = 9 7;  prediction 9 is in it; gold 8, wrong.
#   t=2: window of 2 = context[3:5] = 7 8;  prediction 9 is not (it is 3 back); gold 10, wrong.
# Sequence 1: prompt 1, gold continuation 1 (offset 1), prediction 1.
#   t=0: window of 2 truncated at the start = context[0:1] = 1; prediction 1 is in it; right.
PREDICTIONS = [[8, 9, 9], [1]]
TARGETS = [[7, 8, 10], [1]]
CONTEXTS = [[7, 8, 9, 7, 8, 10], [1, 1]]


def test_next_token_repetition_hand_checked() -> None:
    result = next_token_repetition(PREDICTIONS, TARGETS, CONTEXTS, window=2)
    # repeats at 3 of 4 positions; 2 of the 4 are wrong and repeats; predicted {8, 9, 1}
    assert result == {"rep": pytest.approx(3 / 4), "wrep": pytest.approx(2 / 4), "uniq": 3}


def test_next_token_repetition_wider_window_reaches_further_back() -> None:
    result = next_token_repetition(PREDICTIONS, TARGETS, CONTEXTS, window=3)
    # at t=2 of sequence 0 the window is context[2:5] = 9 7 8, which now holds the 9
    assert result == {"rep": pytest.approx(1.0), "wrep": pytest.approx(3 / 4), "uniq": 3}


def test_next_token_repetition_wrep_is_zero_without_mistakes() -> None:
    result = next_token_repetition([[1, 2]], [[1, 2]], [[2, 1, 2]], window=4)
    assert result == {"rep": pytest.approx(0.5), "wrep": 0.0, "uniq": 2}


def direct_count(
    predictions: Batch, targets: Batch, contexts: Batch, window: int
) -> dict[str, float | int]:
    """rep, wrep and uniq straight from the definition, slicing each window afresh."""
    repeats, wrong_repeats, positions = 0, 0, 0
    for predicted, target, context in zip(predictions, targets, contexts, strict=True):
        offset = len(context) - len(target)
        for t, token in enumerate(predicted):
            repeated = token in context[max(0, offset + t - window) : offset + t]
            positions += 1
            repeats += repeated
            wrong_repeats += repeated and token != target[t]
    uniq = len({token for predicted in predictions for token in predicted})
    return {
        "rep": repeats / positions,
        "wrep": wrong_repeats / positions,
        "uniq": uniq,
    }


@st.composite
def teacher_forced_batches(draw: st.DrawFn) -> tuple[Batch, Batch, Batch]:
    tokens = st.integers(min_value=0, max_value=4)
    batch = draw(
        st.lists(
            st.tuples(st.lists(tokens, max_size=6), st.lists(tokens, min_size=1, max_size=8)),
            min_size=1,
            max_size=4,
        )
    )
    predictions = [
        draw(st.lists(tokens, min_size=len(gold), max_size=len(gold))) for _, gold in batch
    ]
    targets = [gold for _, gold in batch]
    contexts = [prompt + gold for prompt, gold in batch]
    return predictions, targets, contexts


@settings(max_examples=60, deadline=None)
@given(batch=teacher_forced_batches(), window=st.integers(min_value=1, max_value=10))
def test_next_token_repetition_matches_direct_count(
    batch: tuple[Batch, Batch, Batch], window: int
) -> None:
    predictions, targets, contexts = batch
    result = next_token_repetition(predictions, targets, contexts, window)
    expected = direct_count(predictions, targets, contexts, window)
    assert result == {key: pytest.approx(value) for key, value in expected.items()}


@pytest.mark.parametrize(
    ("predictions", "targets", "contexts", "message"),
    [
        ([[1]], [[1], [2]], [[1], [2]], "same number of sequences"),
        ([[1, 2]], [[1]], [[1]], "2 predictions for 1 target tokens"),
        ([[1, 2]], [[1, 2]], [[2]], "must end with the 2 target tokens"),
        ([[1]], [[1]], [[1, 2]], "must end with the 1 target tokens"),
        ([], [], [], "at least one predicted position"),
        ([[]], [[]], [[3]], "at least one predicted position"),
    ],
)
def test_next_token_repetition_rejects_misaligned_or_empty_inputs(
    predictions: Batch, targets: Batch, contexts: Batch, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        next_token_repetition(predictions, targets, contexts, window=2)


def test_next_token_repetition_rejects_empty_window() -> None:
    with pytest.raises(ValueError, match="window must be >= 1"):
        next_token_repetition([[1]], [[1]], [[1]], window=0)
