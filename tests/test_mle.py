"""MLE: the loss is the mean negative log-likelihood of the targets; label smoothing as defined;
the objective registry and its contract checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from beyondmle.api import (
    Objective,
    ObjectiveOutput,
    ObjectiveSettings,
    SpecialTokens,
    TrainingState,
    available_objectives,
    get_objective,
    register_objective,
    token_nll,
)
from beyondmle.model import GPT, ModelConfig
from beyondmle.objectives.mle import MLE, MLESettings

VOCAB = 17
CONFIG = ModelConfig(vocab_size=VOCAB, block_size=12, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)
START = TrainingState(step=0, progress=0.0)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    # A freshly initialized model is nearly uniform; larger output weights make the check sharp.
    with torch.no_grad():
        model.wte.weight.mul_(20)
    return model


def batch(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (3, CONFIG.block_size + 1), generator=g)


def generate_greedy(model: GPT, start: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        seq = start
        for _ in range(steps):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def hand_log_probs(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """log p(v | prefix) (B, T, V) from the model's softmax, in float64."""
    with torch.no_grad():
        probs = model(tokens[:, :-1]).double().softmax(-1)
    return probs.log()


def test_mle_loss_is_the_mean_negative_log_likelihood_of_the_targets():
    model, tokens = tiny_model(), batch()
    out = MLE(MLESettings(), CONFIG.info, SPECIAL).loss(model, tokens, START)
    log_p = hand_log_probs(model, tokens)
    B, T = tokens.size(0), tokens.size(1) - 1
    total = 0.0
    for b in range(B):
        for t in range(T):
            total -= log_p[b, t, tokens[b, t + 1]].item()
    expected = total / (B * T)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.logs["nll"].item() == pytest.approx(expected, rel=1e-5)
    # The check is not vacuous: the loss is far from the uniform model's ln V.
    assert abs(expected - torch.log(torch.tensor(float(VOCAB))).item()) > 0.1


@pytest.mark.parametrize("epsilon", [0.1, 0.5])
def test_label_smoothing_mixes_the_target_with_a_uniform_distribution(epsilon):
    # Szegedy et al. 2016, §7: q' = (1 - eps) one_hot(y) + eps / V, loss = -sum_v q'(v) log p(v),
    # i.e. (1 - eps) NLL + eps * mean over v of -log p(v), averaged over positions.
    model = tiny_model()
    # Targets the model predicts well, so the smoothing term differs clearly from the NLL.
    tokens = generate_greedy(model, batch()[:, :1], CONFIG.block_size)
    out = MLE(MLESettings(label_smoothing=epsilon), CONFIG.info, SPECIAL).loss(model, tokens, START)
    log_p = hand_log_probs(model, tokens)
    B, T = tokens.size(0), tokens.size(1) - 1
    total = 0.0
    for b in range(B):
        for t in range(T):
            target = tokens[b, t + 1].item()
            for v in range(VOCAB):
                q = (1 - epsilon) * (v == target) + epsilon / VOCAB
                total -= q * log_p[b, t, v].item()
    expected = total / (B * T)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    plain = MLE(MLESettings(), CONFIG.info, SPECIAL).loss(model, tokens, START).loss.item()
    assert out.loss.item() > plain + 0.1


def test_mle_loss_backpropagates_into_the_model():
    model, tokens = tiny_model(), batch()
    MLE(MLESettings(), CONFIG.info, SPECIAL).loss(model, tokens, START).loss.backward()
    assert model.wte.weight.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_token_nll_ignores_targets_of_minus_100():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])  # (1, 3, 3)
    targets = torch.tensor([[2, -100, 0]])
    log_p = logits.double().softmax(-1).log()
    expected = -(log_p[0, 0, 2] + log_p[0, 2, 0]).item() / 2
    assert token_nll(logits, targets).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_label_smoothing_outside_zero_to_one_is_rejected(value):
    expected = rf"label_smoothing must be a number in \[0, 1\), got {value}"
    with pytest.raises(ValueError, match=expected):
        MLESettings(label_smoothing=value)


# -- registry ------------------------------------------------------------------------------------


def test_registry_lists_mle():
    registry = available_objectives()
    assert registry["mle"] is MLE
    assert get_objective("mle") is MLE
    assert MLE.name == "mle"
    assert list(registry) == sorted(registry)


def test_unknown_objective_is_rejected_with_the_registered_names():
    with pytest.raises(LookupError) as info:
        get_objective("maximum_mutual_information")
    message = str(info.value)
    registered = ", ".join(sorted(available_objectives()))
    assert message == f"unknown objective 'maximum_mutual_information'; known: {registered}"
    assert "mle" in message


def test_objective_without_loss_is_rejected_at_registration():
    class NoLoss(Objective):
        pass

    with pytest.raises(TypeError, match=r"objective 'no_loss' must implement loss\(\)"):
        register_objective("no_loss")(NoLoss)
    assert "no_loss" not in available_objectives()


def test_manual_objective_without_manual_step_is_rejected_at_registration():
    class NoManualStep(Objective):
        manual_optimization = True

        def loss(self, model, batch, state):  # not what a manual objective needs
            return ObjectiveOutput(loss=torch.zeros(()))

    with pytest.raises(TypeError, match=r"objective 'no_step' must implement manual_step\(\)"):
        register_objective("no_step")(NoManualStep)
    assert "no_step" not in available_objectives()


def test_non_objective_class_is_rejected_at_registration():
    class NotAnObjective:
        def loss(self, model, batch, state): ...

    with pytest.raises(TypeError, match="is not a subclass of Objective"):
        register_objective("not_one")(NotAnObjective)


def test_settings_that_are_not_an_objective_settings_dataclass_are_rejected():
    @dataclass(frozen=True)
    class LooseSettings:  # a dataclass, but not derived from ObjectiveSettings
        alpha: float = 1.0

    class BadSettings(Objective):
        Settings = LooseSettings

        def loss(self, model, batch, state):
            return ObjectiveOutput(loss=torch.zeros(()))

    with pytest.raises(TypeError, match="Settings must be a dataclass of ObjectiveSettings"):
        register_objective("bad_settings")(BadSettings)


def test_a_second_objective_under_a_taken_name_is_rejected():
    @dataclass(frozen=True)
    class OtherSettings(ObjectiveSettings):
        pass

    class OtherMLE(Objective):
        Settings = OtherSettings

        def loss(self, model, batch, state):
            return ObjectiveOutput(loss=torch.zeros(()))

    with pytest.raises(ValueError, match="objective 'mle' is already registered"):
        register_objective("mle")(OtherMLE)
    assert get_objective("mle") is MLE
