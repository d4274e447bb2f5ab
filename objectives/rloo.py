"""REINFORCE leave-one-out (RLOO) against a learned reward with a KL leash to the reference.

Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs", §3.2): the whole continuation is one action. For each prompt, k
continuations are sampled from the policy; each gets the reward

    R(x, y) = r_phi(x, y) - beta * sum_t [log pi(y_t | .) - log pi_ref(y_t | .)]

(the KL penalty of Ziegler et al. 2019, §2.2, with the k1 estimator on the sampled tokens) and
the baseline of the mean reward of the other k - 1, and the policy takes one REINFORCE step on
-mean[(R_i - b_i) * log pi(y_i | x)].

Prompts are the first `prompt_tokens` of each training batch's rows (the evaluation's prompt
length by default), so RLOO sees the same data in the same order as every other objective; with
B rows it samples k continuations of B // k of them, B rollouts per step, as many as PPO.

Deviation from TRL's RLOOTrainer: one on-policy gradient step per batch of rollouts, as the
paper's REINFORCE, not TRL's several PPO-clipped epochs over each batch. Dropout is off in the
policy's passes (`beyondmle.rl.eval_mode`), as TRL does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.api import (
    CausalLM,
    Objective,
    ObjectiveSettings,
    Optimizers,
    Problem,
    TrainingState,
    register_objective,
    setting,
)
from beyondmle.rl import (
    check_rollout_fits,
    continuation_log_probs,
    eval_mode,
    kl_k3,
    rloo_advantages,
    rollout,
)


@dataclass(frozen=True)
class RLOOSettings(ObjectiveSettings):
    """`k` continuations per prompt (Ahmadian et al. use 2 and 4), `kl_coef` the KL leash beta
    (TRL's default 0.05), `prompt_tokens` and `rollout_tokens` the prompt and continuation
    lengths (the evaluation's defaults, 20 and 40)."""

    k: int = setting(4, ge=2)
    kl_coef: float = setting(0.05, ge=0.0)
    prompt_tokens: int = setting(20, ge=1)
    rollout_tokens: int = setting(40, ge=1)


@register_objective("rloo")
class RLOO(Objective):
    """REINFORCE leave-one-out on a learned reward with a KL leash (Ahmadian et al. 2024)."""

    Settings = RLOOSettings
    manual_optimization = True
    uses = frozenset({"reference", "reward_model"})

    @classmethod
    def check_with(cls, settings: RLOOSettings, model: dict) -> list[Problem]:
        return check_rollout_fits(settings.prompt_tokens, settings.rollout_tokens, model)

    def manual_step(
        self, model: CausalLM, batch: torch.Tensor, state: TrainingState, optimizers: Optimizers
    ) -> dict[str, float | torch.Tensor]:
        s, r = self.settings, self.resources
        n = max(1, batch.size(0) // s.k)
        prompts = batch[:n, : s.prompt_tokens].repeat_interleave(s.k, dim=0)  # (n k, P)
        with eval_mode(model):
            sample = rollout(model, prompts, s.rollout_tokens, self.generator)
            log_p = continuation_log_probs(model, prompts, sample)  # (n k, L), with gradients
        with torch.no_grad():
            log_ref = continuation_log_probs(r.reference, prompts, sample)
            score = r.reward(prompts, sample)  # (n k,)
            kl = (log_p.detach() - log_ref).sum(dim=1)
            total = score - s.kl_coef * kl
            advantages = rloo_advantages(total.view(n, s.k)).view(-1)
        loss = -(advantages * log_p.sum(dim=1)).mean()
        optimizers.step("model", loss)
        logs = {
            "loss": loss.detach(),
            "proxy_reward": score.mean(),
            "kl_k1": kl.mean(),
            "kl_k3": kl_k3(log_p.detach(), log_ref).sum(dim=1).mean(),
            "penalised_reward": total.mean(),
        }
        if r.gold is not None:
            logs["gold_reward"] = r.gold(prompts, sample).float().mean()
        return logs
