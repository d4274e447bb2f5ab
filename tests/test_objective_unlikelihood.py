"""Unlikelihood training (Welleck et al. 2020): the token- and sequence-level loss math."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from beyondmle.api import SpecialTokens, TrainingState, token_nll
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.model import GPT, ModelConfig
from beyondmle.objectives.unlikelihood import (
    SEQUENCE_MIN_ONE_MINUS_P,
    Unlikelihood,
    UnlikelihoodSettings,
    one_minus_p_nll,
    repeat_ngram_candidates,
    seq_rep,
    token_candidates,
)

VOCAB = 50
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)
START = TrainingState(step=0, progress=0.0)


def make(**settings) -> Unlikelihood:
    return Unlikelihood(UnlikelihoodSettings(**settings), CONFIG.info, SPECIAL)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG)


def candidate_sets(targets: torch.Tensor) -> list[list[set[int]]]:
    """Each position's candidate set, from the sparse ids and keep flags; a candidate listed
    twice at one position would be penalised twice, so it fails the count check too."""
    ids, keep = token_candidates(targets)
    B, T, _ = ids.shape
    sets = [[set(ids[b, t][keep[b, t]].tolist()) for t in range(T)] for b in range(B)]
    counts = [[int(keep[b, t].sum()) for t in range(T)] for b in range(B)]
    assert counts == [[len(c) for c in row] for row in sets]
    return sets


def reference_token_loss(model: GPT, batch: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 5 with plain loops: MLE mean + alpha * sum of -log(1 - p(c)) / number of targets."""
    logits = model(batch[:, :-1])
    log_probs = logits.log_softmax(-1)
    targets = batch[:, 1:]
    total = torch.zeros(())
    for b in range(targets.size(0)):
        for t in range(targets.size(1)):
            for c in set(targets[b, :t].tolist()) - {int(targets[b, t])}:
                total = total - torch.log(torch.clamp(1 - log_probs[b, t, c].exp(), min=1e-5))
    return token_nll(logits, targets) + alpha * total / targets.numel()


# -- token level (§5.1) -------------------------------------------------------------------------


def test_registered_under_its_name():
    assert Unlikelihood.name == "unlikelihood"


def test_alpha_zero_is_the_cross_entropy_written_out_by_hand():
    model = tiny_model()
    batch = torch.randint(0, VOCAB, (2, 9))
    out = make(alpha=0.0).loss(model, batch, START)
    logits = model(batch[:, :-1]).double()  # (2, 8, V)
    targets = batch[:, 1:]
    # -log softmax(x)[t] = log sum_j exp(x_j) - x_t, averaged over the 16 target tokens.
    total = 0.0
    for b in range(2):
        for t in range(8):
            row = logits[b, t]
            total += math.log(sum(math.exp(float(x)) for x in row)) - float(row[targets[b, t]])
    assert float(out.loss) == pytest.approx(total / 16, rel=1e-5)


@pytest.mark.parametrize(
    "batch",
    [
        torch.tensor([[4, 11], [9, 9]]),  # one target per row: no earlier targets at all
        torch.tensor([[5, 7, 7, 7, 7, 7]]),  # every earlier target equals the current one
    ],
    ids=["length-2", "all-previous-equal-target"],
)
def test_no_candidates_equals_mle(batch):
    model = tiny_model()
    assert not token_candidates(batch[:, 1:])[1].any()
    out = make(alpha=1.0).loss(model, batch, START)
    assert torch.equal(out.loss, token_nll(model(batch[:, :-1]), batch[:, 1:]))
    assert float(out.logs["candidates_per_token"]) == 0.0


def test_candidate_mask_hand_example():
    # Inputs 9 5 6 5 7 | targets 5 6 5 7 6. At each position: earlier targets minus the target.
    # The first input token (9) is never a target, so never a candidate (as in the authors'
    # triangle over the targets); rows never share candidates.
    batch = torch.tensor([[9, 5, 6, 5, 7, 6], [8, 1, 1, 2, 3, 1]])
    sets = candidate_sets(batch[:, 1:])
    assert sets[0] == [set(), {5}, {6}, {5, 6}, {5, 7}]
    assert sets[1] == [set(), set(), {1}, {1, 2}, {2, 3}]


def test_token_loss_matches_reference_and_paper_normalisation():
    model = tiny_model()
    batch = torch.tensor([[9, 5, 6, 5, 7, 6], [8, 1, 1, 2, 3, 1]])
    out = make(alpha=0.7).loss(model, batch, START)
    torch.testing.assert_close(out.loss, reference_token_loss(model, batch, 0.7))
    # 1 + 1 + 2 + 2 (row 0) and 1 + 2 + 2 (row 1) candidates over 10 target tokens.
    assert float(out.logs["candidates_per_token"]) == pytest.approx(11 / 10)
    assert float(out.logs["sequence_update"]) == 0.0


