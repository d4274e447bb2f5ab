"""Scheduled sampling: equality with MLE when nothing is replaced, the mixed inputs against
hand-built ones, equivalence with sequential scheduled sampling, the decay schedules and the
settings' validation. Models are tiny (1 layer, width 32, vocabulary 50)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from beyondmle.api import SpecialTokens, TrainingState, token_nll
from beyondmle.model import GPT, ModelConfig
from beyondmle.objectives.mle import MLE, MLESettings
from beyondmle.objectives.scheduled_sampling import (
    ScheduledSampling,
    ScheduledSamplingSettings,
    mix_token_embeddings,
    mix_token_ids,
    parallel_passes,
    predicted_tokens,
    replacement_mask,
    replacement_prob,
    teacher_forcing_prob,
)

CONFIG = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)
START = TrainingState(step=0, progress=0.0)


def make_model(seed: int = 0, config: ModelConfig = CONFIG) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def make_batch(batch_size: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (batch_size, length), generator=g)


def objective(**kwargs) -> ScheduledSampling:
    return ScheduledSampling(ScheduledSamplingSettings(**kwargs), CONFIG.info, SPECIAL)


def loss_and_grads(obj, model: GPT, batch: torch.Tensor, state: TrainingState = START):
    model.zero_grad(set_to_none=True)
    out = obj.loss(model, batch, state)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, grads


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        # MLE sums its loss in chunks (beyondmle.fused_loss): equal up to float32 rounding.
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name


def test_registered_under_its_name() -> None:
    assert ScheduledSampling.name == "scheduled_sampling"
    assert ScheduledSampling.Settings is ScheduledSamplingSettings


# --- probability 0: exactly MLE --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "progress"),
    [
        ({"schedule": "constant", "replace_prob": 0.0, "mixing": "sample"}, 0.7),
        ({"schedule": "constant", "replace_prob": 0.0, "mixing": "argmax", "passes": 3}, 0.7),
        ({"schedule": "constant", "replace_prob": 0.0, "mixing": "soft"}, 0.7),
        ({"schedule": "linear", "mixing": "soft", "passes": 3}, 0.0),  # eps(0) = 1
        ({"schedule": "inverse_sigmoid", "mixing": "sample"}, 0.0),
    ],
)
def test_no_replacement_gives_the_mle_loss_and_gradient(kwargs: dict, progress: float) -> None:
    model, batch = make_model(), make_batch()
    state = TrainingState(step=5, progress=progress)
    mle = MLE(MLESettings(), CONFIG.info, SPECIAL)
    mle_out, mle_grads = loss_and_grads(mle, model, batch, state)
    ss_out, ss_grads = loss_and_grads(objective(**kwargs), model, batch, state)
    assert ss_out.logs["replace_prob"] == 0.0
    assert float(ss_out.logs["replaced_share"]) == 0.0
    assert torch.allclose(ss_out.loss, mle_out.loss, rtol=0.0, atol=1e-6)
    assert_same_grads(ss_grads, mle_grads)


def test_soft_mixing_with_no_replacement_gives_the_gold_embeddings() -> None:
    model, batch = make_model(), make_batch()
    gold = batch[:, :-1]
    logits = model(gold)
    mask = replacement_mask(tuple(gold.shape), 0.0)
    assert not mask.any()
    mixed = mix_token_embeddings(model, gold, logits, mask, temperature=0.7)
    assert torch.equal(mixed, model.wte(gold))


# --- probability 1: the model's own predictions --------------------------------------------------


def test_mask_never_replaces_position_zero_and_hits_the_rate() -> None:
    g = torch.Generator().manual_seed(0)
    full = replacement_mask((4, 7), 1.0, generator=g)
    assert not full[:, 0].any() and full[:, 1:].all()
    mask = replacement_mask((200, 101), 0.3, generator=g)
    assert not mask[:, 0].any()
    # 20 000 Bernoulli(0.3) draws: standard error 0.0032, so 0.02 is over 6 standard errors.
    assert abs(mask[:, 1:].float().mean().item() - 0.3) < 0.02


def test_argmax_full_replacement_inputs_are_the_first_pass_predictions() -> None:
    model, batch = make_model(), make_batch()
    gold = batch[:, :-1]
    with torch.no_grad():
        logits = model(gold)
    mask = replacement_mask(tuple(gold.shape), 1.0)
    mixed = mix_token_ids(gold, logits, mask, mixing="argmax")
    assert torch.equal(mixed[:, 0], gold[:, 0])
    # input t is the token predicted at position t - 1, hand-indexed
    for b in range(gold.size(0)):
        for t in range(1, gold.size(1)):
            assert mixed[b, t].item() == logits[b, t - 1].argmax().item()
    assert (mixed[:, 1:] != gold[:, 1:]).any()  # the test would be vacuous otherwise


@pytest.mark.parametrize("passes", [2, 3])
def test_full_argmax_replacement_loss_is_the_nll_on_the_predicted_prefix(passes: int) -> None:
    model, batch = make_model(), make_batch()
    gold, targets = batch[:, :-1], batch[:, 1:]
    kwargs = {"schedule": "constant", "replace_prob": 1.0, "max_replace_prob": 1.0}
    out, grads = loss_and_grads(objective(mixing="argmax", passes=passes, **kwargs), model, batch)
    assert out.logs["replace_prob"] == 1.0
    assert float(out.logs["replaced_share"]) == 1.0

    # By hand: each pass's inputs are gold[:, 0] followed by the previous pass's argmax tokens.
    model.zero_grad(set_to_none=True)
    inputs = gold
    with torch.no_grad():
        for _ in range(passes - 1):
            inputs = torch.cat([gold[:, :1], model(inputs).argmax(-1)[:, :-1]], dim=1)
    expected = token_nll(model(inputs), targets)
    expected.backward()
    # The objective's loss is fused with the output projection: equal to float32 rounding.
    assert torch.allclose(out.loss, expected, rtol=1e-6, atol=0.0)
    assert_same_grads(grads, {n: p.grad for n, p in model.named_parameters()})
    assert float(out.logs["changed_share"]) == (inputs[:, 1:] != gold[:, 1:]).float().mean()


def test_as_many_passes_as_positions_is_sequential_scheduled_sampling() -> None:
    """Duckworth et al. 2019, §3: with the mask fixed across passes, input t is final after t
    passes, so T passes with every input replaced by argmax give greedy decoding from gold[0]."""
    model, batch = make_model(), make_batch(length=7)
    gold = batch[:, :-1]
    mask = replacement_mask(tuple(gold.shape), 1.0)
    with torch.no_grad():
        _, inputs = parallel_passes(model, gold, mask, passes=gold.size(1), mixing="argmax")
        greedy = gold[:, :1]
        while greedy.size(1) < gold.size(1):
            greedy = torch.cat([greedy, model(greedy)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(inputs, greedy)


def test_soft_full_replacement_is_the_expected_embedding() -> None:
    model, batch = make_model(), make_batch()
    gold = batch[:, :-1]
    temperature = 0.5
    with torch.no_grad():
        logits = model(gold)
        mask = replacement_mask(tuple(gold.shape), 1.0)
        mixed = mix_token_embeddings(model, gold, logits, mask, temperature)
        assert torch.equal(mixed[:, 0], model.wte(gold[:, 0]))
        for t in range(1, gold.size(1)):
            probs = torch.softmax(logits[:, t - 1] / temperature, dim=-1)  # (B, V)
            expected = sum(probs[:, v, None] * model.wte.weight[v] for v in range(50))
            assert torch.allclose(mixed[:, t], expected, atol=1e-6)


def test_soft_mixing_at_low_temperature_matches_argmax_token_inputs() -> None:
    """Soft inputs get positions and dropout as `GPT.embed` gives token inputs: a near one-hot
    mixture gives the hidden states (and so logits) of feeding the argmax tokens themselves."""
    model, batch = make_model(), make_batch()
    gold = batch[:, :-1]
    mask = replacement_mask(tuple(gold.shape), 1.0)
    with torch.no_grad():
        soft_hidden, _ = parallel_passes(model, gold, mask, 2, "soft", temperature=1e-4)
        argmax_hidden, _ = parallel_passes(model, gold, mask, 2, "argmax")
    assert torch.allclose(soft_hidden, argmax_hidden, atol=1e-5)


def test_sampling_follows_the_tempered_softmax() -> None:
    gold = torch.zeros(1, 2, dtype=torch.long)
    base = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    g = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0):
        logits = base.expand(20_000, 2, 3)
        tokens = predicted_tokens(logits, gold.expand(20_000, 2), "sample", temperature, g)
        freq = torch.bincount(tokens[:, 1], minlength=3).float() / 20_000
        expected = torch.softmax(base / temperature, dim=-1)
        # standard error <= 0.0036 per share: 0.02 is over 5 standard errors
        assert torch.allclose(freq, expected, atol=0.02), (temperature, freq, expected)
        assert (tokens[:, 0] == 0).all()


def test_gradient_through_passes_reaches_the_first_pass_only_when_asked() -> None:
    model, batch = make_model(), make_batch()
    kwargs = {"schedule": "constant", "replace_prob": 1.0, "max_replace_prob": 1.0}
    kwargs |= {"mixing": "soft"}
    out_off, grads_off = loss_and_grads(objective(**kwargs), model, batch)
    out_on, grads_on = loss_and_grads(objective(grad_through_passes=True, **kwargs), model, batch)
    assert torch.allclose(out_on.loss, out_off.loss, rtol=0.0, atol=1e-7)  # same forward
    assert any(not torch.allclose(grads_on[n], grads_off[n]) for n in grads_on)


# --- schedules -------------------------------------------------------------------------------

GRID = [i / 200 for i in range(201)]


@pytest.mark.parametrize("schedule", ["linear", "exponential", "inverse_sigmoid"])
def test_default_schedules_start_at_one_decrease_and_respect_the_cap(schedule: str) -> None:
    s = ScheduledSamplingSettings(schedule=schedule)
    eps = [teacher_forcing_prob(s, p) for p in GRID]
    assert eps[0] == 1.0
    assert all(a >= b for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] < 0.1  # the defaults decay most of the way
    probs = [replacement_prob(s, p) for p in GRID]
    assert probs[0] == 0.0
    assert all(0.0 <= r <= s.max_replace_prob for r in probs)
    assert probs[-1] == s.max_replace_prob


def test_schedules_hand_checked_values() -> None:
    linear = ScheduledSamplingSettings(schedule="linear", linear_slope=0.5, eps_min=0.6)
    assert teacher_forcing_prob(linear, 0.4) == pytest.approx(0.8)
    assert teacher_forcing_prob(linear, 1.0) == pytest.approx(0.6)  # floor: 1 - 0.5 < 0.6
    exponential = ScheduledSamplingSettings(schedule="exponential", exponential_base=0.01)
    assert teacher_forcing_prob(exponential, 0.5) == pytest.approx(0.1)
    sig = ScheduledSamplingSettings(
        schedule="inverse_sigmoid", sigmoid_midpoint=0.5, sigmoid_width=0.1, eps_start=0.9
    )
    # at the midpoint the logistic is 1/2, rescaled by 1 / s(m / w) = 1 + exp(-5)
    assert teacher_forcing_prob(sig, 0.5) == pytest.approx(0.9 * 0.5 * (1 + math.exp(-5)))
    # Bengio et al. 2015's k / (k + exp(i / k)), with k = exp(m / w), i = p k / w, times (k+1)/k
    k = math.exp(0.5 / 0.1)
    for p in (0.0, 0.3, 0.5, 0.8, 1.0):
        bengio = k / (k + math.exp(p * k / 0.1 / k)) * (k + 1) / k
        assert teacher_forcing_prob(sig, p) == pytest.approx(0.9 * bengio)


def test_constant_schedule_and_clamped_progress() -> None:
    s = ScheduledSamplingSettings(schedule="constant", replace_prob=0.2)
    assert {replacement_prob(s, p) for p in (-1.0, 0.0, 0.5, 1.0, 2.0)} == {0.2}
    lin = ScheduledSamplingSettings(schedule="linear", max_replace_prob=1.0)
    assert replacement_prob(lin, -0.5) == 0.0 and replacement_prob(lin, 1.5) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.sampled_from(["linear", "exponential", "inverse_sigmoid"]),
    eps_start=st.floats(0.05, 1.0),
    eps_min_share=st.floats(0.0, 1.0),
    cap=st.floats(0.0, 1.0),
    rate=st.floats(0.01, 0.99),
    midpoint=st.floats(0.0, 2.0),
    width=st.floats(1e-3, 1.0),
)
def test_any_schedule_is_monotone_from_its_start_and_capped(
    schedule, eps_start, eps_min_share, cap, rate, midpoint, width
) -> None:
    s = ScheduledSamplingSettings(
        schedule=schedule,
        eps_start=eps_start,
        eps_min=eps_start * eps_min_share,
        max_replace_prob=cap,
        linear_slope=rate * 3,
        exponential_base=rate,
        sigmoid_midpoint=midpoint,
        sigmoid_width=width,
    )
    eps = [teacher_forcing_prob(s, p) for p in GRID]
    assert eps[0] == pytest.approx(eps_start)
    assert all(a >= b for a, b in zip(eps, eps[1:], strict=False))
    assert all(s.eps_min <= e <= eps_start + 1e-12 for e in eps)
    probs = [replacement_prob(s, p) for p in GRID]
    assert all(a <= b for a, b in zip(probs, probs[1:], strict=False))
    assert all(0.0 <= r <= cap for r in probs)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"schedule": "cosine"}, "schedule"),
        ({"mixing": "topk"}, "mixing"),
        ({"replace_prob": 1.5}, "replace_prob"),
        ({"max_replace_prob": -0.1}, "max_replace_prob"),
        ({"schedule": "constant", "replace_prob": 0.5}, "replace_prob"),  # above the cap 0.25
        ({"eps_start": 1.2}, "eps_start"),
        ({"eps_start": 0.5, "eps_min": 0.6}, "eps_min"),
        ({"linear_slope": 0.0}, "linear_slope"),
        ({"exponential_base": 1.0}, "exponential_base"),
        ({"sigmoid_midpoint": -0.1}, "sigmoid_midpoint"),
        ({"sigmoid_width": 0.0}, "sigmoid_width"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"passes": 1}, "passes"),
        ({"passes": 2.5}, "passes"),
        ({"grad_through_passes": True, "mixing": "sample"}, "grad_through_passes"),
        ({"warm_start_fraction": 1.0}, "warm_start_fraction"),
    ],
)
def test_invalid_settings_raise_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScheduledSamplingSettings(**kwargs)


def test_invalid_choice_lists_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="'constant', 'linear', 'exponential', 'inverse_sigmoid'"):
        ScheduledSamplingSettings(schedule="cosine")
    with pytest.raises(ValueError, match="'sample', 'argmax', 'soft'"):
        ScheduledSamplingSettings(mixing="topk")


# --- training --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mixing": "sample", "temperature": 0.8},
        {"mixing": "soft", "grad_through_passes": True, "passes": 3},
    ],
)
def test_a_few_optimisation_steps_stay_finite(kwargs: dict) -> None:
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    model = make_model(config=config)
    obj = ScheduledSampling(ScheduledSamplingSettings(**kwargs), config.info, SPECIAL)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = make_batch(batch_size=4, length=12)
    steps = 6
    losses = []
    for step in range(steps):
        out = obj.loss(model, batch, TrainingState(step=step, progress=step / (steps - 1)))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.logs.values())
    assert all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert out.logs["replace_prob"] == 0.25  # linear default: capped from progress 0.25 on
