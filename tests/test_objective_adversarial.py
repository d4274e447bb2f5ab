"""The adversarial objective: REINFORCE with dense rewards, the discriminator, the
straight-through Gumbel-softmax estimator, collapse detection and settings validation.

Everything runs on a tiny model (n_embd 32, one layer, vocabulary 20) for a few steps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beyondmle.api import ObjectiveDiverged, Optimizers, SpecialTokens, TrainingState, get_objective
from beyondmle.model import GPT, ModelConfig
from beyondmle.objectives.adversarial import (
    Adversarial,
    AdversarialSettings,
    conditional_gumbel,
    discounted_returns,
    straight_through_gumbel,
)

CONFIG = ModelConfig(vocab_size=20, block_size=12, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
SPECIAL = SpecialTokens(eos=0, mask=1, sep=2, pad=3)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops are ~100x slower with two OpenMP threads on a shared two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(**settings) -> Adversarial:
    settings.setdefault("disc_layers", 1)
    return Adversarial(AdversarialSettings(**settings), CONFIG.info, SPECIAL)


def optimizers_for(opts: dict[str, torch.optim.Optimizer]) -> Optimizers:
    """Plain torch stand-in for the LightningModule: zero_grad, backward, step; names without
    an optimizer are skipped (their loss is still computed)."""

    def step(name: str, loss: torch.Tensor) -> None:
        if name in opts:
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()

    return Optimizers(step)


class TokenRewardStub(nn.Module):
    """A fixed 'discriminator': logit +4 where the token is `favoured`, -4 elsewhere, per
    position; reads ids or distributions like the real one."""

    def __init__(self, favoured: int, value: float = 4.0) -> None:
        super().__init__()
        self.favoured, self.value = favoured, value

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        scores = [
            (p == self.favoured).float() if p.dim() == 2 else p[..., self.favoured].float()
            for p in parts
        ]
        return self.value * (2.0 * torch.cat(scores, dim=1) - 1.0)


class NaNStub(nn.Module):
    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        return torch.full((parts[0].size(0), sum(p.size(1) for p in parts)), float("nan"))


def one_token_model(token: int) -> GPT:
    """A generator that puts (numerically) all its mass on `token`."""
    model = GPT(CONFIG)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.wte.weight[token] = 1.0
        model.ln_f.bias.fill_(10.0)  # logit of `token`: 320; of the others: ~ N(0, 1.1)
    return model


def state(step: int = 0, progress: float = 0.0) -> TrainingState:
    return TrainingState(step=step, progress=progress)


# -- REINFORCE ------------------------------------------------------------------------------


def test_discounted_returns_match_the_definition():
    rewards = torch.randn(3, 6)
    gamma = 0.7
    expected = torch.zeros_like(rewards)
    for t in range(6):
        for s in range(t, 6):
            expected[:, t] += gamma ** (s - t) * rewards[:, s]
    torch.testing.assert_close(discounted_returns(rewards, gamma), expected)
    torch.testing.assert_close(discounted_returns(rewards, 0.0), rewards)


def test_moving_average_baseline_subtracts_the_value_before_the_batch():
    obj = make(baseline="position", baseline_decay=0.25)
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(obj.baseline(first), torch.tensor([2.0, 3.0]))  # own mean once
    second = torch.tensor([[5.0, 7.0], [7.0, 9.0]])
    torch.testing.assert_close(obj.baseline(second), torch.tensor([2.0, 3.0]))  # previous
    # b <- 0.25 * b + 0.75 * mean(R): 0.25 * [2, 3] + 0.75 * [6, 8]
    torch.testing.assert_close(obj.baseline_value[:2], torch.tensor([5.0, 6.75]))
    glob = make(baseline="global")
    torch.testing.assert_close(glob.baseline(first), torch.full((2,), 2.5))


def test_reinforce_raises_the_probability_of_the_rewarded_token():
    torch.manual_seed(0)
    favoured = 5
    model = GPT(CONFIG)
    obj = make(variant="reinforce", min_distinct1=0.0, collapse_accuracy=1.0)
    obj.discriminator = TokenRewardStub(favoured)
    batch = torch.randint(4, 20, (16, CONFIG.block_size + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def p_favoured() -> float:
        with torch.no_grad():
            return model(batch[:, :-1]).softmax(-1)[..., favoured].mean().item()

    before = p_favoured()
    for step in range(6):
        logs = obj.manual_step(model, batch, state(step), optimizers_for({"model": opt}))
    after = p_favoured()
    assert before < 0.1
    assert after > before + 0.2, (before, after)
    assert logs["reward"] > -0.5  # r_t = 2 D_t - 1 is -0.96 for a uniform generator


# -- the discriminator ----------------------------------------------------------------------


def test_discriminator_is_causal_and_reads_ids_and_distributions_alike():
    torch.manual_seed(0)
    d = make(disc_dropout=0.0).discriminator.eval()
    ids = torch.randint(0, 20, (2, 7))
    scores = d(ids)
    assert scores.shape == (2, 7)
    torch.testing.assert_close(d(F.one_hot(ids, 20).float()), scores)
    torch.testing.assert_close(d(ids[:, :3], F.one_hot(ids[:, 3:], 20).float()), scores)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 20
    torch.testing.assert_close(d(changed)[:, :5], scores[:, :5])  # D_t sees only x_<=t


def test_discriminator_separates_even_from_odd_sequences():
    torch.manual_seed(0)
    obj = make(disc_dropout=0.0)
    opt = obj.configure_optimizers(lr=3e-3, weight_decay=0.0)
    assert set(opt) == {"discriminator"}
    optimizers = optimizers_for(opt)
    prompt = torch.zeros(16, 1, dtype=torch.long)

    def pair() -> tuple[torch.Tensor, torch.Tensor]:
        even = 2 * torch.randint(0, 10, (16, 8))
        return even, even + 1

    for step in range(30):
        real, fake = pair()
        logs = obj.discriminator_step(prompt, real, fake, state(step), optimizers)
    real, fake = pair()
    with torch.no_grad():
        _, acc_real, acc_fake = obj.discriminator_loss(
            obj.discriminator(prompt, real)[:, 1:], obj.discriminator(prompt, fake)[:, 1:]
        )
    assert acc_real > 0.95 and acc_fake > 0.95, (acc_real, acc_fake)
    assert logs["d_loss"] < 0.3


# -- straight-through Gumbel-softmax --------------------------------------------------------


def test_straight_through_samples_are_exact_one_hots_with_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 10, requires_grad=True)
    tokens = torch.distributions.Categorical(logits=logits.detach()).sample()
    y = straight_through_gumbel(logits, tokens, tau=0.5)
    assert torch.equal(y, F.one_hot(tokens, 10).float())
    (y * torch.randn(10)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad.abs().sum(-1) > 0).all()  # every position's logits get gradient


def test_straight_through_gradient_is_that_of_the_gumbel_softmax_sample():
    logits = torch.randn(3, 5, requires_grad=True)
    tokens = torch.tensor([0, 2, 4])
    weights = torch.randn(5)
    torch.manual_seed(1)
    (straight_through_gumbel(logits, tokens, tau=0.3) * weights).sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    torch.manual_seed(1)
    z = conditional_gumbel(logits, tokens)
    assert torch.equal(z.argmax(-1), tokens)
    noise = z - F.log_softmax(logits.detach(), -1)
    (F.softmax((logits + noise) / 0.3, -1) * weights).sum().backward()
    torch.testing.assert_close(grad, logits.grad)


def test_conditional_gumbel_has_the_law_of_the_gumbel_max_trick():
    torch.manual_seed(0)
    logp = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    n = 40_000
    tokens = torch.multinomial(logp.exp(), n, replacement=True)
    z = conditional_gumbel(logp.expand(n, 3), tokens)
    assert torch.equal(z.argmax(-1), tokens)
    # Unconditionally, z_i = log p_i + Gumbel(0, 1): mean log p_i + Euler's gamma, var pi^2/6.
    torch.testing.assert_close(z.mean(0), logp + 0.5772, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.full((3,), math.pi**2 / 6), atol=0.08, rtol=0)


def test_temperature_falls_exponentially():
    obj = make(variant="gumbel", tau_start=1.0, tau_end=0.01)
    assert obj.temperature(0.0) == pytest.approx(1.0)
    assert obj.temperature(0.5) == pytest.approx(0.1)
    assert obj.temperature(1.0) == pytest.approx(0.01)


@pytest.mark.parametrize("gan_loss", ["standard", "rsgan"])
def test_gumbel_step_updates_generator_and_discriminator(gan_loss):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = make(variant="gumbel", gan_loss=gan_loss, mle_weight=0.5)
    opts = {"model": torch.optim.Adam(model.parameters(), lr=1e-3)}
    opts.update(obj.configure_optimizers(lr=1e-3, weight_decay=0.0))
    g_before = [p.detach().clone() for p in model.parameters()]
    d_before = [p.detach().clone() for p in obj.discriminator.parameters()]
    batch = torch.randint(4, 20, (4, CONFIG.block_size + 1))
    logs = obj.manual_step(model, batch, state(0, progress=0.5), optimizers_for(opts))
    assert logs["tau"] == pytest.approx(0.1)
    for key in ("d_acc_real", "d_acc_fake", "reward", "g_loss", "nll", "distinct1"):
        assert math.isfinite(float(logs[key])), key
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.parameters(), strict=True))
    assert any(
        not torch.equal(a, b) for a, b in zip(d_before, obj.discriminator.parameters(), strict=True)
    )
    assert all(p.requires_grad for p in obj.discriminator.parameters())  # unfrozen afterwards


# -- collapse and divergence ----------------------------------------------------------------


def test_nan_discriminator_loss_raises():
    torch.manual_seed(0)
    obj = make()
    obj.discriminator = NaNStub()
    batch = torch.randint(4, 20, (4, CONFIG.block_size + 1))
    with pytest.raises(ObjectiveDiverged, match="discriminator loss is nan"):
        obj.manual_step(GPT(CONFIG), batch, state(), optimizers_for({}))


def test_nan_generator_weights_raise():
    model = GPT(CONFIG)
    with torch.no_grad():
        model.wte.weight.fill_(float("nan"))
    batch = torch.randint(4, 20, (4, CONFIG.block_size + 1))
    with pytest.raises(ObjectiveDiverged, match="not finite"):
        make().manual_step(model, batch, state(), optimizers_for({}))


def test_discriminator_stuck_at_accuracy_one_raises_after_patience():
    model = one_token_model(0)
    obj = make(min_distinct1=0.0, collapse_accuracy=0.99, collapse_patience=3)
    obj.discriminator = TokenRewardStub(7)  # real rows are all 7s, generated ones all 0s
    batch = torch.full((4, CONFIG.block_size + 1), 7)
    optimizers = optimizers_for({})
    for step in range(2):
        assert obj.manual_step(model, batch, state(step), optimizers)["d_acc"] == 1.0
    with pytest.raises(ObjectiveDiverged, match="accuracy has been >= 0.99 for 3 consecutive"):
        obj.manual_step(model, batch, state(2), optimizers)


def test_accuracy_streak_resets_below_threshold():
    obj = make(collapse_accuracy=0.9, collapse_patience=2)
    obj.track_accuracy(1.0, state(0))
    obj.track_accuracy(0.5, state(1))
    obj.track_accuracy(0.95, state(2))
    with pytest.raises(ObjectiveDiverged):
        obj.track_accuracy(0.95, state(3))


def test_one_token_generator_raises():
    batch = torch.randint(4, 20, (4, CONFIG.block_size + 1))
    with pytest.raises(ObjectiveDiverged, match="distinct-1"):
        make(min_distinct1=0.1).manual_step(one_token_model(3), batch, state(), optimizers_for({}))


# -- settings and contract ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "ppo"},
        {"baseline": "median"},
        {"gan_loss": "wgan"},
        {"gan_loss": "rsgan", "variant": "reinforce"},
        {"gamma": 1.5},
        {"baseline_decay": 1.0},
        {"tau_start": 0.1, "tau_end": 0.5},
        {"tau_end": 0.0},
        {"collapse_accuracy": 0.4},
        {"collapse_patience": 0},
        {"min_distinct1": -0.1},
        {"prefix_tokens": -1},
        {"sample_length": 0},
        {"disc_layers": 0},
        {"disc_dropout": 1.0},
        {"disc_lr": 0.0},
        {"mle_weight": -1.0},
        {"warm_start_fraction": 1.0},
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        AdversarialSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"prefix_tokens": 12}, {"sample_length": 12}, {"disc_heads": 5}]
)
def test_settings_that_do_not_fit_the_model_raise(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


@pytest.mark.parametrize("variant", ["reinforce", "gumbel"])
def test_trains_through_lightning_after_the_mle_warm_start(variant, tmp_path):
    from beyondmle.training import ObjectiveModule, TrainingConfig, build_trainer

    torch.manual_seed(0)
    training = {
        "budget_tokens": 6 * 4 * CONFIG.block_size,  # 6 steps: 3 of MLE, 3 adversarial
        "batch_size": 4,
        "precision": "32-true",
        "accelerator": "cpu",
        "val_every_steps": 1000,
        "checkpoint_every_steps": 1000,
    }
    module = ObjectiveModule(
        CONFIG.to_dict(),
        "adversarial",
        {"variant": variant, "disc_layers": 1, "min_distinct1": 0.0},
        training,
        {"eos": 0, "mask": 1, "sep": 2, "pad": 3},
    )
    data = torch.utils.data.DataLoader(torch.randint(4, 20, (48, CONFIG.block_size + 1)), 4)
    trainer = build_trainer(TrainingConfig(**training), tmp_path, True, enable_progress_bar=False)
    trainer.fit(module, train_dataloaders=data)
    assert (int(module.steps_done), module.warm_steps) == (6, 3)
    assert {"train/d_acc_real", "train/d_acc_fake", "train/reward", "train/g_loss"} <= set(
        trainer.logged_metrics
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("objective.discriminator.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2


def test_registered_with_the_contract():
    cls = get_objective("adversarial")
    assert cls is Adversarial
    assert cls.manual_optimization and cls.warm_start
    assert AdversarialSettings().warm_start_fraction == 0.5
    keys = make().state_dict().keys()
    assert any(k.startswith("discriminator.") for k in keys)
    assert {"baseline_value", "collapse_streak"} <= set(keys)
