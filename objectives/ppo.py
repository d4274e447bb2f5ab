"""PPO against a learned reward, with a per-token KL penalty to the reference and a value head.

Schulman et al. 2017 (clipped surrogate, Eq. 7) as RLHF runs it (Ziegler et al. 2019, §2.2;
Ouyang et al. 2022, §3.5; Stiennon et al. 2020): each generated token is an action; its reward
is -beta (log pi(y_t) - log pi_ref(y_t)), and the reward model's score is added at the last
token. Advantages come from GAE (Schulman et al. 2016) with a value model initialised from the
reward model (Ouyang et al., §3.5), and are whitened over the batch. Each batch of rollouts is
used for `ppo_epochs` updates of the clipped surrogate and the clipped value loss. Optionally
beta adapts to a KL target (Ziegler et al.'s controller, `beyondmle.rl.adaptive_kl_coef`).

Defaults are TRL's PPO defaults: beta 0.05, clip 0.2 (policy and value), gamma 1, lambda 0.95,
4 epochs. Prompts are the first `prompt_tokens` of each training batch's rows, one rollout per
row. Dropout is off in the policy's and the value model's passes, as TRL does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from beyondmle.api import (
    CausalLM,
    Objective,
    ObjectiveSettings,
    Optimizers,
    Problem,
    Resources,
    TrainingState,
    register_objective,
    setting,
)
from beyondmle.rl import (
    adaptive_kl_coef,
    check_rollout_fits,
    continuation_log_probs,
    eval_mode,
    gae,
    kl_k3,
    ppo_policy_loss,
    ppo_value_loss,
    rollout,
)


@dataclass(frozen=True)
class PPOSettings(ObjectiveSettings):
    """See the module docstring; `kl_target` (nats per continuation) turns on the adaptive
    controller with `kl_horizon` rollouts; `value_lr` is the value model's Adam rate."""

    kl_coef: float = setting(0.05, ge=0.0)
    kl_target: float | None = setting(None, gt=0.0)
    kl_horizon: int = setting(10_000, ge=1)
    clip: float = setting(0.2, gt=0.0)
    value_clip: float = setting(0.2, gt=0.0)
    gamma: float = setting(1.0, ge=0.0, le=1.0)
    lam: float = setting(0.95, ge=0.0, le=1.0)
    ppo_epochs: int = setting(4, ge=1)
    value_lr: float = setting(1e-4, gt=0.0)
    prompt_tokens: int = setting(20, ge=1)
    rollout_tokens: int = setting(40, ge=1)


def whiten(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-8)


@register_objective("ppo")
class PPO(Objective):
    """PPO on a learned reward with a per-token KL penalty and GAE (Ouyang et al. 2022)."""

    Settings = PPOSettings
    manual_optimization = True
    uses = frozenset({"reference", "reward_model"})

    @classmethod
    def check_with(cls, settings: PPOSettings, model: dict) -> list[Problem]:
        return check_rollout_fits(settings.prompt_tokens, settings.rollout_tokens, model)

    def attach(self, resources: Resources) -> None:
        super().attach(resources)
        # The value model: the reward model's trunk and head, trained from there (its own
        # module, so it is optimised and checkpointed with the objective).
        self.value = copy.deepcopy(resources.reward_model).requires_grad_(True).train()

    def __init__(self, settings: PPOSettings, model, special) -> None:
        super().__init__(settings, model, special)
        self.register_buffer("kl_coef", torch.tensor(settings.kl_coef, dtype=torch.float64))

    def configure_optimizers(self, lr: float, weight_decay: float) -> dict:
        return {"value": torch.optim.Adam(self.value.parameters(), lr=self.settings.value_lr)}

    def values(self, prompts: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """V of the state before each continuation token (n, L)."""
        ids = torch.cat([prompts, sample], dim=1)[:, :-1]
        return self.value(ids)[:, prompts.size(1) - 1 :]

    def manual_step(
        self, model: CausalLM, batch: torch.Tensor, state: TrainingState, optimizers: Optimizers
    ) -> dict[str, float | torch.Tensor]:
        s, r = self.settings, self.resources
        prompts = batch[:, : s.prompt_tokens]
        beta = float(self.kl_coef)
        with torch.no_grad(), eval_mode(model), eval_mode(self.value):
            sample = rollout(model, prompts, s.rollout_tokens, self.generator)
            old_log_p = continuation_log_probs(model, prompts, sample)
            log_ref = continuation_log_probs(r.reference, prompts, sample)
            old_values = self.values(prompts, sample)
            score = r.reward(prompts, sample)
            rewards = -beta * (old_log_p - log_ref)  # (n, L)
            rewards[:, -1] += score
            advantages, returns = gae(rewards, old_values, s.gamma, s.lam)
            advantages = whiten(advantages)
        for _ in range(s.ppo_epochs):
            with eval_mode(model):
                log_p = continuation_log_probs(model, prompts, sample)
            policy_loss = ppo_policy_loss(log_p, old_log_p, advantages, s.clip)
            optimizers.step("model", policy_loss)
            with eval_mode(self.value):
                value_loss = ppo_value_loss(
                    self.values(prompts, sample), old_values, returns, s.value_clip
                )
            optimizers.step("value", value_loss)
        kl = (old_log_p - log_ref).sum(dim=1)
        if s.kl_target is not None:
            self.kl_coef.fill_(
                adaptive_kl_coef(beta, float(kl.mean()), s.kl_target, kl.numel(), s.kl_horizon)
            )
        logs = {
            "loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "proxy_reward": score.mean(),
            "kl_k1": kl.mean(),
            "kl_k3": kl_k3(old_log_p, log_ref).sum(dim=1).mean(),
            "kl_coef": beta,
        }
        if r.gold is not None:
            logs["gold_reward"] = r.gold(prompts, sample).float().mean()
        return logs
