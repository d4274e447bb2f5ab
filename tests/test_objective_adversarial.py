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


def test_straight_through_gradient_is_the_gumbel_softmax_jacobian_by_hand():
    """The noise is rebuilt from the same uniforms with the conditional-Gumbel formula
    (Maddison et al. 2014), and the gradient from the softmax Jacobian written out:
    d/dlogit_j sum_i w_i softmax(z / tau)_i = (1 / tau) y_j (w_j - sum_i w_i y_i)."""
    logits = torch.randn(3, 5, dtype=torch.float64).float().requires_grad_(True)
    tokens = torch.tensor([0, 2, 4])
    weights = torch.randn(5)
    tau = 0.3
    (
        straight_through_gumbel(logits, tokens, tau, torch.Generator().manual_seed(1)) * weights
    ).sum().backward()
    u = torch.rand(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    u = u.clamp(min=torch.finfo(torch.float32).tiny, max=1 - 1e-7)
    logp = torch.log_softmax(logits.detach(), dim=-1)
    g = -torch.log(-torch.log(u))
    top = g.gather(1, tokens[:, None])  # the maximum, distributed as Gumbel(0)
    z = -torch.logaddexp(-top, -(logp + g))  # Gumbel(log p_i) truncated below the maximum
    z = z.scatter(1, tokens[:, None], top)
    assert torch.equal(z.argmax(-1), tokens)
    y = torch.softmax((logits.detach() + (z - logp)) / tau, dim=-1)
    expected = y * (weights - (weights * y).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(logits.grad, expected)


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
    obj = make(variant="straight_through_gumbel", tau_start=1.0, tau_end=0.01)
    assert obj.temperature(0.0) == pytest.approx(1.0)
    assert obj.temperature(0.5) == pytest.approx(0.1)
    assert obj.temperature(1.0) == pytest.approx(0.01)


class FixedPolicy(nn.Module):
    """A stand-in generator (the model interface's `hidden_states` and `logits`): the logits of
    every position are one learnable row, whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.tensor(logits))

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ids.size(0), ids.size(1), 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.row.expand(hidden.size(0), hidden.size(1), -1)


def test_reinforce_loss_equals_a_hand_computation_on_a_three_token_vocabulary():
    """Two rows of two sampled tokens, vocabulary {0, 1, 2}, policy logits (0, ln 2, 0):
    p = (1/4, 1/2, 1/4). The discriminator's logit is +4 on token 1 and -4 elsewhere, so the
    reward r = 2 sigmoid(logit) - 1 is +a on token 1 and -a elsewhere, a = 2 sigmoid(4) - 1.
    gamma = 0.5; the `batch` baseline is the batch's mean return per position."""
    obj = make(baseline="batch", gamma=0.5)
    obj.discriminator = TokenRewardStub(favoured=1)
    policy = FixedPolicy([0.0, math.log(2.0), 0.0])
    prompt = torch.tensor([[5], [5]])
    fake = torch.tensor([[1, 0], [2, 1]])
    logs = obj.reinforce_step(policy, fake, prompt, fake, state(), optimizers_for({}))
    a = 2 / (1 + math.exp(-4)) - 1
    rewards = [[a, -a], [-a, a]]
    returns = [[r[0] + 0.5 * r[1], r[1]] for r in rewards]  # [[a/2, -a], [-a/2, a]]
    baseline = [(returns[0][t] + returns[1][t]) / 2 for t in range(2)]
    log_p = {0: math.log(0.25), 1: math.log(0.5), 2: math.log(0.25)}
    loss = (
        -sum(
            (returns[b][t] - baseline[t]) * log_p[int(fake[b, t])]
            for b in range(2)
            for t in range(2)
        )
        / 4
    )
    assert float(logs["pg_loss"]) == pytest.approx(loss, rel=1e-6)
    assert float(logs["reward"]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("variant", ["straight_through_gumbel", "relgan"])
@pytest.mark.parametrize("gan_loss", ["standard", "rsgan"])
def test_gumbel_generator_updates_move_towards_what_the_discriminator_calls_real(variant, gan_loss):
    """The discriminator stub calls token 7 real. Generator updates must raise p(7): with the
    loss's sign flipped, or the generator's label set to 'fake', they would lower it."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = make(variant=variant, gan_loss=gan_loss, prefix_tokens=1)
    obj.discriminator = TokenRewardStub(favoured=7, value=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = torch.randint(4, 20, (16, CONFIG.block_size + 1))
    batch[:, 1:] = 7  # the real continuations, for the relativistic loss

    def p7() -> float:
        with torch.no_grad():
            return torch.softmax(model(batch[:, :1]), -1)[..., 7].mean().item()

    before = p7()
    for step in range(5):
        prompt, real = obj.split_batch(batch)
        fake = obj.sample(model, prompt, real.size(1), state(step))
        obj.gumbel_step(
            model, batch, prompt, real, fake, state(step, 0.0), optimizers_for({"model": opt})
        )
    assert p7() > before + 0.05


def test_the_discriminator_learns_real_as_one_and_generated_as_zero():
    """Flipping either label would teach it the opposite."""
    torch.manual_seed(0)
    obj = make(disc_lr=1e-2)
    opts = obj.configure_optimizers(lr=1e-3, weight_decay=0.0)
    prompt = torch.full((16, 1), 5)
    real = torch.full((16, 6), 7)
    fake = torch.full((16, 6), 9)
    for step in range(30):
        obj.discriminator_step(prompt, real, fake, state(step), optimizers_for(opts))
    with torch.no_grad():
        assert (obj.discriminator(prompt, real)[:, -6:] > 0).all()
        assert (obj.discriminator(prompt, fake)[:, -6:] < 0).all()


def test_relgan_shows_the_discriminator_relaxed_samples_and_straight_through_one_hots():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    prompt = torch.full((2, 1), 5)
    fake = torch.randint(4, 20, (2, 6))
    warm = make(variant="relgan", tau_start=2.0, tau_end=2.0)  # tau 2: visibly soft
    relaxed = warm.relaxed(model, prompt, fake, state(0, 0.5), False)
    hard = make(variant="straight_through_gumbel").relaxed(model, prompt, fake, state(0, 0.5), True)
    assert torch.equal(hard, F.one_hot(fake, 20).float())
    assert torch.equal(relaxed.argmax(-1), fake)
    assert (relaxed.max(-1).values < 1).all()  # soft, not one-hot
    torch.testing.assert_close(relaxed.sum(-1), torch.ones(2, 6))


def test_the_generator_update_draws_fresh_samples():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = make(fresh_samples=True)
    drawn: list[torch.Tensor] = []
    original = obj.sample

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append(out)
        return out

    obj.sample = recording
    opts = obj.configure_optimizers(lr=1e-3, weight_decay=0.0)
    batch = torch.randint(4, 20, (4, CONFIG.block_size + 1))
    obj.manual_step(model, batch, state(), optimizers_for(opts))
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])


def test_scratchgan_optimiser_settings_are_the_defaults():
    obj = make()
    model = GPT(CONFIG)
    generator = obj.model_optimizer(list(model.parameters()))
    assert isinstance(generator, torch.optim.Adam)
    assert generator.defaults["lr"] == 9.59e-5 and generator.defaults["betas"][0] == 0.5
    assert obj.learning_rate(state(0, 0.7)) == 9.59e-5
    disc = obj.configure_optimizers(lr=1e-3, weight_decay=0.1)["discriminator"]
    assert disc.defaults["lr"] == 9.38e-3 and disc.defaults["betas"][0] == 0.5
    assert obj.settings.disc_l2 == 1e-6


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


@pytest.mark.parametrize("variant", ["reinforce", "straight_through_gumbel", "relgan"])
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
    assert len(ckpt["optimizer_states"]) == 3  # model, discriminator, generator (ScratchGAN)


def test_registered_with_the_contract():
    cls = get_objective("adversarial")
    assert cls is Adversarial
    assert cls.manual_optimization and cls.warm_start
    assert AdversarialSettings().warm_start_fraction == 0.5
    keys = make().state_dict().keys()
    assert any(k.startswith("discriminator.") for k in keys)
    assert {"baseline_value", "collapse_streak"} <= set(keys)
