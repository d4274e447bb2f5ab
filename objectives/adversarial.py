"""Adversarial training of the shared model against a learned discriminator (a language GAN).

The generator is the shared GPT, warm-started with MLE (`warm_start = True`): the trainer runs
plain MLE for the first `warm_start_fraction` of the token budget, then hands each step to
`Adversarial.manual_step`, which

1. takes the first `prefix_tokens` tokens of every batch row as a prompt (or a lone `<eos>`
   when `prefix_tokens = 0`) and samples a continuation of `sample_length` tokens from the
   generator (`beyondmle.decoding.generate`, plain sampling at temperature 1, no gradient);
2. updates the discriminator to tell the batch's real continuation of the same prompt (label 1,
   "human") from the generated one (label 0), with the per-token cross-entropy that ScratchGAN
   uses (de Masson d'Autume et al. 2019, "Training Language GANs from Scratch", §3.1 and the
   released `losses.sequential_cross_entropy_loss`), or the relativistic loss of RelGAN;
3. updates the generator, by one of two estimators of the gradient through discrete samples:

- `variant = "reinforce"`: the score-function estimator (Williams 1992, "Simple Statistical
  Gradient-Following Algorithms for Connectionist Reinforcement Learning", §4) with ScratchGAN's
  dense per-token rewards (§3.1): the discriminator is causal, so its output at every position
  is D_t = P(human | x_1..t), and the token sampled at t earns r_t = 2 D_t - 1 (the form of the
  released ScratchGAN code, which its authors found more stable than MaskGAN's log D). Rewards
  are discounted into returns R_t = sum_{s >= t} gamma^(s - t) r_s and a moving-average
  baseline is subtracted (ScratchGAN §3.1; variance reduction as in Williams 1992 §4). Dense
  rewards are one of the ingredients that let ScratchGAN train without MLE pre-training: a
  single sequence-level reward gives every token the same, very noisy, credit.
- `variant = "straight_through_gumbel"`: the straight-through Gumbel-softmax estimator (Jang et
  al. 2017, "Categorical Reparameterization with Gumbel-Softmax", §2-3; Bengio et al. 2013 for the
  straight-through idea) as RelGAN trains its generator (Nie et al. 2019, "RelGAN: Relational
  Generative Adversarial Networks for Text Generation", §3.2): the generator's logits are
  recomputed with gradient on the sampled sequence, each sampled token becomes a one-hot vector
  whose backward pass is that of softmax((logits + g) / tau), and the discriminator reads those
  vectors as distributions (its embedding is a matmul). The temperature falls exponentially
  with training progress (RelGAN §3.3, "temperature control": inverse temperature
  beta_n = beta_max^(n / N), i.e. tau from `tau_start` to `tau_end` geometrically). The
  gradient reaches every position's logits, but not through the sampled tokens that later
  positions read as inputs: the generator is teacher-forced on its own samples, so the path
  "token t -> input of position t + 1" is cut. This truncation is the same as RelGAN's, whose
  LSTM generator also feeds back the hard argmax token.
- `variant = "relgan"`: RelGAN proper (Nie et al. 2019, §3.2): the discriminator reads the soft
  relaxed sample softmax(beta (o + g)) itself, in its own update and in the generator's, not a
  one-hot vector; the generator's gradient is that of the relaxation, with the same annealing.

Optimisation follows ScratchGAN's released settings (`../shared/reference-results.md`): in the
adversarial phase the generator is trained with its own Adam (beta1 0.5, constant learning rate
`gen_lr` = 9.59e-5), the discriminator with Adam (beta1 0.5, `disc_lr` = 9.38e-3) and an L2
penalty `disc_l2` = 1e-6 on its weights, and the generator's update draws fresh samples after
the discriminator's (`fresh_samples`), so the rewards never come from the very samples the
discriminator has just been trained on. Deviation: ScratchGAN's batch is 512; here it is the
trainer's `batch_size`, the same for every objective (512 rows of a 2-core CPU's budget would
leave a handful of updates).

The discriminator is a small causal Transformer owned by the objective (so it is checkpointed
with it) with its own Adam optimizer (`configure_optimizers` returns `{"discriminator": ...}`).

Language GANs collapse easily (Caccia et al. 2020, "Language GANs Falling Short"), so each
step checks for collapse and raises `ObjectiveDiverged`: a non-finite loss; a discriminator
whose accuracy stays at or above `collapse_accuracy` for `collapse_patience` consecutive steps
(the generator then gets no useful signal); generated samples whose distinct-1 falls below
`min_distinct1` (the generator emits one token).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from beyondmle.api import (
    CausalLM,
    ModelInfo,
    Objective,
    ObjectiveDiverged,
    ObjectiveSettings,
    Optimizers,
    Problem,
    SpecialTokens,
    TrainingState,
    register_objective,
    setting,
)
from beyondmle.decoding import DecodingConfig, generate, uniform
from beyondmle.model import GPT, ModelConfig

VARIANTS = ("reinforce", "straight_through_gumbel", "relgan")
GUMBEL_VARIANTS = ("straight_through_gumbel", "relgan")
BASELINES = ("position", "global", "batch")
GAN_LOSSES = ("standard", "rsgan")


@dataclass(frozen=True)
class AdversarialSettings(ObjectiveSettings):
    """Settings of the adversarial objective (see the module docstring for the method).

    Sampling: `prefix_tokens` real tokens of each batch row prompt the generator (0: start from
    `<eos>`); `sample_length` tokens are generated (None: fill the model's context).

    Discriminator: `disc_layers`, `disc_embd` and `disc_heads` size it (None: the shared model's
    width and heads); `disc_dropout` regularises it (ScratchGAN §3.3 regularises its
    discriminator with dropout, 0.1 in the released code); `disc_lr` and `disc_beta1` set its
    Adam and `disc_l2` the L2 penalty 0.5 * sum w^2 on its weights (ScratchGAN: 9.38e-3, 0.5,
    1e-6); `disc_steps` updates per generator update.

    Generator, in the adversarial phase: Adam with `gen_lr` (constant) and `gen_beta1`
    (ScratchGAN: 9.59e-5, 0.5); `fresh_samples` draws new samples for its update after the
    discriminator's (ScratchGAN does).

    REINFORCE: `gamma` discounts the dense rewards (0.23 in ScratchGAN's released code);
    `baseline` is a per-position moving average of returns (`position`), a single moving average
    over positions and batch (`global`, ScratchGAN's released code) or the batch's mean return
    per position (`batch`); `baseline_decay` is the weight of the previous baseline in the moving
    average (ScratchGAN's convention; 0.08 there, so the baseline tracks recent batches closely).

    Gumbel variants: the temperature goes from `tau_start` to `tau_end` exponentially over the
    adversarial phase (RelGAN §3.3); `gan_loss` is the standard non-saturating GAN loss
    (Goodfellow et al. 2014, §3) or RelGAN's default relativistic standard GAN loss (`rsgan`,
    Jolicoeur-Martineau 2019, "The Relativistic Discriminator"); `rsgan` pairs real and fake
    continuations of the same prompt, so it needs a Gumbel variant (its logits are not a
    per-token P(human) to reward).

    Both: `mle_weight` adds that multiple of the batch's MLE loss to the generator's loss.

    Collapse: `collapse_accuracy` and `collapse_patience` (a discriminator that wins outright for
    that many consecutive steps), `min_distinct1` (distinct tokens / generated tokens in a batch;
    0 disables).
    """

    warm_start_fraction: float = setting(0.5, ge=0.0, lt=1.0)
    variant: str = setting("reinforce", choices=VARIANTS)
    prefix_tokens: int = setting(1, ge=0)
    sample_length: int | None = setting(None, ge=1)
    disc_layers: int = setting(2, ge=1)
    disc_embd: int | None = setting(None, ge=1)
    disc_heads: int | None = setting(None, ge=1)
    disc_dropout: float = setting(0.1, ge=0.0, lt=1.0)
    disc_lr: float = setting(9.38e-3, gt=0.0)
    disc_beta1: float = setting(0.5, ge=0.0, lt=1.0)
    disc_l2: float = setting(1e-6, ge=0.0)
    gen_lr: float = setting(9.59e-5, gt=0.0)
    gen_beta1: float = setting(0.5, ge=0.0, lt=1.0)
    fresh_samples: bool = True
    disc_steps: int = setting(1, ge=1)
    gamma: float = setting(0.23, ge=0.0, le=1.0)
    baseline: str = setting("position", choices=BASELINES)
    baseline_decay: float = setting(0.08, ge=0.0, lt=1.0)
    tau_start: float = setting(1.0, gt=0.0)
    tau_end: float = setting(0.01, gt=0.0)
    gan_loss: str = setting("standard", choices=GAN_LOSSES)
    mle_weight: float = setting(0.0, ge=0.0, lt=math.inf)
    collapse_accuracy: float = setting(0.99, gt=0.5, le=1.0)
    collapse_patience: int = setting(50, ge=1)
    min_distinct1: float = setting(0.01, ge=0.0, lt=1.0)

    def cross_checks(self) -> list[Problem]:
        problems = []
        if self.gan_loss == "rsgan" and self.variant not in GUMBEL_VARIANTS:
            problems.append(
                Problem("gan_loss", "'standard' unless variant is a Gumbel variant", "rsgan")
            )
        if self.tau_end > self.tau_start:
            problems.append(
                Problem(
                    "tau_end",
                    f"at most tau_start={self.tau_start}: the temperature anneals downwards",
                    self.tau_end,
                )
            )
        return problems


class Discriminator(nn.Module):
    """A small causal Transformer that scores every prefix: logits (B, T) of D_t = P(human |
    x_1..t). Causality gives ScratchGAN's dense per-token rewards (§3.1) from one pass.

    Inputs are token ids (B, t) or distributions over the vocabulary (B, t, V); distributions are
    embedded by a matmul with the same embedding matrix, so a one-hot row embeds exactly like its
    id and a straight-through Gumbel-softmax sample carries gradient (RelGAN §3.2).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # The shared GPT's trunk (its tied output layer adds no parameters) with a scalar head.
        self.trunk = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def embed_part(self, part: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, t, C) of ids (B, t) or distributions (B, t, V)."""
        if part.dim() == 2 or (part.dim() == 3 and part.size(-1) == self.config.vocab_size):
            return self.trunk.token_embeddings(part)
        raise ValueError(
            f"discriminator input must be ids (B, t) or distributions (B, t, "
            f"{self.config.vocab_size}), got shape {tuple(part.shape)}"
        )

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        """Per-prefix logits (B, T) of the parts concatenated along time."""
        x = torch.cat([self.embed_part(p).float() for p in parts], dim=1)
        hidden = self.trunk.hidden_states(embeddings=x)
        return self.head(hidden).squeeze(-1).float()


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_{s >= t} gamma^(s - t) r_s for rewards (B, L) (ScratchGAN §3.1)."""
    L = rewards.size(1)
    idx = torch.arange(L, device=rewards.device)
    lag = (idx[:, None] - idx[None, :]).to(rewards.dtype)  # lag[s, t] = s - t
    discount = torch.where(lag >= 0, torch.pow(gamma, lag.clamp(min=0)), torch.zeros_like(lag))
    return rewards @ discount


def conditional_gumbel(
    logits: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel-perturbed log-probabilities z = log p + g (…, V), g iid Gumbel(0, 1), drawn
    conditionally on argmax z == tokens (…).

    Sampling the token first and then the noise given the token gives the same joint law as the
    Gumbel-max trick (Maddison et al. 2014, "A* Sampling"; the form used here is REBAR's
    conditional sample z~ | b, Tucker et al. 2017): the top value is
    Gumbel(logsumexp log p) = Gumbel(0), every other value is Gumbel(log p_i) truncated below
    it. So a token sampled by `generate` gets Gumbel noise consistent with it, and the
    straight-through estimator is the usual one.
    No gradient flows through the result.
    """
    with torch.no_grad():
        logp = F.log_softmax(logits.float(), dim=-1)
        tiny = torch.finfo(logp.dtype).tiny
        u = uniform(logp.shape, generator, logp.device, logp.dtype).clamp(min=tiny, max=1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        top = gumbel.gather(-1, tokens.unsqueeze(-1))  # (…, 1), max of Gumbel(log p_i) ~ G(0)
        # Gumbel(log p_i) truncated to lie below `top`: -log(exp(-top) + exp(-(log p_i + g_i))).
        below = -torch.logaddexp(-top, -(logp + gumbel))
        return below.scatter(-1, tokens.unsqueeze(-1), top)


def gumbel_softmax_given(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The Gumbel-softmax sample softmax((logits + g) / tau) (…, V) whose argmax is `tokens`:
    RelGAN's relaxed sample (Nie et al. 2019, §3.2), with g drawn given the tokens
    (`conditional_gumbel`); gradient flows into `logits`."""
    logits = logits.float()
    noise = conditional_gumbel(logits, tokens, generator) - F.log_softmax(logits.detach(), dim=-1)
    return F.softmax((logits + noise) / tau, dim=-1)


def straight_through_gumbel(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-hot vectors (…, V) of `tokens` whose gradient wrt `logits` is that of the
    Gumbel-softmax sample softmax((logits + g) / tau) (Jang et al. 2017, §2-3), with g drawn
    conditionally on the tokens (`conditional_gumbel`).

    The forward value is exactly the one-hot: `hard + (soft - soft.detach())` adds an exact zero.
    """
    soft = gumbel_softmax_given(logits, tokens, tau, generator)
    hard = F.one_hot(tokens, logits.size(-1)).to(soft.dtype)
    return hard + (soft - soft.detach())


def distinct_1(tokens: torch.Tensor) -> float:
    """Distinct tokens over all tokens of a batch (Li et al. 2016, "A Diversity-Promoting
    Objective Function for Neural Conversation Models")."""
    return torch.unique(tokens).numel() / max(1, tokens.numel())


@register_objective("adversarial")
class Adversarial(Objective):
    """A language GAN over the shared model: a causal Transformer discriminator scores every
    prefix, and the generator follows its per-token scores by REINFORCE with dense rewards
    (ScratchGAN, de Masson d'Autume et al. 2019, §3.1) or by straight-through Gumbel-softmax
    (RelGAN, Nie et al. 2019, §3.2-3.3). See the module docstring."""

    Settings = AdversarialSettings
    manual_optimization = True
    warm_start = True

    def __init__(
        self, settings: AdversarialSettings, model: ModelInfo, special: SpecialTokens
    ) -> None:
        super().__init__(settings, model, special)
        block = model.context_length
        prompt_len = max(1, settings.prefix_tokens)
        if prompt_len >= block:
            raise ValueError(
                f"prefix_tokens={settings.prefix_tokens} leaves no room to generate in the "
                f"model's block_size={block}"
            )
        if settings.sample_length is not None and prompt_len + settings.sample_length > block:
            raise ValueError(
                f"prompt ({prompt_len}) plus sample_length ({settings.sample_length}) exceed "
                f"block_size={block}"
            )
        self.max_sample_length = settings.sample_length or block - prompt_len
        self.discriminator = Discriminator(
            ModelConfig(
                vocab_size=model.vocab_size,
                block_size=block,
                n_layer=settings.disc_layers,
                n_head=settings.disc_heads or model.heads,
                n_embd=settings.disc_embd or model.width,
                dropout=settings.disc_dropout,
                bias=True,
            )
        )
        # Saved with the checkpoint, so a resumed run keeps its baseline and collapse count.
        self.register_buffer("baseline_value", torch.zeros(block))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("collapse_streak", torch.zeros((), dtype=torch.long))

    def configure_optimizers(
        self, lr: float, weight_decay: float
    ) -> dict[str, torch.optim.Optimizer]:
        """Adam for the discriminator (ScratchGAN's released settings: beta1 0.5, `disc_lr`);
        its regularisation is dropout and the L2 penalty in its loss, not weight decay."""
        s = self.settings
        return {
            "discriminator": torch.optim.Adam(
                self.discriminator.parameters(), lr=s.disc_lr, betas=(s.disc_beta1, 0.999)
            )
        }

    def model_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The generator's Adam in the adversarial phase (ScratchGAN: beta1 0.5, lr 9.59e-5)."""
        s = self.settings
        return torch.optim.Adam(parameters, lr=s.gen_lr, betas=(s.gen_beta1, 0.999))

    def learning_rate(self, state: TrainingState) -> float:
        """ScratchGAN's constant generator learning rate."""
        return self.settings.gen_lr

    def temperature(self, progress: float) -> float:
        """tau_start * (tau_end / tau_start)^progress: RelGAN's exponential temperature control
        (§3.3, beta_n = beta_max^(n/N)) written for tau = 1 / beta, from `tau_start`."""
        s = self.settings
        p = min(1.0, max(0.0, progress))
        return s.tau_start * (s.tau_end / s.tau_start) ** p

    # -- the step ---------------------------------------------------------------------------

    def manual_step(
        self, model: CausalLM, batch: torch.Tensor, state: TrainingState, optimizers: Optimizers
    ) -> dict[str, float | torch.Tensor]:
        s = self.settings
        prompt, real = self.split_batch(batch)
        fake = self.sample(model, prompt, real.size(1), state)
        logs: dict[str, float | torch.Tensor] = {"distinct1": distinct_1(fake)}
        if s.min_distinct1 and logs["distinct1"] < s.min_distinct1:
            raise ObjectiveDiverged(
                f"adversarial: generator collapsed at step {state.step}: distinct-1 of its "
                f"samples is {logs['distinct1']:.4f} < min_distinct1={s.min_distinct1} "
                f"({torch.unique(fake).numel()} distinct tokens in {fake.numel()})"
            )
        seen = fake
        if s.variant == "relgan":  # the discriminator reads the relaxed samples themselves
            with torch.no_grad():
                seen = self.relaxed(model, prompt, fake, state, straight_through=False)
        for _ in range(s.disc_steps):
            logs.update(self.discriminator_step(prompt, real, seen, state, optimizers))
        self.track_accuracy(float(logs["d_acc"]), state)
        if s.fresh_samples:  # the generator is judged on samples the discriminator never saw
            fake = self.sample(model, prompt, real.size(1), state)
        if s.variant == "reinforce":
            logs.update(self.reinforce_step(model, batch, prompt, fake, state, optimizers))
        else:
            logs.update(self.gumbel_step(model, batch, prompt, real, fake, state, optimizers))
        return logs

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts (B, P) and the real continuations (B, L) of a batch (B, T + 1)."""
        P = self.settings.prefix_tokens
        if P == 0:
            prompt = torch.full(
                (batch.size(0), 1), self.special.eos, dtype=batch.dtype, device=batch.device
            )
        else:
            prompt = batch[:, :P]
        L = min(self.max_sample_length, batch.size(1) - P)
        if L < 1:
            raise ValueError(
                f"batch of {batch.size(1)} tokens per row leaves no continuation after "
                f"prefix_tokens={P}"
            )
        return prompt, batch[:, P : P + L]

    def sample(
        self, model: CausalLM, prompt: torch.Tensor, length: int, state: TrainingState
    ) -> torch.Tensor:
        """Continuations (B, length) sampled from the generator at temperature 1, without
        stopping at `<eos>`: batches are windows of a token stream, so real continuations run
        across document boundaries too."""
        try:
            rows = generate(model, prompt, length, DecodingConfig(), generator=self.generator)
        except RuntimeError as err:
            # Sampling refuses NaN/inf probabilities: report a diverged generator.
            if any(not torch.isfinite(p).all() for p in model.parameters()):
                raise ObjectiveDiverged(
                    f"adversarial: generator weights are not finite at step {state.step}"
                ) from err
            raise
        return torch.tensor(rows, dtype=prompt.dtype, device=prompt.device)

    def discriminator_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> tuple[torch.Tensor, float, float]:
        """The discriminator's loss on per-token logits (B, L) and its accuracy on real and
        on fake tokens.

        `standard`: 0.5 * (BCE(real, 1) + BCE(fake, 0)), ScratchGAN's released loss; accuracy is
        the share of real positions with D_t > 1/2 and fake ones with D_t < 1/2. `rsgan`:
        BCE(real - fake, 1) over pairs (row, position) sharing the prompt (RelGAN's default);
        both accuracies are the share of pairs where the real one scores higher.
        """
        if self.settings.gan_loss == "rsgan":
            diff = real_logits - fake_logits
            loss = F.binary_cross_entropy_with_logits(diff, torch.ones_like(diff))
            acc = (diff > 0).float().mean().item()
            return loss, acc, acc
        loss = 0.5 * F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + 0.5 * F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        acc_real = (real_logits > 0).float().mean().item()
        acc_fake = (fake_logits < 0).float().mean().item()
        return loss, acc_real, acc_fake

    def discriminator_step(
        self,
        prompt: torch.Tensor,
        real: torch.Tensor,
        fake: torch.Tensor,
        state: TrainingState,
        optimizers: Optimizers,
    ) -> dict[str, float | torch.Tensor]:
        """One discriminator update on real vs generated continuations of the same prompts;
        `fake` is token ids (B, L), or relaxed samples (B, L, V) for RelGAN. Scores are taken on
        the continuation's positions only."""
        L = real.size(1)
        real_logits = self.discriminator(prompt, real)[:, -L:]
        fake_logits = self.discriminator(prompt, fake)[:, -L:]
        loss, acc_real, acc_fake = self.discriminator_loss(real_logits, fake_logits)
        if self.settings.disc_l2:  # ScratchGAN's L2 penalty, 0.5 * sum of squared weights
            l2 = sum(p.pow(2).sum() for p in self.discriminator.parameters() if p.dim() >= 2)
            loss = loss + self.settings.disc_l2 * 0.5 * l2
        self.check_finite(loss, "discriminator", state)
        accuracy = 0.5 * (acc_real + acc_fake)
        optimizers.step("discriminator", loss)
        return {
            "d_loss": loss.detach(),
            "d_acc": accuracy,
            "d_acc_real": acc_real,
            "d_acc_fake": acc_fake,
        }

    def reinforce_step(
        self,
        model: CausalLM,
        batch: torch.Tensor,
        prompt: torch.Tensor,
        fake: torch.Tensor,
        state: TrainingState,
        optimizers: Optimizers,
    ) -> dict[str, float | torch.Tensor]:
        """REINFORCE with ScratchGAN's dense rewards r_t = 2 D_t - 1 from the (just updated)
        discriminator, discounted returns and a baseline (§3.1; Williams 1992 §4):
        loss = -mean_{b,t} (R_t - b_t) log p(x_t | x_<t), plus `mle_weight` times the MLE loss.

        The log-probabilities are recomputed in the model's current mode: with dropout > 0 they
        are those of a dropout-perturbed policy, not exactly of the eval-mode sampler (a small
        bias; the benchmark's dropout is the shared model's)."""
        L = fake.size(1)
        with self.frozen_discriminator(), torch.no_grad():
            rewards = 2.0 * torch.sigmoid(self.discriminator(prompt, fake)[:, -L:]) - 1.0
        returns = discounted_returns(rewards, self.settings.gamma)
        advantages = returns - self.baseline(returns)
        hidden = model.hidden_states(torch.cat([prompt, fake], dim=1)[:, :-1])[:, -L:]
        logits = model.logits(hidden)  # (B, L, V)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, fake.unsqueeze(-1)).squeeze(-1)
        pg_loss = -(advantages.detach() * logp).mean()
        loss, logs = self.add_mle(model, batch, pg_loss)
        self.check_finite(loss, "generator", state)
        optimizers.step("model", loss)
        return {
            **logs,
            "pg_loss": pg_loss.detach(),
            "g_loss": loss.detach(),
            "reward": rewards.mean(),
            "return": returns.mean(),
        }

    def baseline(self, returns: torch.Tensor) -> torch.Tensor:
        """The baseline b (1 or L,) to subtract from returns (B, L), and the moving-average
        update b <- decay * b + (1 - decay) * mean(R) (ScratchGAN's convention for `decay`).

        The moving averages subtract the value from before this batch, which does not depend on
        this batch's samples and so keeps the estimator unbiased (ScratchGAN's released code
        subtracts the value after the update); the very first batch uses its own mean. `batch`
        uses the batch's mean return per position (biased by O(1/B), no state).
        """
        s = self.settings
        L = returns.size(1)
        if s.baseline == "batch":
            return returns.mean(dim=0)
        current = returns.mean(dim=0) if s.baseline == "position" else returns.mean().expand(L)
        stored = self.baseline_value[:L]
        previous = stored.clone() if bool(self.baseline_ready) else current
        stored.copy_(s.baseline_decay * previous + (1.0 - s.baseline_decay) * current)
        self.baseline_ready.fill_(True)
        return previous

    def gumbel_step(
        self,
        model: CausalLM,
        batch: torch.Tensor,
        prompt: torch.Tensor,
        real: torch.Tensor,
        fake: torch.Tensor,
        state: TrainingState,
        optimizers: Optimizers,
    ) -> dict[str, float | torch.Tensor]:
        """Gumbel-softmax generator update (RelGAN §3.2): the generator's logits on its own
        sample (with gradient) give softmax((logits + g) / tau), read by the discriminator as
        distributions: as one-hot vectors carrying that gradient (`straight_through_gumbel`) or
        as themselves (`relgan`); the loss is the non-saturating -mean log D_t (`standard`) or
        RelGAN's BCE(D(fake) - D(real), 1)."""
        L = fake.size(1)
        tau = self.temperature(state.progress)
        straight = self.settings.variant == "straight_through_gumbel"
        inputs = self.relaxed(model, prompt, fake, state, straight_through=straight)
        with self.frozen_discriminator():
            fake_logits = self.discriminator(prompt, inputs)[:, -L:]
            if self.settings.gan_loss == "rsgan":
                with torch.no_grad():
                    real_logits = self.discriminator(prompt, real)[:, -L:]
                diff = fake_logits - real_logits
                adv_loss = F.binary_cross_entropy_with_logits(diff, torch.ones_like(diff))
            else:
                adv_loss = F.binary_cross_entropy_with_logits(
                    fake_logits, torch.ones_like(fake_logits)
                )
            loss, logs = self.add_mle(model, batch, adv_loss)
            self.check_finite(loss, "generator", state)
            optimizers.step("model", loss)
        return {
            **logs,
            "adv_loss": adv_loss.detach(),
            "g_loss": loss.detach(),
            "reward": (2.0 * torch.sigmoid(fake_logits.detach()) - 1.0).mean(),
            "tau": tau,
        }

    # -- helpers ----------------------------------------------------------------------------

    def relaxed(
        self,
        model: CausalLM,
        prompt: torch.Tensor,
        fake: torch.Tensor,
        state: TrainingState,
        straight_through: bool,
    ) -> torch.Tensor:
        """The relaxed samples (B, L, V) of the generator's tokens `fake`: softmax((logits + g)
        / tau) with g Gumbel noise drawn given the tokens; straight-through, the exact one-hot
        vectors carrying that gradient."""
        L = fake.size(1)
        tau = self.temperature(state.progress)
        hidden = model.hidden_states(torch.cat([prompt, fake], dim=1)[:, :-1])[:, -L:]
        logits = model.logits(hidden)  # (B, L, V)
        if straight_through:
            return straight_through_gumbel(logits, fake, tau, self.generator)
        return gumbel_softmax_given(logits, fake, tau, self.generator)

    def add_mle(
        self, model: CausalLM, batch: torch.Tensor, loss: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.settings.mle_weight:
            return loss, {}
        nll = model.next_token_loss(model.hidden_states(batch[:, :-1]), batch[:, 1:])
        return loss + self.settings.mle_weight * nll, {"nll": nll.detach()}

    @contextlib.contextmanager
    def frozen_discriminator(self) -> Iterator[None]:
        """The discriminator as a fixed critic for a generator update: eval mode (no dropout
        noise in the rewards) and no gradients into its parameters."""
        d = self.discriminator
        was_training = d.training
        flags = [p.requires_grad for p in d.parameters()]
        d.eval()
        for p in d.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(d.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            d.train(was_training)

    def check_finite(self, loss: torch.Tensor, who: str, state: TrainingState) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise ObjectiveDiverged(
                f"adversarial: {who} loss is {loss.detach().float().item()} at step {state.step}"
            )

    def track_accuracy(self, accuracy: float, state: TrainingState) -> None:
        """Count consecutive steps whose (last) discriminator update saw an accuracy at or
        above `collapse_accuracy`; raise `ObjectiveDiverged` once the count reaches
        `collapse_patience`."""
        s = self.settings
        if accuracy >= s.collapse_accuracy:
            self.collapse_streak += 1
        else:
            self.collapse_streak.zero_()
        if int(self.collapse_streak) >= s.collapse_patience:
            raise ObjectiveDiverged(
                f"adversarial: discriminator accuracy has been >= {s.collapse_accuracy} for "
                f"{int(self.collapse_streak)} consecutive steps (last {accuracy:.4f}, step "
                f"{state.step}): the generator no longer gets a useful signal"
            )