def candidate_probabilities(model: GPT, batch: torch.Tensor) -> tuple[float, float]:
    """p(3) at the last position, and the candidate mass summed over all positions."""
    with torch.no_grad():
        probs = model(batch[:, :-1]).softmax(-1)
    ids, keep = token_candidates(batch[:, 1:])
    return probs[0, -1, 3].item(), probs.gather(-1, ids)[keep].sum().item()


def test_token_unlikelihood_lowers_repeated_candidate_more_than_mle():
    batch = torch.tensor([[9, 3, 4, 5, 6, 7, 8]])  # last target 8; 3 is a repeat candidate there
    init = tiny_model(seed=1)
    after = {}
    for alpha in (0.0, 1.0):
        model = copy.deepcopy(init)
        objective = make(alpha=alpha)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(5):
            optimizer.zero_grad()
            objective.loss(model, batch, TrainingState(step=step, progress=0.0)).loss.backward()
            optimizer.step()
        after[alpha] = candidate_probabilities(model, batch)
    assert after[1.0][0] < after[0.0][0]  # the repeat candidate 3 at the last position
    assert after[1.0][1] < after[0.0][1]  # all candidates of all positions together


class FixedLogits(nn.Module):
    """A stand-in model (the model interface's `hidden_states` and `logits`) whose next-token
    logits are a parameter, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fixed = nn.Parameter(logits)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(idx.size(0), idx.size(1), 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(hidden.size(0), -1, -1)


def test_token_loss_finite_when_candidate_is_certain():
    batch = torch.tensor([[9, 5, 6, 7]])  # candidates: {5} at t=1, {5, 6} at t=2
    logits = torch.zeros(1, 3, VOCAB)
    logits[..., 5] = 1e4  # p(5) rounds to exactly 1
    stub = FixedLogits(logits)
    loss = make(alpha=1.0).loss(stub, batch, START).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(stub.fixed.grad).all()


def test_one_minus_p_floor_keeps_sequence_penalty_finite():
    certain = torch.zeros(3)  # log p = 0, i.e. p = 1
    value = one_minus_p_nll(certain, SEQUENCE_MIN_ONE_MINUS_P)
    torch.testing.assert_close(value, torch.full((3,), -math.log(SEQUENCE_MIN_ONE_MINUS_P)))


# -- sequence level (§5.2) ----------------------------------------------------------------------


def test_repeat_ngram_candidates_hand_example():
    continuation = torch.tensor(
        [
            [1, 2, 3, 4, 9, 1, 2, 3, 4, 8],  # (1 2 3 4) repeats at 5..8
            [1, 2, 3, 4, 9, 7, 1, 2, 3, 4],  # ... as the very last 4-gram
            [6, 1, 2, 3, 7, 1, 2, 3, 8, 9],  # only 3-grams repeat: no 4-gram candidate
        ]
    )
    mask = repeat_ngram_candidates(continuation, n=4)
    assert mask.nonzero().tolist() == [[0, 5], [0, 6], [0, 7], [0, 8]] + [
        [1, 6],
        [1, 7],
        [1, 8],
        [1, 9],
    ]
    assert repeat_ngram_candidates(continuation, n=3)[2].nonzero().flatten().tolist() == [5, 6, 7]


def test_repeat_ngram_candidates_overlapping_and_short():
    # 5 5 5 5 5 5: the 4-grams at 1 and 2 repeat the one at 0, so tokens 1..5 are candidates.
    assert repeat_ngram_candidates(torch.full((1, 6), 5), n=4).tolist() == [[False] + [True] * 5]
    assert not repeat_ngram_candidates(torch.tensor([[1, 1, 1]]), n=4).any()


def test_seq_rep_is_share_of_repeated_ngrams():
    rows = [[1, 2, 3, 4, 9, 1, 2, 3, 4, 8], [5, 5, 5, 5, 5, 5], [1, 2, 3]]
    for row in rows:
        grams = [tuple(row[i : i + 4]) for i in range(len(row) - 3)]
        expected = 1 - len(set(grams)) / len(grams) if grams else 0.0
        assert seq_rep(torch.tensor([row]), 4).item() == pytest.approx(expected)


def test_lengths_scale_down_to_the_context():
    assert make().lengths(17) == (5, 11)  # 50:100 scaled into block_size 16
    assert make(prefix_len=4, continuation_len=8).lengths(17) == (4, 8)


def test_sequence_loss_matches_reference():
    model = tiny_model(seed=2)
    objective = make(prefix_len=4, continuation_len=12, ngram=2)
    batch = torch.randint(4, VOCAB, (2, 17))
    out = objective.sequence_loss(model, batch)

    prefix = objective.prefixes(batch, 4, 12)
    assert prefix.tolist() == batch[:, :4].tolist()  # B * T // (4 + 12) = 2 prefixes
    continuation = torch.tensor(generate(model, prefix, 12, DecodingConfig(greedy=True)))
    mask = repeat_ngram_candidates(continuation, 2)
    assert mask.any(), "a random tiny model should repeat itself greedily"
    log_probs = model(torch.cat([prefix, continuation], 1)[:, :-1])[:, 3:].log_softmax(-1)
    total = torch.zeros(())
    for b, t in mask.nonzero().tolist():
        p = log_probs[b, t, continuation[b, t]].exp()
        total = total - torch.log(torch.clamp(1 - p, min=SEQUENCE_MIN_ONE_MINUS_P))
    torch.testing.assert_close(out.loss, total / continuation.numel())
    assert float(out.logs["seq_candidates_per_token"]) == pytest.approx(mask.float().mean())
    assert float(out.logs["seq_rep_n"]) == pytest.approx(seq_rep(continuation, 2).mean())
    assert out.logs["sequence_update"] == 1.0
    out.loss.backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0
    assert model.training  # eval mode for the penalty pass is restored


def test_schedule_is_reproducible_and_confined_to_the_last_fraction():
    objective = make(sequence_fraction=0.25, sequence_prob=0.5)
    early = [objective.is_sequence_step(TrainingState(s, 0.7)) for s in range(50)]
    late = [objective.is_sequence_step(TrainingState(s, 0.8)) for s in range(200)]
    assert not any(early)
    assert 60 < sum(late) < 140
    assert late == [objective.is_sequence_step(TrainingState(s, 0.8)) for s in range(200)]
    assert not make(sequence_fraction=0.0).is_sequence_step(TrainingState(3, 1.0))
    assert make(sequence_prob=1.0).is_sequence_step(TrainingState(3, 0.75))
    assert not make(sequence_prob=0.0).is_sequence_step(TrainingState(3, 1.0))


def test_loss_dispatches_to_sequence_level_in_its_phase():
    model = tiny_model()
    objective = make(sequence_prob=1.0, prefix_len=4, continuation_len=8)
    batch = torch.randint(4, VOCAB, (2, 17))
    out = objective.loss(model, batch, TrainingState(step=9, progress=0.9))
    assert out.logs["sequence_update"] == 1.0 and "seq_rep_n" in out.logs
    assert torch.isfinite(out.loss)


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", -0.1),
        ("alpha", float("nan")),
        ("sequence_fraction", 1.5),
        ("sequence_fraction", -0.1),
        ("sequence_prob", 2.0),
        ("prefix_len", 0),
        ("continuation_len", 0),
        ("ngram", 0),
        ("ngram", 2.5),
        ("warm_start_fraction", 1.0),
    ],
)
def test_invalid_settings_raise(field, value):
    with pytest.raises(ValueError, match=field):
        UnlikelihoodSettings(**{field: value})


def test_the_sequence_level_phase_runs_its_own_linear_schedule():
    obj = make(sequence_fraction=0.25, sequence_lr=2e-4)
    assert obj.learning_rate(TrainingState(step=0, progress=0.5)) is None  # the trainer's
    assert obj.learning_rate(TrainingState(step=0, progress=0.75)) == pytest.approx(2e-4)
    assert obj.learning_rate(TrainingState(step=0, progress=0.875)) == pytest.approx(1e-4)
    assert obj.learning_rate(TrainingState(step=0, progress=1.0)) == pytest.approx(0.0)
    whole = make(sequence_fraction=1.0, sequence_lr=2e-4)  # fine-tuning: the whole run
    assert whole.learning_rate(TrainingState(step=0, progress=0.0)) == pytest.approx(2e-4)


def test_sequence_level_updates_are_counted():
    model = tiny_model()
    obj = make(sequence_fraction=1.0, sequence_prob=1.0, prefix_len=4, continuation_len=8)
    batch = torch.randint(4, VOCAB, (2, 17))
    for step in range(3):
        out = obj.loss(model, batch, TrainingState(step=step, progress=0.5))
        assert out.logs["sequence_updates"] == step + 1
    token_only = make(sequence_fraction=0.0)
    out = token_only.loss(model, batch, TrainingState(step=0, progress=0.9))
    assert out.logs["sequence_updates"] == 0
