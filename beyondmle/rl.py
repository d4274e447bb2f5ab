"""The arithmetic of learning from preferences and rewards, as plain functions of tensors: the
Bradley-Terry reward-model loss, DPO's loss, RLOO's leave-one-out advantages, GAE, PPO's
clipped surrogate and value loss, and the k1 / k3 estimators of KL(policy || reference).
Every formula cites its paper; `tests/test_rl.py` checks each against a hand computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from beyondmle.decoding import DecodingConfig, generate
from beyondmle.settings import Problem


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_chosen - r_rejected): the negative log-likelihood of the observed
    preferences under the Bradley-Terry model P(a > b) = sigmoid(r_a - r_b) (Bradley & Terry
    1952; as a reward-model loss, Ouyang et al. 2022, Eq. 1)."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Rafailov et al. 2023, Eq. 7: -mean log sigmoid(beta [(log pi(y_w) - log ref(y_w)) -
    (log pi(y_l) - log ref(y_l))]), from summed sequence log-probabilities."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, §3.2; Kool et al. 2019): rewards (P, k) of
    k samples per prompt; each sample's baseline is the mean reward of the other k - 1:
    A_i = r_i - (sum_j r_j - r_i) / (k - 1)."""
    k = rewards.size(-1)
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    return rewards - (rewards.sum(dim=-1, keepdim=True) - rewards) / (k - 1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) over episodes (B, T) that
    end after their last step: delta_t = r_t + gamma V_{t+1} - V_t (V_T = 0), A_t = sum_l
    (gamma lam)^l delta_{t+l}. Returns the advantages and the returns A_t + V_t."""
    T = rewards.size(-1)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(T)):
        next_value = values[..., t + 1] if t + 1 < T else torch.zeros_like(values[..., t])
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = delta + gamma * lam * running
        advantages[..., t] = running
    return advantages, advantages + values


def ppo_policy_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise:
    -mean min(rho A, clip(rho, 1 - eps, 1 + eps) A) with rho = exp(log pi - log pi_old)."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return -torch.min(ratio * advantages, clipped * advantages).mean()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """The clipped value loss of PPO implementations (Ziegler et al. 2019's code, TRL):
    0.5 mean max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


def kl_k1(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """k1 = log p(x) - log q(x) for x ~ p: unbiased for KL(p || q), high variance, can be
    negative (Schulman 2020, "Approximating KL Divergence")."""
    return log_p - log_q


def kl_k3(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = q(x) / p(x), x ~ p: unbiased for KL(p || q), never
    negative, low variance (Schulman 2020)."""
    log_ratio = log_q - log_p
    return torch.expm1(log_ratio) - log_ratio


def continuation_log_probs(
    model, prompts: torch.Tensor, continuations: torch.Tensor
) -> torch.Tensor:
    """log p(y_t | x, y_<t) (n, L) of each continuation token after its prompt, under a causal
    LM with `hidden_states` and `logits` (the model interface); gradients flow where enabled."""
    P = prompts.size(1)
    ids = torch.cat([prompts, continuations], dim=1)
    hidden = model.hidden_states(ids[:, :-1])[:, P - 1 :]  # the positions that predict y
    log_probs = F.log_softmax(model.logits(hidden).float(), dim=-1)
    return log_probs.gather(-1, continuations[..., None]).squeeze(-1)


def adaptive_kl_coef(beta: float, kl: float, target: float, n: int, horizon: int) -> float:
    """The adaptive KL coefficient of Ziegler et al. 2019 (§2.2): beta (1 + K e) with
    e = clip(KL / target - 1, -0.2, 0.2) and K = n / horizon for the n rollouts just seen."""
    error = min(0.2, max(-0.2, kl / target - 1.0))
    return beta * (1.0 + error * n / horizon)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Dropout off for a policy's passes: the log-probabilities of a policy-gradient step must
    be those of the policy that sampled (TRL disables the policy's dropout for the same
    reason)."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def rollout(model, prompts: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Continuations (n, length) of `prompts` at temperature 1, from the KV-cached sampler."""
    rows = generate(model, prompts, length, DecodingConfig(), generator=generator)
    return torch.tensor(rows, dtype=prompts.dtype, device=prompts.device)


def check_rollout_fits(prompt_tokens: int, rollout_tokens: int, model: dict) -> list[Problem]:
    """A prompt (the start of a training row) and its continuation must fit the context."""
    block = model.get("block_size", 256)
    if prompt_tokens + rollout_tokens > block:
        expected = f"prompt_tokens + rollout_tokens <= model.block_size ({block})"
        return [Problem("rollout_tokens", expected, prompt_tokens + rollout_tokens)]
    return []
